"""The project's own small error tree.

Library errors (requests, aiohttp, OSError from the disk) are translated once, at the engine
boundary, into these, so nothing above an engine sees a third-party exception::

    DownloaderError                 anything this package raises on purpose
    ├── UsageError                  bad option values or input given by the user (CLI exit 2)
    └── TransferError               one try of one download went wrong (becomes a failed Result)
        ├── HTTPStatusError         the server answered with a status we cannot use (.status)
        ├── RedirectError           a redirect loop, too many hops or a non-http(s) target
        ├── IncompleteBody          the body ended before Content-Length / the asked range
        ├── StallError              no byte arrived for the stall timeout
        ├── ChecksumMismatch        the bytes on disk do not match the expected digest
        └── DiskError               writing the file failed; .disk_full tells ENOSPC apart

`TransferError.retryable` says whether another try may help; the retry *delay* is decided by
`core.retry.RetryPolicy`, never here.
"""
from __future__ import annotations


class DownloaderError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(DownloaderError):
    """Input the user gave cannot be used: an option value, a URL file that cannot be opened."""


class TransferError(DownloaderError):
    """One try of one download failed. `retryable` says whether trying again may help."""

    retryable = True

    def __init__(self, message: str, *, retryable: bool | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        """Seconds the server asked us to wait (Retry-After), when it said."""


class HTTPStatusError(TransferError):
    """The server answered with a status that is not a usable body."""

    def __init__(self, status: int, reason: str = "", *, retryable: bool,
                 retry_after: float | None = None) -> None:
        text = f"HTTP {status}" + (f" {reason}" if reason else "")
        super().__init__(text, retryable=retryable, retry_after=retry_after)
        self.status = status


class RedirectError(TransferError):
    """A redirect we refuse to follow: too many hops, or a scheme other than http(s)."""

    retryable = False


class IncompleteBody(TransferError):
    """The connection ended before all the promised bytes arrived."""


class StallError(TransferError):
    """No byte arrived for the whole stall timeout."""


class ChecksumMismatch(TransferError):
    """The downloaded bytes do not have the expected digest."""

    def __init__(self, algorithm: str, expected: str, actual: str, source: str) -> None:
        super().__init__(f"{algorithm} mismatch ({source}): expected {expected}, got {actual}")
        self.algorithm, self.expected, self.actual, self.source = algorithm, expected, actual, source


class DiskError(TransferError):
    """Writing to the output folder failed (full disk, permissions, read-only file system)."""

    retryable = False

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message, retryable=False)
        self.disk_full = disk_full
        self.written = 0
        """Bytes of the chunk being written that reached the file before the error."""


def invalid_http(detail: str) -> TransferError:
    """The one wording, in every engine, for an answer that breaks HTTP's rules (bad chunk sizes,
    clashing Content-Length headers, a malformed header line): the libraries each say it their
    own way, and the user should not have to learn three dialects. Retryable: a server or proxy
    that garbles one answer often sends the next one right."""
    text = " ".join(detail.split())
    lowered = text.lower()
    if "chunk" in lowered:
        said = "a bad chunk size"
    elif "content-length" in lowered:
        said = "clashing Content-Length headers"
    elif "header" in lowered or "colon" in lowered or "token" in lowered:
        said = "a malformed header line"
    else:
        said = text[:100]
    return TransferError(f"invalid HTTP from the server: {said}")
