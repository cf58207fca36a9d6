"""The same batch on a Dask cluster (`--cluster`): the client decides, workers move bytes.

    downloader get -i urls.txt -d /shared/out --cluster local:4           # a LocalCluster, 4 processes
    downloader get -i urls.txt -d /shared/out --cluster tcp://sched:8786  # a running scheduler

`ClusterEngine` is one more engine under the API. Everything above it is the local run's: the
intake reads the list as it arrives and claims URL-derived names in the SQLite index, the
scheduler hands out jobs, results go through `ctx.post_submit` to the report, the manifest and
the summary. The engine cuts the jobs into shards of `--shard-size`, keeps about two shards per
worker thread in flight (a million lines never become a million futures), and records each
shard's results as it comes back::

    intake -> Scheduler -> ClusterEngine --shard--> [worker] run_shard: the --mode engine
              (names, SQLite)   ^                          (async by default) over its jobs
                                 '--- list[Result] <--------'

A shard is a plain picklable call, `run_shard(number, jobs, spec)`: frozen jobs (URL, claimed
name, per-URL options, in one pickle) and a `ShardSpec` (frozen options, the folder's salt, --sums digests,
netrc logins) scattered once per run. No session, lock, open file or SQLite connection crosses
the wire. This module is the only one that imports dask or distributed, and nothing imports it
unless a cluster is asked for.

The output folder must be the same shared folder, at the same absolute path, on the client and
on every worker (NFS, a mounted volume; one machine's disk for `local`). The client writes a
marker file in it and every worker must read it back before any shard goes out.

Names. Workers never open the SQLite index (SQLite over a network file system is not safe), so
the client stays the one authority on names. URL-derived names are claimed by the intake before a
shard goes out, as in a local run. A name only a response can tell (Content-Disposition, a
redirect) is decided on the client too: the worker downloads such a file into a staging folder of
its own URL, `.downloader/cluster/RUN/staged/<digest of the URL>/NAME`, which no other URL can
write; when the shard's results come back, the client claims NAME in its index by the local
rules (the first to claim it gets it plain, the others `stem-<8 hex>.ext`) and renames the file
into place, in the same file system. Two workers on two machines can never both write one name,
and no name is written that the index does not hold. A partial file left in staging (a stop, a
failure) is moved into place with its state file, so a re-run resumes it.

A worker that dies (killed, out of memory, machine lost) costs only time. Each shard keeps a
journal in the shared folder (`RUN/shard-N.jsonl`, a line per file as it ends). Dask reschedules
the shard on another worker, which takes the files the journal has as done, looks for a state
file beside every other `.part` (resuming it), and fetches the rest. A `local` cluster allows
a shard `ALLOWED_FAILURES` worker deaths, then its URLs fail with one line that says so (a
running scheduler applies its own `distributed.scheduler.allowed-failures`, 3 by default).

Ctrl-C on the client sets a Dask `Event` named for the run: shards not started yet end at once
without a request, running shards stop the way a local run stops (their engine's `stop()`: what is
in flight lands, partial files stay as `.part`) and send back what they did; the run exits 130
and a re-run resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import queue
import random
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import dask
import distributed

from . import __version__
from .api import _engine, _post_stage
from .config import Options
from .core.digests import Expected
from .core.naming import PART_SUFFIX, STATE_DIR, STATE_SUFFIX
from .core.proxies import Proxies
from .core.ratelimit import TokenBucket
from .core.redirects import url_key
from .core.results import FAILED, OK, SKIPPED, Result
from .core.retry import RetryPolicy
from .core.schedule import Feed, Scheduler, Start
from .core.sources import Job
from .errors import UsageError
from .progress import LineReporter
from .transfer import Context

SHARDS_PER_THREAD = 2
"""Shards in flight per worker thread: one running, one waiting on the worker for its turn, so a
worker never idles while a finished shard travels back and the next one comes."""
SHARD_LINGER = 1.0
"""Seconds a partly filled shard waits for more of a slow input before it goes out anyway."""
ALLOWED_FAILURES = 2
"""Worker deaths a shard survives on a `local` cluster before its URLs fail (it runs at most 3 times)."""
STOP_POLL = 1.0
"""Seconds between a running shard's looks at the run's stop event (each one a long poll to the
scheduler, answered at once when the event is set)."""

LEAN = {"distributed.admin.low-level-log-length": 0}
"""Dask settings of the processes this module starts or connects. By default every batched
connection keeps its last thousand messages under a megabyte for debugging: a shard's message is
one, so a client (and a local scheduler) would keep a thousand shards' jobs, 0.7 KB a URL, growing
with the list. A running scheduler keeps its own: start it with DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH=0."""

log = logging.getLogger("downloader.cluster")


# ================================================================ the run's corner of the folder
@dataclass(frozen=True)
class RunFolder:
    """What one cluster run keeps in the shared output folder, under `.downloader/cluster/RUN/`:
    the marker every worker must see, the shards' journals, and the staging folders of files
    named by their response. The client removes it at the end of the run."""

    dest: str
    """The output folder, absolute, as the client sees it (and every worker must)."""
    run: str

    @property
    def relative_root(self) -> str:
        return f"{STATE_DIR}/cluster/{self.run}"

    @property
    def root(self) -> str:
        return os.path.join(self.dest, self.relative_root)

    @property
    def marker(self) -> str:
        return os.path.join(self.root, "shared")

    def journal(self, number: int) -> str:
        return os.path.join(self.root, f"shard-{number}.jsonl")

    def staged_name(self, key: str, name: str) -> str:
        """Where a worker downloads the file `name` learnt from a response for the URL kept as
        `key`, relative to the output folder: a folder of that URL's own."""
        return f"{self.relative_root}/staged/{_digest(key)}/{name}"

    def staged_folder(self, key: str) -> str:
        return os.path.join(self.root, "staged", _digest(key))

    def unstaged(self, relative: str) -> str | None:
        """The name a staged path stands for ("isos/a.iso" for RUN/staged/<digest>/isos/a.iso),
        None for a path outside staging."""
        prefix = f"{self.relative_root}/staged/"
        if not relative.startswith(prefix):
            return None
        return relative[len(prefix):].partition("/")[2] or None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class ShardSpec:
    """What every shard of a run shares, scattered to the workers once per run."""

    options: Options
    """The batch's options as workers use them: the output folder absolute, no cluster, the
    --max-speed share of one shard, no manifest or --sums file (their effect travels below)."""
    salt: bytes
    """The folder's salt, so workers key URLs in state files as the index does (Index.key)."""
    folder: RunFolder
    stop_event: str
    """Name of the Dask Event the client sets on Ctrl-C."""
    sums: dict[str, Expected]
    """Digests from --sums, by file name."""
    logins: dict
    """The user's netrc logins, read on the client (workers may have no such file)."""
    want_sha256: bool
    """Compute every file's sha256 (for --manifest)."""


