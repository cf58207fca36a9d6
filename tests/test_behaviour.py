"""One behaviour suite, run against every engine (sequential, thread, async, curl) on the mock server.
If a behaviour holds for one engine it must hold for all."""
from __future__ import annotations

import gc
import itertools
import json

import pytest

from downloader.mockserver import gen_bytes

FIXTURE_BYTES = None


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_downloads_files_with_exact_bytes(fetch, url, server, tmp_path):
    from conftest import FIXTURES
    urls = [f"{server.url}/hello.txt", f"{server.url}/docs/manual.txt", url("/gen/one.bin", size=300_000)]
    results = fetch(urls)
    assert results.counts == {"ok": 3, "skipped": 0, "failed": 0, "interrupted": 0}
    out = tmp_path / "out"
    assert read(out / "hello.txt") == read(FIXTURES / "data/hello.txt")
    assert read(out / "manual.txt") == read(FIXTURES / "data/docs/manual.txt")
    assert read(out / "one.bin") == gen_bytes(300_000)
    assert not list(out.glob("*.part*"))
    assert results.total_bytes == sum((out / n).stat().st_size for n in ("hello.txt", "manual.txt", "one.bin"))


def test_rerun_fetches_nothing_that_is_complete(fetch, url, stats, tmp_path):
    a, b = url("/gen/a.bin", size=50_000), url("/gen/b.bin", size=70_000, cd="named-by-server.bin")
    first = fetch([a, b])
    assert first.counts["ok"] == 2
    assert (tmp_path / "out/named-by-server.bin").exists()
    before = stats(a)["requests"], stats(b)["requests"]
    again = fetch([a, b])
    assert again.counts == {"ok": 0, "skipped": 2, "failed": 0, "interrupted": 0}
    assert (stats(a)["requests"], stats(b)["requests"]) == before


def test_existing_file_is_kept_unless_overwrite(fetch, url, tmp_path, stats):
    u = url("/gen/keep.bin", size=1000)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.bin").write_bytes(b"mine")
    assert fetch([u]).counts["skipped"] == 1
    assert read(tmp_path / "out/keep.bin") == b"mine"
    assert stats(u)["requests"] == 0
    assert fetch([u], overwrite=True).counts["ok"] == 1
    assert read(tmp_path / "out/keep.bin") == gen_bytes(1000)


def test_content_disposition_names(fetch, url, tmp_path):
    results = fetch([url("/gen/x.bin", size=10, cd="report 2024.pdf"),
                     url("/gen/y.bin", size=11, cdstar="€ rates.txt"),
                     url("/gen/z.bin", size=12, cd="../../escape.txt")])
    assert results.counts["ok"] == 3
    out = tmp_path / "out"
    assert read(out / "report 2024.pdf") == gen_bytes(10)
    assert read(out / "€ rates.txt") == gen_bytes(11)
    assert read(out / "escape.txt") == gen_bytes(12)
    assert not (tmp_path / "escape.txt").exists()


def test_traversal_in_url_path_stays_inside(fetch, server, tmp_path):
    results = fetch([f"{server.url}/gen/%2e%2e%2f%2e%2e%2fevil.bin?size=5"])
    assert results.counts["ok"] == 1
    files = [p for p in (tmp_path / "out").iterdir() if p.name != ".downloader"]
    assert [p.name for p in files] == ["evil.bin"]


def test_same_name_from_two_urls_gets_distinct_deterministic_names(fetch, url, tmp_path):
    a = url("/gen/same.bin", size=100, seed=1)
    b = url("/gen/same.bin", size=200, seed=2)
    first = fetch([a, b], dest=tmp_path / "one")
    second = fetch([a, b], dest=tmp_path / "two")
    assert first.counts["ok"] == second.counts["ok"] == 2
    names_one = sorted(p.name for p in (tmp_path / "one").glob("same*"))
    names_two = sorted(p.name for p in (tmp_path / "two").glob("same*"))
    assert len(names_one) == 2 and names_one == names_two
    contents = sorted(read(tmp_path / "one" / n) for n in names_one)
    assert contents == sorted([gen_bytes(100, 1), gen_bytes(200, 2)])


def test_retry_after_seconds_and_date_are_honoured(fetch, url):
    # retry_base=600: without honouring Retry-After (0 s here) the retries would wait minutes.
    urls = [url("/gen/r1.bin", size=1000, fault="503", times=2, retry_after="0"),
            url("/gen/r2.bin", size=1000, fault="429", times=1, retry_after="date:0")]
    results = fetch(urls, retry_base=600, retries=3)
    assert results.counts["ok"] == 2
    assert sorted(r.attempts for r in results) == [2, 3]
    assert results.seconds < 30


