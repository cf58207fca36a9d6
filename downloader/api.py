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

import json
import os
import random
import signal
import stat
import sys
import threading
import time
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
from .core.sources import Job, jobs_from_urls, parse_lines
from .core.tls import TlsSettings, decide_tls
from .errors import DiskError, UsageError
from .index import Index
from .intake import Intake, Source, lines_of
from .progress import LineReporter
from .transfer import Context

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit codes of the CLI: everything done; some URL failed or some input line was rejected;
usage error; interrupted."""
INSECURE_WARNING = ("warning: --insecure: server certificates are not verified, so anyone on the way can pose as "
                    "the server")
"""Said once at the start of a run with `insecure=True`."""


class Downloader:
    """A batch of downloads into one output folder (see the module docstring).

    Options are those of `Options.build` (mode, jobs, per_host, retries, timeout, headers,
    overwrite, segments, min_segment_size, max_speed, checksum, sums_file, manifest, post,
    ca_certificate, insecure, certificate, private_key, ...).
    `reporter` receives progress events (default: quiet lines on stderr); `report` is a path or a
    text stream for JSON lines, one object per URL; `keep_results=False` keeps only failures in
    memory, for very long lists. `cluster` runs the batch on Dask (downloader.cluster): "local",
    "local:N", a scheduler address, or a `distributed.Client` (left open).
    """

    def __init__(self, dest: str | os.PathLike = ".", *, reporter=None, report=None,
                 keep_results: bool = True, cluster=None, **options) -> None:
        self._cluster = None if cluster is None or isinstance(cluster, str) else _client_of(cluster)
        """A distributed.Client the caller gave (its address goes into the options)."""
        self.options = Options.build(dest, cluster=self._cluster.scheduler.address if self._cluster else cluster,
                                     **options)
        self.reporter = reporter if reporter is not None else LineReporter()
        self.report = report
        self.keep_results = keep_results
        self._sources: list[Source] = []
        self._last: Results | None = None
        self._interrupts = 0
        self._engine = None
        self._post = None
        self._scheduler: Scheduler | None = None
        self._intake: Intake | None = None

    # ------------------------------------------------------------------ building the batch
    def enqueue(self, *urls: str | Job) -> "Downloader":
        """Add URLs (or Job objects); each is checked when the batch runs."""
        self._sources.append(Source("argument", jobs_from_urls(list(urls))))
        return self

    def enqueue_lines(self, lines: Iterable[str], name: str = "input") -> "Downloader":
        """Add a plain or aria2-style URL list, read lazily (a file object, sys.stdin, a list)."""
        self._sources.append(Source(name, parse_lines(lines)))
        return self

    def enqueue_file(self, path: str | os.PathLike) -> "Downloader":
        """Add a URL file; `-` is stdin. A regular file is opened now (a missing or unreadable
        file is a UsageError); a named pipe when the batch reads it. Either is read as its lines
        arrive: from a pipe, a URL starts as soon as its line is in."""
        if str(path) == "-":
            return self.enqueue_lines(lines_of(sys.stdin.fileno()), "stdin")
        try:
            kind = os.stat(path).st_mode
            if stat.S_ISFIFO(kind):
                return self.enqueue_lines(_fifo_lines(path), str(path))
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise UsageError(f"cannot read URL file {path}: {exc.strerror or exc}") from exc
        try:
            head = os.pread(fd, 4096, 0)
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot read URL file {path}: {exc.strerror or exc}") from exc
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
            os.close(fd)
            raise UsageError(f"URL file {path} is not UTF-8 text"
                             + (" (it looks like UTF-16)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""))
        return self.enqueue_lines(lines_of(fd, close=True), str(path))

    # ------------------------------------------------------------------ running it
    def run(self) -> Results:
        """Download everything enqueued so far; returns the batch's Results. When the input holds
        no URL, nothing is created (not even the output folder) and `Results.nothing_in` names the
        sources that were read."""
        opts = self.options
        sums, post_tasks, proxies, tls = self._check()
        if not tls.verify:
            self.reporter.message(INSECURE_WARNING)
        sources, self._sources = self._sources, []
        results = Results(keep=self.keep_results)
        self._last = results
        recorder = _Recorder(results, self.reporter, self.report, opts.manifest)
        intake = self._intake = Intake(sources, opts, sums, self.reporter, recorder.record, results.reject)
        feed = Feed(intake.batches())
        scheduler = self._scheduler = Scheduler(feed, per_host=opts.per_host, connections=opts.jobs)
        self._interrupts = 0
        previous = _install_signals(self._on_signal)
        early = getattr(previous.get(signal.SIGINT), "pending", None)
        if early:  # a Ctrl-C while the program started (see __main__): the batch stops at once
            self._on_signal(early)
        feed.start()  # reading the input overlaps with opening the index and importing the engine
        index = post = None
        try:
            if not intake.wait_for_first():
                if not scheduler.stopping and feed.error is None:
                    results.nothing_in = ", ".join(dict.fromkeys(s.name for s in sources)) or "the input"
                return results
            index = _open_index(opts.dest)
            intake.open(index)
            post = self._post = None if opts.cluster else _post_stage(opts, post_tasks, recorder)
            ctx = Context(options=opts, index=index, scheduler=scheduler, reporter=self.reporter,
                          policy=RetryPolicy(attempts=opts.retries + 1, base=opts.retry_base, cap=opts.retry_cap),
                          rng=random.Random(opts.seed),
                          limiter=TokenBucket(opts.max_speed) if opts.max_speed else None, sums=sums,
                          want_sha256=opts.manifest is not None, proxies=proxies, logins=netrc_logins(),
                          tls=tls, signal_handler=self._on_signal)
            ctx.post_submit = post.submit if post else recorder.record
            ctx.post_submit_async = post.submit_async if post else None
            engine = self._engine = _cluster_engine(ctx, self._cluster or opts.cluster) if opts.cluster \
                else _engine(opts.mode)(ctx, opts.jobs)
            if scheduler.stopping:
                engine.stop()
            engine.run()
        finally:
            _install_signals(self._on_signal)  # the async engine's loop hands them back to the default
            intake.abort()
            if post is not None:
                post.close(cancel=scheduler.stopping)
            _restore_signals(previous)
            if index is not None:
                index.close()
                if index.warning:
                    self.reporter.message(index.warning)
            results.interrupted = scheduler.stopping
            results.checked, results.mismatched = intake.checked, intake.mismatched
            results.finished = time.monotonic()
            recorder.close()
            self._engine = self._post = self._scheduler = self._intake = None
        if isinstance(feed.error, DiskError):
            raise feed.error
        if feed.error is not None and not isinstance(feed.error, KeyboardInterrupt):
            raise UsageError(f"reading the URL list failed: {feed.error}")
        return results

    def _check(self) -> tuple[dict, tuple, Proxies, TlsSettings]:
        """Everything about the options that can be wrong, found before anything is opened:
        returns the --sums digests, the parsed --post tasks, the proxy and the TLS settings."""
        opts = self.options
        if opts.mode == "curl" and not _importable("pycurl"):
            raise UsageError("--mode curl needs pycurl, which is not installed: pip install 'downloader[curl]'")
        proxies = Proxies()
        if proxies.problem():
            raise UsageError(proxies.problem())
        try:
            tls = decide_tls(ca_certificate=opts.ca_certificate, insecure=opts.insecure,
                             certificate=opts.certificate, private_key=opts.private_key)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if opts.dest.exists() and not opts.dest.is_dir():
            raise UsageError(f"output folder {opts.dest} is a file, not a folder")
        if opts.checksum:
            try:
                parse_checksum(opts.checksum)
            except ValueError as exc:
                raise UsageError(f"--checksum: {exc}") from exc
        if opts.manifest is not None:
            folder = _nearest_existing(opts.manifest.parent)
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise UsageError(f"--manifest: cannot write in {opts.manifest.parent}")
        post_tasks = ()
        if opts.post:
            from .postprocess import parse_post_spec
            try:
                post_tasks = tuple(parse_post_spec(spec) for spec in opts.post)
            except ValueError as exc:
                raise UsageError(f"--post: {exc}") from exc
        return (_read_sums(opts.sums_file) if opts.sums_file else {}), post_tasks, proxies, tls

    def retry_failed(self) -> Results:
        """Run again the URLs that failed in the last run (resuming what they left on disk)."""
        if self._last is None:
            raise UsageError("retry_failed() before run()")
        failed = [Job(url=r.url, line=r.line) for r in self._last.failures]
        self._sources.append(Source("retry", iter(failed)))
        return self.run()

    def stop(self) -> None:
        """Ask a running batch to stop as the first Ctrl-C does (from another thread, or from a
        signal handler at any moment of the run, even before the engine is up): start nothing
        new, let chunks in flight land, drop post tasks not started yet."""
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._intake is not None:
            self._intake.abort()
        if self._engine is not None:
            self._engine.stop()
        if self._post is not None:
            self._post.cancel()

    # ------------------------------------------------------------------ internals
    def _on_signal(self, signum, frame=None) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            if signum == signal.SIGINT:
                self.reporter.message("interrupted: finishing the chunks in flight and saving state "
                                      "(Ctrl-C again to quit at once)")
            else:
                self.reporter.message(f"{signal.Signals(signum).name}: finishing the chunks in flight and "
                                      "saving state")
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


def download(urls: Iterable[str] | str, dest: str | os.PathLike = ".", *, mode: str | None = None, jobs: int = 16,
             **options) -> Results:
    """Download `urls` (a list of URLs, or one URL as a string) into `dest`; returns Results
    (ok, skipped, failed, interrupted, totals)."""
    if isinstance(urls, (str, Job)):
        urls = [urls]
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
        if result.status == FAILED:
            self.reporter.message(f"failed: {redact(result.url)}: {result.error}")
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
        if self._manifest_rows is not None and len(self.results):
            _write_manifest(self._manifest, self._manifest_rows)
        self.reporter.close()


def _write_manifest(manifest: Path, rows) -> None:
    """`HEX  NAME` lines, names relative to the manifest's folder, so `sha256sum -c` accepts it."""
    from .sink import file_digests
    rows.seek(0)
    base = manifest.resolve().parent
    tmp = manifest.with_name(manifest.name + ".tmp")
    try:
        base.mkdir(parents=True, exist_ok=True)
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


