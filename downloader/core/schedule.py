"""Which connection does what next. Decisions only: engines do the waiting.

Every engine runs `jobs` workers; a worker is one connection. Each time a worker is free it asks
`Scheduler.poll()`, which answers, in this order of preference:

1. `Help(transfer, segment)`: join a file already in flight that can use another connection (it
   accepts ranges, is below its `--segments` cap, and has a range big enough to split);
2. `Start(job)`: begin the next URL of the input (whose host is below `--per-host`);
3. `WAIT`: nothing to do right now, but more may come (the input is still being read, or a file
   in flight may open up for help): the engine waits until `wake()` is called;
4. `None`: everything is done (or a stop was asked): the worker ends.

So `--jobs` and `--per-host` count connections, segments included, and finishing files already
started comes before starting new ones.

The tail of a batch (every file started, only bytes of files in flight left) is where downloaders
lose time: one connection still busy with a long request while the others idle. In the tail,
`tail_share()` tells each request to ask for no more than its share of the bytes nobody has asked
for yet (guided self-scheduling), and idle connections may take over smaller ranges, so the
connections finish together.
"""
from __future__ import annotations

import queue
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from .sources import Job
from .urls import plain_parts

WAIT = object()
"""`poll()`'s answer when the worker should wait for `wake()`."""
_END = object()


@dataclass(frozen=True)
class Start:
    job: Job
    host: str


@dataclass(frozen=True)
class Help:
    transfer: Any
    segment: Any
    host: str


def host_of(url: str) -> str:
    plain = plain_parts(url)
    if plain is not None:
        return plain[0]
    return (urlsplit(url).hostname or "").lower()


class Feed:
    """Batches of jobs made in a thread of their own (reading the input, claiming names: see
    `intake`), through a bounded queue, so a slow stdin never blocks an engine (or its event loop)
    and memory stays flat for any input size. A batch crosses from that thread to the engine's in
    one hand-over, with one wake-up, whatever its length."""

    def __init__(self, batches: Iterable[list[Job]], on_item: Callable[[], None] = lambda: None,
                 maxsize: int = 8) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._batches = batches
        self.on_item = on_item
        """Called (on the feed's thread) after each batch and at the end; the scheduler listens here."""
        self.produced = 0
        self.error: BaseException | None = None
        self.exhausted = False
        self._ready: deque[Job] = deque()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                self._queue.put(batch)
                self.produced += len(batch)
                self.on_item()
        except BaseException as exc:  # reported by the batch, not lost in a thread
            self.error = exc
        finally:
            self._queue.put(_END)
            self.on_item()

    def try_next(self) -> Job | None | object:
        """The next job, None when none is ready yet, `_END` after the last (one caller at a time:
        the scheduler, under its lock)."""
        if self._ready:
            return self._ready.popleft()
        if self.exhausted:
            return _END
        try:
            batch = self._queue.get_nowait()
        except queue.Empty:
            return None
        if batch is _END:
            self.exhausted = True
            return _END
        self._ready.extend(batch)
        return self._ready.popleft() if self._ready else None

    def ready(self) -> int:
        """Jobs handed over and not started yet (a guess for waking workers: no lock taken)."""
        return len(self._ready) + self._queue.qsize()


class Scheduler:
    """Hands work to connections (see the module docstring). Thread-safe; `wake` is the engine's
    way of being told that a waiting worker may find work now."""

    def __init__(self, feed: Feed, *, per_host: int | None, connections: int) -> None:
        self.feed = feed
        feed.on_item = lambda: self.wake()
        self.per_host = per_host
        self.connections = connections
        self.stopping = False
        self.wake: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._open: list = []
        self._deferred: deque[Job] = deque()
        self._hosts: Counter[str] = Counter()
        self._in_flight = 0
        self._unsized = 0
        """Files started whose size is not known yet (their first response has not come)."""

    def _host_free(self, host: str) -> bool:
        return self.per_host is None or self._hosts[host] < self.per_host

    def poll(self) -> Start | Help | None | object:
        with self._lock:
            if self.stopping:
                return None
            for transfer in self._open:
                host = transfer.host
                if self._host_free(host) and transfer.can_help():
                    segment = transfer.claim(joining=True)
                    if segment is not None:
                        if self.per_host is not None:
                            self._hosts[host] += 1
                        return Help(transfer, segment, host)
            job = self._next_job()
            if job is not None:
                host = job.host or host_of(job.url)
                if self.per_host is not None:
                    self._hosts[host] += 1
                self._in_flight += 1
                self._unsized += 1
                return Start(job, host)
            if self.feed.exhausted and not self._deferred and self._in_flight == 0:
                return None
            return WAIT

    def _next_job(self) -> Job | None:
        if self.per_host is None:
            item = self.feed.try_next()
            return None if item is _END else item
        for _ in range(len(self._deferred)):
            job = self._deferred.popleft()
            if self._host_free(job.host or host_of(job.url)):
                return job
            self._deferred.append(job)
        while len(self._deferred) < max(self.connections, 64):
            item = self.feed.try_next()
            if item is None or item is _END:
                return None
            if self._host_free(item.host or host_of(item.url)):
                return item
            self._deferred.append(item)
        return None

    def open_for_help(self, transfer) -> None:
        """`transfer` accepts more connections now."""
        with self._lock:
            self._open.append(transfer)
        self.wake()

    def close_for_help(self, transfer) -> None:
        with self._lock:
            if transfer in self._open:
                self._open.remove(transfer)

    def sized(self) -> None:
        """A started file's size is known now (or it ended before that); once per file."""
        with self._lock:
            self._unsized -= 1

    def connection_done(self, host: str, job_done: bool = False) -> None:
        """A worker stopped using a connection to `host`; with `job_done`, the job it worked on
        has ended too (its result is recorded)."""
        with self._lock:
            if self.per_host is not None:
                self._hosts[host] -= 1
                if self._hosts[host] <= 0:
                    del self._hosts[host]
            if job_done:
                self._in_flight -= 1
        self.wake()

    def job_done(self) -> None:
        with self._lock:
            self._in_flight -= 1
        self.wake()

    @property
    def in_tail(self) -> bool:
        """Whether no file is left to start (read without the lock: a stale answer costs nothing)."""
        return self.feed.exhausted and not self._deferred

    def tail_share(self) -> int | None:
        """In the tail, the bytes of the files in flight that no request has asked for yet, divided
        among the connections that may work on them: the most one request should ask for. None before the tail. Lock
        free, since `poll` calls into transfers under the lock."""
        if not self.in_tail or self._unsized:
            return None  # more files to start, or files whose size is unknown: not the tail yet
        flying = tuple(self._open)
        left = sum(t.unrequested() for t in flying)
        # connections that can work on them: a file takes no more than its --segments
        usable = min(self.connections, sum(t.max_connections() for t in flying))
        return -(-left // max(1, usable))

    def stop(self) -> None:
        """Start nothing new; in-flight transfers see `stopping` and wind down."""
        self.stopping = True
        self.wake()
