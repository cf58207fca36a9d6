"""The mock server: correct HTTP when left alone, and every fault exactly as its URL asks.

Most tests talk to it with requests, as a client would; where requests hides what happened on the wire
(a reset versus a clean close, the bytes that came before it) they use a bare socket.
"""
from __future__ import annotations

import base64
import hashlib
import random
import shutil
import re
import signal
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_ipv6, run_cli
from downloader.mockserver import BLOCK_LENGTH, FAULT_KINDS, RAW_CASES, MockConfig, MockServer, gen_bytes, plan_body

SIZE = 300_000
SEED = 11
CONTENT = gen_bytes(SIZE, SEED)
FILE = "/data.bin"
GEN = f"/gen/data.bin?size={SIZE}&seed={SEED}"
"""Two URLs for the same bytes: a real file and its virtual twin."""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("mock")
    (base / "secret.txt").write_text("not for clients")
    site = base / "site"
    (site / "sub").mkdir(parents=True)
    (site / "data.bin").write_bytes(CONTENT)
    (site / "sub" / "note.txt").write_text("hello\n")
    return site


@pytest.fixture(scope="module")
def server(root):
    with MockServer(root) as server:
        yield server


@pytest.fixture
def mock(server) -> MockServer:
    """The module's server with its counts (and so its fault sequences) started afresh."""
    server.reset_stats()
    return server


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


@dataclass
class Wire:
    """One response as read off a bare socket, and how the connection ended."""

    status: int
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes
    ending: str
    """"eof" (a clean close), "reset" (RST) or "timeout"."""


def connect(server: MockServer, timeout: float = 5.0, **tls_options) -> socket.socket:
    """A bare socket to `server`, over IPv4 or IPv6 as its URL says, wrapped in TLS (trusting the
    server's own CA) when it serves HTTPS; `tls_options` go to ssl.SSLContext.load_cert_chain."""
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, server.port), timeout=timeout)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=server.ca_file)
        context.set_alpn_protocols(["h2", "http/1.1"])
        if tls_options:
            context.load_cert_chain(**tls_options)
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
    return sock


def send_get(server: MockServer, target: str, *headers: str, timeout: float = 5.0) -> socket.socket:
    """A bare socket that has sent a GET of `target` (asking the server to close after it)."""
    sock = connect(server, timeout)
    request = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers, "", ""]
    sock.sendall("\r\n".join(request).encode())
    return sock


