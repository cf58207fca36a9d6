"""Where bytes land: `NAME.part` beside `NAME.part.state`, then an atomic rename to `NAME`.

A file under its final name is always complete (invariant 1): bytes are written with `os.pwrite`
at their offsets into `NAME.part`, and only `commit()` (after verification) renames it.

The state file is small JSON, written atomically (write, flush, rename)::

    {"version": 1, "url": "...", "size": 1048576, "validator": {"etag": "\\"abc\\"", ...},
     "layout": "stream", "missing": [[65536, 1048576]]}

For a one-stream download ("layout": "stream") bytes arrive in order, so the `.part` file's own
length is the exact resume point: a kill -9 loses nothing already written. For a segmented one
the state's `missing` ranges are authoritative; it is saved after `fdatasync` of the `.part` at
most every `STATE_INTERVAL` seconds per file and whenever the plan changes, so a kill -9 costs at
most that interval of re-fetched bytes per segment, and never a byte claimed but not written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .core.naming import PART_SUFFIX, STATE_SUFFIX
from .core.ranges import Validator
from .errors import DiskError

STATE_INTERVAL = 1.0
"""Seconds between state saves of a segmented download."""
STATE_VERSION = 1


@dataclass(frozen=True)
class SavedState:
    """What a state file says about a `.part` left by an earlier try or run."""

    url: str
    size: int | None
    validator: Validator
    layout: str
    missing: list[tuple[int, int | None]]

    @property
    def have(self) -> int:
        """Bytes on disk (for a stream: the resume point)."""
        if self.layout == "stream":
            return self.missing[0][0] if self.missing else (self.size or 0)
        return (self.size or 0) - sum(b - a for a, b in self.missing)


def disk_error(exc: OSError, path: Path) -> DiskError:
    """Translate an OSError from writing `path` into the one line a user should read."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(f"disk full while writing {path}", disk_full=True)
    return DiskError(f"cannot write {path}: {exc.strerror or exc}")


def _disjoint_within(ranges: list[tuple[int, int]], size: int) -> bool:
    """Whether sorted ranges are non-empty, inside [0, size) and do not overlap."""
    end = 0
    for a, b in ranges:
        if a < end or b <= a or b > size:
            return False
        end = b
    return True


