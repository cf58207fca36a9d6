"""The public API: sources -> engine -> post stage -> Results. The CLI is a thin layer over it.

    >>> from downloader import download
    >>> results = download(["https://example.org/a.iso"], "out", mode="thread", jobs=8)  # doctest: +SKIP
    >>> results.counts                                                                     # doctest: +SKIP
    {'ok': 1, 'skipped': 0, 'failed': 0}

`Downloader` is for programs that build a batch bit by bit, run it, and retry what failed::

    d = Downloader("out", mode="async")
    d.enqueue("https://example.org/a.iso", "https://example.org/b.iso")
    d.enqueue_file("urls.txt")
    results = d.run()
    if results.failed:
        results = d.retry_failed()
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from .config import Options
from .core.digests import parse_checksum, parse_sums_line
from .core.proxies import Proxies
from .core.ratelimit import TokenBucket
from .core.redirects import netrc_logins, redact
from .core.results import FAILED, OK, Result, Results
from .core.retry import RetryPolicy
from .core.schedule import Feed, Scheduler
from .core.sources import Deduplicator, Job, Notice, Rejected, jobs_from_urls, parse_lines
from .errors import DiskError, UsageError
from .index import Index
from .progress import LineReporter
from .transfer import Context, claim_name

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit codes of the CLI: everything done; some URL failed or some input line was rejected;
usage error; interrupted."""


class _Source:
    """A named, lazily read input (command-line arguments, a URL file, stdin)."""

    def __init__(self, name: str, items: Iterable) -> None:
        self.name = name
        self.items = items


