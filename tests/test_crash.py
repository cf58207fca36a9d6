"""Long batches cut short: kill -9 or Ctrl-C in the middle of 2,000 files, then the same command
again. The index batches its bookkeeping (names claimed a batch at a time, completions recorded
later), and these tests hold it to its promise: after a crash, a re-run never fetches again a file
that is complete under its final name, never trusts one that is not, and ends with every file
right."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MODES, key, run_cli
from downloader.mockserver import gen_bytes

COUNT = 2000


def _batch(server, tmp_path, tag: str) -> tuple[list[str], list[str], object]:
    """2,000 small files of different sizes and seeds, as a URL file."""
    names = [f"f{i:04d}.bin" for i in range(COUNT)]
    urls = [f"{server.url}/gen/{name}?size={1000 + (i * 37) % 9000}&seed={i}&latency=1&t={tag}"
            for i, name in enumerate(names)]
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(u + "\n" for u in urls))
    return names, urls, listing


def _start(args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "downloader", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_files(folder, at_least: int, proc, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if folder.is_dir() and sum(1 for n in os.listdir(folder) if n.endswith(".bin")) >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} files in {folder}")


def _check_all(out, names, urls) -> None:
    for i, (name, url) in enumerate(zip(names, urls)):
        size = int(url.split("size=")[1].split("&")[0])
        assert (out / name).read_bytes() == gen_bytes(size, i), name
    assert not [n for n in os.listdir(out) if n.endswith((".part", ".state"))]


ENGINES = [mode for mode in MODES if mode != "sequential"]  # sequential is the thread engine with one worker
KILLS = [(mode, at) for mode in ENGINES for at in ((150, 900) if mode == "async" else (600,))]


@pytest.mark.slow
@pytest.mark.parametrize("mode,at", KILLS)
def test_kill_9_mid_batch_then_rerun_fetches_no_complete_file_again(mode, at, server, tmp_path):
    out = tmp_path / "out"
    names, urls, listing = _batch(server, tmp_path, f"k9-{mode}-{at}")
    args = ["get", "-i", str(listing), "-d", str(out), "-m", mode, "-j", "16", "--no-progress"]
    proc = _start(args)
    _wait_for_files(out, at, proc)
    proc.kill()
    proc.communicate()
    complete = [(name, url) for name, url in zip(names, urls) if (out / name).exists()]
    assert complete, "the kill came before any file was complete"
    before = server.stats()
    rerun = run_cli(*args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    after = server.stats()
    fetched_again = [name for name, url in complete
                     if after.get(key(url), {}).get("gets", 0) != before.get(key(url), {}).get("gets", 0)]
    assert fetched_again == []
    _check_all(out, names, urls)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ENGINES)
def test_ctrl_c_mid_batch_then_rerun_completes_and_skips_what_was_done(mode, server, tmp_path):
    out = tmp_path / "out"
    names, urls, listing = _batch(server, tmp_path, f"int-{mode}")
    args = ["get", "-i", str(listing), "-d", str(out), "-m", mode, "-j", "16", "--no-progress"]
    proc = _start(args)
    _wait_for_files(out, 500, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done_first = int(err.split("interrupted: ")[-1].split(" downloaded")[0])
    assert 500 <= done_first < COUNT
    rerun = run_cli(*args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{COUNT - done_first} downloaded, {done_first} already there, 0 failed" in rerun.stderr
    _check_all(out, names, urls)
