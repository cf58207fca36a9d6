"""downloader: a parallel file downloader with sequential, thread and async engines.

    >>> from downloader import download
    >>> results = download(["https://example.org/a.iso"], "out", mode="async")  # doctest: +SKIP

Heavy modules (requests, aiohttp, tqdm) load only when a batch runs.
"""
from .api import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, Downloader, download
from .config import Options
from .core.results import Result, Results
from .core.sources import Job
from .errors import (ChecksumMismatch, DiskError, DownloaderError, HTTPStatusError, IncompleteBody,
                     RedirectError, StallError, TransferError, UsageError)

__version__ = "0.1.0"
__all__ = [
    "download", "Downloader", "Options", "Job", "Result", "Results",
    "DownloaderError", "UsageError", "TransferError", "HTTPStatusError", "RedirectError",
    "IncompleteBody", "StallError", "ChecksumMismatch", "DiskError",
    "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "__version__",
]
