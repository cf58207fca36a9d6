"""The CPU stage: digests and CPU-heavy work on each file as soon as it lands.

Downloads are I/O-bound and run on threads or an event loop. What comes after (hashing,
decoding, parsing) is CPU-bound, and under the GIL only one thread at a time runs Python
bytecode, so by default the stage runs its tasks on a process pool, fed while downloads go on::

    tasks = tuple(parse_post_spec(spec) for spec in ("sha256", "fib:27"))
    with PostStage(tasks, on_done=record) as stage:
        for path in landed_files():
            stage.submit(path, key=path)   # blocks while 2 * workers files are still in work

Which executor: "process" for pure-Python work such as `fib`; "thread" is enough for digests
alone (hashlib releases the GIL while it hashes large buffers) and starts no interpreters;
"inline" runs everything in the caller, for debugging.

Every file ends as a list of `TaskResult`, one per task; a failure is data, not an exception.
`run_task` and `run_tasks` are top-level so a process pool can pickle them by name. Every worker
process imports this module (and with it the `downloader` package), so it stays
standard-library-only.
"""
from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from multiprocessing.context import BaseContext

__all__ = ["BLOCK_SIZE", "DIGESTS", "EXECUTORS", "FIB_MAX", "PostStage", "PostTask", "TaskResult", "fib",
           "parse_post_spec", "run_task", "run_tasks", "worker_context"]

DIGESTS = ("sha256", "md5", "blake2b")
"""The file digests a task can compute, by hashlib name."""
FIB_MAX = 40
"""The largest N `fib:N` takes: fib(40) keeps a core busy for about 12 s."""
EXECUTORS = ("process", "thread", "inline")
"""Where a `PostStage` can run its tasks."""
BLOCK_SIZE = 1024 * 1024
"""Digests read files in blocks this big, so memory does not grow with file size."""

_SPEC = re.compile(r"(sha256|md5|blake2b|fib)(?::(\d+))?", re.ASCII)


@dataclass(frozen=True)
class PostTask:
    """One thing to do with every file, as a `--post` spec names it: `PostTask("fib", 27)`."""

    kind: str
    """"sha256", "md5", "blake2b" or "fib"."""
    arg: int | None = None
    """N for "fib", from 0 to FIB_MAX; None for a digest."""

    def __post_init__(self) -> None:
        if self.kind == "fib":
            valid = isinstance(self.arg, int) and 0 <= self.arg <= FIB_MAX
        else:
            valid = self.kind in DIGESTS and self.arg is None
        if not valid:
            raise _bad_spec(self.name)

    @property
    def name(self) -> str:
        """The spec that gives this task back: "sha256", "fib:27"."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"


def parse_post_spec(spec: str) -> PostTask:
    """The task a `--post` spec names: `parse_post_spec("fib:27") == PostTask("fib", 27)`.

    Case and surrounding blanks do not matter. Anything else raises ValueError, with one line
    that names the spec and lists the valid forms.
    """
    match = _SPEC.fullmatch(spec.strip().lower())
    if match is None:
        raise _bad_spec(spec)
    kind, arg = match.groups()
    try:
        return PostTask(kind, None if arg is None else int(arg))
    except ValueError:
        raise _bad_spec(spec) from None


def _bad_spec(spec: str) -> ValueError:
    return ValueError(f"post task {spec!r} is not one of sha256, md5, blake2b, fib:N (N from 0 to {FIB_MAX})")


@dataclass(frozen=True)
class TaskResult:
    """How one task went on one file. `dataclasses.asdict` turns it into JSON-ready data."""

    task: str
    """The task's name: "sha256", "fib:27"."""
    value: str | int | None
    """A hex digest, a Fibonacci number, or None when the task failed."""
    cpu_seconds: float
    """CPU time the task used, measured in the worker on the thread that ran it."""
    wall_seconds: float
    pid: int
    """The process that ran the task: the caller's own pid for "thread" and "inline", 0 when the
    worker died before it could say."""
    error: str | None = None
    """One line, e.g. "sha256 on a.bin: file vanished"; None when the task succeeded."""