def read_to_end(sock: socket.socket, received: bytes = b"") -> tuple[bytes, str]:
    """Everything the server sends until it closes, resets or goes quiet, and which of those it was."""
    buffer = bytearray(received)
    try:
        while chunk := sock.recv(1 << 16):
            buffer += chunk
    except ConnectionResetError:
        return bytes(buffer), "reset"
    except TimeoutError:
        return bytes(buffer), "timeout"
    return bytes(buffer), "eof"


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the server sends up to and including `marker` (and perhaps a little more)."""
    received = b""
    while marker not in received:
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed before {marker!r}"
        received += chunk
    return received


def wire_get(server: MockServer, target: str, *headers: str, timeout: float = 5.0) -> Wire:
    """GET `target` over a bare socket and read until the server closes, resets or goes quiet."""
    with send_get(server, target, *headers, timeout=timeout) as sock:
        received, ending = read_to_end(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return Wire(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body, ending)


# --- plain HTTP ----------------------------------------------------------------------------------


def test_a_file_comes_whole_with_its_validators(mock, http, root):
    response = http.get(mock.url + FILE)
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert re.fullmatch(r'"[^"]+"', response.headers["ETag"])
    mtime = int((root / "data.bin").stat().st_mtime)
    assert response.headers["Last-Modified"] == formatdate(mtime, usegmt=True)
    assert http.get(mock.url + "/sub/note.txt").text == "hello\n"


def test_a_gen_file_comes_whole_and_its_etag_names_size_and_seed(mock, http):
    response = http.get(mock.url + GEN)
    assert response.status_code == 200
    assert response.content == CONTENT
    etags = {http.head(f"{mock.url}/gen/x?size={size}&seed={seed}").headers["ETag"]
             for size, seed in [(10, 0), (11, 0), (10, 1)]}
    assert len(etags) == 3
    assert http.get(mock.url + "/gen/empty?size=0").content == b""


def test_a_gen_file_streams_across_the_generator_period(mock, http):
    size = BLOCK_LENGTH + 100_000
    assert http.get(f"{mock.url}/gen/big.bin?size={size}&seed=4").content == gen_bytes(size, 4)


def test_a_huge_gen_file_is_served_without_being_built(mock, http):
    size = 512 << 20
    url = f"{mock.url}/gen/huge.bin?size={size}"
    assert http.head(url).headers["Content-Length"] == str(size)
    tail = http.get(url, headers={"Range": "bytes=-1000"})
    assert tail.status_code == 206
    assert tail.content == gen_bytes(size, 0, size - 1000)


@pytest.mark.parametrize("target", [FILE, GEN])
def test_head_has_the_headers_of_get_and_no_body(mock, http, target):
    get, head = http.get(mock.url + target), http.head(mock.url + target)
    assert head.status_code == 200
    assert head.content == b""
    assert {**head.headers, "Date": ""} == {**get.headers, "Date": ""}


# --- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [FILE, GEN])
@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-99", 0, 100),
    ("bytes=1000-", 1000, SIZE),
    ("bytes=-100", SIZE - 100, SIZE),
    ("bytes=299000-999999", 299_000, SIZE),
    ("bytes=-999999", 0, SIZE),
    ("Bytes=5-5", 5, 6),
])
def test_a_single_range_gets_206_and_exactly_those_bytes(mock, http, target, spec, start, end):
    response = http.get(mock.url + target, headers={"Range": spec})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.headers["Content-Length"] == str(end - start)
    assert response.content == CONTENT[start:end]


@pytest.mark.parametrize("spec", ["bytes=300000-", "bytes=400000-400010", "bytes=-0"])
def test_a_range_past_the_end_gets_416(mock, http, spec):
    response = http.get(mock.url + FILE, headers={"Range": spec})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=5-2", "bytes=abc", "bytes=-", "items=0-1"])
def test_several_or_malformed_ranges_get_the_whole_body(mock, http, spec):
    response = http.get(mock.url + GEN, headers={"Range": spec})
    assert response.status_code == 200
    assert response.content == CONTENT


def test_head_ignores_range(mock, http):
    response = http.head(mock.url + FILE, headers={"Range": "bytes=0-9"})
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(SIZE)


@pytest.mark.parametrize("target", [FILE, GEN])
def test_if_range_honours_range_only_for_the_current_version(mock, http, target):
    head = http.head(mock.url + target).headers
    etag, last_modified = head["ETag"], head["Last-Modified"]
    later = formatdate(parsedate_to_datetime(last_modified).timestamp() + 1, usegmt=True)

    def status(if_range: str) -> int:
        return http.get(mock.url + target, headers={"Range": "bytes=10-19", "If-Range": if_range}).status_code

    assert status(etag) == 206
    assert status(last_modified) == 206
    assert status('"some-other-version"') == 200
    assert status("W/" + etag) == 200
    assert status(later) == 200
    assert status("not a date") == 200


def test_noranges_hides_accept_ranges_and_ignores_range(mock, http):
    response = http.get(mock.url + GEN + "&noranges=1", headers={"Range": "bytes=0-9"})
    assert response.status_code == 200
    assert "Accept-Ranges" not in response.headers
    assert response.content == CONTENT


# --- faults --------------------------------------------------------------------------------------


def test_reset_sends_at_bytes_then_a_tcp_reset(mock, http):
    wire = wire_get(mock, GEN + "&fault=reset&at=1000")
    assert wire.headers["content-length"] == str(SIZE)
    assert (wire.body, wire.ending) == (CONTENT[:1000], "reset")
    with pytest.raises(requests.RequestException):
        http.get(mock.url + GEN + "&fault=reset")


def test_truncate_sends_at_bytes_then_closes_cleanly(mock, http):
    wire = wire_get(mock, FILE + "?fault=truncate&at=1000")
    assert wire.headers["content-length"] == str(SIZE)
    assert (wire.body, wire.ending) == (CONTENT[:1000], "eof")
    with pytest.raises(requests.RequestException):
        http.get(mock.url + FILE + "?fault=truncate")


def test_a_mid_body_fault_strikes_halfway_through_the_body_being_sent(mock):
    assert len(wire_get(mock, GEN + "&fault=truncate").body) == SIZE // 2
    ranged = wire_get(mock, GEN + "&fault=truncate", "Range: bytes=1000-1999")
    assert ranged.body == CONTENT[1000:1500]
    assert len(wire_get(mock, GEN + "&fault=truncate&at=999999999").body) == SIZE - 1


def test_lie_announces_more_than_it_sends(mock):
    wire = wire_get(mock, GEN + "&fault=lie")
    assert wire.headers["content-length"] == str(SIZE + SIZE // 2)
    assert (wire.body, wire.ending) == (CONTENT, "eof")


def test_stall_makes_a_client_with_a_read_timeout_time_out(mock, http):
    wire = wire_get(mock, GEN + "&fault=stall&at=1000", timeout=0.5)
    assert (wire.body, wire.ending) == (CONTENT[:1000], "timeout")
    response = http.get(mock.url + GEN + "&fault=stall", stream=True, timeout=(5, 0.5))
    with response, pytest.raises(requests.ConnectionError, match="timed out"):
        response.content


@pytest.mark.parametrize("code", [503, 429])
def test_busy_faults_carry_retry_after_in_seconds_or_as_a_date(mock, http, code):
    assert http.get(f"{mock.url}{GEN}&fault={code}").headers["Retry-After"] == "0"
    seconds = http.get(f"{mock.url}{GEN}&fault={code}&retry_after=7")
    assert seconds.status_code == code
    assert seconds.headers["Retry-After"] == "7"
    before = time.time()
    dated = http.get(f"{mock.url}{GEN}&fault={code}&retry_after=date:30")
    after = time.time()
    when = parsedate_to_datetime(dated.headers["Retry-After"]).timestamp()
    assert before + 30 <= when + 1 and when <= after + 31


def test_retry_after_default_comes_from_the_config():
    config = MockConfig(retry_after="12")
    with MockServer(config=config) as server, requests.Session() as http:
        assert http.get(server.url + "/gen/a?size=1&fault=503").headers["Retry-After"] == "12"
        assert http.get(server.url + "/status/429").headers["Retry-After"] == "12"


def test_ignore_range_answers_a_range_request_whole(mock, http):
    response = http.get(mock.url + GEN + "&fault=ignore-range", headers={"Range": "bytes=0-9"})
    assert response.status_code == 200
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == CONTENT


def test_etag_change_gives_each_get_new_validators_so_if_range_never_matches(mock, http):
    url = mock.url + GEN + "&fault=etag-change"
    responses = [http.get(url) for _ in range(3)]
    assert len({r.headers["ETag"] for r in responses}) == 3
    assert len({r.headers["Last-Modified"] for r in responses}) == 3
    assert all(r.content == CONTENT for r in responses)
    resumed = http.get(url, headers={"Range": "bytes=10-", "If-Range": responses[-1].headers["ETag"]})
    assert resumed.status_code == 200
    assert resumed.content == CONTENT


def test_times_limits_a_fault_to_the_first_gets_and_head_is_never_faulted(mock, http):
    url = mock.url + GEN + "&fault=503&times=2"
    assert http.head(url).status_code == 200
    assert [http.get(url).status_code for _ in range(3)] == [503, 503, 200]
    mock.reset_stats()
    assert http.get(url).status_code == 503


def fault_sequences(seed: int, interleaved: bool) -> dict[str, list[int]]:
    """Statuses of 12 GETs of each of two URLs on a flaky server, asked in one of two orders."""
    names = ["a.bin", "b.bin"]
    order = names * 12 if interleaved else sorted(names * 12)
    config = MockConfig(fail_rate=0.5, faults=("503", "429"), seed=seed)
    sequences: dict[str, list[int]] = {name: [] for name in names}
    with MockServer(config=config) as server, requests.Session() as http:
        for name in order:
            sequences[name].append(http.get(f"{server.url}/gen/{name}?size=10").status_code)
    return sequences


def test_fail_rate_faults_depend_only_on_seed_url_and_request_number():
    first = fault_sequences(seed=1, interleaved=False)
    assert {200, 503, 429} <= {status for statuses in first.values() for status in statuses}
    assert fault_sequences(seed=1, interleaved=True) == first
    assert fault_sequences(seed=2, interleaved=False) != first


def test_concurrent_clients_share_one_fault_sequence_per_url():
    config = MockConfig(fail_rate=0.5, faults=("503", "429"), seed=3)
    with MockServer(config=config) as server:
        url = f"{server.url}/gen/c.bin?size=10"
        with requests.Session() as http:
            sequential = sorted(http.get(url).status_code for _ in range(16))
        server.reset_stats()
        with ThreadPoolExecutor(8) as pool:
            concurrent = sorted(pool.map(lambda _: requests.get(url).status_code, range(16)))
    assert concurrent == sequential


def test_fail_rate_spares_head_and_the_service_routes():
    with MockServer(config=MockConfig(fail_rate=1.0)) as server, requests.Session() as http:
        url = server.url + "/gen/a.bin?size=10"
        assert http.get(url).status_code == 503
        assert http.head(url).status_code == 200
        assert http.get(server.url + "/echo-headers").status_code == 200
        assert http.get(server.url + "/__stats").status_code == 200


# --- modifiers and service routes ----------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_points_anywhere_with_the_status_asked(mock, http, code):
    response = http.get(mock.url + "/redirect", params={"to": "ftp://x/y", "status": code},
                        allow_redirects=False)
    assert response.status_code == code
    assert response.headers["Location"] == "ftp://x/y"


def test_redirect_chain_takes_n_hops_through_the_server(mock, http):
    response = http.get(mock.url + "/redirect/3", params={"to": "/gen/c.bin?size=10"})
    assert [r.status_code for r in response.history] == [302, 302, 302]
    assert response.content == gen_bytes(10)
    hops = {key.split("?")[0] for key in mock.stats()}
    assert hops == {"/redirect/3", "/redirect/2", "/redirect/1", "/gen/c.bin"}
    http.max_redirects = 2
    with pytest.raises(requests.TooManyRedirects):
        http.get(mock.url + "/redirect/3", params={"to": "/gen/c.bin?size=10"})


@pytest.mark.parametrize("target", ["/redirect", "/redirect?to=/x&status=200", "/redirect/0?to=/x"])
def test_a_malformed_redirect_is_400(mock, http, target):
    assert http.get(mock.url + target, allow_redirects=False).status_code == 400


def test_echo_headers_returns_what_the_client_sent(mock, http):
    echoed = http.get(mock.url + "/echo-headers", headers={"Authorization": "Bearer t", "Cookie": "a=b"})
    assert echoed.json()["Authorization"] == "Bearer t"
    assert echoed.json()["Cookie"] == "a=b"


def test_status_answers_with_the_code_asked(mock, http):
    teapot = http.get(mock.url + "/status/418")
    assert (teapot.status_code, teapot.text) == (418, "418 I'm a Teapot\n")
    busy = http.get(mock.url + "/status/503?retry_after=3")
    assert (busy.status_code, busy.headers["Retry-After"]) == (503, "3")
    assert http.get(mock.url + "/status/204").content == b""
    assert http.get(mock.url + "/status/999").status_code == 400


@pytest.mark.parametrize("query, header", [
    ({"cd": "../../etc/passwd"}, 'attachment; filename="../../etc/passwd"'),
    ({"cd": 'say "hi"\\.txt'}, 'attachment; filename="say \\"hi\\"\\\\.txt"'),
    ({"cdstar": "naïve résumé.txt"},
     "attachment; filename=\"fallback.bin\"; filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt"),
    ({"cdstar": "€.txt", "cd": "euro.txt"},
     "attachment; filename=\"euro.txt\"; filename*=UTF-8''%E2%82%AC.txt"),
])
def test_content_disposition_carries_the_name_as_given(mock, http, query, header):
    response = http.get(mock.url + "/gen/x.bin", params={"size": 1, **query})
    assert response.headers["Content-Disposition"] == header


def repr_digest(headers) -> dict[str, bytes]:
    return {name: base64.b64decode(value)
            for name, value in re.findall(r"([a-z0-9-]+)=:([A-Za-z0-9+/=]*):", headers["Repr-Digest"])}


@pytest.mark.parametrize("target", [FILE + "?digest=1", GEN + "&digest=1"])
def test_digest_headers_describe_the_whole_representation(mock, http, target):
    whole = http.get(mock.url + target)
    assert repr_digest(whole.headers) == {"sha-256": hashlib.sha256(CONTENT).digest(),
                                          "sha-512": hashlib.sha512(CONTENT).digest()}
    assert base64.b64decode(whole.headers["Content-MD5"]) == hashlib.md5(CONTENT).digest()
    part = http.get(mock.url + target, headers={"Range": "bytes=0-9"})
    assert repr_digest(part.headers) == repr_digest(whole.headers)
    assert "Content-MD5" not in part.headers


def test_digest_bad_gives_well_formed_wrong_digests(mock, http):
    response = http.get(mock.url + GEN + "&digest=bad")
    digests = repr_digest(response.headers)
    assert len(digests["sha-256"]) == 32 and digests["sha-256"] != hashlib.sha256(CONTENT).digest()
    assert len(digests["sha-512"]) == 64 and digests["sha-512"] != hashlib.sha512(CONTENT).digest()
    assert base64.b64decode(response.headers["Content-MD5"]) != hashlib.md5(CONTENT).digest()


def test_latency_and_rate_hold_a_response_back(mock, http):
    started = time.monotonic()
    http.get(mock.url + "/gen/a?size=1&latency=200")
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert http.get(mock.url + "/gen/a?size=60000&rate=200000").content == gen_bytes(60_000)
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("query", ["size=abc", "", "size=1&fault=explode", "size=1&times=2",
                                   "size=1&latency=soon", "size=1&rate=0", "size=1&digest=2",
                                   "size=1&retry_after=later", "size=1&cd=a%0Ab"])
def test_a_malformed_query_is_400_naming_the_parameter(mock, http, query):
    response = http.get(f"{mock.url}/gen/x.bin?{query}")
    assert response.status_code == 400
    name = query.rpartition("&")[2].partition("=")[0] or "size"
    assert name in response.text


def test_stats_count_requests_and_body_bytes_per_url(mock, http):
    url = "/gen/s.bin?size=1000"
    http.get(mock.url + url)
    http.head(mock.url + url)
    http.get(mock.url + url, headers={"Range": "bytes=0-99"})
    expected = {url: {"requests": 3, "gets": 2, "heads": 1, "bytes_sent": 1100}}
    assert mock.stats() == expected
    assert http.get(mock.url + "/__stats").json() == expected
    mock.reset_stats()
    assert mock.stats() == {}


@pytest.mark.parametrize("target", ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/..%2f..%2fsecret.txt",
                                    "/sub/../../secret.txt", "/%2fetc%2fpasswd", "/missing.bin", "/sub"])
def test_nothing_outside_the_folder_is_served(mock, target):
    wire = wire_get(mock, target)
    assert wire.status == 404
    assert b"not for clients" not in wire.body


def test_a_server_without_a_folder_serves_no_files():
    with MockServer() as server, requests.Session() as http:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert server.url.endswith(f":{server.port}")
        assert http.get(server.url + FILE).status_code == 404


# --- the generator -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 3), start=st.integers(0, 3 * BLOCK_LENGTH),
       length=st.integers(0, 2 * BLOCK_LENGTH))
def test_gen_bytes_is_the_seeded_block_repeated(seed, start, length):
    block = random.Random(seed).randbytes(BLOCK_LENGTH)
    size = 4 * BLOCK_LENGTH
    expected = (block * 6)[start:min(start + length, size)]
    assert gen_bytes(size, seed, start, start + length) == expected


def test_gen_bytes_does_not_repeat_at_any_power_of_two():
    size = (1 << 32) + 4096
    for offset in (0, 12_345):
        window = gen_bytes(size, 0, offset, offset + 64)
        for k in range(3, 33):
            assert gen_bytes(size, 0, offset + (1 << k), offset + (1 << k) + 64) != window


def test_gen_bytes_is_fast_enough_to_serve_big_files():
    started = time.monotonic()
    assert len(gen_bytes(64 << 20, 5)) == 64 << 20
    assert time.monotonic() - started < 2.0  # per-byte Python would take half a minute


def test_gen_bytes_clips_to_the_size_and_refuses_negatives():
    assert gen_bytes(10, 0, 5, 100) == gen_bytes(10)[5:]
    assert gen_bytes(10, 0, 20) == b""
    with pytest.raises(ValueError):
        gen_bytes(-1)


def test_plan_body_always_withholds_a_byte_for_a_mid_body_fault():
    assert plan_body("reset", 10, 10).sent == 9
    assert plan_body("stall", 0, None).sent == 0
    assert plan_body("lie", 1, None).declared == 2


@pytest.mark.parametrize("bad", [{"faults": ("boom",)}, {"faults": ()}, {"fail_rate": 1.5},
                                 {"retry_after": "soon"}, {"rate": 0}, {"latency": -1}, {"chunk_size": 0}])
def test_config_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        MockConfig(**bad)


# --- starting and stopping -----------------------------------------------------------------------


def test_stop_cuts_off_stalled_and_slow_responses_at_once():
    server = MockServer().start()
    stalled = send_get(server, "/gen/s.bin?size=1000&fault=stall&at=100")
    crawling = send_get(server, "/gen/c.bin?size=1000&rate=10")
    with stalled, crawling:
        stalled_start = read_until(stalled, b"\r\n\r\n" + gen_bytes(1000)[:100])
        crawling_start = read_until(crawling, b"\r\n\r\n")
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive()
        assert read_to_end(stalled, stalled_start) == (stalled_start, "reset")
        body = read_to_end(crawling, crawling_start)[0].partition(b"\r\n\r\n")[2]
        assert len(body) < 1000


def test_a_server_starts_once_and_reports_a_busy_port():
    with MockServer() as server:
        with pytest.raises(RuntimeError):
            server.start()
        with pytest.raises(OSError):
            MockServer(port=server.port).start()


SERVE = """
from downloader.mockserver import MockConfig, serve
serve(None, "127.0.0.1", 0, MockConfig(), lambda url: print(url, flush=True))
print("bye", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_until_interrupted_then_returns_quietly(signum):
    command = [sys.executable, "-W", "error", "-c", SERVE]
    with subprocess.Popen(command, cwd=Path(__file__).parents[1], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            url = process.stdout.readline().strip()
            assert requests.get(url + "/gen/a.bin?size=5").content == gen_bytes(5)
            with requests.get(url + "/gen/a.bin?size=5&fault=stall", stream=True, timeout=5):
                process.send_signal(signum)
                out, err = process.communicate(timeout=10)
        finally:
            process.kill()  # a no-op once it has exited
    assert (process.returncode, out, err) == (0, "bye\n", "")


def test_a_name_too_long_for_the_file_system_is_a_404(tmp_path):
    with MockServer(tmp_path) as server:
        assert requests.get(f"{server.url}/{'a' * 300}.txt").status_code == 404


# --- raw protocol cases --------------------------------------------------------------------------

B = gen_bytes(10, 5)
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
CLOSE = b"Connection: close\r\n\r\n"


def raw_get(server: MockServer, target: str) -> tuple[bytes, str]:
    """Every byte the server sends for a GET of `target`, and how the connection ended."""
    with send_get(server, target) as sock:
        return read_to_end(sock)


@pytest.mark.parametrize("case, expected", [
    ("overlong", OK_HEAD + b"Content-Length: 10\r\n" + CLOSE + gen_bytes(13, 5)),
    ("bad-trailer", OK_HEAD + b"Transfer-Encoding: chunked\r\n" + CLOSE
     + b"a\r\n" + B + b"\r\n0\r\nthis is not a header\r\n\r\n"),
    ("bad-chunk-size", OK_HEAD + b"Transfer-Encoding: chunked\r\n" + CLOSE
     + b"4\r\n" + B[:4] + b"\r\nzz\r\n" + B[4:] + b"\r\n0\r\n\r\n"),
    ("header-folding", OK_HEAD + b"X-Folded: first part\r\n second part\r\nContent-Length: 10\r\n" + CLOSE + B),
    ("dup-content-length", OK_HEAD + b"Content-Length: 10\r\nContent-Length: 10\r\n" + CLOSE + B),
    ("dup-content-length-differ", OK_HEAD + b"Content-Length: 10\r\nContent-Length: 13\r\n" + CLOSE + B),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Type: application/octet-stream\nContent-Length: 10\n"
     b"Connection: close\n\n" + B),
])
def test_a_raw_case_sends_exactly_its_bytes_then_closes(mock, case, expected):
    assert raw_get(mock, f"/raw/{case}?size=10&seed=5&extra=3&at=4") == (expected, "eof")


def test_location_utf8_sends_the_raw_utf8_of_to_and_its_target_answers_percent_encoded(mock, http):
    target = "/raw/location-utf8?to=/gen/caf%C3%A9.bin%3Fsize%3D10"
    expected = (b"HTTP/1.1 302 Found\r\nLocation: /gen/caf\xc3\xa9.bin?size=10\r\nContent-Length: 0\r\n"
                + CLOSE)
    assert raw_get(mock, target) == (expected, "eof")
    followed = http.get(mock.url + target)
    assert followed.url == mock.url + "/gen/caf%C3%A9.bin?size=10"
    assert followed.content == gen_bytes(10)
    assert mock.stats()["/gen/caf%C3%A9.bin?size=10"]["gets"] == 1


def test_redirect_sends_a_non_ascii_to_as_raw_utf8_too(mock):
    wire = raw_get(mock, "/redirect?to=/gen/caf%C3%A9.bin%3Fsize%3D10")[0]
    assert b"\r\nLocation: /gen/caf\xc3\xa9.bin?size=10\r\n" in wire


def test_raw_defaults_are_100_extra_bytes_and_a_cut_halfway(mock):
    overlong = raw_get(mock, "/raw/overlong?size=10")[0]
    assert overlong.endswith(b"Content-Length: 10\r\n" + CLOSE + gen_bytes(110))
    differ = raw_get(mock, "/raw/dup-content-length-differ?size=10")[0]
    assert b"Content-Length: 10\r\nContent-Length: 110\r\n" in differ
    bad_chunk = raw_get(mock, "/raw/bad-chunk-size?size=10")[0]
    assert bad_chunk.endswith(CLOSE + b"5\r\n" + gen_bytes(10)[:5] + b"\r\nzz\r\n" + gen_bytes(10)[5:]
                              + b"\r\n0\r\n\r\n")


def test_raw_chunks_hold_at_most_64_kib(mock):
    size = 70_000
    body = gen_bytes(size)
    received, ending = raw_get(mock, f"/raw/bad-trailer?size={size}")
    assert received.partition(CLOSE)[2] == (b"10000\r\n" + body[:65536] + b"\r\n" + b"1170\r\n" + body[65536:]
                                            + b"\r\n0\r\nthis is not a header\r\n\r\n")
    assert ending == "eof"


def test_raw_answers_are_counted_and_log_no_error(mock, caplog):
    caplog.set_level(logging.DEBUG)
    for case in RAW_CASES:
        raw_get(mock, f"/raw/{case}?size=10&to=/x")
    with send_get(mock, "/raw/overlong?size=50000000") as sock:
        read_until(sock, b"\r\n\r\n")  # and hang up in the middle of the body
    assert requests.get(mock.url + "/gen/after.bin?size=10").content == gen_bytes(10)
    stats = mock.stats()
    assert stats["/raw/overlong?size=10&to=/x"] == {"requests": 1, "gets": 1, "heads": 0, "bytes_sent": 110}
    assert stats["/raw/bad-trailer?size=10&to=/x"]["bytes_sent"] == 10
    assert stats["/raw/location-utf8?size=10&to=/x"]["requests"] == 1
    assert [record for record in caplog.records if record.name.startswith(("aiohttp", "asyncio"))] == []


@pytest.mark.parametrize("target, status", [
    ("/raw/overlong", 400), ("/raw/overlong?size=ten", 400), ("/raw/overlong?size=1&extra=0", 400),
    ("/raw/bad-chunk-size?size=1&at=x", 400), ("/raw/location-utf8", 400),
    ("/raw/location-utf8?to=/a%0D%0AX-Injected:%201", 400), ("/raw/no-such-case?size=1", 404),
])
def test_a_bad_raw_request_gets_an_ordinary_error(mock, http, target, status):
    response = http.get(mock.url + target, allow_redirects=False)
    assert response.status_code == status
    assert "X-Injected" not in response.headers


def test_raw_cases_answer_get_only_and_leave_other_files_under_raw_alone(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "other.txt").write_text("a file\n")
    with MockServer(tmp_path) as server, requests.Session() as http:
        assert http.head(server.url + "/raw/overlong?size=1").status_code == 405
        assert http.get(server.url + "/raw/other.txt").text == "a file\n"


# --- HTTPS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_server(root):
    with MockServer(root, tls=True) as server:
        yield server


def test_https_is_served_with_a_certificate_from_the_servers_own_ca(https_server):
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", https_server.url)
    with requests.Session() as http:
        response = http.get(https_server.url + GEN, verify=https_server.ca_file)
        assert (response.status_code, response.content) == (200, CONTENT)
        with pytest.raises(requests.exceptions.SSLError):
            http.get(https_server.url + GEN)  # the system's CAs do not know it
    localhost = https_server.url.replace("127.0.0.1", "localhost")
    assert requests.get(localhost + "/sub/note.txt", verify=https_server.ca_file).text == "hello\n"


def test_https_speaks_http_1_1_to_the_stdlib_even_when_offered_h2(https_server):
    with send_get(https_server, GEN + "&fault=truncate&at=1000") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        received, ending = read_to_end(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (body, ending) == (CONTENT[:1000], "eof")


def test_https_speaks_http_1_1_to_curl_trusting_the_ca(https_server, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = tmp_path / "data.bin"
    done = subprocess.run([curl, "-sS", "--cacert", str(https_server.ca_file), "-o", str(out), "-w",
                           "%{http_version} %{http_code}", https_server.url + GEN],
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1.1 200", "")
    assert out.read_bytes() == CONTENT


def test_a_raw_case_goes_out_byte_for_byte_over_https(https_server):
    expected = OK_HEAD + b"Content-Length: 10\r\n" + CLOSE + gen_bytes(13, 5)
    assert raw_get(https_server, "/raw/overlong?size=10&seed=5&extra=3") == (expected, "eof")


def test_a_required_client_certificate_lets_in_only_a_client_that_has_one():
    with MockServer(tls=True, client_cert_required=True) as server, requests.Session() as http:
        url = server.url + "/gen/a.bin?size=100"
        with pytest.raises(requests.exceptions.SSLError):
            http.get(url, verify=server.ca_file)
        with pytest.raises(ssl.SSLError):
            connect(server).close()  # the handshake itself fails
        cert = (server.client_cert_file, server.client_key_file)
        assert http.get(url, verify=server.ca_file, cert=cert).content == gen_bytes(100)
        with connect(server, certfile=server.client_cert_file, keyfile=server.client_key_file) as sock:
            assert sock.version() is not None


def test_the_tls_files_live_as_long_as_the_server():
    server = MockServer(tls=True)
    with server:
        files = [server.ca_file, server.client_cert_file, server.client_key_file]
        assert all(path.read_bytes().startswith(b"-----BEGIN ") for path in files)
    assert not any(path.exists() for path in files)
    with pytest.raises(ValueError, match="tls=True"):
        MockServer(client_cert_required=True)


def test_tls_without_trustme_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trustme", None)  # what `import trustme` finds when it is missing
    with pytest.raises(ImportError, match=r"pip install 'downloader\[tls\]'"):
        MockServer(tls=True)


# --- IPv6 ----------------------------------------------------------------------------------------


@needs_ipv6
def test_ipv6_is_served_on_the_loopback_with_a_bracketed_url():
    with MockServer(host="::1") as server, requests.Session() as http:
        assert server.url == f"http://[::1]:{server.port}"
        assert http.get(server.url + "/gen/a.bin?size=100").content == gen_bytes(100)
        target = f"{server.url}/gen/b.bin?size=7"
        hop = http.get(server.url + "/redirect", params={"to": target}, allow_redirects=False)
        assert hop.headers["Location"] == target
        followed = http.get(server.url + "/redirect/2", params={"to": target})
        assert (len(followed.history), followed.url, followed.content) == (2, target, gen_bytes(7))


@needs_ipv6
def test_https_on_ipv6_is_trusted_for_the_bracketed_address():
    with MockServer(host="::1", tls=True) as server:
        assert server.url.startswith("https://[::1]:")
        assert requests.get(server.url + "/gen/a.bin?size=5", verify=server.ca_file).content == gen_bytes(5)


# --- MockConfig strings and the serve command ----------------------------------------------------


@pytest.mark.parametrize("given, latency, rate", [
    ({"latency": "50ms", "rate": "1M"}, 0.05, 1 << 20),
    ({"latency": "1s", "rate": "500K"}, 1.0, 500 << 10),
    ({"latency": 0.25, "rate": 1000}, 0.25, 1000),
    ({}, 0.0, None),
])
def test_config_takes_latency_and_rate_as_the_cli_does(given, latency, rate):
    config = MockConfig(**given)
    assert (config.latency, config.rate) == (latency, rate)


def test_a_latency_given_as_a_string_holds_responses_back():
    with MockServer(config=MockConfig(latency="200ms")) as server:
        started = time.monotonic()
        requests.get(server.url + "/gen/a.bin?size=1")
        assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("field, value", [("latency", "soon"), ("latency", "5 parsecs"), ("latency", None),
                                          ("rate", "fast"), ("rate", True), ("rate", -5)])
def test_config_refuses_a_string_it_cannot_read_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^MockConfig {field}: "):
        MockConfig(**{field: value})


def test_config_names_the_fault_kind_it_does_not_know():
    with pytest.raises(ValueError, match=r"'boom' is not a fault kind \(expected some of 503, 429, "):
        MockConfig(faults=("503", "boom"))


def test_serve_names_the_fault_kind_it_does_not_know():
    done = run_cli("serve", "--port", "0", "--faults", "503,boom")
    assert done.returncode == 2
    assert done.stderr == (f"downloader: --faults: 'boom' is not a fault kind (expected some of "
                           f"{', '.join(FAULT_KINDS)})\n")


@contextmanager
def serve_command(*args: str):
    """`downloader serve --port 0 ARGS` as a subprocess: yields it and the first line it printed, then
    ends it with SIGTERM."""
    command = [sys.executable, "-m", "downloader", "serve", "--port", "0", *args]
    with subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            yield process, process.stdout.readline()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=10)
            finally:
                process.kill()  # a no-op once it has exited


URL_IN_LINE = re.compile(r"(https?://\S+?)/\s")


def test_serve_tls_prints_the_url_and_where_the_ca_file_is():
    with serve_command("--tls") as (process, line):
        assert re.fullmatch(r"serving \(virtual files only\) at https://127\.0\.0\.1:\d+/  \(Ctrl-C to stop\)\n",
                            line)
        url = URL_IN_LINE.search(line).group(1)
        match = re.fullmatch(r"CA certificate: (\S+) \(trust it with: downloader get --ca-certificate \1 URL\.\.\.\)\n",
                             process.stdout.readline())
        ca_file = Path(match.group(1))
        assert requests.get(url + "/gen/a.bin?size=9", verify=ca_file).content == gen_bytes(9)
    assert process.returncode == 0
    assert not ca_file.exists()


@needs_ipv6
def test_serve_on_ipv6_prints_a_bracketed_url():
    with serve_command("--host", "::1") as (process, line):
        url = URL_IN_LINE.search(line).group(1)
        assert re.fullmatch(r"http://\[::1\]:\d+", url)
        assert requests.get(url + "/gen/a.bin?size=9").content == gen_bytes(9)


TLS_WITHOUT_TRUSTME = """
import sys
sys.modules["trustme"] = None
sys.argv = ["downloader", "serve", "--port", "0", "--tls"]
from downloader.cli import main
main()
"""


def test_serve_tls_without_trustme_is_one_line_naming_the_extra():
    done = subprocess.run([sys.executable, "-c", TLS_WITHOUT_TRUSTME], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "downloader: --tls: HTTPS needs trustme: pip install 'downloader[tls]'\n"


def test_cdraw_sends_the_content_disposition_exactly_as_given(tmp_path):
    import requests
    with MockServer(None) as srv:
        value = "filename=params.txt; charset=x; option=y"
        resp = requests.get(f"{srv.url}/gen/a.bin", params={"size": 3, "cdraw": value, "cd": "ignored.bin"})
    assert resp.headers["Content-Disposition"] == value
