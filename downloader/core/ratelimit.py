"""One token bucket for the whole batch (`--max-speed`), shared by every connection of every engine.

`take(n)` books `n` bytes and answers how long the caller must pause so the batch stays under the
rate; the engine does the pausing (`time.sleep` in one twin, `asyncio.sleep` in the other)::

    >>> bucket = TokenBucket(rate=1000, burst=1000, clock=lambda: 0.0)
    >>> bucket.take(1000), bucket.take(500)
    (0.0, 0.5)
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class TokenBucket:
    """`rate` bytes per second on average, with bursts up to `burst` bytes. Thread-safe."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 4, 64 * 1024))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Book `n` bytes; return the seconds to wait before using them (0.0 when within budget)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
