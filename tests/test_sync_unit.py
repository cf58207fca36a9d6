"""The requests engine (`sequential` / `thread`) against `responses`-mocked URLs: no network at all.

`translate` is checked on its own; everything else goes through the public `download(...)` so the
tests see what a user sees: a Result per URL, the files in the output folder, the requests sent.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import requests
import responses
import urllib3
from responses.registries import OrderedRegistry

from downloader import download
from downloader.core.ranges import Validator
from downloader.engines.sync import translate
from downloader.errors import IncompleteBody, StallError, TransferError
from downloader.progress import RecordingReporter
from downloader.sink import PartFile

A = "http://a.example"
B = "http://b.example"
BODY = b"hello, world\n" * 100


def get(urls, dest, **options):
    """One sequential batch, quiet, with fast retries unless told otherwise."""
    options.setdefault("retries", 2)
    options.setdefault("retry_base", 0.01)
    options.setdefault("reporter", RecordingReporter())
    return download(list(urls), dest, mode="sequential", **options)


def only(results):
    [result] = list(results)
    return result


def sent(call, name):
    return call.request.headers.get(name)


# ======================================================================== translate
class TestTranslate:
    @pytest.mark.parametrize("exc, kind, text", [
        (requests.exceptions.ConnectionError("[Errno 111] Connection refused"), TransferError, "connection refused"),
        (requests.exceptions.ReadTimeout("read timed out"), StallError, "stall"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), StallError, "stall"),
        (requests.exceptions.ChunkedEncodingError("broken"), IncompleteBody, "ChunkedEncodingError"),
        (urllib3.exceptions.ProtocolError("Connection broken"), IncompleteBody, "ProtocolError"),
        (urllib3.exceptions.IncompleteRead(10, 90), IncompleteBody, "mid-body"),
        (requests.exceptions.ConnectTimeout("connect timed out"), TransferError, "connect timeout"),
    ])
    def test_requests_errors_become_the_projects_own(self, exc, kind, text):
        error = translate(exc)
        assert type(error) is kind
        assert text in str(error)
        assert error.retryable is True
        assert not isinstance(error, requests.RequestException)

    def test_an_invalid_url_is_not_worth_retrying(self):
        error = translate(requests.exceptions.InvalidURL("bad"))
        assert type(error) is TransferError and error.retryable is False

    def test_anything_else_still_becomes_a_transfer_error(self):
        error = translate(requests.exceptions.TooManyRedirects("loop"))
        assert type(error) is TransferError and "TooManyRedirects" in str(error)


# ======================================================================== download(...) end to end
class TestDownload:
    @responses.activate
    def test_a_plain_200_is_saved_under_the_url_name(self, tmp_path):
        responses.add(responses.GET, f"{A}/dir/file.txt", body=BODY)
        result = only(get([f"{A}/dir/file.txt?x=1"], tmp_path))
        assert result.status == "ok" and result.attempts == 1 and result.http_status == 200
        assert (tmp_path / "file.txt").read_bytes() == BODY
        assert result.bytes == len(BODY)
        assert not list(tmp_path.glob("*.part*"))

    @responses.activate
    def test_404_fails_at_once(self, tmp_path):
        responses.add(responses.GET, f"{A}/missing", status=404)
        results = get([f"{A}/missing"], tmp_path, retries=5)
        result = only(results)
        assert result.status == "failed" and result.attempts == 1
        assert "HTTP 404" in result.error
        assert len(responses.calls) == 1
        assert not results.success
        assert not [p for p in tmp_path.iterdir() if p.name != ".downloader"]

    @responses.activate(registry=OrderedRegistry)
    def test_503_with_retry_after_zero_then_200_succeeds_on_the_second_try(self, tmp_path):
        responses.add(responses.GET, f"{A}/busy.bin", status=503, headers={"Retry-After": "0"})
        responses.add(responses.GET, f"{A}/busy.bin", body=BODY)
        results = get([f"{A}/busy.bin"], tmp_path, retries=3, retry_base=100)
        result = only(results)
        assert results.seconds < 10  # only Retry-After: 0 could make the wait this short
        assert result.status == "ok" and result.attempts == 2
        assert (tmp_path / "busy.bin").read_bytes() == BODY

    @responses.activate(registry=OrderedRegistry)
    def test_retries_run_out(self, tmp_path):
        for _ in range(2):
            responses.add(responses.GET, f"{A}/down", status=503, headers={"Retry-After": "0"})
        result = only(get([f"{A}/down"], tmp_path, retries=1))
        assert result.status == "failed" and result.attempts == 2 and "HTTP 503" in result.error

    @responses.activate
    def test_a_connection_error_is_retried_then_reported_in_one_line(self, tmp_path):
        responses.add(responses.GET, f"{A}/refused",
                      body=requests.exceptions.ConnectionError("[Errno 111] Connection refused"))
        result = only(get([f"{A}/refused"], tmp_path, retries=1))
        assert result.status == "failed" and result.attempts == 2
        assert result.error == "connection failed: connection refused"

    @responses.activate
    def test_a_redirect_to_ftp_is_refused(self, tmp_path):
        responses.add(responses.GET, f"{A}/go", status=302, headers={"Location": "ftp://a.example/file"})
        result = only(get([f"{A}/go"], tmp_path, retries=3))
        assert result.status == "failed" and "refused" in result.error
        assert result.attempts == 1  # a refused redirect is not worth another try
        assert len(responses.calls) == 1

    @responses.activate
    def test_a_redirect_loop_stops(self, tmp_path):
        responses.add(responses.GET, f"{A}/loop", status=302, headers={"Location": "/loop"})
        result = only(get([f"{A}/loop"], tmp_path, retries=0))
        assert result.status == "failed" and "redirects" in result.error
        assert len(responses.calls) == 11  # the first request and ten hops (the default)

    @responses.activate
    def test_credentials_do_not_follow_a_redirect_to_another_host(self, tmp_path):
        responses.add(responses.GET, f"{A}/file.bin", status=302, headers={"Location": f"{B}/file.bin"})
        responses.add(responses.GET, f"{B}/file.bin", body=BODY)
        headers = ["Authorization: Bearer s3cret", "Cookie: session=1", "X-Trace: 7"]
        result = only(get([f"{A}/file.bin"], tmp_path, headers=headers))
        assert result.status == "ok"
        first, second = responses.calls
        assert sent(first, "Authorization") == "Bearer s3cret" and sent(first, "Cookie") == "session=1"
        assert second.request.url == f"{B}/file.bin"
        assert sent(second, "Authorization") is None and sent(second, "Cookie") is None
        assert sent(second, "X-Trace") == "7"
        assert (tmp_path / "file.bin").read_bytes() == BODY

    @responses.activate(registry=OrderedRegistry)
    def test_credentials_stay_dropped_for_retries_after_a_redirect_to_another_host(self, tmp_path):
        responses.add(responses.GET, f"{A}/f", status=302, headers={"Location": f"{B}/f"})
        responses.add(responses.GET, f"{B}/f", status=503, headers={"Retry-After": "0"})
        responses.add(responses.GET, f"{B}/f", body=BODY)
        result = only(get([f"{A}/f"], tmp_path, headers=["Authorization: Bearer s3cret"]))
        assert result.status == "ok"
        assert [c.request.url for c in responses.calls] == [f"{A}/f", f"{B}/f", f"{B}/f"]
        assert [sent(c, "Authorization") for c in responses.calls] == ["Bearer s3cret", None, None]

    @responses.activate(registry=OrderedRegistry)
    def test_credentials_stay_dropped_when_a_later_hop_comes_back(self, tmp_path):
        responses.add(responses.GET, f"{A}/1", status=302, headers={"Location": f"{B}/2"})
        responses.add(responses.GET, f"{B}/2", status=302, headers={"Location": f"{A}/3"})
        responses.add(responses.GET, f"{A}/3", status=503, headers={"Retry-After": "0"})
        responses.add(responses.GET, f"{A}/3", body=BODY)
        assert only(get([f"{A}/1"], tmp_path, headers=["Authorization: Bearer s3cret"])).status == "ok"
        assert [sent(c, "Authorization") for c in responses.calls] == ["Bearer s3cret", None, None, None]

    @responses.activate
    def test_credentials_follow_a_redirect_on_the_same_host(self, tmp_path):
        responses.add(responses.GET, f"{A}/old.bin", status=301, headers={"Location": "/new.bin"})
        responses.add(responses.GET, f"{A}/new.bin", body=BODY)
        result = only(get([f"{A}/old.bin"], tmp_path, headers=["Authorization: Bearer s3cret"]))
        assert result.status == "ok"
        assert [sent(c, "Authorization") for c in responses.calls] == ["Bearer s3cret", "Bearer s3cret"]

    @responses.activate
    def test_a_downgrade_to_http_on_the_same_host_drops_credentials(self, tmp_path):
        responses.add(responses.GET, "https://a.example:8443/f", status=302,
                      headers={"Location": "http://a.example:8443/f"})
        responses.add(responses.GET, "http://a.example:8443/f", body=BODY)
        only(get(["https://a.example:8443/f"], tmp_path, headers=["Authorization: Bearer s3cret"]))
        assert [sent(c, "Authorization") for c in responses.calls] == ["Bearer s3cret", None]

    @responses.activate
    def test_the_content_disposition_name_is_used(self, tmp_path):
        responses.add(responses.GET, f"{A}/download?id=7", body=BODY,
                      headers={"Content-Disposition": 'attachment; filename="report.pdf"'})
        result = only(get([f"{A}/download?id=7"], tmp_path))
        assert result.status == "ok" and result.path == str(tmp_path / "report.pdf")
        assert (tmp_path / "report.pdf").read_bytes() == BODY
        assert not (tmp_path / "download").exists()

    @responses.activate
    def test_a_hostile_content_disposition_name_stays_inside_the_folder(self, tmp_path):
        dest = tmp_path / "out"
        responses.add(responses.GET, f"{A}/x", body=BODY,
                      headers={"Content-Disposition": 'attachment; filename="../../escaped.txt"'})
        assert only(get([f"{A}/x"], dest)).status == "ok"
        assert (dest / "escaped.txt").read_bytes() == BODY
        assert not (tmp_path / "escaped.txt").exists()

    @responses.activate
    def test_a_second_run_fetches_nothing(self, tmp_path):
        responses.add(responses.GET, f"{A}/once.bin", body=BODY)
        assert only(get([f"{A}/once.bin"], tmp_path)).status == "ok"
        responses.calls.reset()
        result = only(get([f"{A}/once.bin"], tmp_path))
        assert result.status == "skipped" and len(responses.calls) == 0
        assert (tmp_path / "once.bin").read_bytes() == BODY

    @responses.activate
    def test_a_wrong_checksum_fails_and_leaves_no_file(self, tmp_path):
        responses.add(responses.GET, f"{A}/c.bin", body=BODY)
        result = only(get([f"{A}/c.bin"], tmp_path, retries=0, checksum="sha-256=" + "0" * 64))
        assert result.status == "failed" and "mismatch" in result.error
        assert not (tmp_path / "c.bin").exists()
        assert not list(tmp_path.glob("c.bin.part*"))

    @responses.activate
    def test_a_right_checksum_passes(self, tmp_path):
        responses.add(responses.GET, f"{A}/c.bin", body=BODY)
        result = only(get([f"{A}/c.bin"], tmp_path, checksum="sha-256=" + hashlib.sha256(BODY).hexdigest()))
        assert result.status == "ok" and result.sha256 in (None, hashlib.sha256(BODY).hexdigest())

    @responses.activate
    def test_the_first_request_asks_for_plain_bytes(self, tmp_path):
        responses.add(responses.GET, f"{A}/plain.bin", body=BODY)
        get([f"{A}/plain.bin"], tmp_path)
        assert sent(responses.calls[0], "Accept-Encoding") == "identity"


class TestResume:
    """A `.part` and state file left by an earlier run: resumed only when the server proves it."""

    ETAG = '"v1"'

    def leave_part(self, dest, url, have: bytes) -> None:
        part = PartFile(dest / "r.bin")
        part.open(fresh=True)
        part.write(0, have)
        part.save_state(url, len(BODY), Validator(etag=self.ETAG), "stream", [(len(have), len(BODY))])
        part.close()

    @responses.activate
    def test_a_matching_206_is_appended(self, tmp_path):
        url = f"{A}/r.bin"
        self.leave_part(tmp_path, url, BODY[:500])

        def ranged(request):
            assert request.headers["Range"] == "bytes=500-"
            assert request.headers["If-Range"] == self.ETAG
            return 206, {"Content-Range": f"bytes 500-{len(BODY) - 1}/{len(BODY)}", "ETag": self.ETAG}, BODY[500:]

        responses.add_callback(responses.GET, url, callback=ranged)
        result = only(get([url], tmp_path))
        assert result.status == "ok" and result.bytes == len(BODY) - 500
        assert (tmp_path / "r.bin").read_bytes() == BODY
        assert not (tmp_path / "r.bin.part.state").exists()

    @responses.activate
    def test_a_200_to_the_range_request_starts_from_zero(self, tmp_path):
        url = f"{A}/r.bin"
        self.leave_part(tmp_path, url, b"X" * 500)  # stale bytes: must not survive
        responses.add(responses.GET, url, body=BODY, headers={"ETag": '"v2"'})
        result = only(get([url], tmp_path))
        assert result.status == "ok"
        assert (tmp_path / "r.bin").read_bytes() == BODY

    @responses.activate
    def test_a_206_with_another_etag_starts_from_zero(self, tmp_path):
        url = f"{A}/r.bin"
        self.leave_part(tmp_path, url, b"X" * 500)
        calls = []

        def server(request):
            calls.append(dict(request.headers))
            if "Range" in request.headers and request.headers["Range"] != "bytes=0-":
                start = int(request.headers["Range"].split("=")[1].split("-")[0])
                return 206, {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}", "ETag": '"v2"'}, \
                    BODY[start:]
            return 200, {"ETag": '"v2"'}, BODY

        responses.add_callback(responses.GET, url, callback=server)
        result = only(get([url], tmp_path))
        assert result.status == "ok"
        assert (tmp_path / "r.bin").read_bytes() == BODY
        assert calls[0]["Range"] == "bytes=500-" and len(calls) >= 2

    @responses.activate
    def test_a_state_file_for_another_url_is_not_used(self, tmp_path):
        url = f"{A}/r.bin"
        self.leave_part(tmp_path, f"{B}/r.bin", b"X" * 500)
        responses.add(responses.GET, url, body=BODY)
        assert only(get([url], tmp_path)).status == "ok"
        assert "Range" not in responses.calls[0].request.headers or \
            responses.calls[0].request.headers["Range"].startswith("bytes=0-")
        assert (tmp_path / "r.bin").read_bytes() == BODY


@responses.activate
def test_a_report_line_per_url(tmp_path):
    responses.add(responses.GET, f"{A}/ok.bin", body=BODY)
    responses.add(responses.GET, f"{A}/gone", status=410)
    report = tmp_path / "report.jsonl"
    results = get([f"{A}/ok.bin", f"{A}/gone", "ftp://nope/x"], tmp_path / "out", report=str(report))
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {(r["url"], r["status"]) for r in lines} == {(f"{A}/ok.bin", "ok"), (f"{A}/gone", "failed")}
    assert len(results.rejected) == 1 and results.rejected[0].text == "ftp://nope/x"


@responses.activate
def test_thread_mode_runs_a_batch_over_several_workers(tmp_path):
    urls = [f"{A}/many/{i}.bin" for i in range(6)]
    for i, url in enumerate(urls):
        responses.add(responses.GET, url, body=BODY * (i + 1))
    results = download(urls, tmp_path, mode="thread", jobs=3, reporter=RecordingReporter())
    assert results.counts == {"ok": 6, "skipped": 0, "failed": 0, "interrupted": 0}
    for i in range(6):
        assert (tmp_path / f"{i}.bin").read_bytes() == BODY * (i + 1)


@responses.activate
@pytest.mark.parametrize("status", [200, 206])
def test_content_md5_of_a_whole_body_is_checked(tmp_path, status):
    import base64
    headers = {"Content-MD5": base64.b64encode(hashlib.md5(b"other bytes").digest()).decode(),
               "ETag": '"v1"'}
    if status == 206:
        headers["Content-Range"] = f"bytes 0-{len(BODY) - 1}/{len(BODY)}"
    responses.add(responses.GET, f"{A}/md5.bin", body=BODY, status=status, headers=headers)
    result = only(get([f"{A}/md5.bin"], tmp_path, retries=0))
    assert result.status == "failed" and "md5 mismatch (Content-MD5)" in result.error
    assert not (tmp_path / "md5.bin").exists()