def test_client_errors_fail_at_once(fetch, server):
    results = fetch([f"{server.url}/missing.bin", f"{server.url}/status/403"], retries=5)
    assert results.counts["failed"] == 2
    assert {r.error for r in results} == {"HTTP 404 Not Found", "HTTP 403 Forbidden"}
    assert all(r.attempts == 1 for r in results)


def test_retries_exhausted_reports_the_last_reason(fetch, url):
    results = fetch([url("/gen/down.bin", size=10, fault="503")], retries=2)
    (result,) = results.failed
    assert result.attempts == 3 and "503" in result.error


def test_short_body_is_an_error_never_a_success(fetch, url, tmp_path):
    results = fetch([url("/gen/short.bin", size=100_000, fault="truncate"),
                     url("/gen/liar.bin", size=100_000, fault="lie")], retries=1)
    assert results.counts["failed"] == 2
    assert not (tmp_path / "out/short.bin").exists() and not (tmp_path / "out/liar.bin").exists()
    errors = {r.url.split("?")[0].rsplit("/", 1)[1]: r.error for r in results}
    assert "broken" in errors["short.bin"] or "closed after" in errors["short.bin"]
    assert "Content-Length (150,000) disagrees" in errors["liar.bin"] or "closed after" in errors["liar.bin"]


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_body_cut_once_resumes_without_refetching(fetch, url, stats, tmp_path, fault):
    size = 2_000_000
    u = url("/gen/cut.bin", size=size, fault=fault, times=1, at=700_000)
    results = fetch([u], retries=2, segments=1)
    assert results.counts["ok"] == 1
    assert read(tmp_path / "out/cut.bin") == gen_bytes(size)
    assert stats(u)["gets"] == 2
    if fault == "truncate":
        # a clean close delivers every byte sent, so the resume must ask only for the rest
        # (a TCP reset may discard what was still in the client's socket buffer)
        assert stats(u)["bytes_sent"] == size


def test_stalled_body_times_out_then_resumes(fetch, url, tmp_path):
    u = url("/gen/stall.bin", size=400_000, fault="stall", times=1, at=100_000)
    results = fetch([u], timeout=0.5, retries=2)
    assert results.counts["ok"] == 1
    assert read(tmp_path / "out/stall.bin") == gen_bytes(400_000)


def test_redirects_are_followed_within_limits(fetch, server, url, tmp_path):
    target = url("/gen/final.bin", size=1234)
    ok = fetch([f"{server.url}/redirect/3?to={target}"])
    assert ok.counts["ok"] == 1
    assert read(tmp_path / "out/final.bin") == gen_bytes(1234)
    too_many = fetch([f"{server.url}/redirect/11?to={target}&x=1"])
    assert "more than 10 redirects" in too_many.failed[0].error
    wrong_scheme = fetch([f"{server.url}/redirect?to=ftp://127.0.0.1/file"])
    assert "refused" in wrong_scheme.failed[0].error and wrong_scheme.failed[0].attempts == 1


def test_credentials_never_follow_a_redirect_to_another_host(fetch, server, tmp_path):
    other_host = server.url.replace("127.0.0.1", "localhost") + "/echo-headers"
    same_host = server.url + "/echo-headers"
    headers = ["Authorization: Bearer secret", "Cookie: session=1", "X-Trace: abc"]
    fetch([f"{server.url}/redirect?to={other_host}"], dest=tmp_path / "cross", headers=headers)
    fetch([f"{server.url}/redirect?to={same_host}"], dest=tmp_path / "same", headers=headers)
    cross = {k.lower(): v for k, v in json.loads(read(tmp_path / "cross/echo-headers")).items()}
    same = {k.lower(): v for k, v in json.loads(read(tmp_path / "same/echo-headers")).items()}
    assert "authorization" not in cross and "cookie" not in cross and cross["x-trace"] == "abc"
    assert same["authorization"] == "Bearer secret" and same["cookie"] == "session=1"


def test_url_file_styles_junk_and_duplicates(fetch, url, server, stats, tmp_path):
    a = url("/gen/a.bin", size=100)
    b = url("/gen/b.bin", size=200)
    echo = f"{server.url}/echo-headers"
    lines = ["\ufeff# a comment\r\n", f"  {a}  \r\n", "\n", "not a url\n", f"{b}\n", "  out=renamed.bin\n",
             "  dir=sub/../sub2\n", f"{echo}\n", "  header=X-Token: t1\n", "  header=X-Other: t2\n",
             f"{a}\n", "ftp://example.org/x\n"]
    results = fetch(lines=lines)
    out = tmp_path / "out"
    assert results.counts == {"ok": 3, "skipped": 0, "failed": 0, "interrupted": 0}
    assert [(r.line, r.text) for r in results.rejected] == [(4, "not a url"), (12, "ftp://example.org/x")]
    assert read(out / "a.bin") == gen_bytes(100)
    assert read(out / "sub2/renamed.bin") == gen_bytes(200)
    echoed = {k.lower(): v for k, v in json.loads(read(out / "echo-headers")).items()}
    assert echoed["x-token"] == "t1" and echoed["x-other"] == "t2"
    assert stats(a)["gets"] == 1
    assert not results.success


