"""The GIL demo: every documented field, sane values, a report that names each mode and each engine,
sentences that read the numbers they are given. No speed is asserted: the numbers are measured."""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import pytest

from conftest import run_cli
from downloader.gil import (DOWNLOAD_ENGINES, MODES, _ComputingThread, format_report, measure_downloads,
                            run_gil_demo, verdict)

FILES = 6
DOWNLOAD_FIELDS = {"files", "size", "latency", "jobs", "switch_interval", "measured_with", "skipped", "engines"}
ENGINE_FIELDS = {"ok", "wall", "cpu", "cpu_per_file", "beside_wall", "slowdown", "fib_pace", "gil_left"}


@pytest.fixture(scope="module")
def result() -> dict:
    return run_gil_demo(tasks=2, n=15, io_tasks=4, io_delay=0.01, files=FILES)


def _synthetic(gil_enabled: bool, thread_speedup: float, process_speedup: float, downloads: dict | None = None) -> dict:
    """A demo result with chosen speedups, as a build we are not running on would give."""
    def runs(speedup: dict) -> dict:
        return {mode: {"wall": 1.0 / speedup[mode], "cpu": 1.0, "speedup": speedup[mode]} for mode in MODES}
    cpu = runs({"sequential": 1.0, "thread": thread_speedup, "process": process_speedup})
    cpu["process"]["startup"] = 0.05
    io = runs({"sequential": 1.0, "thread": 3.9, "process": 3.8})
    result = {"python": "3.13.0", "implementation": "CPython", "gil_enabled": gil_enabled, "cpu_count": 4,
              "workers": 4, "tasks": 8, "n": 27, "cpu_bound": cpu,
              "io_bound": {"io_tasks": 16, "io_delay": 0.1, **io}, "downloads": downloads}
    result["verdict"] = verdict(result)
    return result


def _downloads(per_engine: dict[str, tuple[float, float, float, float]], skipped: dict | None = None) -> dict:
    """A downloads part with chosen (ms of CPU per file, slowdown, fib pace, GIL left) per engine."""
    engines = {name: {"ok": 100, "wall": 0.5, "cpu": ms / 10, "cpu_per_file": ms / 1000, "beside_wall": 0.5 * slower,
                      "slowdown": slower, "fib_pace": pace, "gil_left": left}
               for name, (ms, slower, pace, left) in per_engine.items()}
    return {"files": 100, "size": 16384, "latency": 0.005, "jobs": 16, "switch_interval": 0.005,
            "measured_with": "schedstat", "skipped": skipped or {}, "engines": engines}


def _without_pycurl(monkeypatch) -> None:
    """As where pycurl never loaded: neither it nor the curl engine, which imports it, can be imported."""
    for module in ("pycurl", "downloader.engines.curl"):
        monkeypatch.setitem(sys.modules, module, None)


def test_the_result_has_every_documented_field(result: dict) -> None:
    assert json.loads(json.dumps(result)) == result
    assert (result["python"], result["implementation"]) == (platform.python_version(),
                                                            platform.python_implementation())
    assert isinstance(result["gil_enabled"], bool)
    assert result["cpu_count"] == os.cpu_count() and result["workers"] == os.cpu_count()
    assert (result["tasks"], result["n"]) == (2, 15)
    assert (result["io_bound"]["io_tasks"], result["io_bound"]["io_delay"]) == (4, 0.01)
    for section in (result["cpu_bound"], result["io_bound"]):
        for mode in MODES:
            run = section[mode]
            assert run["wall"] > 0 and run["cpu"] >= 0 and run["speedup"] > 0, (mode, run)
        assert section["sequential"]["speedup"] == 1.0
    assert result["cpu_bound"]["process"]["startup"] > 0
    assert result["io_bound"]["sequential"]["wall"] >= 4 * 0.01
    assert result["verdict"] and all(isinstance(sentence, str) for sentence in result["verdict"])


def test_every_engine_downloads_the_whole_batch_alone_and_beside_the_computing_thread(result: dict) -> None:
    downloads = result["downloads"]
    assert set(downloads) == DOWNLOAD_FIELDS
    assert (downloads["files"], downloads["size"], downloads["jobs"]) == (FILES, 16 * 1024, 16)
    assert downloads["switch_interval"] == sys.getswitchinterval()
    assert downloads["measured_with"] == ("schedstat" if os.path.exists("/proc/thread-self/schedstat")
                                          else "thread_time")
    assert list(downloads["engines"]) == list(DOWNLOAD_ENGINES) and downloads["skipped"] == {}  # pycurl: the test extra
    for name, run in downloads["engines"].items():
        assert set(run) == ENGINE_FIELDS, name
        assert run["ok"] == FILES, (name, run)
        assert run["wall"] > 0 and run["cpu"] > 0 and run["beside_wall"] > 0, (name, run)
        assert run["cpu_per_file"] == pytest.approx(run["cpu"] / FILES)
        assert run["slowdown"] == pytest.approx(run["beside_wall"] / run["wall"])
        assert 0 <= run["gil_left"] <= 1 and run["fib_pace"] > 0, (name, run)


def test_without_pycurl_the_curl_row_is_skipped_with_the_command_that_installs_it(monkeypatch) -> None:
    _without_pycurl(monkeypatch)
    downloads = measure_downloads(files=2)
    assert list(downloads["engines"]) == ["thread", "async"]
    assert downloads["skipped"] == {"curl": "pycurl cannot be imported: pip install 'downloader[curl]'"}
    assert all(run["ok"] == 2 for run in downloads["engines"].values())
    report = format_report(_synthetic(True, 1.0, 1.9, downloads))
    assert "  curl: skipped, pycurl cannot be imported: pip install 'downloader[curl]'" in report.splitlines()


