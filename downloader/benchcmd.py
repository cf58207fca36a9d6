"""`downloader bench`: the same batch through each mode, measured from outside, side by side.

Every run is a real `downloader get` subprocess into a fresh temporary folder (so nothing is
"already there"), deleted afterwards. A small launcher reaps it with `os.wait4`, which gives its
own CPU time and peak RSS and nothing of this process: with no URLs given, the mock server runs
here, on a thread, and its CPU is never charged to the client::

    result = run_bench(None, None, ["thread", "async"], ["fib:27"], runs=3)
    print(format_table(result))        # or write_json(result, path), write_plot(result, path)

With post tasks, each mode runs twice, once per post executor ("thread", "process"). Pure-Python
work on post threads holds the GIL that the download threads (or the event loop) need for every
chunk, so the download phase itself slows; on processes it does not. The table shows it in
"download s": from launch until the last byte of the last file was written, read from the files'
modification times (the report gives each transfer's duration but not when it ended).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DownloaderError, UsageError

__all__ = ["DEFAULT_FILES", "DEFAULT_LATENCY", "DEFAULT_SIZE", "LEGEND", "POST_EXECUTORS", "Measure",
           "check_plot_extra", "default_urls", "format_table", "plot_figure", "plot_measures", "run_bench", "verdict",
           "write_json", "write_plot"]

DEFAULT_FILES = 80
"""Files in the batch when no URLs are given: enough post work (80 x fib:27 is about 1.5 CPU
seconds here) to outweigh starting a process pool, few enough for sequential runs to stay short."""
DEFAULT_SIZE = 64 * 1024
"""Bytes per file of the default batch."""
DEFAULT_LATENCY = 0.05
"""Seconds the mock server waits before each response of the default batch."""
POST_EXECUTORS = ("thread", "process")
"""The post executors compared when post tasks are given, in the order of the rows."""
PLOT_HINT = "pip install -e '.[plot]' (in the project folder)"

_MEDIAN_FIELDS = ("wall", "download", "cpu", "post_cpu", "peak_rss_mib", "file_seconds", "ok", "bytes")


def default_urls(base: str, files: int = DEFAULT_FILES, size: int = DEFAULT_SIZE) -> list[str]:
    """The default batch on a mock server at `base`: `files` virtual files of `size` bytes."""
    return [f"{base}/gen/bench-{i:02d}.bin?size={size}&seed={i}" for i in range(files)]


def run_bench(urls: list[str] | None, input_file: str | None, modes: list[str], post: list[str],
              runs: int, jobs: int = 16, say: Callable[[str], None] | None = None) -> dict:
    """Download the batch `runs` times per row and return every run and each row's medians.

    The batch is `urls`, then the lines of `input_file`; with neither, `default_urls` on a mock
    server started here with DEFAULT_LATENCY. A row is a mode, or with `post` specs a mode and a
    post executor. Rows take turns within each round, so a burst of load from elsewhere on the
    machine cannot spoil every run of one row while sparing another. Bad modes, specs or counts
    raise UsageError before anything runs; a run that cannot start at all raises DownloaderError
    (a URL that fails is data: it shows in `ok` and `failed`). `say`, when given, gets a line
    after each run, for people watching a long bench.

    The fields, stable for JSON (seconds are floats)::

        python, cpu_count, source, urls (None when read from a file), modes, post, runs, jobs,
        rows: [{name, mode, post_executor (None without post),
                runs: [{wall, download, files, ok, failed, bytes, cpu, post_cpu, post_errors,
                        peak_rss_mib, file_seconds, exit_code}],
                median: {wall, download, ok, bytes, cpu, post_cpu, peak_rss_mib, file_seconds,
                         files, files_per_s, mb_per_s}}],
        verdict: [sentence, ...]

    `wall` is launch to exit of `downloader get`; `download` launch to the last byte of the last
    file written (None when no file was written); `cpu` the get process's own user+sys time (post
    threads included, process-pool workers not); `post_cpu` the post tasks' CPU wherever they ran;
    `file_seconds` the median transfer time of one file; `files_per_s` and `mb_per_s` (10**6 bytes)
    count files ok and bytes received over the median wall time.
    """
    modes, post = _check(urls, input_file, modes, post, runs, jobs)
    rows = [{"name": mode, "mode": mode, "post_executor": None} for mode in modes] if not post else \
        [{"name": f"{mode} + post({executor})", "mode": mode, "post_executor": executor}
         for mode in modes for executor in POST_EXECUTORS]
    result = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "modes": modes, "post": post,
              "runs": runs, "jobs": jobs}
    if urls or input_file:
        result["source"] = ", ".join(filter(None, [f"{len(urls)} URLs given" if urls else "",
                                                   f"the URLs of {input_file}" if input_file else ""]))
        result["urls"] = len(urls) if urls and not input_file else None
        source = list(urls or []) + (["-i", str(Path(input_file).resolve())] if input_file else [])
        _run_rounds(rows, source, post, runs, jobs, say)
    else:
        from .mockserver import MockConfig, MockServer
        with MockServer(None, MockConfig(latency=DEFAULT_LATENCY)) as server:
            batch = default_urls(server.url)
            result["source"] = (f"{len(batch)} files of {DEFAULT_SIZE // 1024} KiB from the mock server "
                                f"({DEFAULT_LATENCY * 1000:.0f} ms latency per response)")
            result["urls"] = len(batch)
            _run_rounds(rows, batch, post, runs, jobs, say)
    for row in rows:
        row["median"] = _medians(row["runs"])
    result["rows"] = rows
    result["verdict"] = verdict(result)
    return result


def _check(urls, input_file, modes, post, runs, jobs) -> tuple[list[str], list[str]]:
    from .demo import check_modes
    from .postprocess import parse_post_spec

    modes = check_modes(modes)
    try:
        post = [parse_post_spec(spec).name for spec in post]
    except ValueError as exc:
        raise UsageError(f"--post: {exc}") from None
    if runs < 1 or jobs < 1:
        raise UsageError(f"bench needs --runs and --jobs of at least 1, not runs={runs}, jobs={jobs}")
    if input_file is not None:
        if input_file == "-":
            raise UsageError("-i -: bench reads the URL list once per run, and stdin only once; save it to a file")
        if not Path(input_file).is_file():
            raise UsageError(f"cannot read URL file {input_file}: no such file")
    return modes, post


def _run_rounds(rows: list[dict], source: list[str], post: list[str], runs: int, jobs: int,
                say: Callable[[str], None] | None) -> None:
    for row in rows:
        row["runs"] = []
    for round_number in range(1, runs + 1):
        for row in rows:
            run = _run_once(row["mode"], row["post_executor"], source, post, jobs)
            row["runs"].append(run)
            if say is not None:
                say(f"run {round_number}/{runs}  {row['name']:<26} {run['ok']}/{run['files']} ok  "
                    f"{run['wall']:.2f} s")


def _run_once(mode: str, executor: str | None, source: list[str], post: list[str], jobs: int) -> dict:
    """One `downloader get` of the batch into a fresh folder, measured; the folder is deleted after."""
    work = Path(tempfile.mkdtemp(prefix="downloader-bench-"))
    try:
        report, errors = work / "report.jsonl", work / "stderr.txt"
        command = [sys.executable, "-m", "downloader", "get", *source, "-d", str(work / "files"), "-m", mode,
                   "-j", str(jobs), "--no-progress", "-q", "--report", str(report)]
        for spec in post:
            command += ["--post", spec]
        if executor is not None:
            command += ["--post-executor", executor]
        with open(errors, "w+", encoding="utf-8", errors="replace") as stderr:
            measured = _launch(command, stderr)
            stderr.seek(0)
            said = stderr.read().strip().splitlines()
        if measured is None or measured["exit_code"] not in (0, 1) or not report.is_file():
            code = "no exit code" if measured is None else f"exit code {measured['exit_code']}"
            last = said[-1] if said else "no message"
            raise DownloaderError(f"downloader get -m {mode} failed ({code}): {last}")
        entries = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]
        launched = measured.pop("launched")
        return {"wall": measured.pop("wall"), **_from_report(entries, launched), **measured}
    finally:
        shutil.rmtree(work, ignore_errors=True)


_LAUNCHER = """
import json, os, signal, sys, time
launched, start = time.time(), time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"launched": launched, "wall": wall, "exit_code": os.waitstatus_to_exitcode(status),
                  "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}))