# ================================================================ the worker's side
class ShardIndex:
    """The index as a transfer on a worker sees it, without SQLite: `key` from the folder's salt,
    `claim` (a name only the response tells) answered with a staging path of the URL's own (the
    client claims the name itself; see the module docstring), completions carried back in the
    Results rather than written here."""

    orphans = False
    warning = None

    def __init__(self, salt: bytes, folder: RunFolder) -> None:
        self._salt = salt
        self._folder = folder

    def key(self, url: str) -> str:
        return url_key(url, self._salt)

    def claim(self, url: str, name: str) -> str:
        return self._folder.staged_name(self.key(url), name)

    def lookup(self, url: str) -> None:
        return None  # every job of a shard comes with its name claimed

    def complete(self, url: str, size: int | None, sha256: str | None) -> None:
        pass  # the Result says it; the client records it

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Journal:
    """A shard's results so far, a JSON line per file as it ends (and again once its post tasks
    ran), in the shared folder: what a retry of the shard after a worker death takes as done.

    Opening it with O_EXCL tells a first attempt (which creates it) from a retry (which finds it);
    a line torn by the death is skipped, and its file is simply fetched again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.retried = False
        self._fd: int | None = None
        self._lock = threading.Lock()

    def open(self) -> dict[str, Result]:
        """Start writing; returns what an earlier attempt recorded, by URL (empty the first time)."""
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            return {}
        except FileExistsError:
            self.retried = True
        earlier = self.read(self.path)
        self._fd = os.open(self.path, flags)
        return earlier

    @staticmethod
    def read(path: str) -> dict[str, Result]:
        found: dict[str, Result] = {}
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as lines:
                for line in lines:
                    try:
                        result = Result(**json.loads(line))
                    except (ValueError, TypeError):
                        continue
                    found[result.url] = result
        except OSError:
            pass
        return found

    def write(self, result: Result) -> None:
        # vars(), not asdict(): a Result's fields are plain JSON values already, and asdict's
        # deep copy cost a tenth of a worker's time on tiny files
        line = (json.dumps(vars(result)) + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class WorkerLog(LineReporter):
    """The reporter of a shard: what a local run would print goes to the worker's logging (the
    "downloader.cluster" logger, silent unless the worker configures it); the client tells the
    user what matters, from the Results."""

    def message(self, text: str) -> None:
        log.info(text)

    def info(self, text: str) -> None:
        log.debug(text)


class ShardRecorder:
    """Where a shard's finished files go: the journal, then (after their post tasks) the list of
    Results the shard returns. `landed` is the engine's `post_submit`."""

    def __init__(self, journal: Journal, post_tasks: bool) -> None:
        self.reporter = WorkerLog()
        self.results: list[Result] = []
        self.post = None
        self._journal = journal
        self._post_tasks = post_tasks
        self._lock = threading.Lock()

    def landed(self, result: Result) -> None:
        """A file ended in the engine: journal it (a retry will not fetch it again), then its post
        tasks, or straight to the results."""
        self._journal.write(result)
        (self.post.submit if self.post is not None else self.record)(result)

    async def landed_async(self, result: Result) -> None:
        self._journal.write(result)
        if self.post is not None:
            await self.post.submit_async(result)
        else:
            self.record(result)

    def record(self, result: Result) -> None:
        if self._post_tasks and result.post:
            self._journal.write(result)
        with self._lock:
            self.results.append(result)