def fib(n: int) -> int:
    """The n-th Fibonacci number, computed naively on purpose: about 1.6**n pure-Python calls that
    hold the GIL throughout, standing in for CPU-bound decoding or parsing."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def run_task(task: PostTask, path: str) -> TaskResult:
    """Run one task on one file and say how it went; a failure becomes `TaskResult.error`.

    CPU time is this thread's (`time.thread_time`), not the process's: under the thread executor
    or inline, the process is also running downloads and other tasks, and `process_time` would
    charge their work to this task.
    """
    cpu_start, wall_start = time.thread_time(), time.perf_counter()
    try:
        value, error = _compute(task, path), None
    except Exception as exc:
        value, error = None, _error_line(task.name, path, _describe(exc))
    return TaskResult(task.name, value, time.thread_time() - cpu_start, time.perf_counter() - wall_start,
                      os.getpid(), error)


def run_tasks(tasks: tuple[PostTask, ...], path: str) -> list[TaskResult]:
    """Run every task on one file, in order: one pool submission per file, so a file costs one
    round trip to a worker however many tasks it has."""
    return [run_task(task, path) for task in tasks]


def _compute(task: PostTask, path: str) -> str | int:
    return fib(task.arg) if task.kind == "fib" else _hex_digest(path, task.kind)


def _hex_digest(path: str, algorithm: str) -> str:
    """The hex digest of a file, read BLOCK_SIZE at a time into one reused buffer."""
    # A checksum, not a security measure: without the flag, FIPS-mode builds refuse md5.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while size := file.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _describe(exc: BaseException) -> str:
    """What went wrong, in one line a user can read."""
    if isinstance(exc, FileNotFoundError):
        return "file vanished"
    if isinstance(exc, BrokenProcessPool):
        return "worker process died"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    detail = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _error_line(task_name: str, path: str, reason: str) -> str:
    return f"{task_name} on {os.path.basename(path)}: {reason}"


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the downloader: a terminal's Ctrl-C reaches the whole process
    group, and a worker must not die mid-task with a traceback; the downloader decides (cancel the
    queue, or end the workers on a second Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_context() -> BaseContext:
    """The multiprocessing context of this package's process pools: forkserver, else spawn.

    Not fork: the downloader starts its pool from a process that already runs threads (download
    workers, the event loop's resolver, the progress monitor), and fork copies only the calling
    thread, with every lock another thread held at that instant (logging, stdio, malloc) locked
    for ever in the child, where the worker deadlocks on it. Python 3.12 warns about exactly this.
    forkserver forks each worker from a small single-threaded server started once per program,
    sparing it the interpreter start that spawn pays per worker; spawn is the fallback where
    forkserver does not exist (Windows). Time until a pool of two is ready, measured on 2 cores:
    fork 5-10 ms, forkserver 90 ms (130 ms for the first pool, which starts the server), spawn
    115 ms (145 ms), most of it each worker importing this package. Either way, workers import
    the program's main module too, so a script with a process stage needs the usual
    `if __name__ == "__main__":` guard.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    _start_forkserver_deaf_to_sigint()
    return multiprocessing.get_context("forkserver")


def _start_forkserver_deaf_to_sigint() -> None:
    """Start the fork server (once per program) while SIGINT is ignored. An ignored signal stays
    ignored across fork and exec, and Python keeps it so at start-up, so the server and every
    worker it forks ignore SIGINT from their first instruction: a terminal's Ctrl-C, which reaches
    the whole process group, can never kill a worker mid-start or mid-task with a traceback; the
    downloader decides what a Ctrl-C means (cancel the queue, or end the workers on the second).
    A pool initializer setting SIG_IGN leaves a window between fork and initializer (seen in
    tests), and a blocked signal mask does not survive the server's exec."""
    from multiprocessing import forkserver
    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, old)