"""
"""Starts `argv[1:]`, reaps it with wait4 and prints what it measured as JSON.

Why a launcher: a process's ru_maxrss keeps the resident size of the image it replaced at exec,
and a child started from here would carry this process's (the mock server and all, 60 MiB and
more). Started from this small interpreter, the floor is its 9 MiB. A Ctrl-C reaches the get
process straight from the terminal; the launcher ignores it and waits for the get process to stop,
and passes SIGTERM on to it."""


def _launch(command: list[str], stderr) -> dict | None:
    """Run `command` through `_LAUNCHER`; its measurements, or None when it could not give them."""
    launcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, *command],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        out, _ = launcher.communicate()
    except BaseException:
        _stop(launcher)
        raise
    try:
        return json.loads(out)
    except ValueError:
        return None


def _stop(launcher: subprocess.Popen) -> None:
    """Stop a run when the bench is interrupted, sending the get process at most one signal.

    A Ctrl-C at the terminal has already reached it, and it is saving its state: a second signal
    would make it quit at once, leaving its process-pool workers behind. So wait a while first;
    only a get process that was not told (the bench alone was interrupted) gets SIGTERM."""
    for ask, patience in ((None, 10), (launcher.terminate, 30), (launcher.kill, None)):
        if ask is not None:
            ask()
        try:
            launcher.wait(patience)
            return
        except subprocess.TimeoutExpired:
            continue


def _from_report(entries: list[dict], launched: float) -> dict:
    """What a run's report tells: counts, bytes, post CPU, and when the last file landed.

    A file's modification time is when its last byte was written (the downloader writes `.part`,
    then renames it, which keeps the time, and sets no time of its own).
    """
    ok = [e for e in entries if e["status"] == "ok"]
    landed = [os.stat(e["path"]).st_mtime for e in ok if e.get("path") and os.path.isfile(e["path"])]
    tasks = [task for e in entries for task in e.get("post", [])]
    return {"download": max(landed) - launched if landed else None, "files": len(entries), "ok": len(ok),
            "failed": sum(e["status"] == "failed" for e in entries), "bytes": sum(e["bytes"] for e in entries),
            "post_cpu": sum(task["cpu_seconds"] for task in tasks),
            "post_errors": sum(bool(task["error"]) for task in tasks),
            "file_seconds": statistics.median(e["seconds"] for e in ok) if ok else None}


def _medians(runs: list[dict]) -> dict:
    median = {}
    for field in _MEDIAN_FIELDS:
        values = [run[field] for run in runs if run[field] is not None]
        median[field] = statistics.median(values) if values else None
    median["ok"] = min(run["ok"] for run in runs)  # the worst run: one failure anywhere must show
    median["files"] = max(run["files"] for run in runs)
    median["files_per_s"] = median["ok"] / median["wall"]
    median["mb_per_s"] = median["bytes"] / median["wall"] / 1e6
    return median


def verdict(result: dict) -> list[str]:
    """Sentences that read the medians for people: per mode, post on threads against processes."""
    sentences = []
    by_name = {row["name"]: row["median"] for row in result["rows"]}
    for mode in result["modes"]:
        threads, processes = by_name.get(f"{mode} + post(thread)"), by_name.get(f"{mode} + post(process)")
        if threads is None or processes is None:
            continue
        said = (f"{mode}: the batch took {processes['wall']:.2f} s with post tasks on processes and "
                f"{threads['wall']:.2f} s on threads ({threads['wall'] / processes['wall']:.2f}x)")
        if threads["download"] is not None and processes["download"] is not None:
            said += (f"; the downloads ended after {processes['download']:.2f} s and "
                     f"{threads['download']:.2f} s")
            if threads["download"] > processes["download"] * 1.1:
                said += ": post work on threads holds the GIL the downloads need, so it slowed them too"
        sentences.append(said + ".")
    return sentences


def format_table(result: dict) -> str:
    """A `run_bench` result as people read it: what ran, a row per mode (and executor), a legend."""
    post = f", post {' '.join(result['post'])} on each file" if result["post"] else ""
    runs = result["runs"]
    width = max(len(row["name"]) for row in result["rows"]) + 2
    head = (f"{'':<{width}}{'ok':>9}{'wall s':>8}{'files/s':>9}{'MB/s':>7}{'download s':>11}{'s/file':>7}{'CPU s':>7}"
            f"{'post CPU s':>11}{'peak MiB':>9}")
    lines = [f"{result['source']}, -j {result['jobs']}{post}",
             f"median of {runs} run{'s' * (runs > 1)} per row, each into a fresh folder; "
             f"Python {result['python']}, {result['cpu_count']} CPUs", "", head, "-" * len(head)]
    for row in result["rows"]:
        m = row["median"]
        ok = f"{m['ok']}/{m['files']}"
        lines.append(f"{row['name']:<{width}}{ok:>9}{m['wall']:>8.2f}{m['files_per_s']:>9.1f}{m['mb_per_s']:>7.1f}"
                     f"{_seconds(m['download']):>11}{_seconds(m['file_seconds']):>7}{m['cpu']:>7.2f}"
                     f"{m['post_cpu']:>11.2f}{m['peak_rss_mib']:>9.1f}")
    lines += ["", *LEGEND]
    if result["verdict"]:
        lines += ["", *result["verdict"]]
    return "\n".join(lines)


LEGEND = (
    "ok          files downloaded, in the worst run / files in the batch",
    "wall s      launch of `downloader get` to its exit (interpreter start included)",
    "files/s     files ok over wall s; MB/s: bytes received (10**6) over wall s",
    "download s  launch to the last byte of the last file written: the download phase, post tail excluded",
    "s/file      median time of one transfer, from its first request to the file in place (the report)",
    "CPU s       user+sys of the get process itself (wait4): post threads included, process-pool workers not",
    "post CPU s  CPU of the post tasks themselves, wherever they ran (on threads, already part of CPU s)",
    "            (starting process-pool workers is counted in neither CPU column)",
    "peak MiB    peak resident memory of the get process (ru_maxrss); process-pool workers not included",
)
"""What each column counts, printed under the table."""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_json(result: dict, path: Path) -> Path:
    """Every run and the medians, as indented JSON; returns the path written, made absolute."""
    try:
        Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return Path(path).resolve()


def check_plot_extra() -> None:
    """Raise UsageError, with the command that fixes it, when matplotlib (the `plot` extra) is missing.

    The CLI calls it before running, so a missing extra does not cost a whole bench."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"--plot needs matplotlib: {PLOT_HINT}")


