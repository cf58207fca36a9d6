"""Promises the README makes, at their edges: a Ctrl-C at any moment, files already there under a
digest, failures said when they happen, nothing to do said plainly, the report's fields."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import MODES, run_cli
from downloader import download
from downloader.mockserver import gen_bytes


def _start(args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "downloader", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- an early Ctrl-C

@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_stop_at_any_moment_of_start_up_stops_the_batch(mode, url, tmp_path):
    """SIGINT from 0.05 s to 1 s after start (while Python imports, before the engine is up, while
    it starts, once it runs): every run exits 130 saying to run it again; none goes on downloading."""
    def one(i: int) -> tuple:
        moment, dest = 0.05 + i * 0.05, tmp_path / str(i)
        proc = _start(["get", url("/gen/early.bin", size=4_000_000, rate=100_000), "-d", str(dest), "-m", mode,
                       "-s", "1"])
        time.sleep(moment)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        return moment, proc.returncode, err, (dest / "early.bin").exists()

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(one, range(20)))
    for moment, returncode, err, finished in outcomes:
        if returncode in (1, -signal.SIGINT) and _interpreter_start_up(err):
            continue  # the signal came while Python itself started, before our first line could catch it
        if returncode == -signal.SIGINT and not err.strip():
            continue  # ...or before Python had even set up its own handler (the signal's default: end)
        assert returncode == 130, (moment, err)
        assert "run the same command again" in err, (moment, err)
        assert "Traceback" not in err and "done:" not in err and not finished, (moment, err)


def _interpreter_start_up(err: str) -> bool:
    """Whether a traceback shows a KeyboardInterrupt raised before `downloader/__main__.py` set its
    handler (in Python's own start-up: site, runpy, importing the package): the first ~20 ms of a
    run on an idle machine, more on a loaded one. No program can catch a signal there."""
    ours = [line for line in err.splitlines() if 'File "' in line and "/downloader/" in line]
    return "KeyboardInterrupt" in err and all("downloader/__main__.py" in line or "downloader/__init__.py" in line
                                              for line in ours)


def test_sigterm_does_not_speak_of_ctrl_c(url, tmp_path):
    slow = url("/gen/term.bin", size=2_000_000, rate=200_000)
    proc = _start(["get", slow, "-d", str(tmp_path), "-s", "1"])
    _wait_for(tmp_path / "term.bin.part", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "SIGTERM: finishing the chunks in flight" in err and "Ctrl-C" not in err


def _wait_for(path, proc, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("mode", MODES)
def test_interrupted_downloads_are_counted_as_interrupted_not_failed(mode, url, tmp_path):
    names = ["ia.bin"] if mode == "sequential" else ["ia.bin", "ib.bin"]  # sequential has one in flight
    urls = [url(f"/gen/{name}", size=3_000_000, rate=200_000) for name in names]
    report = tmp_path / "r.jsonl"
    proc = _start(["get", *urls, "-d", str(tmp_path / "out"), "-m", mode, "-s", "1", "-j", "2",
                   "--report", str(report)])
    for name in names:
        _wait_for(tmp_path / "out" / f"{name}.part", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"interrupted: 0 downloaded, 0 already there, 0 failed, {len(names)} interrupted" in err
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["interrupted"] * len(names)
    assert all(r["path"] is None for r in rows)


# ---------------------------------------------------------------------------- files already there

@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_file_under_a_checksum_is_fetched_again_and_replaced(mode, url, tmp_path):
    u = url("/gen/hello.txt", size=5000)
    good = sha256(gen_bytes(5000))
    args = ["get", u, "-d", str(tmp_path), "-m", mode, "--checksum", f"sha-256={good}",
            "--manifest", str(tmp_path / "SUMS")]
    assert run_cli(*args).returncode == 0
    (tmp_path / "hello.txt").write_bytes(b"x" * 5000)  # same size, other bytes
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "replaced hello.txt: it did not match the expected sha-256" in again.stderr
    assert "1 downloaded, 0 already there" in again.stderr
    assert (tmp_path / "hello.txt").read_bytes() == gen_bytes(5000)
    assert (tmp_path / "SUMS").read_text() == f"{good}  hello.txt\n"
    third = run_cli(*args)  # now it matches: already there, checked, nothing fetched
    assert "0 downloaded, 1 already there" in third.stderr and "replaced" not in third.stderr


def test_a_file_whose_size_changed_since_it_was_downloaded_is_fetched_again(fetch, url, tmp_path, stats):
    u = url("/gen/grown.bin", size=3000)
    assert fetch([u]).counts["ok"] == 1
    (tmp_path / "out/grown.bin").write_bytes(b"longer than before" * 1000)
    again = fetch([u])
    assert again.counts["ok"] == 1 and stats(u)["gets"] == 2
    assert (tmp_path / "out/grown.bin").read_bytes() == gen_bytes(3000)
    assert any("replaced grown.bin: it has 18,000 bytes, not the 3,000" in e[1] for e in again.events
               if e[0] == "message")
    assert fetch([u]).counts["skipped"] == 1 and stats(u)["gets"] == 2


def test_check_integrity_rehashes_what_the_index_knows_and_refetches_what_differs(fetch, url, tmp_path, stats):
    a, b = url("/gen/ci-a.bin", size=4000, seed=1), url("/gen/ci-b.bin", size=4000, seed=2)
    first = fetch([a, b], manifest=tmp_path / "out/SUMS")  # --manifest computes sha256, the index keeps it
    assert first.counts["ok"] == 2
    (tmp_path / "out/ci-b.bin").write_bytes(b"\0" * 4000)  # same size: only a hash can tell
    plain = fetch([a, b])
    assert plain.counts["skipped"] == 2  # a plain re-run trusts the final name
    checked = fetch([a, b], check_integrity=True)
    assert checked.counts == {"ok": 1, "skipped": 1, "failed": 0, "interrupted": 0}
    assert checked.checked == 2 and checked.mismatched == 1
    assert "2 checked, 1 did not match" in checked.summary()
    assert (tmp_path / "out/ci-b.bin").read_bytes() == gen_bytes(4000, 2)
    assert stats(a)["gets"] == 1 and stats(b)["gets"] == 2


# ---------------------------------------------------------------------------- said when it happens

def test_a_failure_is_printed_when_it_happens_not_at_the_end(url, server, tmp_path):
    slow = url("/gen/slowpoke.bin", size=2_000_000, rate=500_000)
    missing = f"{server.url}/missing-{tmp_path.name}.bin"
    proc = _start(["get", slow, missing, "-d", str(tmp_path), "-s", "1", "-j", "2"])
    line = proc.stderr.readline()
    still_running = proc.poll() is None
    rest = proc.communicate(timeout=30)[1]
    assert line.startswith(f"failed: {missing}: HTTP 404"), line + rest
    assert still_running
    assert proc.returncode == 1 and "done: 1 downloaded, 0 already there, 1 failed" in rest


def test_the_report_has_null_path_for_failures_and_null_line_for_arguments(url, server, tmp_path):
    ok, missing = url("/gen/rp.bin", size=10), f"{server.url}/missing-{tmp_path.name}"
    report = tmp_path / "r.jsonl"
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a list\n{ok}\n")
    run_cli("get", missing, "-i", str(lst), "-d", str(tmp_path / "out"), "--report", str(report))
    rows = {r["url"]: r for r in map(json.loads, report.read_text().splitlines())}
    assert rows[missing]["path"] is None and rows[missing]["line"] is None
    assert rows[ok]["line"] == 2 and rows[ok]["path"] == str(tmp_path / "out/rp.bin")


# ---------------------------------------------------------------------------- nothing to do

def test_no_urls_on_stdin_is_said_and_creates_nothing(tmp_path):
    proc = run_cli("get", input="", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stderr.strip() == "nothing to download: no URLs in stdin"
    assert list(tmp_path.iterdir()) == []


def test_only_junk_lines_creates_nothing_and_exits_1(tmp_path):
    proc = run_cli("get", "-d", "out", input="not a url\n", cwd=tmp_path)
    assert proc.returncode == 1
    assert "stdin line 1: not a URL" in proc.stderr and "nothing to download: no URLs in stdin" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_download_takes_a_single_url_as_a_string(url, tmp_path):
    results = download(url("/gen/single.bin", size=123), tmp_path)
    assert results.counts["ok"] == 1 and (tmp_path / "single.bin").read_bytes() == gen_bytes(123)


def test_progress_bars_use_the_units_of_the_summary():
    """Sizes are powers of 1024 everywhere: KiB and MiB, on the file bars as on the overall line."""
    import io
    from downloader.core.results import Result
    from downloader.progress import BarReporter
    stream = io.StringIO()
    bars = BarReporter(stream=stream)
    bars.set_total(1)
    bars.file_started("k", "big.iso", 3 << 20)
    bars.file_progress("k", 3 << 20)
    bars.file_finished("k", Result("u", "ok"))
    bars.job_recorded(Result("u", "ok"))
    bars.close()
    shown = stream.getvalue()
    assert "big.iso:" in shown and "/3.0 MiB [" in shown and "3.0 MiB at" in shown
    assert "MB" not in shown and "3.00M" not in shown
