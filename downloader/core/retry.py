"""When to try again, and after how long. Decisions only: the engine is the one that waits.

    >>> policy = RetryPolicy(attempts=3)
    >>> policy.should_retry(attempt=1, retryable=True)
    True
    >>> parse_retry_after("120", now=0.0)
    120.0
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses that say "try again later"; every other 4xx/5xx fails at once."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries a download gets and how long to wait between them."""

    attempts: int = 6
    """How many tries in all, the first included (`--retries` + 1)."""
    base: float = 0.25
    """First backoff step, in seconds."""
    cap: float = 30.0
    """The longest wait, Retry-After included."""

    def should_retry(self, attempt: int, retryable: bool) -> bool:
        """Whether try number `attempt` (1-based) may be followed by another."""
        return retryable and attempt < self.attempts

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before try `attempt + 1`: the server's Retry-After when it gave one,
        else full-jitter exponential backoff (uniform between 0 and base * 2**(attempt-1))."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.cap))
        return rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date; None when absent or junk."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
