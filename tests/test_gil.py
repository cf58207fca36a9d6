"""The GIL demo: every documented field, sane values, a report that names each mode."""
from __future__ import annotations

import json
import os
import platform

import pytest

from downloader.gil import MODES, format_report, run_gil_demo, verdict


@pytest.fixture(scope="module")
def result() -> dict:
    return run_gil_demo(tasks=2, n=15, io_tasks=4, io_delay=0.01)


def _synthetic(gil_enabled: bool, thread_speedup: float, process_speedup: float) -> dict:
    """A demo result with chosen speedups, as a build we are not running on would give."""
    def runs(speedup: dict) -> dict:
        return {mode: {"wall": 1.0 / speedup[mode], "cpu": 1.0, "speedup": speedup[mode]} for mode in MODES}
    cpu = runs({"sequential": 1.0, "thread": thread_speedup, "process": process_speedup})
    cpu["process"]["startup"] = 0.05
    io = runs({"sequential": 1.0, "thread": 3.9, "process": 3.8})
    return {"python": "3.13.0", "implementation": "CPython", "gil_enabled": gil_enabled, "cpu_count": 4,
            "workers": 4, "tasks": 8, "n": 27, "cpu_bound": cpu,
            "io_bound": {"io_tasks": 16, "io_delay": 0.1, **io}}


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


def test_the_report_shows_each_mode_and_the_verdict(result: dict) -> None:
    report = format_report(result)
    assert "fib(15)" in report and "sleep(0.01 s)" in report
    assert all(report.count(mode) >= 2 for mode in MODES)
    assert all(sentence in report for sentence in result["verdict"])


def test_the_verdict_reads_the_numbers_it_is_given() -> None:
    with_gil = " ".join(verdict(_synthetic(gil_enabled=True, thread_speedup=0.98, process_speedup=3.9)))
    assert "0.98x" in with_gil and "the GIL lets only one thread" in with_gil and "3.90x" in with_gil
    free_threaded = " ".join(verdict(_synthetic(gil_enabled=False, thread_speedup=3.7, process_speedup=3.9)))
    assert "3.70x" in free_threaded and "without the GIL, so threads run Python side by side" in free_threaded


@pytest.mark.parametrize("bad", [{"tasks": 0}, {"io_tasks": 0}, {"workers": 0}, {"n": -1}, {"io_delay": -1}])
def test_bad_arguments_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="gil demo needs"):
        run_gil_demo(**bad)