class ShardJobs:
    """A shard's jobs as they travel: one pickle, opaque to Dask. Given a list of a thousand Jobs,
    Dask walks it looking for keys of its own, and its scheduler unpickles it and pickles it again
    for the worker: measured, 9 us a URL of the client's CPU (with a local scheduler) against 2."""

    def __init__(self, jobs: list[Job]) -> None:
        self.blob = pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL)

    def jobs(self) -> list[Job]:
        return pickle.loads(self.blob)


class ShardResults(list):
    """What a shard sends back: its Results, in a list Dask pickles whole. A plain list it would
    serialize item by item, a pickle each: four times the time, on the worker and on the client,
    and twice the bytes, for a thousand tiny files."""


def run_shard(number: int, shard: ShardJobs, spec: ShardSpec) -> ShardResults:
    """Download a shard's jobs on this worker, with the engine `spec.options.mode` names (async by
    default) and its post tasks; returns a Result per job that ended (none for jobs a stop kept
    from starting). A worker that cannot work here (it cannot see the output folder, its proxy
    settings are wrong) fails every job with one line that says why."""
    folder = spec.folder
    jobs = shard.jobs()
    proxies = Proxies()
    problem = proxies.problem()
    if not os.path.isfile(folder.marker):
        problem = f"cannot see {folder.dest} (the output folder must be shared by every worker)"
    if problem:
        return ShardResults(Result(url=job.url, status=FAILED, error=f"worker {_worker_address()}: {problem}",
                                   line=job.line) for job in jobs)
    stop = distributed.Event(spec.stop_event)
    journal = Journal(folder.journal(number))
    earlier = journal.open()
    try:
        if stop.is_set():
            return ShardResults(earlier.values())
        opts = spec.options
        if opts.post_executor == "process" and multiprocessing.current_process().daemon:
            opts = replace(opts, post_executor="thread")  # a daemonic worker may not start processes
        todo = [job for job in jobs if job.url not in earlier]
        if journal.retried:  # the worker before may have left a .part for any of them
            todo = [replace(job, resume=True) for job in todo]
        unfinished_post = [result for result in earlier.values() if opts.post and result.status == OK
                           and not result.post]
        if not todo and not unfinished_post:
            return ShardResults(earlier.values())
        recorder = ShardRecorder(journal, bool(opts.post))
        done = _run_engine(todo, opts, spec, proxies, recorder, stop, unfinished_post)
        return ShardResults([result for result in earlier.values() if result.url not in done] + recorder.results)
    finally:
        journal.close()