class _InlineExecutor(Executor):
    """An Executor that runs each call in the submitting thread and hands back a finished future,
    so the future's callbacks run before `submit` returns."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class PostStage:
    """Runs the tasks for each completed file on an executor, with back-pressure.

    `submit` hands a file over and returns at once while fewer than `max_pending` files are in
    work; past that it blocks, so a fast network cannot pile up files the CPU has not reached:
    downloads slow to the stage's pace and memory stays flat. `submit_async` is its twin for
    coroutines.

    When a file is done, `on_done(path, key, results)` runs on whichever thread finished it (the
    pool's result thread, a worker thread, or the caller for "inline"). Keep it quick, and call
    neither `submit` nor `close` from it: they may wait for a slot that only its return frees. An
    exception it raises is logged by concurrent.futures and the file still counts as done. A
    file's slot is freed only after `on_done` returns, so once `close` returns, every callback has run.

    A worker process that dies (killed, out of memory) breaks its pool: every file in that pool
    gets one error result per task ("worker process died"), and the next submission starts a
    fresh pool.
    """

    def __init__(self, tasks: tuple[PostTask, ...], executor: str = "process", workers: int | None = None,
                 max_pending: int | None = None,
                 on_done: Callable[[str, object, list[TaskResult]], None] | None = None) -> None:
        """`workers` defaults to the CPU count, `max_pending` (files submitted and not yet done)
        to twice the workers: enough to keep every worker fed while the next file is handed over."""
        if executor not in EXECUTORS:
            raise ValueError(f"post executor {executor!r} is not one of {', '.join(EXECUTORS)}")
        self._tasks = tuple(tasks)
        self._kind = executor
        self._workers = (os.cpu_count() or 1) if workers is None else workers
        self._max_pending = 2 * self._workers if max_pending is None else max_pending
        if self._workers < 1 or self._max_pending < 1:
            raise ValueError(f"post stage needs at least 1 worker and 1 pending file, "
                             f"not workers={self._workers}, max_pending={self._max_pending}")
        self._on_done = on_done
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._pending = 0
        self._completed = 0
        self._closed = False
        self._executor = self._new_executor()

    def submit(self, path: str, key: object) -> None:
        """Queue `path` for the tasks, blocking while `max_pending` files are in work;
        `on_done(path, key, results)` follows once they have run."""
        with self._slot_freed:
            self._slot_freed.wait_for(self._take_slot)
        self._dispatch(path, key)

    async def submit_async(self, path: str, key: object) -> None:
        """Queue `path` for the tasks, waiting on the event loop while `max_pending` files are in work.

        The lock taken here only guards a few counters and is never held while anyone waits, so
        the loop never blocks on it. Two things do hold the loop up: under the "inline" executor the
        tasks run right here, on the loop's thread; and the first files sent to a process pool start
        its workers (measured: 60 ms for the program's first pool, which starts the fork server,
        then a few ms per worker).
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._take_slot():
                    break
                woken = loop.create_future()
                self._async_waiters.append((loop, woken))
            await woken
        self._dispatch(path, key)

    def pending(self) -> int:
        """Files submitted whose `on_done` has not returned yet."""
        return self._pending

    def completed(self) -> int:
        """Files done, failed ones included."""
        return self._completed

    def close(self, *, cancel: bool = False) -> None:
        """Wait until every submitted file is done and reported, then shut the executor down.

        Calling it again does nothing; submitting afterwards raises RuntimeError. With `cancel`,
        files no worker has started yet are dropped (each still reaches `on_done`, with
        "cancelled" errors): leaving a `with` block on an exception does that, so Ctrl-C does not
        wait for a queue of CPU work.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake_waiters()
        if cancel:
            self.cancel()
        with self._slot_freed:
            self._slot_freed.wait_for(lambda: self._pending == 0)
        cancelling = self.__dict__.get("_cancelling")
        if cancelling is not None:
            cancelling.join()  # a pool's shutdown must not run twice at once (both close its queues)
        self._executor.shutdown()

    def __enter__(self) -> PostStage:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(cancel=exc_type is not None)

    def cancel(self) -> None:
        """Drop the files no worker has started yet (each still reaches `on_done`, "cancelled");
        tasks already running finish. Safe to call from a signal handler while `close` waits.

        The shutdown runs on a thread of its own, and waits: a process pool's workers end only
        when its manager thread has sent them their sentinels, and `shutdown(wait=False)` forgets
        that thread, so a later `shutdown()` in `close` would return at once; a program that then
        ends with `os._exit` left workers blocked on their queue for ever, holding its stderr
        (seen under load). Off the signal handler, the cancelled files' `on_done` callbacks do
        not run inside it either. `close` waits for that thread before its own shutdown."""
        mine = threading.Thread(target=self._executor.shutdown, kwargs={"cancel_futures": True},
                                name="post-cancel", daemon=True)
        if self.__dict__.setdefault("_cancelling", mine) is mine:  # once, even from a signal handler
            mine.start()

    def _new_executor(self) -> Executor:
        if self._kind == "process":
            return ProcessPoolExecutor(self._workers, mp_context=worker_context(), initializer=_ignore_sigint)
        if self._kind == "thread":
            return ThreadPoolExecutor(self._workers, thread_name_prefix="post")
        return _InlineExecutor()

    def _take_slot(self) -> bool:
        """Count one more file in work if there is room for it. The caller holds the lock."""
        if self._closed:
            raise RuntimeError("post stage is closed")
        if self._pending >= self._max_pending:
            return False
        self._pending += 1
        return True

    def _free_slot(self, finished: bool) -> None:
        with self._lock:
            self._pending -= 1
            if finished:
                self._completed += 1
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Tell every waiting submitter to try for a slot again. The caller holds the lock.

        All of them, not just one: a coroutine cancelled after being chosen could not pass its
        turn on, and a few needless wake-ups cost nothing next to a file's tasks.
        """
        self._slot_freed.notify_all()
        for loop, woken in self._async_waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_if_waiting, woken)
        self._async_waiters.clear()

    def _dispatch(self, path: str, key: object) -> None:
        """Hand a file whose slot is taken to the executor; `_finish` runs once it is done."""
        try:
            future = self._submit_to_executor(path)
        except BaseException:
            self._free_slot(finished=False)
            raise
        future.add_done_callback(partial(self._finish, path, key))

    def _submit_to_executor(self, path: str) -> Future:
        executor = self._executor
        if "_cancelling" in self.__dict__:  # a file done after a Ctrl-C: its tasks are not started
            future: Future = Future()
            future.cancel()
            return future
        try:
            return executor.submit(run_tasks, self._tasks, path)
        except BrokenExecutor:
            return self._replace(executor).submit(run_tasks, self._tasks, path)

    def _replace(self, broken: Executor) -> Executor:
        """A fresh pool in place of a broken one, made once however many threads find it broken."""
        with self._lock:
            if self._executor is broken:
                self._executor = self._new_executor()
            executor = self._executor
        broken.shutdown(wait=False)
        return executor

    def _finish(self, path: str, key: object, future: Future) -> None:
        """A file's done-callback: report its results, then free its slot."""
        try:
            results = self._results(path, future)
            if self._on_done is not None:
                self._on_done(path, key, results)
        finally:
            self._free_slot(finished=True)

    def _results(self, path: str, future: Future) -> list[TaskResult]:
        """The file's results; when the pool never produced them (its worker died, or `close`
        cancelled the file), one error result per task that says why."""
        if future.cancelled():
            reason = "cancelled"
        elif future.exception() is None:
            return future.result()
        else:
            reason = _describe(future.exception())
        return [TaskResult(task.name, None, 0.0, 0.0, 0, _error_line(task.name, path, reason))
                for task in self._tasks]


def _set_if_waiting(woken: asyncio.Future) -> None:
    if not woken.done():
        woken.set_result(None)