class PartFile:
    """One download's `.part` and state file, beside where the final file will go."""

    def __init__(self, final: str | os.PathLike) -> None:
        self.final = os.fspath(final)
        """Paths are plain strings: a tiny file's whole download costs a few system calls, and
        building Path objects for them would cost more than the calls."""
        self.part = self.final + PART_SUFFIX
        self.state = self.final + STATE_SUFFIX
        self._fd: int | None = None
        self._last_save = 0.0
        self.state_written = False
        """Whether this run wrote a state file (or found one), so commit knows to remove it."""

    # reading what an earlier run left
    def saved(self, key: str, url: str | None = None) -> SavedState | None:
        """The state an earlier try left for the URL kept as `key` (Index.key; or `url` itself,
        as states were kept before), checked against the `.part` on disk; None when there is
        nothing usable (no state, another URL, a damaged file)."""
        try:
            with open(self.state, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, ValueError):
            return None
        self.state_written = True
        try:
            data = json.loads(text)
            part_size = os.stat(self.part).st_size
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or \
                data.get("url") not in (key, url or key):
            return None
        try:
            size, layout = data.get("size"), data.get("layout")
            if layout == "stream":
                if size is not None and (not isinstance(size, int) or part_size > size):
                    return None
                missing = [(part_size, size)]
            elif layout == "segments" and isinstance(size, int):
                missing = sorted((int(a), int(b)) for a, b in data["missing"])
                if not _disjoint_within(missing, size):
                    return None
            else:
                return None
            return SavedState(url or key, size, Validator.from_json(data.get("validator")), layout, missing)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    # writing
    def open(self, fresh: bool) -> None:
        """Open `.part` for writing; `fresh` empties it first."""
        if self._fd is not None:
            if fresh:
                self._guard(os.ftruncate, self._fd, 0)
            return
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                self._fd = os.open(self.part, flags, 0o644)
            except FileNotFoundError:  # the first file of its folder: make the folder, once
                os.makedirs(os.path.dirname(self.final) or ".", exist_ok=True)
                self._fd = os.open(self.part, flags, 0o644)
        except OSError as exc:
            raise disk_error(exc, self.part) from exc

    def write(self, offset: int, data) -> None:
        """Write `data` at `offset` of the `.part`; a short write (full disk) is an error, whose
        `written` says how many of the bytes did reach the file before it."""
        view = memoryview(data)
        done = 0
        while view:
            try:
                n = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                error = disk_error(exc, self.part)
                error.written = done
                raise error from exc
            if n == 0:
                error = DiskError(f"disk full while writing {self.part}", disk_full=True)
                error.written = done
                raise error
            view, offset, done = view[n:], offset + n, done + n

    def size_on_disk(self) -> int:
        try:
            return os.stat(self.part).st_size
        except OSError:
            return 0

    def state_due(self) -> bool:
        """Whether a throttled save (`force=False`) would write now."""
        return time.monotonic() - self._last_save >= STATE_INTERVAL

    def save_state(self, key: str, size: int | None, validator: Validator, layout: str,
                   missing: list[tuple[int, int | None]], *, force: bool = True) -> None:
        """Write the state file atomically for the URL kept as `key` (Index.key: no password);
        with `force=False` only if STATE_INTERVAL has passed."""
        now = time.monotonic()
        if not force and now - self._last_save < STATE_INTERVAL:
            return
        self._last_save = now
        if layout == "segments" and self._fd is not None:
            self._guard(os.fdatasync, self._fd)
        data = {"version": STATE_VERSION, "url": key, "size": size, "validator": validator.to_json(),
                "layout": layout, "missing": [list(r) for r in missing]}
        tmp = self.state + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
            os.replace(tmp, self.state)
        except OSError as exc:
            self._unlink(tmp)
            raise disk_error(exc, self.state) from exc
        self.state_written = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def commit(self) -> None:
        """Give the complete, verified `.part` its final name and drop the state file."""
        self.close()
        try:
            os.replace(self.part, self.final)
        except OSError as exc:
            raise disk_error(exc, self.final) from exc
        if self.state_written:
            self._unlink(self.state)

    def discard(self) -> None:
        """Remove `.part` and state (a digest mismatch: those bytes are not worth keeping)."""
        self.close()
        self._unlink(self.part)
        self._unlink(self.state)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise disk_error(exc, self.part) from exc


