"""downloader: a parallel file downloader with sequential, thread, async and curl engines.

    >>> from downloader import download
    >>> results = download(["https://example.org/a.iso"], "out", mode="async")  # doctest: +SKIP

Names are loaded on first use (PEP 562), so `downloader --help` does not pay for requests,
aiohttp, tqdm or sqlite3.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "download": "api", "Downloader": "api", "EXIT_OK": "api", "EXIT_SOME_FAILED": "api",
    "EXIT_USAGE": "api", "EXIT_INTERRUPTED": "api",
    "Options": "config", "Job": "core.sources", "Result": "core.results", "Results": "core.results",
    "DownloaderError": "errors", "UsageError": "errors", "TransferError": "errors",
    "HTTPStatusError": "errors", "RedirectError": "errors", "IncompleteBody": "errors",
    "StallError": "errors", "ChecksumMismatch": "errors", "DiskError": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'downloader' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