def write_plot(result: dict, path: Path) -> Path:
    """Draw `plot_figure(result)` into a PNG at `path`; returns the path written, made absolute."""
    check_plot_extra()
    figure = plot_figure(result)
    try:
        figure.savefig(path, dpi=120)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return Path(path).resolve()


@dataclass(frozen=True)
class Measure:
    """One panel of the bench picture: a number per row, read from its median or from one run.

    >>> WALL.value({"post_executor": None}, {"wall": 1.5})
    1.5
    """

    title: str
    """The panel's title, with which way is better."""
    note: str
    """What exactly is counted, under the panel."""
    unit: str
    """Printed after each value (" s", "/s", " MiB")."""
    lower_is_better: bool
    value: Callable[[dict, dict], float]
    """(row, its median or one of its runs) -> the number; a median has the fields of a run."""


def _worker_cpu(row: dict, values: dict) -> float:
    """CPU of post tasks that ran outside the get process: on threads it is already in `cpu`."""
    return values["post_cpu"] if row["post_executor"] == "process" else 0.0


WALL = Measure("wall time (lower is better)", "seconds, from the launch of\n`downloader get` to its exit", " s", True,
               lambda row, v: v["wall"])
FILES_PER_S = Measure("files per second (higher is better)", "files downloaded\nover wall time", "/s", False,
                      lambda row, v: v["ok"] / v["wall"])
