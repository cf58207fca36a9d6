"""One file's download: every step between the I/O, shared by all engines.

An engine (the requests twin or the aiohttp twin) drives a `Transfer` like this, doing only the
network I/O and the waiting itself::

    first = transfer.begin()                  # a Result (already there) or the first Segment
    url, headers = transfer.request(seg)      # what to ask for: Range / If-Range when resuming
    ... send it, follow redirects with core.redirects ...
    if transfer.accept(seg, status, headers, url):    # decide name, size, resume or restart
        for chunk in body:
            pause = transfer.write(seg, chunk)         # None: stop reading this body
            ...
        transfer.body_ended(seg)                       # a short body is an error, never a success
    # on a TransferError: pause = transfer.failed_try(exc, failures); None gives up
    seg = transfer.claim()                    # more of this file to fetch on this connection?
    if transfer.leave():                      # the last connection out finishes the file
        result = transfer.finish()            # verify, rename, index; None: start it over

Decisions come from `core` (naming, ranges, retry, redirects, digests); bytes go through `sink`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from .config import Options
from .core.digests import Expected, mismatch, parse_checksum, server_digests, user_digests
from .core.naming import relative_target
from .core.proxies import Proxies
from .core.ranges import UNKNOWN_END, Segment, SegmentPlan, Validator, connections_for, judge, judge_first, range_header
from .core.redirects import basic_auth, headers_for, next_hop, redact, split_userinfo
from .core.results import FAILED, INTERRUPTED, OK, SKIPPED, Result
from .core.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from .core.schedule import Scheduler
from .core.sources import Job
from .core.tls import TlsSettings, decide_tls
from .errors import ChecksumMismatch, DiskError, HTTPStatusError, IncompleteBody, RedirectError, TransferError
from .index import Index
from .sink import PartFile, PrefixHasher, StreamHasher, WriteBehind, file_digests

_NO_DIGESTS: dict[str, str] = {}
WRITE_BEHIND_AFTER = 4 << 20
"""Files at least this large are written by a thread of their own (sink.WriteBehind)."""
PIECE_RANGE = (256 << 10, 16 << 20)
"""Bounds of the piece a segmented download asks for in one request (`--min-segment-size`
clamped to these): small enough that the tail of a file can be shared out, large enough that
requests cost nothing next to the bytes."""
TAIL_DIVISOR = 8
"""In the tail of a batch, requests shrink to their share of what is left, but never below a
piece divided by this (64K for 512K pieces, 1M for the default 8M): a floor tied to the piece
the user chose for their network, so a request never costs more in round trips than in bytes."""


@dataclass
class Context:
    """What every transfer of a batch shares."""

    def __post_init__(self) -> None:
        self.follow_files = getattr(self.reporter, "follows_files", True)
        """Whether the reporter shows per-file progress (else transfers do not tell it)."""
        dest = str(self.options.dest)
        self.dest_prefix = os.path.join(dest, "")
        self.shown_prefix = "" if dest == "." else self.dest_prefix
        self.checksum = parse_checksum(self.options.checksum) if self.options.checksum else None
        """--checksum, parsed once."""

    options: Options
    index: Index
    scheduler: Scheduler
    reporter: object
    policy: RetryPolicy
    rng: object
    limiter: object | None = None
    sums: dict[str, Expected] = field(default_factory=dict)
    """Digests from --sums, by file name."""
    want_sha256: bool = False
    """Compute sha256 of every file (for --manifest)."""
    post_submit: Callable[[Result], None] = lambda result: None
    """Where a finished job's Result goes (the post stage, then the report); engines call it."""
    post_submit_async: Callable[[Result], Awaitable[None]] | None = None
    """The same for the async engine, waiting without blocking the loop (None: `post_submit`
    never waits, so the engine calls it directly)."""
    logins: dict = field(default_factory=dict)
    """Logins by host from the user's netrc file (core.redirects.netrc_logins)."""
    proxies: Proxies = field(default_factory=Proxies)
    """Which proxy each request goes through (read from the environment once per batch)."""
    tls: TlsSettings = field(default_factory=decide_tls)
    """What to trust, whether to verify, which client certificate (core.tls, decided once per batch)."""
    signal_handler: Callable | None = None
    """What SIGINT and SIGTERM call. The API installs it for the whole batch; the async engine
    also hands it to its event loop, so a signal wakes the loop at once."""
    dest_prefix: str = ""
    """The output folder as a path prefix for file operations ("out/", "./"), made once."""
    shown_prefix: str = ""
    """...and as results show it ("out/", "" for the current folder)."""
    write_behind: bool = False
    """Write big files on a thread of their own (sink.WriteBehind). The async engine asks for it:
    its one thread must not spend itself copying into the page cache. Thread workers do their
    own writing: measured on 512 MiB, a writer thread beside four of them made it 3x slower."""