def test_report_events_and_api_results(fetch, url):
    good, bad = url("/gen/ok.bin", size=5000), url("/status/404")
    results = fetch([good, bad])
    by_url = {r.url: r for r in results}
    assert by_url[good].status == "ok" and by_url[good].bytes == 5000 and by_url[good].http_status in (200, 206)
    assert by_url[bad].status == "failed" and by_url[bad].http_status == 404
    assert results.ok == [by_url[good]] and results.failed == [by_url[bad]]
    assert "1 downloaded, 0 already there, 1 failed" in results.summary()


def test_segmented_download_is_exact(fetch, url, stats, tmp_path):
    size = 6_000_000
    u = url("/gen/seg.bin", size=size)
    results = fetch([u], segments=4, min_segment_size="1M", jobs=4)
    assert results.counts["ok"] == 1
    assert read(tmp_path / "out/seg.bin") == gen_bytes(size)
    if results.items[0].attempts > 1:  # one connection (sequential) cannot split a file
        assert stats(u)["bytes_sent"] <= size + 4 * 256 * 1024


def test_segments_failing_at_random_still_give_exact_bytes(mode, tmp_path):
    from downloader import Downloader
    from downloader.mockserver import MockConfig, MockServer
    from downloader.progress import RecordingReporter
    config = MockConfig(fail_rate=0.3, faults=("reset", "truncate", "503"), seed=11)
    with MockServer(None, config) as srv:
        urls = [f"{srv.url}/gen/f{i}.bin?size={3_000_000 + i}&seed={i}" for i in range(3)]
        results = Downloader(tmp_path, mode=mode, segments=4, min_segment_size="512K", jobs=6, retries=10,
                             retry_base=0.01, reporter=RecordingReporter()).enqueue(*urls).run()
    assert results.counts["ok"] == 3, [r.error for r in results.failed]
    for i in range(3):
        assert read(tmp_path / f"f{i}.bin") == gen_bytes(3_000_000 + i, i)


@pytest.mark.parametrize("fault", ["ignore-range", "etag-change"])
def test_resume_refused_by_server_restarts_cleanly(fetch, url, tmp_path, fault):
    # the first GET is cut short; the second (a Range request) meets the fault and gets a 200:
    # the bytes on disk must not be trusted, the file starts over from zero.
    size = 1_500_000
    first = url("/gen/x.bin", size=size, fault="truncate", times=1, at=500_000)
    results = fetch([first], retries=3)
    assert read(tmp_path / "out/x.bin") == gen_bytes(size)
    u = url("/gen/y.bin", size=size, fault=fault)
    results = fetch([u], retries=3)
    assert results.counts["ok"] == 1
    assert read(tmp_path / "out/y.bin") == gen_bytes(size)


def test_progress_events_cover_the_bytes(fetch, url):
    results = fetch([url("/gen/p.bin", size=3_000_000)])
    progressed = sum(n for kind, *rest in results.events if kind == "progress" for n in rest)
    assert progressed == 3_000_000
    assert ("finish", "ok") in results.events


def test_timeout_is_a_stall_limit_never_a_cap_on_the_transfer(fetch, url, tmp_path):
    # 900 kB at 300 kB/s takes about 3 s; a 1 s timeout must not cut it while bytes keep coming
    results = fetch([url("/gen/long.bin", size=900_000, rate=300_000)], timeout=1, retries=0, segments=1)
    assert results.counts["ok"] == 1 and results.items[0].attempts == 1
    assert read(tmp_path / "out/long.bin") == gen_bytes(900_000)


def test_retry_failed_runs_only_the_failures_again(mode, url, tmp_path):
    from downloader import Downloader
    from downloader.progress import RecordingReporter
    good, flaky = url("/gen/good.bin", size=1000), url("/gen/flaky.bin", size=2000, fault="503", times=2)
    d = Downloader(tmp_path, mode=mode, retries=0, retry_base=0.01, reporter=RecordingReporter())
    first = d.enqueue(good, flaky).run()
    assert first.counts == {"ok": 1, "skipped": 0, "failed": 1, "interrupted": 0}
    second = d.retry_failed()
    assert [r.url for r in second] == [flaky] and second.counts["failed"] == 1
    third = d.retry_failed()
    assert third.counts == {"ok": 1, "skipped": 0, "failed": 0, "interrupted": 0}
    assert read(tmp_path / "flaky.bin") == gen_bytes(2000)