MB_PER_S = Measure("throughput (higher is better)", "MB (10**6 bytes) received\nover wall time", " MB/s", False,
                   lambda row, v: v["bytes"] / v["wall"] / 1e6)
CPU = Measure("CPU time (lower is better)",
              "seconds of user+sys, the get process\nand its post tasks wherever they ran", " s", True,
              lambda row, v: v["cpu"] + _worker_cpu(row, v))
MEMORY = Measure("peak memory (lower is better)", "MiB resident, the get process\n(post worker processes not included)",
                 " MiB", True, lambda row, v: v["peak_rss_mib"])
LARGE_FILES = 1_000_000
"""Bytes per file from which the throughput panel shows MB/s rather than files/s."""


def plot_measures(result: dict) -> list[Measure]:
    """The panels, left to right: wall time, throughput (files/s for batches of small files, MB/s
    when files average a megabyte or more), CPU time and peak memory: which mode, and what it costs."""
    median = result["rows"][0]["median"]
    return [WALL, MB_PER_S if median["bytes"] >= LARGE_FILES * max(1, median["ok"]) else FILES_PER_S, CPU, MEMORY]


def plot_figure(result: dict):
    """The bench picture as a matplotlib Figure: a panel per measure (`plot_measures`), in each a
    horizontal bar per row in the table's order, one colour per mode, whatever modes ran.

    Bars are medians, their values written beside them, the best in bold. Whiskers span the fastest
    to the slowest run, and only when there were several runs. With post tasks, the wall panel marks
    when the downloads ended, and the CPU panel shows the post tasks' share hatched. The legend sits
    under the panels and the title names the batch."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows, runs = result["rows"], result["runs"]
    measures = plot_measures(result)
    figure = Figure(figsize=(3.2 * len(measures), 1.9 + 0.42 * len(rows)), layout="constrained")
    axes = figure.subplots(1, len(measures), sharey=True)
    palette = colormaps["tab10"].colors
    colors = [palette[result["modes"].index(row["mode"]) % len(palette)] for row in rows]
    for ax, measure in zip(axes, measures):
        _draw_panel(ax, measure, result, colors)
    axes[0].set_yticks(range(len(rows)), [row["name"] for row in rows])
    axes[0].invert_yaxis()
    if result["post"]:
        figure.legend(handles=[
            Line2D([], [], linestyle="none", marker="D", markersize=5, color="black",
                   label="downloads done (the post tasks may run on after)"),
            Patch(facecolor="grey", alpha=0.45, hatch="///", edgecolor="white",
                  label="CPU of the post tasks, on threads or on worker processes")],
            loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    post = f", post {' '.join(result['post'])} on each file" if result["post"] else ""
    spread = (f"median of {runs} runs per row, whiskers from the fastest to the slowest run" if runs > 1
              else "one run per row")
    figure.suptitle(f"downloader bench: {result['source']}, -j {result['jobs']}{post}\n{spread}; "
                    f"Python {result['python']}, {result['cpu_count']} CPUs", fontsize=10)
    return figure


def _draw_panel(ax, measure: Measure, result: dict, colors: list) -> None:
    """One measure's bars; each value is written past the furthest thing on its line (a whisker's
    end, the downloads-done marker), and the axis leaves room for it."""
    rows, places = result["rows"], range(len(result["rows"]))
    medians = [measure.value(row, row["median"]) for row in rows]
    reach = [[measure.value(row, run) for run in row["runs"]] + [median] for row, median in zip(rows, medians)]
    whiskers = None
    if result["runs"] > 1:
        whiskers = [[m - min(r) for m, r in zip(medians, reach)], [max(r) - m for m, r in zip(medians, reach)]]
    if measure is CPU and result["post"]:
        own = [max(0.0, m - row["median"]["post_cpu"]) for m, row in zip(medians, rows)]
        ax.barh(places, own, color=colors)
        ax.barh(places, [m - o for m, o in zip(medians, own)], left=own, color=colors, alpha=0.45, hatch="///",
                edgecolor="white")
        if whiskers:
            ax.errorbar(medians, places, xerr=whiskers, fmt="none", ecolor="black", capsize=3)
    else:
        ax.barh(places, medians, color=colors, xerr=whiskers, capsize=3 if whiskers else 0)
    if measure is WALL and result["post"]:
        done = [(row["median"]["download"], place) for row, place in zip(rows, places) if row["median"]["download"]]
        ax.plot([x for x, _ in done], [y for _, y in done], linestyle="none", marker="D", markersize=5,
                color="black")
        for x, place in done:
            reach[place].append(x)
    best = (min if measure.lower_is_better else max)(medians)
    for place, median in enumerate(medians):
        digits = 0 if median >= 100 else 1 if median >= 10 else 2
        ax.annotate(f"{median:.{digits}f}{measure.unit}", (max(reach[place]), place), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8,
                    fontweight="bold" if median == best else "normal")
    ax.set_xlim(0, max(max(r) for r in reach) * 1.45 or 1)
    ax.set_title(measure.title, fontsize=9)
    ax.set_xlabel(measure.note, fontsize=7)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