def claim_name(index: Index, job: Job) -> str:
    """Claim the name a job's URL gives, in input order (the feed does this for every job, so
    which of two URLs wanting one name gets it plain does not depend on which finishes first)."""
    entry = index.lookup(job.url)
    wanted = relative_target(split_userinfo(job.url)[0], out=job.name, subdir=job.subdir)
    if entry and (entry.name == wanted or not (job.name or job.subdir)):
        return entry.name  # a name learnt from the server before stays, unless the input names one
    return index.claim(job.url, wanted)


class Transfer:
    """The state of one file's download across its connections and tries."""

    # Defaults live on the class: a tiny file's transfer sets only what it changes (a long list
    # makes one Transfer per URL, so its construction is on the per-URL budget).
    name: str | None = None
    part: PartFile | None = None
    size: int | None = None
    validator = Validator()
    plan: SegmentPlan | None = None
    layout = "stream"
    hasher: StreamHasher | None = None
    """Digests of a one-stream file, fed as its bytes stream in."""
    prefix_hasher: PrefixHasher | None = None
    """Digests of a segmented file, following its on-disk prefix."""
    writer: WriteBehind | None = None
    expected: list[Expected] = []
    """Every digest the file must match: the user's (`_static`) and the server's."""
    _static: list[Expected] = []
    requests = 0
    received = 0
    """Bytes of bodies taken in this run (what the progress display counts)."""
    _written_before = 0
    http_status: int | None = None
    http_version: str | None = None
    """The protocol of the last response ("1.1", "2"), as the engine saw it."""
    error: TransferError | None = None
    restart_reason: str | None = None
    restarts = 0
    skipped = False
    crossed_hosts = False
    """Once a redirect left the first host, credentials stay behind for good."""
    _active = 0
    _closed = False
    _bar_open = False
    _sized = False
    _helped = False
    """Whether the scheduler was told this file takes more connections (open_for_help)."""

    def __init__(self, job: Job, ctx: Context, host: str) -> None:
        self.job = job
        self.ctx = ctx
        self.host = host
        self.url, self.url_auth = split_userinfo(job.url)
        """Where requests go (without `user:password@`, sent as a header instead): the URL after
        the first response's redirects."""
        if not self.url_auth and ctx.logins:
            login = ctx.logins.get((urlsplit(self.url).hostname or "").lower()) or ctx.logins.get("")
            self.url_auth = basic_auth(*login) if login else ()
        self.first_url = self.url
        self.started = time.monotonic()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- before the first request
    @property
    def dest(self) -> Path:
        return self.ctx.options.dest

    @property
    def final(self) -> Path:
        return self.dest / self.name

    def begin(self) -> Result | Segment:
        """The first segment to fetch (or a Result, for a job whose name must be claimed here, when
        its file turns out to be there already). The intake has already answered the files that
        are there (core.existing); a job it sends on is fetched, resuming what an earlier run left
        when one may have (`Job.resume`)."""
        self._join()
        if self.job.target is None:  # a job that did not come through the intake (tests, tools)
            self._set_name(claim_name(self.ctx.index, self.job))
            if not self.ctx.options.overwrite and self._present(self.name):
                return self._skip()
        else:
            self._set_name(self.job.target)
        if self.job.resume:
            saved = self.part.saved(self.ctx.index.key(self.job.url), self.job.url)
            if saved and saved.validator.if_range() and saved.have > 0:
                return self._resume(saved)
        return self._probe()

    def _wanted_name(self, content_disposition: str | None) -> str:
        return relative_target(self.url, content_disposition, out=self.job.name, subdir=self.job.subdir)

    def _present(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.dest, name))

    def _path(self) -> str:
        """Where the file goes, as the output folder was given ("out/a.iso", or "a.iso" for ".")."""
        return self.ctx.shown_prefix + self.name

    def _set_name(self, name: str) -> None:
        self.name = name
        self.part = PartFile(self.ctx.dest_prefix + name)
        self.expected = self._static = user_digests(name, self.job.checksum, self.ctx.checksum, self.ctx.sums)

    def _resume(self, saved) -> Segment:
        self.size, self.validator, self.layout = saved.size, saved.validator, saved.layout
        self.part.open(fresh=False)
        if saved.layout == "stream":
            have = saved.have
            self._new_plan(SegmentPlan(saved.size or UNKNOWN_END, [(have, saved.size or UNKNOWN_END)]))
            self._start_hasher(prefix=have)
        else:
            self._new_plan(SegmentPlan(saved.size, saved.missing, max_connections=self._max_connections(True)))
            self._start_prefix_hasher()
        self._open_bar()
        self._now_sized()
        if self.ctx.follow_files:
            self.ctx.reporter.file_progress(self, self.plan.fetched())
        first = self.plan.claim(self._next_piece() if saved.layout == "segments" else None)
        if saved.layout == "segments":
            self._helped = True
            self.ctx.scheduler.open_for_help(self)
        return first

    def _probe(self) -> Segment:
        self._new_plan(None)
        return Segment(0, UNKNOWN_END, owned=True)

    def _skip(self) -> Result:
        self.skipped = True
        entry_size = None
        try:
            entry_size = self.final.stat().st_size
        except OSError:
            pass
        self.ctx.index.complete(self.job.url, entry_size, None)
        return self._result(SKIPPED, size=entry_size)

    # ---------------------------------------------------------------- requests and responses
    def request(self, seg: Segment) -> tuple[str, list[tuple[str, str]]]:
        """URL and headers for the next try on `seg`."""
        self.requests += 1
        opts = self.ctx.options
        given = opts.headers + self.job.headers if self.job.headers else opts.headers
        if self.url_auth and not any(k.lower() == "authorization" for k, _ in given):
            given = self.url_auth + given
        user = headers_for(given, self.crossed_hosts) if given else ()
        headers = [("Accept-Encoding", "identity")]
        if self.plan is not None and not self.validator.if_range():
            self._reset_stream(seg)
        if self.plan is None:
            # the first request: with segments allowed, ask for the first piece only, so the file
            # can be shared out without any connection having asked for all of it
            seg.req_end = self.piece if opts.segments > 1 else UNKNOWN_END
            if opts.segments > 1:
                headers.append(("Range", range_header(0, self.piece)))
        else:
            req_end = self.plan.request(seg, self.piece if self.layout == "segments" else None)
            headers.append(("Range", range_header(seg.cursor, None if req_end >= self.plan.size else req_end)))
            headers.append(("If-Range", self.validator.if_range()))
        if not user:
            return self.url, headers
        names = {k.lower() for k, _ in user}
        return self.url, [h for h in headers if h[0].lower() not in names] + list(user)

    def follow(self, url: str, status: int, location: str | None, hops: int,
               headers: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
        """Where to send the request after a 3xx, and with which headers: later requests go there
        too, and once a redirect leaves the first host, credentials stay behind for good."""
        hop = next_hop(url, status, location, hops=hops, max_hops=self.ctx.options.max_redirects,
                       first_url=self.job.url)
        if hop.refused:
            raise RedirectError(hop.refused)
        self.crossed_hosts = self.crossed_hosts or hop.cross_host
        sent = list(headers_for(tuple(headers), self.crossed_hosts))
        self.url, auth = split_userinfo(hop.url)
        if auth:  # a Location with user:password@: those are the credentials from now on
            sent = [h for h in sent if h[0].lower() != "authorization"] + list(auth)
        return self.url, sent

    def accept(self, seg: Segment, status: int, reason: str, headers) -> bool:
        """Decide what a response means. True: read its body into `seg`. False: do not (the file
        is done, already there, or must start over). Raises HTTPStatusError for error statuses."""
        self.http_status = status
        if status >= 300 and status != 416:
            retry_after = parse_retry_after(headers.get("retry-after"))
            raise HTTPStatusError(status, reason, retryable=status in RETRYABLE_STATUSES,
                                  retry_after=retry_after)
        if self.plan is None:
            return self._accept_first(seg, status, headers)
        verdict = judge(status, headers, start=seg.cursor, validator=self.validator, size=self.size)
        if verdict.action == "done":
            seg.end = seg.cursor
            return False
        if verdict.action == "restart":
            self.restart_reason = verdict.reason
            return False
        if self.size is None and verdict.size is not None:
            self.size = verdict.size
        return True

    def _accept_first(self, seg: Segment, status: int, headers) -> bool:
        opts = self.ctx.options
        opening = judge_first(status, headers, segments=opts.segments, min_segment=opts.min_segment_size)
        if opening.refused:
            raise (IncompleteBody if opening.lengths_disagree else TransferError)(opening.refused)
        cd = headers.get("content-disposition")
        if (cd or self.url != self.first_url) and not self.job.name:
            wanted = self._wanted_name(cd)
            if wanted != self.name:
                self._set_name(self.ctx.index.claim(self.job.url, wanted))
                if not opts.overwrite and self._present(self.name):
                    self.skipped = True
                    return False
        self.size = opening.size
        self.validator = opening.validator
        connections = opening.connections
        self.layout = "segments" if connections > 1 else "stream"
        self.expected = self._static + server_digests(200 if opening.whole else status, headers)
        self.part.open(fresh=True)
        total = self.size if self.size is not None else UNKNOWN_END
        ranged_end = opening.carried_end
        seg.end = total
        seg.req_end = ranged_end if ranged_end is not None else seg.end
        # the rest of a file to share out is up for claims, in pieces, from the first byte after
        # what this response carries; a one-stream file stays all this connection's
        if connections > 1 and ranged_end is not None and ranged_end < total:
            seg.end = ranged_end
        self._new_plan(SegmentPlan(total, [(seg.end, total)], max_connections=connections))
        self.plan.add(seg)
        self._now_sized()
        if status == 416:
            return False
        if self.layout == "stream":
            self._start_hasher(prefix=0)
        else:
            self._save_state()
            self._start_prefix_hasher()
        self._open_bar()
        if connections > 1:
            self._helped = True
            self.ctx.scheduler.open_for_help(self)
        return True

    @property
    def piece(self) -> int:
        low, high = PIECE_RANGE
        return max(low, min(self.ctx.options.min_segment_size, high))

    def _next_piece(self) -> int:
        """The most the next request asks for: a piece, or in the tail of the batch its share of
        the bytes left (see core.schedule), so connections finish together."""
        piece = self.piece
        share = self.ctx.scheduler.tail_share()
        return piece if share is None else max(piece // TAIL_DIVISOR, min(piece, share))

    def max_connections(self) -> int:
        """How many connections this file may use at once (for the scheduler's tail share)."""
        plan = self.plan
        return plan.max_connections if plan is not None else 1

    def unrequested(self) -> int:
        """Bytes of this file that no request has asked for yet (for the scheduler's tail share)."""
        plan = self.plan
        return plan.unrequested() if plan is not None and self.layout == "segments" else 0

    def _max_connections(self, ranges: bool) -> int:
        return connections_for(self.size, ranges, self.ctx.options.segments, self.ctx.options.min_segment_size)

    def _start_hasher(self, prefix: int) -> None:
        if not self.expected and not self.ctx.want_sha256:
            self.hasher = None
            return
        algorithms = self._algorithms()
        if not algorithms:
            self.hasher = None
            return
        self.hasher = StreamHasher(algorithms, threaded=not self.ctx.write_behind)
        if prefix:
            file_digests(self.part.part, algorithms, hasher=self.hasher, end=prefix, finish=False)

    def _start_prefix_hasher(self) -> None:
        algorithms = self._algorithms()
        self._drop_hashers()
        if algorithms:
            self.prefix_hasher = PrefixHasher(self.part.part, algorithms)
            self.prefix_hasher.advance(self.plan.prefix())

    def _drop_hashers(self) -> None:
        """Stop digesting: the bytes will not become this file (start over, give up, stop)."""
        for hasher in (self.hasher, self.prefix_hasher):
            if hasher is not None:
                hasher.abandon()
        self.hasher = self.prefix_hasher = None

    def _algorithms(self) -> set[str]:
        algorithms = {e.algorithm for e in self.expected}
        if self.ctx.want_sha256:
            algorithms.add("sha256")
        return algorithms

    def _reset_stream(self, seg: Segment) -> None:
        """A one-stream file whose server cannot prove a range: fetch it again from zero."""
        self._drain_writer()
        self.part.open(fresh=True)
        self._new_plan(None)
        seg.pos = seg.cursor = 0
        seg.end = UNKNOWN_END
        self._drop_hashers()

    # ---------------------------------------------------------------- bodies
    def write(self, seg: Segment, data) -> float | None:
        """Store a chunk of `seg`'s body. Returns None to stop reading (the segment is complete, a
        stop was asked, or the file must start over), else seconds to pause (--max-speed)."""
        if self.error or self.restart_reason or self.ctx.scheduler.stopping:
            return None
        offset, n = self.plan.reserve(seg, len(data))
        if n:
            chunk = data if n == len(data) else memoryview(data)[:n]
            if self.layout == "stream" and not self.part.state_written and \
                    self.received + n > self.ctx.options.chunk_size:
                # a one-stream file needs its state (URL, validator) once it is worth resuming:
                # before its second chunk lands, so a crash never costs more than one chunk
                # (its resume point is the .part's length, whatever the state says)
                self._save_state()
            if self.writer is None and self.ctx.write_behind and \
                    max(self.size or 0, self.received) >= WRITE_BEHIND_AFTER:
                self.writer = WriteBehind(self.part, self.hasher, self._written)
            if self.writer is not None:
                self.writer.submit(offset, chunk, seg)
            else:
                try:
                    self.part.write(offset, chunk)
                except DiskError as exc:
                    if exc.written:  # the start of the chunk did reach the file: it counts
                        self._written(seg, exc.written)
                    raise
                if self.hasher is not None:
                    self.hasher.update(chunk)
                self._written(seg, n)
            self.received += n
            if self.ctx.follow_files:
                self.ctx.reporter.file_progress(self, n)
        if n < len(data):
            return None
        return self.ctx.limiter.take(n) if self.ctx.limiter is not None else 0.0

    def _written(self, seg: Segment, n: int) -> None:
        """A chunk reached the disk (on the writer's thread when there is one): the plan learns
        it, and a segmented file's state file follows (at most once a second)."""
        self.plan.written(seg, n)
        if self.layout == "segments":
            self._save_state(force=False)
            if self.prefix_hasher is not None:
                self.prefix_hasher.advance(self.plan.prefix())

    def _drain_writer(self) -> None:
        """Wait for queued chunks to be written; a write error becomes the file's error."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except DiskError as exc:
                self.error = self.error or exc

    def body_ended(self, seg: Segment) -> None:
        """The body ended (EOF). A segment still missing bytes is an error, never a success."""
        if self.error or self.restart_reason or self.ctx.scheduler.stopping or \
                seg.cursor >= min(seg.end, seg.req_end):
            return
        if seg.end == UNKNOWN_END:
            self.size = seg.end = self.plan.size = seg.cursor
            return
        want = min(seg.end, seg.req_end)
        raise IncompleteBody(f"connection closed after {seg.cursor:,} of {want:,} bytes" if want == self.size
                             else f"range body ended at byte {seg.cursor:,}, expected up to {want:,}")

    def failed_try(self, exc: TransferError, failures: int) -> float | None:
        """After try number `failures` (counting this one) on a segment failed: seconds to wait
        before the next try, or None to give up on the file."""
        if isinstance(exc, DiskError) or not self.ctx.policy.should_retry(failures, exc.retryable):
            if self.error is None:
                self.error = exc
            return None
        delay = self.ctx.policy.delay(failures, exc.retry_after, self.ctx.rng)
        self.ctx.reporter.info(f"retrying {redact(self.job.url)} in {delay:.1f} s: {exc}")
        return delay

    def stopped(self) -> bool:
        """Whether connections on this file should stop trying."""
        return bool(self.error or self.restart_reason or self.skipped or self.ctx.scheduler.stopping)

    # ---------------------------------------------------------------- connections
    def _join(self) -> None:
        with self._lock:
            self._active += 1

    def claim(self, joining: bool = False) -> Segment | None:
        """More of this file for a connection, or None: for one that just finished a segment, or
        (`joining`) one the scheduler sends to help, which counts as active at once."""
        with self._lock:
            if self._closed or self.stopped() or self.plan is None:
                return None
            seg = self.plan.claim(self._next_piece() if self.layout == "segments" else None)
            if seg is not None and joining:
                self._active += 1
            return seg

    def can_help(self) -> bool:
        """Whether another connection could take part of this file now (for the scheduler)."""
        return not self._closed and not self.stopped() and self.plan is not None and self.plan.can_help()

    def release(self, seg: Segment | None) -> None:
        if seg is not None and self.plan is not None and seg in self.plan.segments:
            self.plan.release(seg)

    def leave(self) -> bool:
        """A connection is done with this file; True for the last one (which must call finish)."""
        with self._lock:
            self._active -= 1
            last = self._active == 0
            self._closed = last
        if last and self._helped:
            self.ctx.scheduler.close_for_help(self)
        return last

    # ---------------------------------------------------------------- the end
    def finish(self) -> Result | Segment:
        """Called by the last connection: verify, commit and record the file (a Result), or a
        fresh first Segment when it must start over (the file changed, a digest did not match)."""
        self._drain_writer()
        if self.skipped:
            return self._skip()
        if self.error is not None:
            return self._give_up(self.error)
        if self.restart_reason is not None:
            return self._start_over(self.restart_reason)
        if self.ctx.scheduler.stopping and not (self.plan and self.plan.done()):
            self._park()
            return self._result(INTERRUPTED, error="interrupted: run the same command again to resume")
        try:
            digests = self._verify()
            self.part.commit()
        except ChecksumMismatch as exc:
            self.part.discard()
            if self.restarts < self.ctx.options.retries:
                self.ctx.reporter.info(f"{self.name}: {exc}; fetching it again")
                return self._start_over(str(exc))
            return self._result(FAILED, error=str(exc))
        except DiskError as exc:
            return self._give_up(exc)
        sha256 = digests.get("sha256")
        self.ctx.index.complete(self.job.url, self.size, sha256)
        if self.job.replace:
            self.ctx.reporter.message(f"replaced {self.name}: {self.job.replace}")
        return self._result(OK, size=self.size, sha256=sha256)

    def finish_blocks(self) -> bool:
        """Whether finish() will read the whole file (a segmented download to verify), so an event
        loop should run it in a thread."""
        return self.writer is not None or self.prefix_hasher is not None or \
            (self.layout == "segments" and bool(self._algorithms()) and not self.stopped())

    def failure(self, exc: TransferError) -> Result:
        """A Result for a job that failed before any connection could work on it."""
        return self._give_up(exc)

    def park_quietly(self) -> Result:
        """A connection is stuck past the stop grace period: keep what is on disk, report it."""
        self._park()
        return self._result(INTERRUPTED, error="interrupted: run the same command again to resume")

    def _verify(self) -> dict[str, str]:
        if not self.expected and not self.ctx.want_sha256:
            return _NO_DIGESTS
        algorithms = self._algorithms()
        digests = None
        if self.hasher is not None and self.hasher.fed == self.size:
            digests, self.hasher = self.hasher.hexdigests(), None
        elif self.prefix_hasher is not None:
            digests, self.prefix_hasher = self.prefix_hasher.finish(self.size), None
        self._drop_hashers()
        if digests is None:  # no hasher followed the whole file (resumed from elsewhere, a read error)
            digests = file_digests(self.part.part, algorithms)
        wrong = mismatch(self.expected, digests)
        if wrong is not None:
            raise ChecksumMismatch(wrong.algorithm, wrong.hexdigest, digests.get(wrong.algorithm), wrong.source)
        return digests

    def _start_over(self, reason: str) -> Result | Segment:
        self.restarts += 1
        if self.restarts > self.ctx.options.retries:
            return self._give_up(TransferError(f"gave up after {self.restarts} restarts: {reason}"))
        self.ctx.reporter.info(f"{redact(self.job.url)}: {reason}; starting it again from zero")
        self._drop_hashers()
        if self._bar_open:
            self.ctx.reporter.file_restarted(self)
        self.restart_reason = None
        self.validator = Validator()
        self.size = None
        with self._lock:
            self._active, self._closed = 1, False
        return self._probe()

    def _give_up(self, exc: TransferError) -> Result:
        self._park()
        return self._result(FAILED, error=str(exc))

    def _park(self) -> None:
        """Leave `.part` and state for the next run, unless nothing was written."""
        self._drain_writer()
        self._drop_hashers()
        if self.part is None:
            return
        try:
            if self.plan is not None and self.plan.fetched() > 0 and self.validator.if_range():
                self._save_state()
            elif self.plan is not None and self.plan.fetched() == 0:
                self.part.discard()
        except DiskError:
            pass
        self.part.close()

    def _save_state(self, force: bool = True) -> None:
        if not force and not self.part.state_due():
            return  # called for every chunk of a segmented file: the cheap check first
        missing = self.plan.missing() if self.layout == "segments" else [(self.plan.fetched(), self.size)]
        self.part.save_state(self.ctx.index.key(self.job.url), self.size, self.validator, self.layout, missing,
                             force=force)

    def _new_plan(self, plan: SegmentPlan | None) -> None:
        """Replace the plan, keeping the count of bytes this run wrote to disk."""
        if self.plan is not None:
            self._written_before += self.plan.bytes_written
        self.plan = plan

    @property
    def written(self) -> int:
        """Bytes this run wrote to disk for this file (what the summary counts)."""
        return self._written_before + (self.plan.bytes_written if self.plan is not None else 0)

    def _now_sized(self) -> None:
        """Tell the scheduler this file's size is known (its tail share counts it from now)."""
        if not self._sized:
            self._sized = True
            self.ctx.scheduler.sized()

    def _open_bar(self) -> None:
        if not self._bar_open and self.ctx.follow_files:
            self._bar_open = True
            self.ctx.reporter.file_started(self, self.name, self.size)

    def _result(self, status: str, *, size: int | None = None, sha256: str | None = None,
                error: str | None = None) -> Result:
        self._now_sized()
        path = self._path() if self.name and status in (OK, SKIPPED) else None
        result = Result(url=self.job.url, status=status, path=path, http_status=self.http_status,
                        http_version=self.http_version,
                        bytes=self.written, size=size, sha256=sha256, attempts=self.requests,
                        seconds=round(time.monotonic() - self.started, 6), error=error, line=self.job.line)
        if self._bar_open:
            self.ctx.reporter.file_finished(self, result)
        return result