def _run_engine(jobs: list[Job], opts: Options, spec: ShardSpec, proxies: Proxies, recorder: ShardRecorder,
                stop: distributed.Event, unfinished_post: list[Result]) -> set[str]:
    """Run the engine over `jobs` as a local batch would (see api.Downloader.run); returns the URLs
    of `unfinished_post`, whose post tasks ran again here."""
    from .postprocess import parse_post_spec
    post = recorder.post = _post_stage(opts, tuple(parse_post_spec(s) for s in opts.post), recorder)
    for result in unfinished_post:
        post.submit(result)
    feed = Feed(iter([jobs]) if jobs else iter(()))
    scheduler = Scheduler(feed, per_host=opts.per_host, connections=opts.jobs)
    ctx = Context(options=opts, index=ShardIndex(spec.salt, spec.folder), scheduler=scheduler,
                  reporter=recorder.reporter,
                  policy=RetryPolicy(attempts=opts.retries + 1, base=opts.retry_base, cap=opts.retry_cap),
                  rng=random.Random(opts.seed), limiter=TokenBucket(opts.max_speed) if opts.max_speed else None,
                  sums=spec.sums, want_sha256=spec.want_sha256, proxies=proxies, logins=spec.logins)
    ctx.post_submit = recorder.landed
    ctx.post_submit_async = recorder.landed_async
    engine = _engine(opts.mode)(ctx, opts.jobs)
    watch = StopWatch(stop, engine, post)
    feed.start()
    watch.start()
    try:
        engine.run()
    finally:
        watch.close()
        if post is not None:
            post.close(cancel=scheduler.stopping)
    return {result.url for result in unfinished_post}


class StopWatch(threading.Thread):
    """Watches the run's stop event while a shard runs, and stops its engine (and drops its post
    tasks not started) as a first Ctrl-C stops a local run."""

    def __init__(self, event: distributed.Event, engine, post) -> None:
        super().__init__(name="shard-stop", daemon=True)
        self._event, self._engine, self._post = event, engine, post
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                if not self._event.wait(timeout=STOP_POLL):
                    continue
            except Exception:  # the scheduler went away: the shard can only finish
                return
            if not self._done.is_set():
                self._engine.stop()
                if self._post is not None:
                    self._post.cancel()
            return

    def close(self) -> None:
        self._done.set()


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:
        return "(unknown)"


def worker_problem(folder: RunFolder, token: str, mode: str, version: str) -> str | None:
    """Run on every worker before any shard goes out: why this worker cannot take shards (it
    cannot read the client's marker file, runs another version, lacks the --mode engine), or None."""
    try:
        with open(folder.marker, encoding="utf-8") as fh:
            seen = fh.read()
    except OSError:
        seen = None
    if seen != token:
        return f"cannot see {folder.dest} (the output folder must be shared by every worker)"
    if version != __version__:
        return f"runs downloader {__version__}, the client {version} (install the same version everywhere)"
    try:
        _engine(mode)
    except UsageError as exc:
        return str(exc)
    return None


