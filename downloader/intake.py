"""Where jobs come in: URL sources read as their lines arrive, duplicates dropped, names claimed in
the index a batch at a time, and files already there answered in bulk, without a request.

It runs in the feed thread (`core.schedule.Feed`), ahead of the engine, and hands the engine
batches of jobs to fetch::

    intake = Intake(sources, options, sums, reporter, on_result)
    feed = Feed(intake.batches())       # the feed thread runs it
    if intake.wait_for_first():         # False: the input held no URL (nothing is created)
        intake.open(Index(dest))        # names are claimed from here on

Per batch (up to `BATCH` jobs, or fewer when the input goes quiet), the index is read once for
every URL and written once for every new name; a URL whose file is already there (core.existing)
becomes a "skipped" result right here, so a re-run of a long list costs a query and a stat per URL,
not a request or a trip through the engine. Names are on disk before their jobs leave the batch,
so nothing is ever written under a name the index does not hold.
"""
from __future__ import annotations

import codecs
import io
import os
import select
import stat
import threading
from typing import Callable, Iterable, Iterator

from .config import Options
from .core.digests import Expected, parse_checksum, user_digests
from .core.existing import FETCH, SKIP, VERIFY, after_hashing, on_disk
from .core.naming import relative_target
from .core.redirects import split_userinfo
from .core.results import SKIPPED, Result
from .core.schedule import host_of
from .core.sources import QUIET, Deduplicator, Job, Notice, Rejected
from .errors import DiskError
from .index import Index

BATCH = 512
"""Jobs claimed in one index transaction (and handed to the engine with one wake-up)."""
QUIET_AFTER = 0.02
"""Seconds a pipe may stay silent before the jobs read so far are sent on (a slow producer's URL
starts within this, while a fast one still fills whole batches)."""
READ_SIZE = 1 << 16


class Source:
    """A named input: command-line arguments, a URL file, stdin. `items` yields Jobs, Rejected
    lines, Notices and QUIET markers."""

    def __init__(self, name: str, items: Iterable) -> None:
        self.name = name
        self.items = items


def lines_of(fd: int, close: bool = False) -> Iterator[str]:
    """Lines of text from a file descriptor (UTF-8, undecodable bytes kept as surrogates), read
    as they arrive. From a pipe, a FIFO or a terminal, `QUIET` is yielded whenever no more input is
    readable for QUIET_AFTER seconds, so what was read is not held back waiting for more; a regular
    file is read in big blocks with no QUIET."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    streaming = not stat.S_ISREG(os.fstat(fd).st_mode)
    held = ""
    try:
        while True:
            if streaming and not select.select([fd], [], [], QUIET_AFTER)[0]:
                yield QUIET
                select.select([fd], [], [])
            block = os.read(fd, READ_SIZE)
            text = held + decoder.decode(block, final=not block)
            if not block:
                if text:
                    yield from _split(text)
                return
            cut = text.rfind("\n") + 1
            held = text[cut:]
            if cut:
                yield from _split(text[:cut])
    finally:
        if close:
            os.close(fd)


def _split(text: str) -> Iterator[str]:
    """Lines ending in LF, CRLF or a lone CR, exactly as Python's universal newlines cut them."""
    return iter(io.StringIO(text, newline=""))


