"""Shared fixtures: the project's own mock server, the three engines, and a way to run a batch."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from downloader import Downloader
from downloader.mockserver import MockServer
from downloader.progress import RecordingReporter

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MODES = ("sequential", "thread", "async", "curl")
_unique = itertools.count()


@pytest.fixture(scope="session")
def server():
    """The mock server on a free loopback port, serving fixtures/data."""
    with MockServer(FIXTURES / "data") as srv:
        yield srv


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """Every behaviour test runs once per engine."""
    return request.param


@pytest.fixture
def url(server):
    """`url("/gen/a.bin", size=100, fault="reset")`: a URL on the mock server that no other test
    uses (a unique `u=` parameter), so its per-URL fault counters and stats are its own."""
    def make(path: str, **params) -> str:
        params["u"] = next(_unique)
        return f"{server.url}{path}?{urlencode(params)}"
    return make


def key(server_url: str) -> str:
    """The stats key (path + query) of a full mock-server URL."""
    parts = urlsplit(server_url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture
def stats(server):
    def get(full_url: str) -> dict:
        return server.stats().get(key(full_url), {"requests": 0, "gets": 0, "heads": 0, "bytes_sent": 0})
    return get


@pytest.fixture
def fetch(mode, tmp_path):
    """Run a batch through the public API with the engine under test; returns Results with the
    reporter's events attached."""
    def run(urls=(), dest: Path | None = None, lines=None, **options):
        options.setdefault("retry_base", 0.01)
        options.setdefault("timeout", 5)
        reporter = RecordingReporter()
        d = Downloader(dest or tmp_path / "out", mode=mode, reporter=reporter, **options)
        if urls:
            d.enqueue(*urls)
        if lines is not None:
            d.enqueue_lines(lines, "list")
        results = d.run()
        results.events = reporter.events
        return results
    return run


def run_cli(*args, input: str | None = None, timeout: float = 60, cwd=None) -> subprocess.CompletedProcess:
    """`python -m downloader ARGS` as a real subprocess (stdin not a terminal, stderr captured)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "downloader", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd,
                          stdin=None if input is not None else subprocess.DEVNULL)


def has_ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (containers often have no IPv6 at all)."""
    import socket
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")

CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture
def default_trust(monkeypatch):
    """No CA variable set: the run trusts the system's store (or certifi's), as on a bare machine."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
