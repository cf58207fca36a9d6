"""`downloader bench`: every documented field, sane values, a table that names each row, JSON that
round-trips, both post executors side by side, and a plot when matplotlib is there. No speed is
asserted: the numbers are measured, never expected."""
from __future__ import annotations

import json
import statistics
import sys

import pytest

from downloader.benchcmd import (DEFAULT_FILES, LEGEND, POST_EXECUTORS, check_plot_extra, format_table, run_bench,
                                 write_json, write_plot)
from downloader.errors import UsageError

SIZE = 20_000
RUN_FIELDS = {"wall", "download", "files", "ok", "failed", "bytes", "cpu", "post_cpu", "post_errors",
              "peak_rss_mib", "file_seconds", "exit_code"}
MEDIAN_FIELDS = {"wall", "download", "ok", "bytes", "cpu", "post_cpu", "peak_rss_mib", "file_seconds", "files",
                 "files_per_s", "mb_per_s"}


@pytest.fixture(scope="module")
def batch(server) -> list[str]:
    return [f"{server.url}/gen/bench-test-{i}.bin?size={SIZE}&seed={i}" for i in range(3)]


@pytest.fixture(scope="module")
def plain(batch) -> dict:
    return run_bench(batch, None, ["thread", "async"], [], runs=1, jobs=4)


@pytest.fixture(scope="module")
def with_post(batch) -> dict:
    return run_bench(batch, None, ["async"], ["sha256"], runs=1, jobs=4)


def _check_run(run: dict, files: int, post: bool) -> None:
    assert set(run) == RUN_FIELDS, run
    assert (run["files"], run["ok"], run["failed"], run["exit_code"]) == (files, files, 0, 0), run
    assert run["bytes"] == files * SIZE
    assert run["wall"] > 0 and run["cpu"] > 0 and run["peak_rss_mib"] > 0
    # a file's time comes from the kernel's coarser clock: allow it a few ms past the exit
    assert 0 < run["download"] <= run["wall"] + 0.05, run
    assert 0 < run["file_seconds"] <= run["download"]
    assert run["post_cpu"] >= 0 and run["post_errors"] == 0
    if not post:
        assert run["post_cpu"] == 0


def test_the_result_has_every_documented_field(plain: dict, batch: list[str]) -> None:
    assert (plain["modes"], plain["post"], plain["runs"], plain["jobs"]) == (["thread", "async"], [], 1, 4)
    assert plain["urls"] == len(batch) and "3 URLs" in plain["source"]
    assert plain["python"] and plain["cpu_count"] >= 1
    assert [(row["name"], row["mode"], row["post_executor"]) for row in plain["rows"]] == [
        ("thread", "thread", None), ("async", "async", None)]
    assert plain["verdict"] == []
    for row in plain["rows"]:
        assert len(row["runs"]) == 1
        run = row["runs"][0]
        _check_run(run, len(batch), post=False)
        median = row["median"]
        assert set(median) == MEDIAN_FIELDS
        assert median["wall"] == run["wall"] and median["download"] == run["download"]
        assert (median["ok"], median["files"]) == (len(batch), len(batch))
        assert median["files_per_s"] == pytest.approx(len(batch) / run["wall"])
        assert median["mb_per_s"] == pytest.approx(len(batch) * SIZE / run["wall"] / 1e6)


def test_the_table_shows_each_row_and_says_what_the_columns_count(plain: dict) -> None:
    table = format_table(plain)
    lines = table.splitlines()
    for row in plain["rows"]:
        shown = next(line for line in lines if line.startswith(row["name"] + " "))
        assert "3/3" in shown and f"{row['median']['wall']:.2f}" in shown
    for column in ("wall s", "files/s", "MB/s", "download s", "CPU s", "post CPU s", "peak MiB"):
        assert column in lines[3]
    assert all(line in lines for line in LEGEND)
    assert "median of 1 run per row" in table


def test_json_round_trips(plain: dict, tmp_path) -> None:
    path = tmp_path / "bench.json"
    write_json(plain, path)
    assert json.loads(path.read_text(encoding="utf-8")) == plain


def test_with_post_tasks_both_executors_run_side_by_side(with_post: dict, batch: list[str]) -> None:
    assert with_post["post"] == ["sha256"]
    assert [(row["name"], row["post_executor"]) for row in with_post["rows"]] == [
        (f"async + post({executor})", executor) for executor in POST_EXECUTORS]
    for row in with_post["rows"]:
        _check_run(row["runs"][0], len(batch), post=True)
        assert row["median"]["post_cpu"] >= 0
    table = format_table(with_post)
    assert "async + post(thread)" in table and "async + post(process)" in table and "post sha256" in table
    assert len(with_post["verdict"]) == 1 and with_post["verdict"][0].startswith("async:")
    assert with_post["verdict"][0] in table


def test_a_url_list_file_runs_each_round_and_a_failed_url_is_counted(server, tmp_path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.url}/gen/list-a.bin?size={SIZE}\n{server.url}/gen/list-b.bin?size={SIZE}\n"
                    f"{server.url}/status/404\n", encoding="utf-8")
    result = run_bench(None, str(urls), ["sequential"], [], runs=2, jobs=2)
    assert result["urls"] is None and str(urls) in result["source"]
    (row,) = result["rows"]
    assert len(row["runs"]) == 2
    assert all((run["files"], run["ok"], run["failed"], run["exit_code"]) == (3, 2, 1, 1) for run in row["runs"])
    assert row["median"]["wall"] == statistics.median(run["wall"] for run in row["runs"])
    assert "2/3" in format_table(result)


def test_without_urls_it_runs_the_default_batch_on_the_mock_server() -> None:
    result = run_bench(None, None, ["async"], [], runs=1)
    assert result["urls"] == DEFAULT_FILES and "mock server" in result["source"]
    assert result["rows"][0]["median"]["ok"] == DEFAULT_FILES


@pytest.mark.parametrize("modes, post, runs, input_file, said", [
    (["async", "ftp"], [], 1, None, "--modes: ftp"),
    ([" ", ""], [], 1, None, "--modes: nothing"),
    (["async", "async"], [], 1, None, "names a mode twice"),
    (["async"], ["fib:99"], 1, None, "--post: post task 'fib:99'"),
    (["async"], [], 0, None, "runs=0"),
    (["async"], [], 1, "-", "stdin only once"),
    (["async"], [], 1, "no-such-list.txt", "cannot read URL file no-such-list.txt"),
])
def test_bad_input_is_one_usage_error_before_anything_runs(modes, post, runs, input_file, said) -> None:
    with pytest.raises(UsageError, match=said.replace("(", r"\(")):
        run_bench(["http://127.0.0.1:9/never-fetched"], input_file, modes, post, runs)


def test_without_matplotlib_the_plot_error_says_how_to_install_it(plain: dict, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for call in (check_plot_extra, lambda: write_plot(plain, tmp_path / "bench.png")):
        with pytest.raises(UsageError, match=r"pip install -e '\.\[plot\]'"):
            call()
    assert not (tmp_path / "bench.png").exists()


def test_write_plot_writes_a_png(with_post: dict, tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    path = tmp_path / "bench.png"
    write_plot(with_post, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