def test_the_report_shows_each_mode_each_engine_and_the_verdict(result: dict) -> None:
    report = format_report(result)
    assert "fib(15)" in report and "sleep(0.01 s)" in report
    assert all(report.count(mode) >= 2 for mode in MODES)
    assert f"Downloads: {FILES} x 16 KiB from the mock server" in report
    rows = {line.split()[0]: line.split() for line in report.splitlines() if line.startswith("  ")}
    for name, run in result["downloads"]["engines"].items():
        assert rows[name][1:3] == [f"{FILES}/{FILES}", f"{run['wall']:.3f}"], rows[name]
        assert rows[name][-1] == f"{run['gil_left']:.1%}"
    assert all(sentence in report for sentence in result["verdict"])
    assert all(f"the {name} engine" in " ".join(result["verdict"]) for name in DOWNLOAD_ENGINES)


def test_the_verdict_reads_the_numbers_it_is_given() -> None:
    with_gil = " ".join(verdict(_synthetic(gil_enabled=True, thread_speedup=0.98, process_speedup=3.9)))
    assert "0.98x" in with_gil and "the GIL lets only one thread" in with_gil and "3.90x" in with_gil
    free_threaded = " ".join(verdict(_synthetic(gil_enabled=False, thread_speedup=3.7, process_speedup=3.9)))
    assert "3.70x" in free_threaded and "without the GIL, so threads run Python side by side" in free_threaded


def test_the_download_sentences_read_the_numbers_they_are_given() -> None:
    curl_first = _downloads({"thread": (2.1, 1.9, 0.70, 0.91), "async": (1.3, 2.2, 0.72, 0.96),
                             "curl": (0.4, 1.5, 0.74, 0.99)})
    said = " ".join(verdict(_synthetic(True, 1.0, 1.9, curl_first)))
    assert ("the curl engine used 0.40 ms of CPU, the async engine 1.30 ms and the thread engine 2.10 ms: libcurl "
            "reads the sockets and parses HTTP in C") in said
    assert ("was left the GIL 99.0% of the time by the curl engine, 96.0% by the async engine and 91.0% by the "
            "thread engine: the thread engine held it the most, as its threads each take it for requests' Python "
            "work; libcurl takes it only for its callbacks.") in said
    assert ("kept 70% to 74% of its pace alone: unlike that share, its pace also moves with all else that wants "
            "the 4 CPUs") in said
    assert "1.90x as long as alone with the thread engine, 2.20x with the async engine and 1.50x" in said
    assert "the downloads paid for the GIL too" in said and "after 5 ms (sys.getswitchinterval())" in said

    level = _downloads({"thread": (1.0, 1.1, 0.97, 0.98), "async": (0.8, 1.1, 0.99, 0.99)})
    said = " ".join(verdict(_synthetic(True, 1.0, 1.9, level)))
    assert "the async engine used 0.80 ms of CPU and the thread engine 1.00 ms." in said and "libcurl" not in said
    assert "held it only for moments between its waits, and about as long" in said
    assert "kept 97% to 99% of its pace alone, about the share the GIL left it." in said
    assert "paid for the GIL" not in said

    async_holds_most = _downloads({"thread": (2.0, 2.0, 0.5, 0.97), "async": (1.0, 2.0, 0.5, 0.90),
                                   "curl": (1.2, 2.0, 0.5, 0.98)})
    said = " ".join(verdict(_synthetic(True, 1.0, 1.9, async_holds_most)))
    assert "90.0% by the async engine: the async engine held it the most." in said
    assert "the async engine used 1.00 ms of CPU, the curl engine 1.20 ms" in said and "libcurl reads" not in said

    without_gil = " ".join(verdict(_synthetic(False, 3.7, 3.9, level)))
    assert "This build runs without the GIL, so the thread computing fib beside each batch never waited" in without_gil


def test_without_the_downloads_part_there_is_no_downloads_table_or_sentence() -> None:
    result = _synthetic(True, 1.0, 1.9)
    assert len(result["verdict"]) == 3
    assert "Downloads:" not in format_report(result)


def test_the_computing_thread_tells_waiting_beside_it_from_computing_beside_it() -> None:
    from downloader.postprocess import fib

    with _ComputingThread(alone=0.05) as computing:
        time.sleep(0.2)  # releases the GIL all along
    assert computing.gil_left > 0.9
    with _ComputingThread(alone=0.05) as computing:
        fib(27)  # holds the GIL but when the computing thread asks for it, every switch interval
    assert computing.gil_left < 0.9


def test_the_gil_command_takes_the_batch_size_or_leaves_the_downloads_out() -> None:
    proc = run_cli("gil", "--tasks", "1", "--n", "5", "--files", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Downloads: 2 x 16 KiB" in proc.stdout
    assert [line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("  curl ")] == [["curl", "2/2"]]
    proc = run_cli("gil", "--tasks", "1", "--n", "5", "--no-downloads", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["downloads"] is None


@pytest.mark.parametrize("bad", [{"tasks": 0}, {"io_tasks": 0}, {"workers": 0}, {"n": -1}, {"io_delay": -1},
                                 {"files": 0}])
def test_bad_arguments_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="gil demo needs"):
        run_gil_demo(**bad)
