"""URLs from a producer that finds them one at a time (`crawler | downloader get`): a URL starts as
soon as its line is in, from stdin or a named pipe, plain or aria2-style; nothing waits for the
next line or the end of the input."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import MODES, key
from downloader.mockserver import gen_bytes


def _start(args, stdin=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "downloader", *args], stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc) -> str:
    """Its stderr once it exits (stdin is already closed by the test)."""
    with proc.stderr:
        err = proc.stderr.read()
    proc.wait(60)
    return err


def _wait_for_request(server, url: str, proc, limit: float = 15.0) -> None:
    """Until the mock server saw a GET for `url` (the test writes nothing more meanwhile)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.stats().get(key(url), {}).get("gets", 0):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{url} was not requested while the input stayed quiet")


@pytest.mark.parametrize("mode", MODES)
def test_a_url_piped_on_stdin_starts_before_the_next_line_comes(mode, server, url, tmp_path):
    a, b = url("/gen/pa.bin", size=3000), url("/gen/pb.bin", size=4000)
    proc = _start(["get", "-d", str(tmp_path), "-m", mode])
    proc.stdin.write(a + "\n")
    proc.stdin.flush()
    _wait_for_request(server, a, proc)
    proc.stdin.write(b + "\n")
    proc.stdin.close()
    err = _finish(proc)
    assert proc.returncode == 0, err
    assert (tmp_path / "pa.bin").read_bytes() == gen_bytes(3000)
    assert (tmp_path / "pb.bin").read_bytes() == gen_bytes(4000)


def test_a_named_pipe_is_read_as_lines_arrive(server, url, tmp_path):
    fifo = tmp_path / "urls.fifo"
    os.mkfifo(fifo)
    a, b = url("/gen/fa.bin", size=1000), url("/gen/fb.bin", size=2000)
    proc = _start(["get", "-i", str(fifo), "-d", str(tmp_path / "out")], stdin=subprocess.DEVNULL)
    with open(fifo, "w") as writer:  # opening waits for the reader: the downloader
        writer.write(a + "\n")
        writer.flush()
        _wait_for_request(server, a, proc)
        writer.write(b + "\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "out/fb.bin").read_bytes() == gen_bytes(2000)


def test_aria2_options_written_with_their_url_apply_and_late_ones_are_reported(server, url, tmp_path):
    a, b = url("/gen/oa.bin", size=1000), url("/gen/ob.bin", size=1000)
    proc = _start(["get", "-d", str(tmp_path)])
    proc.stdin.write(f"{a}\n  out=renamed.bin\n")  # a URL and its options in one write
    proc.stdin.flush()
    _wait_for_request(server, a, proc)
    proc.stdin.write(f"{b}\n")
    proc.stdin.flush()
    _wait_for_request(server, b, proc)
    proc.stdin.write("  out=too-late.bin\n")  # its URL has started: this cannot apply any more
    proc.stdin.close()
    err = _finish(proc)
    assert proc.returncode == 1, err  # a rejected input line
    assert (tmp_path / "renamed.bin").exists() and (tmp_path / "ob.bin").exists()
    assert "stdin line 4: option line arrived after the URL of line 3 had started" in err
    assert not (tmp_path / "too-late.bin").exists()