def test_complete_part_file_is_finished_by_a_416(fetch, url, stats, tmp_path):
    import requests
    size = 700_000
    u = url("/gen/done.bin", size=size)
    etag = requests.head(u).headers["ETag"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "done.bin.part").write_bytes(gen_bytes(size))
    (out / "done.bin.part.state").write_text(json.dumps(
        {"version": 1, "url": u, "size": size, "validator": {"etag": etag, "last_modified": None},
         "layout": "stream", "missing": [[size, size]]}))
    results = fetch([u])
    assert results.counts["ok"] == 1
    assert read(out / "done.bin") == gen_bytes(size)
    assert stats(u)["bytes_sent"] == 0 and not (out / "done.bin.part.state").exists()


def test_per_host_cap_still_completes_the_batch(fetch, url, server):
    other = server.url.replace("127.0.0.1", "localhost")
    urls = [url(f"/gen/h{i}.bin", size=5000, latency=20) for i in range(6)] + \
        [f"{other}/gen/o{i}.bin?size=5000" for i in range(3)]
    results = fetch(urls, per_host=1, jobs=8)
    assert results.counts["ok"] == 9


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(fetch, server, tmp_path):
    import base64
    echo = server.url.replace("http://", "http://alice:s3cret@") + "/echo-headers?cred=1"
    report = tmp_path / "report.jsonl"
    results = fetch([echo, server.url.replace("http://", "http://alice:s3cret@") + "/status/404"],
                    report=str(report))
    sent = {k.lower(): v for k, v in json.loads(read(tmp_path / "out/echo-headers")).items()}
    assert sent["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert "s3cret" not in report.read_text() and "alice:***@" in report.read_text()
    assert not any("s3cret" in str(event) for event in results.events)


def test_fragments_do_not_make_a_second_download(fetch, url, stats, tmp_path):
    u = url("/gen/frag.bin", size=13)
    results = fetch([u + "#one", u + "#two"])
    assert results.counts["ok"] == 1 and stats(u)["gets"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".downloader", "frag.bin"]


def test_an_explicit_out_name_wins_over_an_earlier_download_of_the_url(fetch, url, tmp_path):
    u = url("/gen/plain.bin", size=100)
    fetch([u])
    results = fetch(lines=[f"{u}\n", "  out=renamed.bin\n", "  dir=data\n"])
    assert results.counts["ok"] == 1
    assert read(tmp_path / "out/data/renamed.bin") == gen_bytes(100)
    assert (tmp_path / "out/plain.bin").exists()


def test_http_proxy_from_the_environment_carries_every_request(fetch, server, monkeypatch, tmp_path):
    # the mock server answers absolute-form requests, so it serves as a forward proxy; the host
    # below does not resolve, so the file only arrives through the proxy
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    host, port = server.url.split("//")[1].split(":")
    monkeypatch.setenv("http_proxy", f"http://someone:s3cret@{host}:{port}")
    far = f"http://far.invalid/gen/proxied.bin?size=300000&u={id(tmp_path)}"
    results = fetch([far, "http://far.invalid/echo-headers"], segments=2, min_segment_size="64K")
    assert results.counts["ok"] == 2, results.failures
    assert read(tmp_path / "out/proxied.bin") == gen_bytes(300_000)
    assert server.stats()[far.split("?")[0] + "?" + far.split("?")[1]]["gets"] >= 2  # segments, all proxied
    seen = {k.lower(): v for k, v in json.loads(read(tmp_path / "out/echo-headers")).items()}
    assert seen["proxy-authorization"] == "Basic c29tZW9uZTpzM2NyZXQ="  # someone:s3cret


def test_no_proxy_goes_direct(fetch, url, monkeypatch, tmp_path):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
    results = fetch([url("/gen/direct.bin", size=1000)])
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/direct.bin") == gen_bytes(1000)


def test_passwords_in_urls_never_reach_the_disk_and_resume_still_works(fetch, url, stats, tmp_path):
    u = url("/gen/secret.bin", size=1_500_000, fault="truncate", times=1, at=600_000)
    with_password = u.replace("http://", "http://someone:pw-s3cret-42@")
    first = fetch([with_password], retries=0, segments=1)
    assert first.counts["failed"] == 1
    assert (tmp_path / "out/secret.bin.part.state").exists()
    second = fetch([with_password], retries=0, segments=1)
    assert second.counts["ok"] == 1, second.failures
    assert read(tmp_path / "out/secret.bin") == gen_bytes(1_500_000)
    assert stats(u)["bytes_sent"] < 1_500_000 + 600_000  # the second run resumed, not restarted
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"pw-s3cret-42" not in path.read_bytes(), path
    third = fetch([with_password])
    assert third.counts["skipped"] == 1  # the index still knows the URL


def test_netrc_login_is_sent_to_its_host_only(fetch, server, monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    here = server.url + "/echo-headers"
    there = server.url.replace("127.0.0.1", "localhost") + "/echo-headers"
    results = fetch([here, f"{there}?u=other"])
    assert results.counts["ok"] == 2, results.failures
    names = {r.url: r.path for r in results}
    seen = {k.lower(): v for k, v in json.loads(read(names[here])).items()}
    assert seen["authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
    other = {k.lower(): v for k, v in json.loads(read(names[f"{there}?u=other"])).items()}
    assert "authorization" not in other


def test_a_redirect_to_a_url_with_credentials_sends_those(fetch, server, tmp_path):
    from urllib.parse import quote
    host = server.url.split("//")[1]
    to = quote(f"http://u2:p7@{host}/echo-headers", safe="")
    results = fetch([f"http://u1:p1@{host}/redirect?to={to}"], retries=0)
    assert results.counts["ok"] == 1, results.failures
    seen = {k.lower(): v for k, v in json.loads(read(tmp_path / "out/echo-headers")).items()}
    assert seen["authorization"] == "Basic dTI6cDc="  # u2:p7, the redirect's own


def test_proxy_failures_name_the_proxy_without_its_password(fetch, server, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    host = server.url.split("//")[1]
    monkeypatch.setenv("http_proxy", "http://me:pw-x@127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("https_proxy", f"http://me:pw-x@{host}")  # answers CONNECT with a 404
    results = fetch(["http://far.invalid/a.bin", "https://far.invalid/b.bin"], retries=0)
    errors = {r.url.rsplit("/", 1)[1]: r.error for r in results.failed}
    assert errors["a.bin"] == "proxy http://me:***@127.0.0.1:9: connection refused", errors
    assert errors["b.bin"] == f"proxy http://me:***@{host}: it answered 404 Not Found to CONNECT", errors


def test_urls_that_differ_only_in_their_password_are_two_files(fetch, server, tmp_path):
    host = server.url.split("//")[1]
    results = fetch([f"http://a:pw1@{host}/echo-headers", f"http://a:pw2@{host}/echo-headers"])
    assert results.counts["ok"] == 2, results.failures
    paths = {r.path for r in results}
    assert len(paths) == 2  # the second gets a distinct, deterministic name
    sent = sorted(json.loads(read(p))["Authorization"] for p in paths)
    assert sent == ["Basic YTpwdzE=", "Basic YTpwdzI="]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"pw1" not in path.read_bytes() and b"pw2" not in path.read_bytes(), path


def test_a_redirect_whose_location_has_raw_utf8_bytes_reaches_the_file(fetch, server, url, stats, tmp_path):
    from urllib.parse import quote, unquote, urlsplit
    wanted = url("/gen/caf%C3%A9.bin", size=10, q="آب")  # as curl sends it: %C3%A9, %D8%A2%D8%A8
    parts = urlsplit(wanted)
    raw_location = unquote(f"{parts.path}?{parts.query}")  # the mock server sends its UTF-8 bytes unencoded
    assert raw_location.startswith("/gen/café.bin?size=10&q=آب")
    results = fetch([f"{server.url}/redirect?to={quote(raw_location, safe='')}"])
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/café.bin") == gen_bytes(10)
    assert stats(wanted)["gets"] == 1  # not the mojibake /gen/caf%C3%83%C2%A9.bin


def test_a_content_disposition_without_a_type_names_the_file(fetch, url, tmp_path):
    results = fetch([url("/gen/a.bin", size=10, cdraw='filename="typeless report.pdf"'),
                     url("/gen/b.bin", size=11, cdraw="filename=params.txt; charset=x; option=y"),
                     url("/gen/c.bin", size=12, cdraw='filename="../../escape.txt"')])
    assert results.counts["ok"] == 3, results.failures
    out = tmp_path / "out"
    assert read(out / "typeless report.pdf") == gen_bytes(10)
    assert read(out / "params.txt") == gen_bytes(11)
    assert read(out / "escape.txt") == gen_bytes(12)
    assert not (tmp_path / "escape.txt").exists()


def test_raw_utf8_in_a_content_disposition_name_gives_the_same_name_in_every_engine(fetch, url, tmp_path):
    results = fetch([url("/gen/a.bin", size=10, cd="café آب.pdf")])  # sent as raw UTF-8 bytes
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/café آب.pdf") == gen_bytes(10)


# ---------------------------------------------------------------------------- servers that bend HTTP
# What each engine does with answers that break HTTP's rules (the mock server's /raw/ cases); the
# README's table "Servers that bend HTTP" says the same.

@pytest.mark.parametrize("case", ["overlong", "bad-trailer", "header-folding", "bare-lf"])
def test_answers_that_bend_http_but_carry_the_whole_body_are_kept_exactly(fetch, server, tmp_path, case):
    """A body longer than its Content-Length keeps exactly the declared bytes (curl and wget do);
    a malformed trailer after a complete chunked body, an obsolete folded header line and bare
    LF line ends still deliver a complete, framed body: every engine keeps it, on the first try."""
    u = f"{server.url}/raw/{case}?size=20000&seed=3&t={tmp_path.name}"
    results = fetch([u], retries=2)
    (result,) = list(results)
    assert result.status == "ok", result.error
    assert result.attempts == 1 and result.size == 20000
    assert read(tmp_path / "out" / case) == gen_bytes(20000, 3)


# urllib3 raises on clashing Content-Length headers while it builds the response and never closes
# that connection's socket: the garbage collector does, with a ResourceWarning (urllib3's leak)
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("case,said", [
    ("bad-chunk-size", ("bad chunk size", "broken mid-body")),
    ("dup-content-length-differ", ("clashing Content-Length",)),
])
def test_answers_whose_body_cannot_be_trusted_fail_with_one_clear_line(fetch, server, tmp_path, case, said):
    u = f"{server.url}/raw/{case}?size=20000&t={tmp_path.name}"
    results = fetch([u], retries=1, retry_base=0.001)
    (result,) = results.failed
    assert any(words in result.error for words in said), result.error
    assert "\n" not in result.error and not (tmp_path / "out" / case).exists()
    gc.collect()  # urllib3's leaked socket is reported now, under this test's filter, not in a later test


def test_a_stalled_transfer_counts_the_bytes_that_reached_the_file(fetch, url, tmp_path):
    """What arrived before a stall is on disk and counted, the same in every engine."""
    u = url("/gen/stuck.bin", size=200_000, fault="stall", at=50_000)
    results = fetch([u], retries=0, timeout=1)
    (result,) = results.failed
    assert "stall" in result.error
    assert result.bytes == 50_000 == results.total_bytes
    assert (tmp_path / "out/stuck.bin.part").stat().st_size == 50_000


# --- HTTPS: every engine trusts, refuses and words failures alike (core.tls) ----------------------

UNTRUSTED = ("TLS: certificate verify failed (unable to get local issuer certificate); "
             "use --ca-certificate FILE to trust it")


@pytest.fixture(scope="module")
def https_server():
    """The mock server over HTTPS, with a certificate from a CA of its own (`ca_file`)."""
    from conftest import FIXTURES
    from downloader.mockserver import MockServer
    with MockServer(FIXTURES / "data", tls=True) as srv:
        yield srv


def https_url(server, path: str, **params) -> str:
    from urllib.parse import urlencode
    params["u"] = next(_https_unique)
    return f"{server.url}{path}?{urlencode(params)}"


_https_unique = itertools.count()


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".downloader") if folder.exists() else []


def test_https_with_the_servers_ca_certificate_is_exact(fetch, https_server, tmp_path):
    urls = [https_url(https_server, "/gen/tls.bin", size=300_000), f"{https_server.url}/hello.txt"]
    results = fetch(urls, ca_certificate=https_server.ca_file)
    assert results.counts["ok"] == 2, results.failures
    assert read(tmp_path / "out/tls.bin") == gen_bytes(300_000)
    assert [r.http_version for r in results] == ["1.1", "1.1"]


def test_an_untrusted_certificate_fails_once_with_one_clear_line(fetch, https_server, tmp_path, default_trust):
    from tls_servers import Relay
    with Relay(("127.0.0.1", https_server.port)) as relay:
        u = https_url(https_server, "/gen/untrusted.bin", size=1000).replace(str(https_server.port), str(relay.port))
        results = fetch([u])
    assert [(r.error, r.attempts) for r in results.failed] == [(UNTRUSTED, 1)]
    assert relay.connections == 1  # not tried again: a certificate does not heal
    assert ("message", f"failed: {u}: {UNTRUSTED}") in results.events
    assert files_in(tmp_path / "out") == []


def test_insecure_downloads_anyway_and_warns_once(fetch, https_server, tmp_path):
    from downloader.api import INSECURE_WARNING
    results = fetch([https_url(https_server, "/gen/insecure.bin", size=2000)], insecure=True)
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/insecure.bin") == gen_bytes(2000)
    assert [e for e in results.events if e[0] == "message"] == [("message", INSECURE_WARNING)]


def test_a_client_certificate_the_server_requires(fetch, tmp_path):
    from downloader.mockserver import MockServer
    with MockServer(tls=True, client_cert_required=True) as srv:
        u = f"{srv.url}/gen/mine.bin?size=5000"
        given = fetch([u], ca_certificate=srv.ca_file, certificate=srv.client_cert_file,
                      private_key=srv.client_key_file)
        assert given.counts["ok"] == 1, given.failures
        assert read(tmp_path / "out/mine.bin") == gen_bytes(5000)
        missing = fetch([u], dest=tmp_path / "without", ca_certificate=srv.ca_file, retries=1)
    # the mock server's asyncio drops the alert, so the client sees the connection close mid-handshake,
    # which is retried like any dropped connection (a refusal with an alert is not: see below)
    assert [(r.error, r.attempts) for r in missing.failed] == [(
        "TLS: the server closed the connection during the handshake; if it requires a client certificate, "
        "use --certificate FILE with --private-key FILE", 2)]
    assert files_in(tmp_path / "without") == []


@pytest.mark.parametrize("certificate, error", [
    ("self-signed", "TLS: certificate verify failed (self-signed certificate); use --ca-certificate FILE to trust it"),
    ("expired", "TLS: certificate verify failed (certificate has expired); the server must renew it "
                "(--insecure skips verification)"),
    ("other-host", "TLS: certificate verify failed (hostname mismatch); use a host name the certificate names "
                   "(--insecure skips verification)"),
])
def test_each_certificate_failure_gets_its_reason_and_no_second_try(
        fetch, tmp_path, default_trust, certificate, error):
    from tls_servers import TlsServer
    with TlsServer(tmp_path / "tls", certificate) as server:
        trust = {} if certificate == "self-signed" else {"ca_certificate": server.ca_file}
        results = fetch([server.url], **trust)
        assert [(r.error, r.attempts) for r in results.failed] == [(error, 1)]
        assert server.handshakes == 1
        assert files_in(tmp_path / "out") == []
        anyway = fetch([server.url], dest=tmp_path / "anyway", insecure=True)
        assert anyway.counts["ok"] == 1, anyway.failures


def test_a_self_signed_certificate_given_as_ca_certificate_is_trusted(fetch, tmp_path):
    from tls_servers import BODY, TlsServer
    with TlsServer(tmp_path / "tls", "self-signed") as server:
        results = fetch([server.url], ca_certificate=tmp_path / "tls/self-signed.pem")
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/tls.bin") == BODY


@pytest.mark.parametrize("tls12, sent, error", [
    (True, None, "TLS: the server refused the handshake (alert: handshake failure); if it requires a client "
                 "certificate, use --certificate FILE with --private-key FILE"),
    (False, None, "TLS: the server requires a client certificate (alert: certificate required); "
                  "use --certificate FILE with --private-key FILE"),
    (True, "stranger", "TLS: the server refused the client certificate (alert: unknown ca)"),
    (False, "stranger", "TLS: the server refused the client certificate (alert: unknown ca)"),
    (True, "known", None),
    (False, "known", None),
], ids=["tls1.2-none", "tls1.3-none", "tls1.2-stranger", "tls1.3-stranger", "tls1.2-known", "tls1.3-known"])
def test_a_client_certificate_refused_with_an_alert_is_one_line_and_no_second_try(
        fetch, tmp_path, tls12, sent, error):
    import ssl

    import trustme
    from tls_servers import TlsServer, write_pem
    clients_ca = trustme.CA()
    issuer = clients_ca if sent == "known" else trustme.CA()
    client = issuer.issue_cert("client.example")
    options = {}
    if sent:
        options = {"certificate": write_pem(tmp_path / "client.pem", *client.cert_chain_pems),
                   "private_key": write_pem(tmp_path / "client.key", client.private_key_pem)}
    with TlsServer(tmp_path / "tls", client_ca=clients_ca,
                   max_version=ssl.TLSVersion.TLSv1_2 if tls12 else None) as server:
        results = fetch([server.url], ca_certificate=server.ca_file, **options)
        if error is None:
            assert results.counts["ok"] == 1, results.failures
        else:
            assert [(r.error, r.attempts) for r in results.failed] == [(error, 1)]
            assert server.handshakes == 1


def test_a_handshake_cut_by_a_reset_is_tried_again(fetch, https_server, tmp_path):
    from tls_servers import Relay
    with Relay(("127.0.0.1", https_server.port), reset_first=1) as relay:
        u = https_url(https_server, "/gen/reset.bin", size=3000).replace(str(https_server.port), str(relay.port))
        results = fetch([u], ca_certificate=https_server.ca_file)
    assert results.counts["ok"] == 1, results.failures
    assert [r.attempts for r in results] == [2]
    assert relay.connections == 2
    assert read(tmp_path / "out/reset.bin") == gen_bytes(3000)


def test_https_to_a_plain_http_port_says_so_once(fetch, server):
    results = fetch([server.url.replace("http://", "https://") + "/gen/plain.bin?size=10"])
    assert [(r.error, r.attempts) for r in results.failed] == [
        ("TLS: handshake failed (wrong version number); does the server speak HTTPS on this port?", 1)]


# --- IPv6 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server6():
    """The mock server on the IPv6 loopback: its URLs are http://[::1]:PORT/..."""
    from conftest import FIXTURES, has_ipv6_loopback
    from downloader.mockserver import MockServer
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    with MockServer(FIXTURES / "data", host="::1") as srv:
        yield srv


def test_an_ipv6_literal_url_downloads(fetch, server6, tmp_path):
    u = f"{server6.url}/gen/six.bin?size=200000&u={next(_https_unique)}"
    assert u.startswith("http://[::1]:")
    results = fetch([u, f"{server6.url}/hello.txt"])
    assert results.counts["ok"] == 2, results.failures
    assert read(tmp_path / "out/six.bin") == gen_bytes(200_000)


def test_a_redirect_to_an_ipv6_literal_is_followed(fetch, server, server6, tmp_path):
    from urllib.parse import quote

    from conftest import key
    target = f"{server6.url}/gen/moved6.bin?size=7000&u={next(_https_unique)}"
    results = fetch([f"{server.url}/redirect?to={quote(target, safe='')}"])
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/moved6.bin") == gen_bytes(7000)
    assert server6.stats()[key(target)]["gets"] == 1


@pytest.mark.parametrize("no_proxy", ["::1", "[::1]:{port}", "::1/128", "localhost,[::1]"])
def test_no_proxy_with_an_ipv6_address_goes_direct(fetch, server6, monkeypatch, tmp_path, no_proxy):
    for name in ("NO_PROXY", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("no_proxy", no_proxy.format(port=server6.port))
    results = fetch([f"{server6.url}/gen/direct6.bin?size=1000&u={next(_https_unique)}"], retries=0)
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/direct6.bin") == gen_bytes(1000)


def test_a_no_proxy_entry_for_another_ipv6_port_still_goes_through_the_proxy(fetch, server6, monkeypatch):
    for name in ("NO_PROXY", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", f"[::1]:{server6.port + 1}")
    results = fetch([f"{server6.url}/gen/proxied6.bin?size=10&u={next(_https_unique)}"], retries=0)
    assert [r.error for r in results.failed] == ["proxy http://127.0.0.1:9: connection refused"]


def test_https_to_an_ipv6_literal_is_verified_for_that_address(fetch, tmp_path):
    from conftest import has_ipv6_loopback
    from downloader.mockserver import MockServer
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    with MockServer(host="::1", tls=True) as srv:
        results = fetch([f"{srv.url}/gen/six-tls.bin?size=4000"], ca_certificate=srv.ca_file)
    assert results.counts["ok"] == 1, results.failures
    assert read(tmp_path / "out/six-tls.bin") == gen_bytes(4000)


def hashed_folder(ca_file, folder):
    """A CApath folder holding `ca_file` under OpenSSL's subject-hash name (what c_rehash makes)."""
    import shutil
    import subprocess
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (it names the files of a CA folder)")
    digest = subprocess.run([openssl, "x509", "-hash", "-noout", "-in", str(ca_file)], capture_output=True,
                            text=True, check=True).stdout.strip()
    folder.mkdir()
    shutil.copy(ca_file, folder / f"{digest}.0")
    return folder


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_each_ca_variable_is_trusted_alike_in_every_engine(
        fetch, https_server, monkeypatch, tmp_path, default_trust, variable):
    value = https_server.ca_file
    if variable == "SSL_CERT_DIR":
        value = hashed_folder(https_server.ca_file, tmp_path / "certs")
    monkeypatch.setenv(variable, str(value))
    results = fetch([https_url(https_server, "/gen/by-variable.bin", size=1000)])
    assert results.counts["ok"] == 1, results.failures


def test_ca_certificate_wins_over_the_variables(fetch, https_server, monkeypatch, tmp_path, default_trust):
    from tls_servers import TlsServer
    with TlsServer(tmp_path / "tls") as other:  # a valid bundle, of another CA
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(other.ca_file))
        u = https_url(https_server, "/gen/option-wins.bin", size=10)
        assert fetch([u], dest=tmp_path / "a").failed[0].error == UNTRUSTED
        assert fetch([u], dest=tmp_path / "b", ca_certificate=https_server.ca_file).counts["ok"] == 1