def _engine(mode: str):
    if mode == "async":
        from .engines.aio import AsyncEngine
        return AsyncEngine
    if mode == "curl":
        try:
            from .engines.curl import CurlEngine
        except ImportError as exc:
            raise UsageError(f"--mode curl needs pycurl, which cannot be imported ({exc}): "
                             "pip install 'downloader[curl]'") from exc
        return CurlEngine
    from .engines.sync import ThreadEngine
    return ThreadEngine


def _cluster_engine(ctx: Context, cluster):
    """The engine that runs the batch's jobs on a Dask cluster, in shards (post tasks go with them)."""
    try:
        from .cluster import ClusterEngine
    except ImportError as exc:
        raise UsageError(f"--cluster needs dask[distributed], which cannot be imported ({exc}): "
                         "pip install 'downloader[cluster]'") from exc
    return ClusterEngine(ctx, ctx.options.jobs, cluster=cluster)


def _client_of(cluster):
    """A `distributed.Client` given as `cluster=`, checked by its look (importing distributed here
    would cost every local run its start-up time)."""
    if not hasattr(cluster, "submit") or not hasattr(getattr(cluster, "scheduler", None), "address"):
        raise UsageError(f"cluster: {cluster!r} is not local, local:N, a scheduler address or a distributed.Client")
    return cluster


def _importable(module: str) -> bool:
    """Whether `module` can be found, without importing it (the engine is imported while the
    input is read; this only catches a missing one before anything is created)."""
    from importlib.util import find_spec
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a None entry in sys.modules
        return False


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (a folder not made yet is made by the run)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _open_index(dest: Path) -> Index:
    """The output folder (made when missing, once there is something to put in it) and its index."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {dest}: {exc.strerror or exc}") from exc
    try:
        return Index(dest)
    except DiskError as exc:
        raise UsageError(f"cannot write in output folder {dest}: {exc}") from exc


def _fifo_lines(path) -> Iterator[str]:
    """Lines of a named pipe, opened only when the batch reads it (opening waits for a writer)."""
    yield from lines_of(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)), close=True)


__all__ = ["Downloader", "download", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]
