"""HTTP/2: against a server that offers h2 over TLS (ALPN), the curl engine speaks it and multiplexes
every request to the host over one connection, `-j` still counting requests in flight; the other
engines speak HTTP/1.1 to the same server. The server is hypercorn (the `test` extra) with a
certificate from a throwaway CA, on a thread of the test's own."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import trustme

from conftest import MODES
from downloader.mockserver import gen_bytes
from tls_servers import write_pem

hypercorn = pytest.importorskip("hypercorn", reason="the HTTP/2 server of these tests: pip install -e '.[test]'")

HOLD = 0.2
"""Seconds each response waits before its headers, so that requests overlap and multiplexing shows."""


class Files:
    """An ASGI app: GET /NAME?size=N answers gen_bytes(N) after HOLD seconds. It notes the protocol
    and the client's port of every request (one port per connection) and the most requests it had
    in flight at once."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append((scope["http_version"], scope["client"][1]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(HOLD)
            body = gen_bytes(int(parse_qs(scope["query_string"].decode())["size"][0]))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()),
                                    (b"content-type", b"application/octet-stream")]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.in_flight -= 1

    def connections(self) -> int:
        return len({port for _, port in self.seen})


class H2Server:
    """hypercorn serving `Files` over HTTPS on 127.0.0.1, offering h2 and http/1.1 by ALPN."""

    def __init__(self, folder: Path) -> None:
        from hypercorn.config import Config

        ca = trustme.CA(organization_name="HTTP/2 test CA")
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = write_pem(folder / "h2-ca.pem", ca.cert_pem)
        self.app = Files()
        listener = socket.create_server(("127.0.0.1", 0))  # listening already: no wait for readiness
        self.url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        config = Config()
        config.certfile = str(write_pem(folder / "h2.pem", *leaf.cert_chain_pems))
        config.keyfile = str(write_pem(folder / "h2.key", leaf.private_key_pem))
        config.bind = [f"fd://{listener.detach()}"]
        config.errorlog = config.accesslog = None
        config.graceful_timeout = 1
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True, name="h2-server")

    async def _serve(self) -> None:
        from hypercorn.asyncio import serve
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        await serve(self.app, self.config, shutdown_trigger=self._stop.wait)

    def __enter__(self) -> H2Server:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def h2_server(tmp_path):
    with H2Server(tmp_path) as server:
        yield server


SIZES = (1000, 70_000, 300_000, 5, 123_456, 40_000)


@pytest.mark.parametrize("mode", MODES)
def test_http2_is_spoken_by_curl_over_one_connection_and_http_1_1_by_the_others(mode, h2_server, tmp_path):
    from downloader import Downloader
    from downloader.progress import RecordingReporter
    urls = [f"{h2_server.url}/f{n}.bin?size={size}" for n, size in enumerate(SIZES)]
    report = tmp_path / "report.jsonl"
    jobs = 3
    results = Downloader(tmp_path / "out", mode=mode, jobs=jobs, ca_certificate=h2_server.ca_file, report=report,
                         reporter=RecordingReporter()).enqueue(*urls).run()
    assert results.counts["ok"] == len(SIZES), results.failures
    for n, size in enumerate(SIZES):
        assert (tmp_path / f"out/f{n}.bin").read_bytes() == gen_bytes(size)
    versions = {json.loads(line)["url"]: json.loads(line)["http_version"] for line in report.read_text().splitlines()}
    app = h2_server.app
    if mode == "curl":
        assert versions == dict.fromkeys(urls, "2")
        assert {version for version, _ in app.seen} == {"2"}
        assert app.connections() == 1  # every request multiplexed on one connection
        assert 2 <= app.most_in_flight <= jobs  # several streams at once, never more than -j
    else:
        assert versions == dict.fromkeys(urls, "1.1")
        assert {version for version, _ in app.seen} == {"1.1"}
        assert app.most_in_flight <= jobs