# ================================================================ the client's side
@contextlib.contextmanager
def connect(cluster, timeout: float) -> Iterator[distributed.Client]:
    """A Client for `cluster`: a `distributed.Client` given by the caller (left open), a
    LocalCluster started for "local"/"local:N" (shut down at the end), or the scheduler at an
    address. An unreachable scheduler, or one without workers, is a UsageError."""
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if cluster.startswith("local"):
        try:
            local = _local_cluster(int(cluster.partition(":")[2] or 0) or os.cpu_count() or 1)
        except (OSError, RuntimeError) as exc:  # no port, no process (a script without a __main__ guard)
            raise UsageError(f"--cluster {cluster}: cannot start a local Dask cluster ({exc})") from None
        try:
            with dask.config.set(LEAN), distributed.Client(local) as client:
                yield client
        finally:
            local.close()
        return
    try:
        with dask.config.set(LEAN):
            client = distributed.Client(cluster, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--cluster: cannot reach the Dask scheduler at {cluster} ({exc})") from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            raise UsageError(f"--cluster: the Dask scheduler at {cluster} has no worker "
                             f"(waited {timeout:g} s)") from None
        yield client
    finally:
        client.close()


def _local_cluster(workers: int) -> distributed.LocalCluster:
    """N worker processes of one thread on this machine, on loopback. They are started with SIGINT
    ignored (the disposition survives their start), so a terminal's Ctrl-C, which reaches the
    whole process group, never kills a worker mid-shard: the client decides what it means. Not
    daemonic, so a worker can run --post tasks on a process pool."""
    settings = {**LEAN, "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                "distributed.worker.daemon": False}
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with dask.config.set(settings):
            return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address="127.0.0.1:0")
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


@dataclass
class ShardCutter:
    """When the jobs gathered so far go out as a shard. A decision, no I/O: a full shard goes at
    once; a part of one goes when nothing more is ready and waiting cannot help (the input ended,
    or a worker thread has nothing to do), or once it has waited `linger` seconds for a slow
    input."""

    size: int
    linger: float = SHARD_LINGER

    def due(self, gathered: int, waited: float, more_ready: bool, input_ended: bool, idle_threads: bool) -> bool:
        if gathered >= self.size:
            return True
        if gathered == 0 or more_ready:
            return False
        return input_ended or idle_threads or waited >= self.linger


_WAKE, _STOP = object(), object()


