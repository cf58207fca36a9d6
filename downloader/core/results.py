"""What became of each job: a failed download is data, not an exception.

    >>> results = Results()
    >>> results.add(Result(url="https://h/a", status="ok", bytes=10))
    >>> results.counts["ok"], results.total_bytes
    (1, 10)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

OK, SKIPPED, FAILED, INTERRUPTED = "ok", "skipped", "failed", "interrupted"


@dataclass
class Result:
    """How one URL ended. `status` is "ok" (downloaded), "skipped" (already there), "failed", or
    "interrupted" (a stop came first; its `.part` is kept and a re-run resumes it)."""

    url: str
    status: str
    path: str | None = None
    """Where the file is, as the output folder was given ("out/a.iso"); None when there is no
    file (a failed or interrupted download)."""
    http_status: int | None = None
    http_version: str | None = None
    """The HTTP version of the last response ("1.1", "2"), when known."""
    bytes: int = 0
    """Bytes received in this run (resumed bytes from before are not counted again)."""
    size: int | None = None
    """Size of the file when known."""
    sha256: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None
    line: int = 0
    """Input line number, 0 for URLs not from a file (null in the report)."""
    post: list = field(default_factory=list)
    """Post-processing results: dicts with task, value, cpu_seconds, pid, error."""

    def to_json(self) -> dict:
        data = asdict(self)
        if not data["post"]:
            del data["post"]
        data["line"] = data["line"] or None
        return data


KEEP_AT_MOST = 1000
"""With `keep=False`, how many failures and rejected lines are kept for the summary (the rest are
only counted; the report has every one)."""


class Results:
    """All results of a batch, with totals. With `keep=False` only the first `KEEP_AT_MOST` failures
    and rejected lines are kept, and the counts, so a million-line run does not hold a million
    objects."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.items: list[Result] = []
        self.failures: list[Result] = []
        self.rejected: list = []
        """Input lines that were not usable (core.sources.Rejected); see `reject`."""
        self.rejected_count = 0
        self.counts = {OK: 0, SKIPPED: 0, FAILED: 0, INTERRUPTED: 0}
        self.total_bytes = 0
        self.started = time.monotonic()
        self.finished: float | None = None
        self.interrupted = False
        self.checked = 0
        """Files already there that were hashed against a digest before counting as there."""
        self.mismatched = 0
        """Files already there that did not match their digest (or recorded size) and were fetched again."""
        self.nothing_in: str | None = None
        """Set when the input held no URL at all: the names of the sources read ("stdin")."""

    def add(self, result: Result) -> None:
        self.counts[result.status] += 1
        self.total_bytes += result.bytes
        if result.status in (FAILED, INTERRUPTED) and (self.keep or len(self.failures) < KEEP_AT_MOST):
            self.failures.append(result)
        if self.keep:
            self.items.append(result)

    def reject(self, rejected) -> None:
        """Count an input line that was not usable (and keep it, within limits)."""
        self.rejected_count += 1
        if self.keep or len(self.rejected) < KEEP_AT_MOST:
            self.rejected.append(rejected)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.items)

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.items if r.status == OK]

    @property
    def skipped(self) -> list[Result]:
        return [r for r in self.items if r.status == SKIPPED]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.failures if r.status == FAILED]

    @property
    def unfinished(self) -> list[Result]:
        """Interrupted downloads, the ones a re-run (or `Downloader.retry_failed`) resumes."""
        return [r for r in self.failures if r.status == INTERRUPTED]

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def success(self) -> bool:
        """True when every URL is downloaded or already there and no input line was rejected."""
        return not self.counts[FAILED] and not self.rejected_count and not self.interrupted

    def summary(self) -> str:
        """One line: downloaded, already there, failed, bytes, time, rate."""
        seconds = max(self.seconds, 1e-9)
        text = (f"{self.counts[OK]} downloaded, {self.counts[SKIPPED]} already there, "
                f"{self.counts[FAILED]} failed")
        if self.counts[INTERRUPTED]:
            text += f", {self.counts[INTERRUPTED]} interrupted"
        if self.checked:
            text += f", {self.checked} checked" + (f", {self.mismatched} did not match" if self.mismatched else "")
        if self.rejected_count:
            text += f", {self.rejected_count} input line(s) rejected"
        return text + (f"; {human_bytes(self.total_bytes)} in {seconds:.2f} s "
                       f"({human_bytes(self.total_bytes / seconds)}/s)")


def human_bytes(n: float) -> str:
    """"1.5 MiB" style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