class Intake:
    """Reads the sources and decides, per batch, which jobs go to the engine (see the module
    docstring). `on_result(result)` receives the skipped ones; messages go to `reporter`."""

    def __init__(self, sources: list[Source], options: Options, sums: dict[str, Expected], reporter,
                 on_result: Callable[[Result], None], on_reject: Callable[[Rejected], None]) -> None:
        self.sources = sources
        self.options = options
        self.sums = sums
        self.reporter = reporter
        self.on_result = on_result
        self.on_reject = on_reject
        self.count = 0
        """URLs read so far, duplicates not counted."""
        self.checked = 0
        """Files already there that were hashed against a digest (`--checksum`, `--check-integrity`...)."""
        self.mismatched = 0
        """...of which did not match, and were sent to be fetched again."""
        self.index: Index | None = None
        self._first = threading.Event()
        self._opened = threading.Event()
        self._started = False
        self._aborted = False
        self._dest = str(options.dest)
        self._prefix = os.path.join(self._dest, "")
        self._checksum = parse_checksum(options.checksum) if options.checksum else None

    # ------------------------------------------------------------------ the hand-over
    def wait_for_first(self) -> bool:
        """Block until the input gave its first URL (True) or ended without one (False)."""
        while not self._first.wait(0.5):
            pass
        return self._started and not self._aborted

    def open(self, index: Index) -> None:
        """Claim names in `index` from now on (called once the first URL is in)."""
        self.index = index
        self._opened.set()

    def abort(self) -> None:
        """Stop reading (a Ctrl-C): the batches end, whoever waits is released."""
        self._aborted = True
        self._first.set()
        self._opened.set()

    # ------------------------------------------------------------------ the feed thread
    def batches(self) -> Iterator[list[Job]]:
        """Batches of jobs to fetch, in input order (runs in the feed thread)."""
        batch: list[Job] = []
        try:
            for item in self._items():
                if item is QUIET:
                    if batch:
                        yield from self._decide(batch)
                        batch = []
                    continue
                if not self._started:
                    self._started = True
                    self._first.set()
                    self._opened.wait()
                if self._aborted:
                    return
                batch.append(item)
                if len(batch) >= BATCH:
                    yield from self._decide(batch)
                    batch = []
            if batch and not self._aborted:
                yield from self._decide(batch)
        finally:
            self._first.set()
            self.reporter.set_total(self.count)

    def _items(self) -> Iterator[Job | object]:
        """Jobs (and QUIET markers) of every source in turn, duplicates dropped, bad lines reported."""
        seen = Deduplicator()
        for source in self.sources:
            for item in source.items:
                if self._aborted:
                    return
                if item is QUIET:
                    yield item
                elif isinstance(item, Job):
                    if seen.first_time(item.url):
                        self.count += 1
                        yield item
                elif isinstance(item, Rejected):
                    self.on_reject(item)
                    where = f"{source.name} line {item.line}" if item.line else source.name
                    self.reporter.message(f"{where}: {item.reason}: {item.text!r} (skipped)")
                elif isinstance(item, Notice):
                    self.reporter.message(f"{source.name} {item}")

    def _decide(self, batch: list[Job]) -> Iterator[list[Job]]:
        """Claim the batch's names, answer the files already there, yield the rest as one batch."""
        index = self.index
        known = index.known([job.url for job in batch])
        wanted = {}
        for i, (job, entry) in enumerate(zip(batch, known)):
            if entry is None or job.name or job.subdir:
                name = relative_target(split_userinfo(job.url)[0], out=job.name, subdir=job.subdir)
                if entry is None or entry.name != name:
                    wanted[i] = name
        if wanted:
            claimed = index.claim_many([(batch[i].url, name) for i, name in wanted.items()])
            names = dict(zip(wanted, claimed))
        else:
            names = {}
        fetch = []
        for i, (job, entry) in enumerate(zip(batch, known)):
            name = names.get(i) or entry.name
            job = self._on_disk(job, name, entry if i not in names else None)
            if job is not None:
                fetch.append(job)
        if fetch:
            yield fetch

    def _on_disk(self, job: Job, name: str, entry) -> Job | None:
        """The job to fetch, or None when its file is already there (then its result is sent)."""
        path = name if self._dest == "." else self._prefix + name
        if self.options.overwrite:
            present = None
        else:
            try:
                present = os.stat(path).st_size
            except OSError:
                present = None
        digests = user_digests(name, job.checksum, self._checksum, self.sums)
        verdict = on_disk(entry, present, digests, self.options.check_integrity)
        if verdict.action == VERIFY:
            verdict = after_hashing(verdict.expected, self._hash(path, {e.algorithm for e in verdict.expected}))
            self.checked += 1
            self.mismatched += verdict.action == FETCH
        if verdict.action == SKIP:
            if entry is None or not entry.complete:
                self.index.complete(job.url, present, None)
            self.on_result(Result(url=job.url, status=SKIPPED, path=path, size=present, line=job.line))
            return None
        assert verdict.action == FETCH
        return Job(job.url, job.line, job.name, job.subdir, job.headers, job.checksum, name, host_of(job.url),
                   entry is not None or self.index.orphans, verdict.reason or None)

    def _hash(self, path: str, algorithms: set[str]) -> dict[str, str]:
        from .sink import file_digests
        try:
            return file_digests(path, algorithms)
        except OSError as exc:
            raise DiskError(f"cannot read {path} to check it: {exc.strerror or exc}") from exc