class WriteBehind:
    """Writes a big file's chunks, and feeds its hasher, on a thread of its own, in order.

    The copy into the page cache (and the digest) then overlaps with reading the network instead
    of following it: an event loop stays free for its sockets, and a connection thread reads the
    next chunk while the last one is written. `on_written(token, n)` runs after each write, so
    what the plan and the state file call "on disk" is on disk. A bounded queue keeps memory
    flat; the first error stops the writing and is raised by the next `submit` or by `close`.
    """

    def __init__(self, part: PartFile, hasher: "StreamHasher | None", on_written, maxsize: int = 16) -> None:
        self.part = part
        self.hasher = hasher
        self.on_written = on_written
        self.error: DiskError | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def submit(self, offset: int, data, token) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((offset, data, token))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            offset, data, token = item
            try:
                self.part.write(offset, data)
                if self.hasher is not None:
                    self.hasher.update(data)
                self.on_written(token, len(data))
            except DiskError as exc:
                if exc.written:  # the start of the chunk did reach the file: it counts
                    self.on_written(token, exc.written)
                self.error = exc
            except Exception as exc:  # never lose the thread silently
                self.error = DiskError(f"cannot write {self.part.part}: {exc}")

    def close(self) -> None:
        """Wait until every queued chunk is written; raise the first error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error


class StreamHasher:
    """Digests of bytes as they stream in order, so verifying costs no second read of the file.

    Small files are hashed inline. Past `THREAD_AFTER` bytes the hashing moves to a thread of
    its own (hashlib releases the GIL on large updates), so it runs beside the network reads on
    another core instead of after them; a bounded queue keeps memory flat if hashing falls behind.
    With `threaded=False` it always hashes inline: for a caller that is itself a helper thread
    (`WriteBehind`), where one more thread only adds hand-offs.
    """

    THREAD_AFTER = 4 << 20

    def __init__(self, algorithms: set[str] | frozenset[str], threaded: bool = True) -> None:
        self._hashes = {name: hashlib.new(name) for name in sorted(algorithms)}
        self.threaded = threaded
        self.fed = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def update(self, data) -> None:
        self.fed += len(data)
        if self._queue is not None:
            self._queue.put(data)
        elif self.threaded and self.fed > self.THREAD_AFTER:
            self._queue = queue.Queue(maxsize=64)
            self._thread = threading.Thread(target=self._drain, name="hasher", daemon=True)
            self._thread.start()
            self._queue.put(data)
        else:
            for h in self._hashes.values():
                h.update(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            for h in self._hashes.values():
                h.update(data)

    def hexdigests(self) -> dict[str, str]:
        """Finish and return {algorithm: hex}."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        return {name: h.hexdigest() for name, h in self._hashes.items()}

    def abandon(self) -> None:
        """Stop the helper thread without caring for the result."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None


class PrefixHasher:
    """Digests of a file downloaded in pieces, computed while it downloads.

    A segmented file arrives out of order, so its bytes cannot be hashed as they stream in; but
    connections take pieces in file order (core.ranges.SegmentPlan), so the bytes on disk are a
    prefix of the file with a few pieces missing. `advance(n)` says the first `n` bytes are on
    disk; a thread of its own reads them back (from the page cache, just written) and hashes them,
    so at the end only about a piece per connection is left to hash, not the whole file.
    """

    def __init__(self, path: Path, algorithms, start_at: int = 0, block: int = 1 << 20) -> None:
        self.path = path
        self.hasher = StreamHasher(algorithms, threaded=False)
        self.block = block
        self.error: OSError | None = None
        self._ready = start_at
        self._closed = False
        self._abandoned = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="prefix-hasher", daemon=True)
        self._thread.start()

    def advance(self, prefix: int) -> None:
        """The first `prefix` bytes of the file are on disk."""
        with self._cond:
            if prefix > self._ready:
                self._ready = prefix
                self._cond.notify()

    def _run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as fh:
                while True:
                    with self._cond:
                        while self.hasher.fed >= self._ready and not self._closed:
                            self._cond.wait()
                        ready, closed = self._ready, self._closed
                    while self.hasher.fed < ready and not self._abandoned:
                        data = os.pread(fh.fileno(), min(self.block, ready - self.hasher.fed), self.hasher.fed)
                        if not data:
                            raise OSError(f"{self.path} is shorter than {ready:,} bytes")
                        self.hasher.update(data)
                    if closed or self._abandoned:
                        return
        except OSError as exc:
            self.error = exc

    def finish(self, size: int) -> dict[str, str] | None:
        """Digests of the whole file once all `size` bytes are on disk; None if it could not
        read them (the caller then reads the file itself)."""
        self.advance(size)
        self._stop()
        if self.error is not None or self.hasher.fed != size:
            return None
        return self.hasher.hexdigests()

    def abandon(self) -> None:
        """Stop at once (within a block), without caring for the result."""
        self._abandoned = True
        self._stop()

    def _stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


def file_digests(path: Path, algorithms, *, hasher: StreamHasher | None = None, end: int | None = None,
                 finish: bool = True, block: int = 1 << 20) -> dict[str, str] | None:
    """Digests of a file on disk (a segmented download), or, with `hasher` and `finish=False`, feed
    its first `end` bytes to a hasher that then goes on with the bytes still to stream in."""
    hasher = hasher or StreamHasher(algorithms)
    left = end
    with open(path, "rb") as fh:
        while left is None or left > 0:
            chunk = fh.read(block if left is None else min(block, left))
            if not chunk:
                break
            hasher.update(chunk)
            if left is not None:
                left -= len(chunk)
    return hasher.hexdigests() if finish else None