class Downloader:
    """A batch of downloads into one output folder (see the module docstring).

    Options are those of `Options.build` (mode, jobs, per_host, retries, timeout, headers,
    overwrite, segments, min_segment_size, max_speed, checksum, sums_file, manifest, post, ...).
    `reporter` receives progress events (default: quiet lines on stderr); `report` is a path or a
    text stream for JSON lines, one object per URL; `keep_results=False` keeps only failures in
    memory, for very long lists.
    """

    def __init__(self, dest: str | os.PathLike = ".", *, reporter=None, report=None,
                 keep_results: bool = True, **options) -> None:
        self.options = Options.build(dest, **options)
        self.reporter = reporter if reporter is not None else LineReporter()
        self.report = report
        self.keep_results = keep_results
        self._sources: list[_Source] = []
        self._last: Results | None = None
        self._interrupts = 0
        self._engine = None
        self._post = None

    # ------------------------------------------------------------------ building the batch
    def enqueue(self, *urls: str | Job) -> "Downloader":
        """Add URLs (or Job objects); each is checked when the batch runs."""
        self._sources.append(_Source("argument", jobs_from_urls(list(urls))))
        return self

    def enqueue_lines(self, lines: Iterable[str], name: str = "input") -> "Downloader":
        """Add a plain or aria2-style URL list, read lazily (a file object, sys.stdin, a list)."""
        self._sources.append(_Source(name, parse_lines(lines)))
        return self

    def enqueue_file(self, path: str | os.PathLike) -> "Downloader":
        """Add a URL file; `-` is stdin. The file is opened now (a missing file is a UsageError)
        and read as the batch runs."""
        if str(path) == "-":
            return self.enqueue_lines(_stdin_lines(), "stdin")
        try:
            with open(path, "rb") as probe:
                head = probe.read(4096)
            handle = open(path, encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as exc:
            raise UsageError(f"cannot read URL file {path}: {exc.strerror or exc}") from exc
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
            handle.close()
            raise UsageError(f"URL file {path} is not UTF-8 text"
                             + (" (it looks like UTF-16)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""))
        return self.enqueue_lines(_closing_lines(handle), str(path))

    # ------------------------------------------------------------------ running it
    def run(self) -> Results:
        """Download everything enqueued so far; returns the batch's Results."""
        opts = self.options
        sums, post_tasks, proxies = self._check()
        try:
            index = Index(opts.dest)
        except DiskError as exc:
            raise UsageError(f"cannot write in output folder {opts.dest}: {exc}") from exc
        sources, self._sources = self._sources, []
        results = Results(keep=self.keep_results)
        self._last = results
        try:
            recorder = _Recorder(results, self.reporter, self.report, opts.manifest)
        except UsageError:
            index.close()
            raise
        feed = Feed(self._jobs(sources, results, index))
        scheduler = Scheduler(feed, per_host=opts.per_host, connections=opts.jobs)
        post = self._post = _post_stage(opts, post_tasks, recorder)
        ctx = Context(options=opts, index=index, scheduler=scheduler, reporter=self.reporter,
                      policy=RetryPolicy(attempts=opts.retries + 1, base=opts.retry_base, cap=opts.retry_cap),
                      rng=random.Random(opts.seed),
                      limiter=TokenBucket(opts.max_speed) if opts.max_speed else None, sums=sums,
                      want_sha256=opts.manifest is not None, proxies=proxies, logins=netrc_logins(),
                      signal_handler=self._on_signal)
        ctx.post_submit = post.submit if post else recorder.record
        ctx.post_submit_async = post.submit_async if post else _as_async(recorder.record)
        self._interrupts = 0
        previous = _install_signals(self._on_signal)
        feed.start()  # reading the input and claiming names overlaps with importing the engine
        try:
            engine = self._engine = _engine(opts.mode)(ctx, opts.jobs)
            engine.run()
        finally:
            _install_signals(self._on_signal)  # the async engine's loop hands them back to the default
            if post is not None:
                post.close(cancel=scheduler.stopping)
            _restore_signals(previous)
            index.close()
            if index.warning:
                self.reporter.message(index.warning)
            results.interrupted = scheduler.stopping
            results.finished = time.monotonic()
            recorder.close()
            self._engine = self._post = None
        if isinstance(feed.error, DiskError):
            raise feed.error
        if feed.error is not None and not isinstance(feed.error, KeyboardInterrupt):
            raise UsageError(f"reading the URL list failed: {feed.error}")
        return results

    def _check(self) -> tuple[dict, tuple, Proxies]:
        """Everything about the options that can be wrong, found before anything is opened:
        returns the --sums digests, the parsed --post tasks and the proxy settings."""
        opts = self.options
        proxies = Proxies()
        if proxies.problem():
            raise UsageError(proxies.problem())
        if opts.dest.exists() and not opts.dest.is_dir():
            raise UsageError(f"output folder {opts.dest} is a file, not a folder")
        try:
            opts.dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {opts.dest}: {exc.strerror or exc}") from exc
        if opts.checksum:
            try:
                parse_checksum(opts.checksum)
            except ValueError as exc:
                raise UsageError(f"--checksum: {exc}") from exc
        manifest_folder = opts.manifest.parent if opts.manifest is not None else None
        if manifest_folder is not None and not os.access(manifest_folder, os.W_OK):
            raise UsageError(f"--manifest: cannot write in {manifest_folder}")
        post_tasks = ()
        if opts.post:
            from .postprocess import parse_post_spec
            try:
                post_tasks = tuple(parse_post_spec(spec) for spec in opts.post)
            except ValueError as exc:
                raise UsageError(f"--post: {exc}") from exc
        return (_read_sums(opts.sums_file) if opts.sums_file else {}), post_tasks, proxies

    def retry_failed(self) -> Results:
        """Run again the URLs that failed in the last run (resuming what they left on disk)."""
        if self._last is None:
            raise UsageError("retry_failed() before run()")
        failed = [Job(url=r.url, line=r.line) for r in self._last.failures]
        self._sources.append(_Source("retry", iter(failed)))
        return self.run()

    def stop(self) -> None:
        """Ask a running batch to stop as the first Ctrl-C does (from another thread): start
        nothing new, let chunks in flight land, drop post tasks not started yet."""
        if self._engine is not None:
            self._engine.stop()
        if self._post is not None:
            self._post.cancel()

    # ------------------------------------------------------------------ internals
    def _jobs(self, sources: list[_Source], results: Results, index: Index) -> Iterator[Job]:
        """The jobs of every source in turn, duplicates dropped, bad lines reported, names claimed
        in input order (runs in the feed thread)."""
        seen = Deduplicator()
        count = 0
        for source in sources:
            for item in source.items:
                if isinstance(item, Job):
                    if seen.first_time(item.url):
                        count += 1
                        yield replace(item, target=claim_name(index, item))
                elif isinstance(item, Rejected):
                    results.reject(item)
                    where = f"{source.name} line {item.line}" if item.line else source.name
                    self.reporter.message(f"{where}: {item.reason}: {item.text!r} (skipped)")
                elif isinstance(item, Notice):
                    self.reporter.message(f"{source.name} {item}")
        self.reporter.set_total(count)

    def _on_signal(self, signum, frame=None) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.reporter.message("interrupted: finishing the chunks in flight and saving state "
                                  "(Ctrl-C again to quit at once)")
            self.stop()
        else:
            self.reporter.message("interrupted again: quitting now; partial files stay as .part")
            _kill_children()
            os._exit(EXIT_INTERRUPTED)


def _install_signals(handler) -> dict:
    """SIGINT and SIGTERM to `handler` for the whole batch (from the main thread only, where Python
    runs signal handlers); returns the handlers to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _kill_children() -> None:
    """Before quitting at once: end the post stage's worker processes (and their fork server),
    which would otherwise outlive us, holding our stderr open."""
    import multiprocessing
    for child in multiprocessing.active_children():
        child.kill()
    server = getattr(__import__("multiprocessing.forkserver").forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def download(urls: Iterable[str], dest: str | os.PathLike = ".", *, mode: str = "async", jobs: int = 16,
             **options) -> Results:
    """Download `urls` into `dest`; returns Results (ok, skipped, failed, totals)."""
    return Downloader(dest, mode=mode, jobs=jobs, **options).enqueue(*urls).run()


class _Recorder:
    """Where finished jobs go: Results, the JSON-lines report, the manifest, the progress display."""

    def __init__(self, results: Results, reporter, report, manifest: Path | None) -> None:
        self.results = results
        self.reporter = reporter
        self._lock = threading.Lock()
        self._own_report = isinstance(report, (str, os.PathLike))
        try:
            self._report = open(report, "w", encoding="utf-8") if self._own_report else report
        except OSError as exc:
            raise UsageError(f"cannot write report {report}: {exc.strerror or exc}") from exc
        self._manifest = manifest
        if manifest:
            import tempfile
        self._manifest_rows = tempfile.TemporaryFile("w+", encoding="utf-8") if manifest else None

    def record(self, result: Result) -> None:
        with self._lock:
            self.results.add(result)
            if self._report is not None:
                row = result.to_json()
                row["url"] = redact(row["url"])
                self._report.write(json.dumps(row) + "\n")
            if self._manifest_rows is not None and result.status != FAILED and result.path:
                self._manifest_rows.write(f"{result.sha256 or '-'}\t{result.path}\n")
        self.reporter.job_recorded(result)

    def close(self) -> None:
        if self._own_report and self._report is not None:
            self._report.close()
        elif self._report is not None:
            self._report.flush()
        if self._manifest_rows is not None:
            _write_manifest(self._manifest, self._manifest_rows)
        self.reporter.close()


def _write_manifest(manifest: Path, rows) -> None:
    """`HEX  NAME` lines, names relative to the manifest's folder, so `sha256sum -c` accepts it."""
    from .sink import file_digests
    rows.seek(0)
    base = manifest.resolve().parent
    tmp = manifest.with_name(manifest.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for row in rows:
                digest, path = row.rstrip("\n").split("\t", 1)
                if not Path(path).is_file():
                    continue
                if digest == "-":
                    digest = file_digests(Path(path), {"sha256"})["sha256"]
                out.write(f"{digest}  {os.path.relpath(Path(path).resolve(), base)}\n")
        os.replace(tmp, manifest)
    except OSError as exc:
        raise DiskError(f"cannot write manifest {manifest}: {exc.strerror or exc}") from exc
    finally:
        rows.close()


def _read_sums(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            sums = {}
            for line in fh:
                parsed = parse_sums_line(line)
                if parsed:
                    sums[parsed[0].lstrip("./").lstrip("*")] = parsed[1]
            return sums
    except OSError as exc:
        raise UsageError(f"cannot read --sums file {path}: {exc.strerror or exc}") from exc


def _post_stage(opts: Options, tasks: tuple, recorder: _Recorder):
    if not tasks:
        return None
    from .postprocess import PostStage
    return _PostAdapter(PostStage(tasks, executor=opts.post_executor, workers=opts.post_workers,
                                  on_done=recorder_on_done(recorder)), recorder)


def recorder_on_done(recorder: _Recorder):
    def on_done(path, result: Result, task_results) -> None:
        result.post = [{"task": r.task, "value": r.value, "cpu_seconds": round(r.cpu_seconds, 6),
                        "pid": r.pid, "error": r.error} for r in task_results]
        result.sha256 = result.sha256 or next((r.value for r in task_results if r.task == "sha256" and not r.error),
                                              None)
        errors = [r.error for r in task_results if r.error]
        for error in errors:
            recorder.reporter.message(f"post-processing failed: {error}")
        recorder.record(result)
    return on_done


class _PostAdapter:
    """Sends downloaded files to the post stage; everything else straight to the recorder."""

    def __init__(self, stage, recorder: _Recorder) -> None:
        self.stage, self.recorder = stage, recorder
        if hasattr(recorder.reporter, "post_status"):
            recorder.reporter.post_status = lambda: f"post: {stage.pending()} queued, {stage.completed()} done"

    def submit(self, result: Result) -> None:
        if result.status == OK and result.path:
            self.stage.submit(result.path, result)
        else:
            self.recorder.record(result)

    async def submit_async(self, result: Result) -> None:
        if result.status == OK and result.path:
            await self.stage.submit_async(result.path, result)
        else:
            self.recorder.record(result)

    def close(self, cancel: bool = False) -> None:
        """Wait for the post tasks; after a Ctrl-C, drop the ones not started yet."""
        self.stage.close(cancel=cancel)

    def cancel(self) -> None:
        self.stage.cancel()


def _as_async(fn):
    async def call(result):
        fn(result)
    return call


def _engine(mode: str):
    if mode == "async":
        from .engines.aio import AsyncEngine
        return AsyncEngine
    from .engines.sync import ThreadEngine
    return ThreadEngine


def _closing_lines(handle: io.TextIOBase) -> Iterator[str]:
    with handle:
        yield from handle


def _stdin_lines() -> Iterator[str]:
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape", newline="") \
        if hasattr(sys.stdin, "buffer") else sys.stdin
    yield from stream


__all__ = ["Downloader", "download", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]
