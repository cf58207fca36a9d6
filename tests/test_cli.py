"""The command line as a user meets it: real subprocesses, exit codes, one clear line per problem."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MODES, run_cli
from downloader.mockserver import gen_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", MODES)
def test_urls_as_arguments_exit_0_and_report(mode, url, tmp_path):
    a, b = url("/gen/a.bin", size=1000), url("/gen/b.bin", size=2000)
    report = tmp_path / "report.jsonl"
    proc = run_cli("get", a, b, "-d", str(tmp_path / "out"), "-m", mode, "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/a.bin").read_bytes() == gen_bytes(1000)
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert {r["url"] for r in rows} == {a, b}
    for row in rows:
        assert set(row) >= {"url", "path", "status", "http_status", "bytes", "sha256", "attempts", "seconds", "error"}
        assert row["status"] == "ok"
    assert "2 downloaded, 0 already there, 0 failed" in proc.stderr


@pytest.mark.parametrize("mode", MODES)
def test_stdin_is_read_when_no_urls(mode, url, tmp_path):
    a, b = url("/gen/in1.bin", size=10), url("/gen/in2.bin", size=20)
    proc = run_cli("get", "-d", str(tmp_path), "-m", mode, input=f"{a}\n# comment\n{b}\n")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "in2.bin").read_bytes() == gen_bytes(20)


def test_input_file_and_dash(url, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{url('/gen/f1.bin', size=5)}\n  out=first.bin\n")
    assert run_cli("get", "-i", str(listing), "-d", str(tmp_path / "o")).returncode == 0
    assert (tmp_path / "o/first.bin").read_bytes() == gen_bytes(5)
    proc = run_cli("get", "-i", "-", "-d", str(tmp_path / "o2"), input=f"{url('/gen/f2.bin', size=6)}\n")
    assert proc.returncode == 0 and (tmp_path / "o2/f2.bin").exists()


def test_no_progress_bars_when_not_a_terminal(url, tmp_path):
    proc = run_cli("get", url("/gen/big.bin", size=3_000_000), "-d", str(tmp_path))
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("done: 1 downloaded")


def test_quiet_prints_only_the_summary(url, tmp_path):
    proc = run_cli("get", "-q", url("/gen/q.bin", size=10), "-d", str(tmp_path))
    assert proc.returncode == 0
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1


def test_failed_url_and_junk_line_exit_1_naming_them(url, server, tmp_path):
    listing = tmp_path / "urls.txt"
    good = url("/gen/ok.bin", size=10)
    listing.write_text(f"{good}\nthis is junk\n{server.url}/nope.bin\n")
    proc = run_cli("get", "-i", str(listing), "-d", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert f"{listing} line 2: not a URL (contains white space): 'this is junk' (skipped)" in proc.stderr
    assert f"failed: {server.url}/nope.bin: HTTP 404 Not Found" in proc.stderr
    assert (tmp_path / "out/ok.bin").exists()
    assert "Traceback" not in proc.stderr


def test_dead_server_is_one_line_exit_1(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/file.bin"
    proc = run_cli("get", dead, "-d", str(tmp_path), "--retries", "0")
    assert proc.returncode == 1
    assert f"failed: {dead}: connection failed" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["--mode", "fast"], "'fast' is not one of"),
    (["-j", "0"], "Invalid value for '-j' / '--jobs'"),
    (["--timeout", "soon"], "--timeout: 'soon' is not a duration"),
    (["--min-segment-size", "big"], "--min-segment-size: 'big' is not a size"),
    (["--header", "NoColon"], "header 'NoColon' is not 'Name: value'"),
    (["-i", "/nonexistent/urls.txt"], "cannot read URL file /nonexistent/urls.txt"),
    (["--checksum", "sha-256=abc"], "a sha-256 digest is 64 hex digits"),
    (["--post", "fib:x"], "fib:x"),
])
def test_usage_errors_exit_2_with_one_clear_line(args, needle, url, tmp_path):
    proc = run_cli("get", url("/gen/u.bin", size=1), "-d", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unusable_proxy_variable_is_a_usage_error(url, tmp_path, monkeypatch):
    monkeypatch.setenv("all_proxy", "socks5://me:pw@127.0.0.1:1080")
    proc = run_cli("get", url("/gen/u.bin", size=1), "-d", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "downloader: all_proxy='socks5://me:***@127.0.0.1:1080': only http:// proxies are supported "
        "(https:// URLs go through them with CONNECT)"]
    assert not list(tmp_path.iterdir())  # nothing opened


def test_a_proxy_with_a_bad_port_is_a_usage_error_without_the_password(url, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://me:SECRET@127.0.0.1:99999")
    proc = run_cli("get", url("/gen/u.bin", size=1), "-d", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "not a proxy URL" in proc.stderr and "SECRET" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_output_folder_that_is_a_file_is_a_usage_error(url, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    proc = run_cli("get", url("/gen/u.bin", size=1), "-d", str(target))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"downloader: output folder {target} is a file, not a folder"
    assert target.read_text() == "keep me"


def test_input_files_are_read_in_turn(url, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(url("/gen/one.bin", size=10) + "\n")
    second.write_text(url("/gen/two.bin", size=20) + "\n")
    proc = run_cli("get", "-i", str(first), "-i", "-", "-i", str(second), "-d", str(tmp_path / "out"),
                   input=url("/gen/three.bin", size=30) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["one.bin", "three.bin", "two.bin"]
    twice = run_cli("get", "-i", "-", "-i", "-", "-d", str(tmp_path / "out"), input="")
    assert twice.returncode == 2 and "stdin can be read only once" in twice.stderr


def test_help_lists_exit_codes():
    proc = run_cli("get", "--help")
    assert proc.returncode == 0
    assert "130 interrupted" in " ".join(proc.stdout.split())


def test_version_names_each_component():
    import platform
    from importlib import metadata
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"downloader {metadata.version('downloader')}"  # __version__ agrees with the package
    assert f"Python {platform.python_version()} ({platform.python_implementation()})" in lines
    for package in ("aiohttp", "requests"):
        assert f"{package} {metadata.version(package)}" in lines
    named = {line.split()[0] for line in lines}
    for accelerator in ("pycurl",):
        try:
            metadata.version(accelerator)
            installed = True
        except metadata.PackageNotFoundError:
            installed = False
        assert (accelerator in named) == installed, proc.stdout
    if "pycurl" in named:
        assert "libcurl/" in next(line for line in lines if line.startswith("pycurl "))


@pytest.mark.filterwarnings("ignore:'click.utils.* is deprecated:DeprecationWarning")  # typer < 0.26 on click 8.2+
def test_version_names_an_accelerator_only_when_installed_and_says_when_it_cannot_load(monkeypatch):
    from importlib import metadata

    from downloader.cli import version_report

    real_version = metadata.version

    def pretend(installed: set[str]):
        def version(package: str) -> str:
            if package == "pycurl":
                if package not in installed:
                    raise metadata.PackageNotFoundError(package)
                return "9.9.9"
            return real_version(package)
        return version

    monkeypatch.setattr(metadata, "version", pretend(set()))
    assert not [line for line in version_report().splitlines() if line.startswith("pycurl")]
    monkeypatch.setattr(metadata, "version", pretend({"pycurl"}))
    monkeypatch.setitem(sys.modules, "pycurl", None)  # installed, but libcurl will not load
    assert "pycurl 9.9.9 (cannot be loaded: " in version_report()


def test_version_loads_no_http_library():
    code = ("import sys; from downloader.cli import version_report; version_report(); "
            "print(sorted(m for m in ('aiohttp', 'requests', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [(), ("get",), ("serve",), ("gil",), ("demo",), ("bench",)])
def test_dash_h_is_help_everywhere(command):
    short, long = run_cli(*command, "-h"), run_cli(*command, "--help")
    assert short.returncode == 0, short.stderr
    assert short.stdout == long.stdout
    assert short.stdout.startswith("Usage: downloader ")
    assert "-h, --help" in short.stdout


def test_help_names_what_each_option_takes():
    text = run_cli("get", "--help").stdout
    for shown in ("[URL]...", "-i, --input-file FILE", "-d, --dir DIR", "-j, --jobs N", "--per-host N",
                  "--retries N", "--timeout DURATION", "--header 'NAME: VALUE'", "-s, --segments N",
                  "--min-segment-size SIZE", "--max-speed RATE", "--checksum ALGO=HEX", "--sums FILE",
                  "--manifest FILE", "--post SPEC", "--post-workers N", "--report FILE"):
        assert shown in text, shown
    for command in ("get", "serve", "gil", "demo", "bench"):
        text = run_cli(command, "--help").stdout
        vague = re.findall(r"^\s+(?:-\w, )?--[\w-]+ (?:TEXT|INTEGER|FLOAT|PATH)\b.*", text, re.MULTILINE)
        assert not vague, f"{command}: {vague}"


def test_max_speed_0_means_no_limit(url, tmp_path):
    assert "0 means no limit" in " ".join(run_cli("get", "--help").stdout.split())
    proc = run_cli("get", url("/gen/free.bin", size=300_000), "-d", str(tmp_path), "--max-speed", "0")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "free.bin").read_bytes() == gen_bytes(300_000)


def test_shell_completion_completes_commands_options_and_choices():
    script = Path(sys.executable).with_name("downloader")
    if not script.exists():
        pytest.skip("the downloader script is not installed beside this Python")

    def complete(words: str) -> list[str]:
        env = dict(os.environ, _DOWNLOADER_COMPLETE="complete_bash", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
        proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("downloader g") == ["get", "gil"]
    assert complete("downloader get --max") == ["--max-speed"]
    assert complete("downloader get -m ") == ["async", "thread", "sequential", "curl"]
    shown = run_cli("--show-completion", "bash")
    assert shown.returncode == 0 and "complete -o default -F _downloader_completion downloader" in shown.stdout


def _start(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "downloader", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_bytes(path: Path, at_least: int, proc: subprocess.Popen, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {at_least} bytes")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_state_exits_130_and_rerun_resumes(mode, sig, url, stats, tmp_path):
    size = 2_000_000
    slow = url("/gen/slow.bin", size=size, rate=400_000)
    args = ["get", slow, "-d", str(tmp_path), "-m", mode, "-s", "1"]
    proc = _start(args)
    _wait_for_bytes(tmp_path / "slow.bin.part", 200_000, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert not (tmp_path / "slow.bin").exists() and (tmp_path / "slow.bin.part").exists()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "slow.bin").read_bytes() == gen_bytes(size)
    assert not (tmp_path / "slow.bin.part").exists() and not (tmp_path / "slow.bin.part.state").exists()


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_then_rerun_fetches_at_most_one_chunk_twice(mode, url, stats, tmp_path):
    size = 1_200_000
    slow = url("/gen/k9.bin", size=size, rate=200_000)
    args = ["get", slow, "-d", str(tmp_path), "-m", mode, "-s", "1"]
    proc = _start(args)
    _wait_for_bytes(tmp_path / "k9.bin.part", 300_000, proc)
    proc.kill()
    proc.communicate()
    on_disk = (tmp_path / "k9.bin.part").stat().st_size
    sent_before = stats(slow)["bytes_sent"]
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "k9.bin").read_bytes() == gen_bytes(size)
    refetched = sent_before + (stats(slow)["bytes_sent"] - sent_before) - size
    assert 0 <= refetched <= 256 * 1024, (on_disk, sent_before, refetched)


def test_second_interrupt_quits_at_once_leaving_only_part_files(url, tmp_path):
    slow = url("/gen/twice.bin", size=5_000_000, rate=300_000)
    proc = _start(["get", slow, "-d", str(tmp_path), "-m", "thread", "-s", "1", "--timeout", "60"])
    _wait_for_bytes(tmp_path / "twice.bin.part", 100_000, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert not (tmp_path / "twice.bin").exists()
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("mode", MODES)
def test_full_disk_fails_that_file_with_one_line(mode, url, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        small, big = url("/gen/fits.bin", size=1000), url("/gen/huge.bin", size=3_000_000)
        proc = run_cli("get", small, big, "-d", str(mount), "-m", mode, "-j", "1")
        assert proc.returncode == 1
        assert f"failed: {big}: disk full while writing {mount}/huge.bin.part" in proc.stderr
        assert not (mount / "huge.bin").exists()
        assert (mount / "fits.bin").read_bytes() == gen_bytes(1000)
        # the summary counts what reached the disk, not what was received
        on_disk = 1000 + ((mount / "huge.bin.part").stat().st_size if (mount / "huge.bin.part").exists() else 0)
        from downloader.core.results import human_bytes
        assert f"; {human_bytes(on_disk)} in " in proc.stderr, (on_disk, proc.stderr)
        assert "Traceback" not in proc.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_gil_json_has_the_documented_fields():
    proc = run_cli("gil", "--tasks", "2", "--n", "12", "--files", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"python", "implementation", "gil_enabled", "cpu_count", "workers", "tasks", "n", "cpu_bound",
            "io_bound", "verdict"} <= set(data)
    for mode in ("sequential", "thread", "process"):
        assert {"wall", "cpu", "speedup"} <= set(data["cpu_bound"][mode])
        assert data["cpu_bound"][mode]["wall"] > 0
    assert data["tasks"] == 2 and data["n"] == 12
    assert data["verdict"] and all(isinstance(s, str) for s in data["verdict"])


def test_gil_table_names_every_mode():
    proc = run_cli("gil", "--tasks", "2", "--n", "12", "--no-downloads")
    assert proc.returncode == 0
    for word in ("sequential", "thread", "process"):
        assert word in proc.stdout


def test_interrupt_during_post_work_keeps_the_report_and_leaves_no_process(url, tmp_path):
    urls = [url(f"/gen/pp{i}.bin", size=1000 + i) for i in range(4)]
    report = tmp_path / "report.jsonl"
    proc = _start(["get", *urls, "-d", str(tmp_path / "out"), "--post", "fib:34", "--post-workers", "2",
                   "--report", str(report)], start_new_session=True)
    for i in range(4):
        _wait_for_bytes(tmp_path / "out" / f"pp{i}.bin", 1000 + i, proc)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
    # communicate() would hang if pool workers outlived the tool holding its stderr open
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(r["url"] for r in rows) == sorted(urls)
    assert all(r["status"] == "ok" for r in rows)
    # each task either finished (workers ignore the Ctrl-C) or was dropped before it started;
    # none died mid-task (which tasks were still queued depends on timing)
    for post in (p for r in rows for p in r["post"]):
        assert post["value"] == 5702887 or "cancelled" in (post["error"] or ""), post


def test_the_curl_mode_without_pycurl_is_one_line_saying_how_to_install_it(url, tmp_path):
    """Where pycurl's wheel cannot be installed, the tool still works, and --mode curl says what
    to do in one line (run as a program whose pycurl cannot be imported)."""
    program = ("import sys; sys.modules['pycurl'] = None; sys.argv = ['downloader'] + sys.argv[1:]; "
               "from downloader.__main__ import run; run()")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    u = url("/gen/nocurl.bin", size=10)
    proc = subprocess.run([sys.executable, "-c", program, "get", u, "-d", str(tmp_path), "-m", "curl"],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mode curl needs pycurl" in lines[0] and "pip install 'downloader[curl]'" in lines[0]
    other = subprocess.run([sys.executable, "-c", program, "get", u, "-d", str(tmp_path), "-m", "async"],
                           capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert other.returncode == 0, other.stderr