class ClusterEngine:
    """Runs a batch's jobs on a Dask cluster, in shards (see the module docstring). The engine
    interface of the others: `ClusterEngine(ctx, jobs, cluster=...)`, `run()`, `stop()`."""

    def __init__(self, ctx: Context, jobs: int, cluster) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.cluster = cluster
        opts = ctx.options
        self.cutter = ShardCutter(opts.shard_size)
        self._dest = str(opts.dest)
        self._folder = RunFolder(os.path.abspath(opts.dest), uuid.uuid4().hex[:12])
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._wake_due = False

    def stop(self) -> None:
        """First Ctrl-C: start no shard, tell running shards to stop, collect what they did. Safe
        from a signal handler: the run's own thread does the talking to the cluster."""
        self._stopping = True
        self._events.put(_STOP)

    def _wake(self) -> None:
        if not self._wake_due:
            self._wake_due = True
            self._events.put(_WAKE)

    def run(self) -> None:
        if self._stopping:
            return
        with connect(self.cluster, self.ctx.options.timeout) as client:
            if self._stopping:  # a Ctrl-C while connecting
                return
            threads = sum(client.nthreads().values())
            os.makedirs(self._folder.root, exist_ok=True)
            stop_event = distributed.Event(f"downloader-stop-{self._folder.run}", client=client)
            try:
                self._check_workers(client)
                self._announce(client)
                spec = client.scatter(self._spec(stop_event.name, threads), broadcast=True, hash=False)
                self._drive(client, spec, threads, stop_event)
            finally:
                with contextlib.suppress(Exception):  # the scheduler may be gone
                    stop_event.set()  # ends the long polls of shards' stop watches still waiting
                    stop_event.clear()
                shutil.rmtree(self._folder.root, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self._folder.root))

    def _announce(self, client: distributed.Client) -> None:
        """A line naming the Dask dashboard, when there is one (a LocalCluster has one only where
        bokeh is installed; of a running scheduler's, the scheduler knows)."""
        from importlib.util import find_spec
        local = not isinstance(self.cluster, distributed.Client) and self.cluster.startswith("local")
        link = client.dashboard_link
        if link and not (local and find_spec("bokeh") is None):
            self.ctx.reporter.message(f"dask dashboard: {link}")

    def _check_workers(self, client: distributed.Client) -> None:
        """The marker file every worker must read before it is given work; the first worker
        that cannot (or lacks downloader, or its --mode engine) is a UsageError naming it."""
        token = uuid.uuid4().hex
        with open(self._folder.marker, "w", encoding="utf-8") as fh:
            fh.write(token)
        answers = client.run(worker_problem, self._folder, token, self.ctx.options.mode, __version__,
                             on_error="return")
        for address, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                answer = f"cannot run downloader ({type(answer).__name__}: {answer}); install downloader[cluster] " \
                         "on every worker"
            if answer:
                raise UsageError(f"worker {address}: {answer}")

    def _spec(self, stop_event: str, threads: int) -> ShardSpec:
        opts = self.ctx.options
        share = max(1, opts.max_speed // max(1, threads)) if opts.max_speed else None
        worker_options = replace(opts, dest=Path(self._folder.dest), cluster=None, max_speed=share, manifest=None,
                                 sums_file=None)
        return ShardSpec(options=worker_options, salt=self.ctx.index.salt, folder=self._folder,
                         stop_event=stop_event, sums=self.ctx.sums, logins=self.ctx.logins,
                         want_sha256=self.ctx.want_sha256)

    # ---------------------------------------------------------------- the loop
    def _drive(self, client: distributed.Client, spec, threads: int, stop_event: distributed.Event) -> None:
        """Gather jobs into shards, keep SHARDS_PER_THREAD per worker thread in flight, record
        what comes back, until the scheduler says everything is done (or a stop drains it)."""
        scheduler = self.ctx.scheduler
        scheduler.wake = self._wake
        numbers = itertools.count()
        flying: dict[distributed.Future, tuple[int, list[Job]]] = {}
        gathered: list[Job] = []
        since = 0.0
        told = False
        try:
            while True:
                if self._stopping and not told:
                    stop_event.set()
                    told, gathered = True, []
                polled = None
                while not self._stopping and len(gathered) < self.cutter.size:
                    polled = scheduler.poll()
                    if not isinstance(polled, Start):
                        break
                    scheduler.connection_done(polled.host)  # the client holds no connection
                    if not gathered:
                        since = time.monotonic()
                    gathered.append(polled.job)
                waited = time.monotonic() - since
                if not self._stopping and len(flying) < SHARDS_PER_THREAD * threads and self.cutter.due(
                        len(gathered), waited, more_ready=isinstance(polled, Start) or scheduler.feed.ready() > 0,
                        input_ended=scheduler.feed.exhausted, idle_threads=len(flying) < threads):
                    number = next(numbers)
                    future = client.submit(run_shard, number, ShardJobs(gathered), spec, retries=0,
                                           key=f"downloader-shard-{self._folder.run}-{number}")
                    flying[future] = (number, gathered)
                    future.add_done_callback(self._events.put)
                    gathered = []
                    continue
                if not flying and (polled is None or self._stopping):
                    return
                timeout = max(0.01, self.cutter.linger - waited) if gathered else None
                self._wait(timeout, flying)
        finally:
            scheduler.wake = lambda: None

    def _wait(self, timeout: float | None, flying: dict) -> None:
        """Block until something happens (a shard back, new jobs, a stop, or `timeout`), then
        record every shard that came back."""
        try:
            items = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._events.get_nowait())
        self._wake_due = False
        for item in items:
            if isinstance(item, distributed.Future) and item in flying:
                number, jobs = flying.pop(item)
                self._collect(item, number, jobs)

    def _collect(self, future: distributed.Future, number: int, jobs: list[Job]) -> None:
        """Record a shard's results; when the shard failed, what its journal holds, and a failure
        naming the reason for each other URL."""
        error = None
        try:
            results = future.result()
        except Exception as exc:  # KilledWorker, a cancelled future (a lost scheduler), an error in the shard
            results, error = list(Journal.read(self._folder.journal(number)).values()), _shard_error(number, exc)
        jobs_by_url = {job.url: job for job in jobs}
        for result in results:
            job = jobs_by_url.pop(result.url, None)
            if job is not None:
                self._record(result, job)
        for job in jobs_by_url.values():
            if error is not None:
                self._record(Result(url=job.url, status=FAILED, error=error, line=job.line), job)
            else:
                self.ctx.scheduler.job_done()  # never started: a stop came first
        with contextlib.suppress(OSError):
            os.unlink(self._folder.journal(number))

    def _record(self, result: Result, job: Job) -> None:
        """One result from a worker, as a local engine would have recorded it."""
        ctx = self.ctx
        result = self._settle(result)
        if job.replace and result.status == OK:
            ctx.reporter.message(f"replaced {job.target}: {job.replace}")
        for task in result.post:
            if task.get("error"):
                ctx.reporter.message(f"post-processing failed: {task['error']}")
        ctx.reporter.file_progress(None, result.bytes)
        ctx.post_submit(result)
        ctx.scheduler.job_done()

    # ---------------------------------------------------------------- paths and names
    def _settle(self, result: Result) -> Result:
        """Put a worker's result where a local run would have it: its path as the user gave the
        folder, a name learnt from a response claimed in the index (and the file moved there from
        staging), the completion recorded in the index."""
        relative = self._relative(result.path)
        wanted = self._folder.unstaged(relative) if relative else None
        if wanted is None and result.status not in (OK, SKIPPED):
            wanted = self._staged_leftover(result.url)
        if wanted is not None:
            relative, result = self._unstage(result, wanted)
        if result.status in (OK, SKIPPED):
            self.ctx.index.complete(result.url, result.size, result.sha256 if result.status == OK else None)
        result.path = (relative if self._dest == "." else os.path.join(self._dest, relative)) \
            if relative and result.status in (OK, SKIPPED) else None
        return result

    def _relative(self, path: str | None) -> str | None:
        prefix = self._folder.dest + os.sep
        return path[len(prefix):] if path and path.startswith(prefix) else path

    def _staged_leftover(self, url: str) -> str | None:
        """The name of a partial file a failed or stopped job left in staging, if any."""
        folder = self._folder.staged_folder(self.ctx.index.key(url))
        if not os.path.isdir(folder):
            return None
        for where, _, files in os.walk(folder):
            for name in files:
                if name.endswith(PART_SUFFIX):
                    return os.path.relpath(os.path.join(where, name[:-len(PART_SUFFIX)]), folder)
        return None

    def _unstage(self, result: Result, wanted: str) -> tuple[str | None, Result]:
        """Claim `wanted` for the result's URL in the index (a local run's rules decide the name)
        and move the file, or its `.part` and state, there from staging."""
        index, overwrite = self.ctx.index, self.ctx.options.overwrite
        name = index.claim(result.url, wanted)
        staging = self._folder.staged_folder(index.key(result.url))
        source, target = os.path.join(staging, wanted), os.path.join(self._folder.dest, name)
        try:
            if result.status in (OK, SKIPPED):
                if not overwrite and os.path.isfile(target):  # as locally: a file under that name is there
                    result = replace(result, status=SKIPPED, size=os.stat(target).st_size, sha256=None)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(source, target)
                    result = replace(result, status=OK)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                for suffix in (PART_SUFFIX, STATE_SUFFIX):
                    if os.path.exists(source + suffix):
                        os.replace(source + suffix, target + suffix)
        except OSError as exc:
            result = replace(result, status=FAILED, error=f"cannot move {wanted} into {self._dest}: "
                                                          f"{exc.strerror or exc}")
        shutil.rmtree(staging, ignore_errors=True)
        return name, result


def _shard_error(number: int, exc: BaseException) -> str:
    """One line for the URLs of a shard that never came back."""
    if isinstance(exc, distributed.KilledWorker):
        return (f"shard {number}: every worker that ran it died ({exc.allowed_failures + 1} in all, the last "
                f"{getattr(exc.last_worker, 'address', exc.last_worker)}); see the worker logs")
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"shard {number} failed on the cluster: {type(exc).__name__}: {detail}"[:500]


__all__ = ["ClusterEngine", "Journal", "RunFolder", "ShardCutter", "ShardIndex", "ShardJobs", "ShardResults",
           "ShardSpec", "connect", "run_shard", "worker_problem"]
