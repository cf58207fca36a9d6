"""`downloader bench`: every documented field, sane values, a table that names each row, JSON that
round-trips, both post executors side by side, a picture with a panel per measure when matplotlib is
there, and the paths it wrote. No speed is asserted: the numbers are measured, never expected."""
from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys

import pytest

from downloader.benchcmd import (DEFAULT_FILES, LEGEND, POST_EXECUTORS, check_plot_extra, format_table, plot_figure,
                                 run_bench, write_json, write_plot)
from downloader.config import MODES
from downloader.demo import available_modes
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
    return run_bench(batch, None, ["thread", "async", "curl"], [], runs=1, jobs=4)


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
    assert (plain["modes"], plain["post"], plain["runs"], plain["jobs"]) == (["thread", "async", "curl"], [], 1, 4)
    assert plain["urls"] == len(batch) and "3 URLs" in plain["source"]
    assert plain["python"] and plain["cpu_count"] >= 1
    assert [(row["name"], row["mode"], row["post_executor"]) for row in plain["rows"]] == [
        ("thread", "thread", None), ("async", "async", None), ("curl", "curl", None)]
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
    (["async", "ftp"], [], 1, None, "--modes: ftp is not one of async, thread, sequential, curl"),
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


def test_without_pycurl_curl_is_left_out_by_default_and_refused_when_named(monkeypatch) -> None:
    assert available_modes() == list(MODES)  # pycurl is in the test extra
    for module in ("pycurl", "downloader.engines.curl"):  # as where pycurl never loaded
        monkeypatch.setitem(sys.modules, module, None)
    assert available_modes() == [mode for mode in MODES if mode != "curl"]
    with pytest.raises(UsageError, match=r"^--modes: curl needs pycurl, which cannot be imported: "
                                         r"pip install 'downloader\[curl\]'$"):
        run_bench(["http://127.0.0.1:9/never-fetched"], None, ["async", "curl"], [], 1)


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_an_unknown_mode_is_one_usage_line(command: str, tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "downloader", command, "--modes", "async,ftp"], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"downloader: --modes: ftp is not one of {', '.join(MODES)}\n"
    assert not any(tmp_path.iterdir())  # nothing started


def test_without_matplotlib_the_plot_error_says_how_to_install_it(plain: dict, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for call in (check_plot_extra, lambda: write_plot(plain, tmp_path / "bench.png")):
        with pytest.raises(UsageError, match=r"pip install -e '\.\[plot\]'"):
            call()
    assert not (tmp_path / "bench.png").exists()


PANELS = ["wall time (lower is better)", "files per second (higher is better)", "CPU time (lower is better)",
          "peak memory (lower is better)"]


@pytest.fixture
def matplotlib():
    return pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")


def _has_whiskers(ax) -> bool:
    from matplotlib.container import ErrorbarContainer
    return any(isinstance(container, ErrorbarContainer) for container in ax.containers)


def _three_runs(result: dict) -> dict:
    """`result` as if each row had run three times: the same median, a slower and a faster run."""
    result = copy.deepcopy(result)
    result["runs"] = 3
    for row in result["rows"]:
        (run,) = row["runs"]
        row["runs"] = [run, {**run, "wall": run["wall"] * 1.3, "cpu": run["cpu"] * 1.2},
                       {**run, "wall": run["wall"] * 0.8, "peak_rss_mib": run["peak_rss_mib"] - 1}]
    return result


def test_write_plot_writes_a_png_and_says_where(matplotlib, with_post: dict, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    written = write_plot(with_post, "bench.png")
    assert written == tmp_path / "bench.png" and written.is_absolute()
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_picture_has_a_panel_per_measure_and_a_bar_per_row(matplotlib, plain: dict) -> None:
    figure = plot_figure(plain)
    assert [ax.get_title() for ax in figure.axes] == PANELS
    names = [row["name"] for row in plain["rows"]]
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == names
    for ax in figure.axes:
        assert len(ax.patches) == len(names)
        shown = [text.get_text() for text in ax.texts]
        assert len(shown) == len(names) and all(text[0].isdigit() for text in shown)
    assert [text.get_text() for text in figure.axes[0].texts] == [f"{r['median']['wall']:.2f} s" for r in plain["rows"]]
    assert plain["source"] in figure.get_suptitle() and "one run per row" in figure.get_suptitle()
    assert not figure.legends  # without post tasks the rows' names say it all


def test_one_run_draws_no_whiskers_and_several_do(matplotlib, plain: dict) -> None:
    assert not any(_has_whiskers(ax) for ax in plot_figure(plain).axes)
    figure = plot_figure(_three_runs(plain))
    assert all(_has_whiskers(ax) for ax in figure.axes)
    assert "median of 3 runs per row, whiskers from the fastest to the slowest run" in figure.get_suptitle()


def test_with_post_tasks_the_legend_sits_outside_every_panel(matplotlib, with_post: dict) -> None:
    for result in (with_post, _three_runs(with_post)):
        figure = plot_figure(result)
        (legend,) = figure.legends
        assert [text.get_text() for text in legend.get_texts()] == [
            "downloads done (the post tasks may run on after)",
            "CPU of the post tasks, on threads or on worker processes"]
        figure.draw_without_rendering()
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in figure.axes)
        wall, _, cpu, _ = figure.axes
        assert len(wall.lines[0].get_xdata()) == len(with_post["rows"])  # a downloads-done mark per row
        assert len(cpu.patches) == 2 * len(with_post["rows"])  # the get process, then the post tasks' share
        assert "post sha256 on each file" in figure.get_suptitle()


def test_the_picture_takes_whatever_modes_ran(matplotlib, plain: dict) -> None:
    result = copy.deepcopy(plain)
    extra = copy.deepcopy(result["rows"][-1])
    extra["name"] = extra["mode"] = "sequential"
    result["rows"].append(extra)
    result["modes"].append("sequential")
    figure = plot_figure(result)
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["thread", "async", "curl", "sequential"]
    colours = [tuple(bar.get_facecolor()) for bar in figure.axes[0].patches]
    assert len(set(colours)) == 4


def test_a_batch_of_large_files_shows_megabytes_per_second(matplotlib, plain: dict) -> None:
    result = copy.deepcopy(plain)
    for row in result["rows"]:
        for values in (row["median"], *row["runs"]):
            values["bytes"] = values["ok"] * 5_000_000
    throughput = plot_figure(result).axes[1]
    assert throughput.get_title() == "throughput (higher is better)"
    assert all(text.get_text().endswith(" MB/s") for text in throughput.texts)


def test_bench_prints_where_it_wrote_the_json_and_the_png(matplotlib, batch: list[str], tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "downloader", "bench", *batch, "--modes", "async", "--runs", "1",
                           "-j", "4", "--json", "out.json", "--plot", "out.png"], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    where = tmp_path.resolve()
    assert f"wrote JSON {where / 'out.json'}" in lines and f"wrote PNG {where / 'out.png'}" in lines
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["modes"] == ["async"]
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
