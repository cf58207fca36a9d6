"""How the GIL treats threads and processes, shown in numbers: the model behind `downloader gil`.

The same batch runs three ways (on the calling thread, on a thread pool, on a process pool) for
two kinds of work: CPU-bound (naive `fib`, pure Python that holds the GIL) and I/O-bound
(`time.sleep`, which releases it, as socket reads do). On a standard CPython, threads speed up the
waiting but not the computing; processes speed up both, at the price of starting interpreters::

    result = run_gil_demo()            # 10 to 15 s with the defaults on 2 cores
    print(format_report(result))       # or json.dumps(result)

This is why the downloader moves bytes on threads or an event loop and runs its CPU stage
(`postprocess`) on processes. A third part (`measure_downloads`) puts the engines themselves on
the scale: the same batch of real downloads by each engine in this process, alone and then beside
a thread that computes, for the CPU each engine spends and the share of the GIL it leaves to
other Python code.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from .postprocess import fib, worker_context

__all__ = ["format_report", "run_gil_demo", "verdict"]

MODES = ("sequential", "thread", "process")
"""The ways each batch runs, in the order of the report."""
CPU_ROUNDS = 3
"""CPU-bound timings keep the best of this many rounds: other programs on the machine can only
make a round slower, never faster (timeit's reasoning), and a busy 2-core box makes single runs
swing by half. The waits are timed once: sleeping shares no CPU with anyone."""
_PARALLEL = 1.3
"""A speedup above this means the work really ran side by side."""
DOWNLOAD_ENGINES = ("thread", "async", "curl")
"""The engines the downloads part compares, in the order of the report (sequential is the thread
engine with one connection: nothing new to show)."""
FILES = 100
"""Files in the downloads batch: each run lasts about half a second on a 2-core machine, a few
times that beside the computing thread."""
DOWNLOAD_ROUNDS = 2
"""Runs of each engine alone; the computing thread joins one more, which takes longer."""
FILE_SIZE = 16 * 1024
LATENCY = 0.005
"""Seconds the mock server waits before each response: a few, so the engines have waiting to overlap."""
JOBS = 16
_WARM_UP_FILES = 8
"""Files each engine fetches before anything is timed: its imports and first connections are
paid once by a program, not per batch."""
_FIB_STEP = 15
"""The computing thread's unit of work, fib(15): a fraction of a millisecond, so it stops soon
after it is told to."""
_SCHEDSTAT = "/proc/thread-self/schedstat"
_SAME_SHARE = 0.03
"""Shares of the GIL closer than this are read as the same: they move that much from run to run
on a busy 2-core machine."""
_SAME_PACE = 0.1
"""A computing thread's pace this close to the GIL share it was left is read as set by the GIL alone."""


def run_gil_demo(tasks: int = 8, n: int = 27, workers: int | None = None, io_tasks: int = 16,
                 io_delay: float = 0.1, files: int | None = FILES) -> dict:
    """Time `tasks` x fib(n), then `io_tasks` x sleep(io_delay), sequentially, on threads and on
    processes; then, unless `files` is None, a batch of that many downloads by each engine
    (`measure_downloads`, its "downloads" field, else None).

    Both pools have `workers` workers (default: the CPU count). The process pool is started, every
    worker ready, before anything is timed: a program pays that once, so it is reported apart, as
    `startup`, instead of spoiling the comparison. The I/O batch reuses both warm pools.

    The fields, stable for JSON (seconds are floats)::

        python, implementation, gil_enabled, cpu_count, workers, tasks, n,
        cpu_bound: {sequential, thread, process: {wall, cpu, speedup}}, process also has startup,
        io_bound: {io_tasks, io_delay, sequential, thread, process: {wall, cpu, speedup}},
        downloads: the fields of `measure_downloads`, or None,
        verdict: [sentence, ...]

    `wall` is the whole batch (for CPU-bound work, the best of CPU_ROUNDS); `cpu` sums that batch's
    per-task CPU time, measured on the thread that ran each task; `speedup` is the sequential wall
    time divided by this one.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if min(tasks, io_tasks, workers, 1 if files is None else files) < 1 or n < 0 or io_delay < 0:
        raise ValueError(f"gil demo needs tasks, io_tasks, workers and files of at least 1 and n, io_delay "
                         f"of at least 0, not tasks={tasks}, io_tasks={io_tasks}, workers={workers}, "
                         f"files={files}, n={n}, io_delay={io_delay}")
    result = {"python": platform.python_version(), "implementation": platform.python_implementation(),
              "gil_enabled": _gil_enabled(), "cpu_count": os.cpu_count(), "workers": workers,
              "tasks": tasks, "n": n}
    # For the I/O twin the thread pool gets a thread per task, as an I/O pool is sized: a waiting
    # thread costs almost nothing. Processes stay one per CPU, as they are sized: each costs a
    # start-up and an interpreter's memory.
    with ThreadPoolExecutor(workers) as threads, ThreadPoolExecutor(io_tasks) as io_threads, \
            _process_pool(workers) as processes:
        startup = _start_workers(processes, workers)
        mappers = {"sequential": map, "thread": threads.map, "process": processes.map}
        result["cpu_bound"] = _compare(fib, [n] * tasks, mappers, CPU_ROUNDS)
        io_mappers = dict(mappers, thread=io_threads.map)
        result["io_bound"] = {"io_tasks": io_tasks, "io_delay": io_delay, "thread_workers": io_tasks,
                              **_compare(time.sleep, [io_delay] * io_tasks, io_mappers, 1)}
    result["cpu_bound"]["process"]["startup"] = startup
    result["downloads"] = None if files is None else measure_downloads(files)
    result["verdict"] = verdict(result)
    return result


def measure_downloads(files: int = FILES, size: int = FILE_SIZE, latency: float = LATENCY, jobs: int = JOBS) -> dict:
    """The same batch of downloads by each engine in this process: alone, then beside a thread that computes.

    The batch is `files` virtual files of `size` bytes from the mock server, which runs as a
    subprocess (`demo.start_server`) so that its CPU is never counted here, waiting `latency`
    seconds before each response; `jobs` at a time. Each engine fetches it through the public API
    (`Downloader`, no progress shown) into a fresh temporary folder:

    - alone, DOWNLOAD_ROUNDS times, the engines taking turns: the least wall time and the least
      CPU seconds of this process for the batch (other programs can only add to either);
    - then once beside a Python thread that computes fib in a loop (`_ComputingThread`), alone
      for a moment first: the batch's wall time; that thread's progress during the batch as a
      share of its progress alone (`fib_pace`); and the share of the batch's time it did not
      spend waiting for the GIL (`gil_left`). A computing thread sleeps only to wait for the GIL,
      so the kernel's count of its sleep (`/proc/thread-self/schedstat`: `measured_with`
      "schedstat") is that wait, apart from the time it waited for a CPU: on a machine with a core
      to spare the two shares agree; on a busy one `fib_pace` also counts what other work took.
      Where the kernel does not say, `gil_left` is the thread's CPU time over the wall time
      ("thread_time"), which counts that wait too.

    An engine that cannot run here (curl without pycurl) is left out, and `skipped` says why.
    The fields, stable for JSON (seconds are floats, shares from 0 to 1)::

        files, size, latency, jobs, switch_interval, measured_with, skipped: {engine: why},
        engines: {thread, async, curl: {ok, wall, cpu, cpu_per_file, beside_wall, slowdown,
                                        fib_pace, gil_left}}

    `ok` counts the files of the worst run; `slowdown` is beside_wall / wall.
    """
    from .demo import CURL_EXTRA, available_modes, start_server, stop_server

    if min(files, jobs) < 1 or size < 0 or latency < 0:
        raise ValueError(f"gil downloads need files and jobs of at least 1 and size, latency of at least 0, "
                         f"not files={files}, jobs={jobs}, size={size}, latency={latency}")
    runnable = available_modes()
    engines = [engine for engine in DOWNLOAD_ENGINES if engine in runnable]
    result = {"files": files, "size": size, "latency": latency, "jobs": jobs,
              "switch_interval": sys.getswitchinterval(),
              "measured_with": "thread_time" if _read_schedstat() is None else "schedstat",
              "skipped": {engine: f"pycurl cannot be imported: {CURL_EXTRA}"
                          for engine in DOWNLOAD_ENGINES if engine not in runnable},
              "engines": {}}
    server, base = start_server(f"{latency * 1000:.3f}ms")
    try:
        urls = [f"{base}/gen/gil-{i:03d}.bin?size={size}&seed={i}" for i in range(files)]
        for engine in engines:
            _download(engine, urls[:_WARM_UP_FILES], jobs)
        alone = [{engine: _download(engine, urls, jobs) for engine in engines} for _ in range(DOWNLOAD_ROUNDS)]
        for engine in engines:
            runs = [row[engine] for row in alone]
            wall, cpu = min(run["wall"] for run in runs), min(run["cpu"] for run in runs)
            with _ComputingThread() as computing:
                beside = _download(engine, urls, jobs)
            result["engines"][engine] = {
                "ok": min(run["ok"] for run in [*runs, beside]), "wall": wall, "cpu": cpu,
                "cpu_per_file": cpu / files, "beside_wall": beside["wall"], "slowdown": beside["wall"] / wall,
                "fib_pace": computing.pace, "gil_left": computing.gil_left}
    finally:
        stop_server(server)
    return result


def verdict(result: dict) -> list[str]:
    """Sentences that read a `run_gil_demo` result's numbers for people (its "verdict" field)."""
    cpu, io, downloads = result["cpu_bound"], result["io_bound"], result.get("downloads")
    sentences = [_threads_on_cpu(cpu["thread"]["speedup"], result["gil_enabled"]),
                 _processes_on_cpu(cpu, f"{result['workers']} per pool, {result['cpu_count']} CPUs"),
                 _on_io(io, cpu["process"]["startup"])]
    if downloads and downloads["engines"]:
        sentences += [_on_download_cpu(downloads["engines"]),
                      _on_download_gil(downloads["engines"], result["gil_enabled"]),
                      _on_download_pace(downloads, result["gil_enabled"], result["cpu_count"])]
    return sentences


def format_report(result: dict) -> str:
    """A `run_gil_demo` result as people read it: what ran where, a table per workload, the verdict."""
    io = result["io_bound"]
    gil = "GIL enabled" if result["gil_enabled"] else "GIL disabled"
    return "\n".join([
        f"Python {result['python']} ({result['implementation']}, {gil}), {result['cpu_count']} CPUs, "
        f"{result['workers']} workers per pool",
        "",
        f"CPU-bound: {result['tasks']} x fib({result['n']}), best of {CPU_ROUNDS} rounds",
        *_table(result["cpu_bound"]),
        "",
        f"I/O-bound: {io['io_tasks']} x sleep({io['io_delay']} s); {io.get('thread_workers', '?')} threads, "
        f"{result['workers']} processes",
        *_table(io),
        "",
        *_downloads_table(result.get("downloads")),
        *result["verdict"],
    ])


def _gil_enabled() -> bool:
    """Whether the GIL is on: always before 3.13, whose free-threaded builds can run without it."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_gil_enabled is None else is_gil_enabled()


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers each wait, as they start, until all of them have started.

    ProcessPoolExecutor starts workers lazily, one per submission that finds none idle. A quick
    warm-up task could finish on the first worker before the next submission, which would then
    reuse it, and the other workers would start inside the timed run. Held at the barrier, no
    worker is idle until all are up, so `workers` warm-up submissions start exactly `workers`.
    """
    context = worker_context()
    return ProcessPoolExecutor(workers, mp_context=context, initializer=context.Barrier(workers).wait)


def _start_workers(pool: ProcessPoolExecutor, workers: int) -> float:
    """Start every worker of a `_process_pool`, have each import what the timed runs call (tens of
    ms, more than the fork itself), and return the seconds it all took."""
    start = time.perf_counter()
    for warm_up in [pool.submit(_cpu_seconds, fib, 0) for _ in range(workers)]:
        warm_up.result()
    return time.perf_counter() - start


def _compare(work: Callable, args: list, mappers: dict[str, Callable], rounds: int) -> dict:
    """{mode: {wall, cpu, speedup}} for work(arg) over args, run each way in turn `rounds` times.

    Each mode keeps its fastest round. The modes take turns within a round, so a burst of load
    from elsewhere cannot spoil every round of one mode while sparing another.
    """
    timed = [{mode: _time_batch(mapper, work, args) for mode, mapper in mappers.items()}
             for _ in range(rounds)]
    runs = {mode: min((row[mode] for row in timed), key=lambda run: run["wall"]) for mode in mappers}
    for run in runs.values():
        run["speedup"] = runs["sequential"]["wall"] / run["wall"]
    return runs


def _time_batch(mapper: Callable[..., Iterable[float]], work: Callable, args: list) -> dict:
    start = time.perf_counter()
    cpu = sum(mapper(_cpu_seconds, [work] * len(args), args))
    return {"wall": time.perf_counter() - start, "cpu": cpu}


def _cpu_seconds(work: Callable, arg: object) -> float:
    """Run work(arg) and return the CPU seconds it took on this thread; top-level, so picklable.

    `thread_time`, not `process_time`: in a thread pool, `process_time` counts every thread of the
    process, and each task would be charged for its neighbours' work as well.
    """
    start = time.thread_time()
    work(arg)
    return time.thread_time() - start


def _download(engine: str, urls: list[str], jobs: int) -> dict:
    """One batch by `engine` into a fresh temporary folder: {ok, wall, cpu}. CPU is this process's
    (every thread's); a Ctrl-C, which stops the batch, stops the demo too."""
    from . import Downloader
    from .progress import LineReporter

    with tempfile.TemporaryDirectory(prefix="downloader-gil-") as dest:
        cpu, start = time.process_time(), time.perf_counter()
        results = Downloader(dest, mode=engine, jobs=jobs, reporter=LineReporter()).enqueue(*urls).run()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if results.interrupted:
        raise KeyboardInterrupt
    return {"ok": results.counts["ok"], "wall": wall, "cpu": cpu}


class _ComputingThread:
    """A Python thread that computes fib in a loop: alone for `alone` seconds as the `with` block
    is entered, then beside whatever the block runs, until it ends. It then knows, for the time
    beside, its progress as a share of its progress alone (`pace`) and the share of the time it
    did not wait for the GIL (`gil_left`; see `_runnable_seconds`).

    >>> with _ComputingThread() as computing:
    ...     time.sleep(0.2)       # sleeping releases the GIL: the thread computes all along
    >>> computing.gil_left > 0.9
    True
    """

    def __init__(self, alone: float = 0.25) -> None:
        self.alone = alone
        self.pace = self.gil_left = 1.0
        self._stopping = False
        self._alone_done = threading.Event()
        self._thread = threading.Thread(target=self._compute, name="gil-fib", daemon=True)

    def __enter__(self) -> "_ComputingThread":
        self._thread.start()
        try:
            self._alone_done.wait()
        except BaseException:  # a Ctrl-C while it runs alone: stop it, as leaving the block would
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping = True
        self._thread.join()

    def _compute(self) -> None:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < self.alone:
            fib(_FIB_STEP)
            steps += 1
        alone_rate = steps / (time.perf_counter() - start)
        self._alone_done.set()
        steps, start, could_run = 0, time.perf_counter(), _runnable_seconds()
        while not self._stopping:
            fib(_FIB_STEP)
            steps += 1
        seconds = time.perf_counter() - start
        self.pace = steps / seconds / alone_rate
        self.gil_left = min(1.0, (_runnable_seconds() - could_run) / seconds)


def _runnable_seconds() -> float:
    """Seconds the calling thread spent on a CPU or waiting in the run queue for one (Linux's
    schedstat); its CPU time where the kernel does not say."""
    seconds = _read_schedstat()
    return time.thread_time() if seconds is None else seconds


def _read_schedstat() -> float | None:
    try:
        with open(_SCHEDSTAT, encoding="ascii") as stat:
            on_cpu, queued = stat.read().split()[:2]
        return (int(on_cpu) + int(queued)) / 1e9
    except (OSError, ValueError):
        return None


def _threads_on_cpu(speedup: float, gil_enabled: bool) -> str:
    said = f"Threads ran fib {speedup:.2f}x as fast as one thread"
    if gil_enabled:
        return f"{said}: the GIL lets only one thread at a time run Python bytecode."
    if speedup >= _PARALLEL:
        return f"{said}: this build runs without the GIL, so threads run Python side by side."
    return f"{said}, although this build runs without the GIL: there were no idle cores to spread over."


def _processes_on_cpu(cpu: dict, workers: str) -> str:
    process = cpu["process"]
    said = f"Processes ran it {process['speedup']:.2f}x as fast as one thread"
    if process["speedup"] < _PARALLEL:
        return f"{said}: the workers ({workers}) found no idle cores to spread over."
    return (f"{said} and {cpu['thread']['wall'] / process['wall']:.2f}x as fast as the threads: each "
            f"has its own interpreter and GIL. Starting them took {process['startup']:.3f} s, paid once.")


def _on_io(io: dict, startup: float) -> str:
    threads, processes = io["thread"]["speedup"], io["process"]["speedup"]
    count = io.get("thread_workers")
    on_threads = f"on {count} threads" if count else "on threads"
    said = f"Waiting went {threads:.2f}x as fast {on_threads} and {processes:.2f}x on processes, one per CPU"
    if threads < _PARALLEL:
        return f"{said}: the waits did not overlap."
    return (f"{said}: time.sleep releases the GIL, as socket reads do, so a thread per wait overlaps "
            f"them all for almost nothing, while each process costs a start-up ({startup:.3f} s for "
            f"the pool) and its own interpreter. That is why downloads run on threads or an event loop.")


def _table(runs: dict) -> Iterator[str]:
    yield f"  {'mode':<12}{'wall s':>9}{'cpu s':>9}{'speedup':>9}"
    for mode in MODES:
        run = runs[mode]
        startup = f"   + {run['startup']:.3f} s to start the pool" if "startup" in run else ""
        yield f"  {mode:<12}{run['wall']:>9.3f}{run['cpu']:>9.3f}{run['speedup']:>8.2f}x{startup}"


def _engine(name: str) -> str:
    return f"the {name} engine"


def _listing(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _on_download_cpu(engines: dict) -> str:
    order = sorted(engines, key=lambda name: engines[name]["cpu_per_file"])
    costs = [f"{_engine(name)} {engines[name]['cpu_per_file'] * 1000:.2f} ms" for name in order]
    costs[0] = costs[0].replace(" engine ", " engine used ") + " of CPU"
    said = "Per file of the batch, " + _listing(costs)
    if order[0] != "curl":
        return said + "."
    return (f"{said}: libcurl reads the sockets and parses HTTP in C, with the GIL released, and takes the GIL "
            f"only to call back into Python (which socket to watch, each response's head and body), while "
            f"requests and aiohttp run their HTTP machinery in Python.")


def _on_download_gil(engines: dict, gil_enabled: bool) -> str:
    order = sorted(engines, key=lambda name: -engines[name]["gil_left"])
    shares = _listing([f"{engines[name]['gil_left']:.1%} of the time by {_engine(name)}" if i == 0 else
                       f"{engines[name]['gil_left']:.1%} by {_engine(name)}" for i, name in enumerate(order)])
    if not gil_enabled:
        return (f"This build runs without the GIL, so the thread computing fib beside each batch never waited "
                f"for it: it was left it {shares}.")
    said = f"The thread computing fib beside each batch was left the GIL {shares}"
    shares = [engines[name]["gil_left"] for name in order]
    if shares[0] - shares[-1] < _SAME_SHARE:
        return (f"{said}: every engine held it only for moments between its waits, and about as long (a difference "
                f"this small moves from run to run).")
    said += f": {_engine(order[-1])} held it the most"
    if order[-1] == "thread":
        said += ", as its threads each take it for requests' Python work"
    if order[0] == "curl" and shares[0] - shares[1] >= _SAME_SHARE:
        said += "; libcurl takes it only for its callbacks"
    return said + "."


def _on_download_pace(downloads: dict, gil_enabled: bool, cpu_count: int) -> str:
    engines = downloads["engines"]
    paces = [engine["fib_pace"] for engine in engines.values()]
    said = (f"That thread kept {min(paces):.0%} to {max(paces):.0%} of its pace alone" if len(paces) > 1 else
            f"That thread kept {paces[0]:.0%} of its pace alone")
    if all(abs(engine["fib_pace"] - engine["gil_left"]) < _SAME_PACE for engine in engines.values()):
        said += ", about the share the GIL left it"
    else:
        said += (f": unlike that share, its pace also moves with all else that wants the {cpu_count} CPUs "
                 f"(the mock server, the engines' work outside the GIL, other programs)")
    slowdowns = [f"{run['slowdown']:.2f}x with {_engine(name)}" for name, run in engines.items()]
    slowdowns[0] = slowdowns[0].replace("x with", "x as long as alone with")
    said += f". Beside it, the batch took {_listing(slowdowns)}"
    if not gil_enabled or max(engine["slowdown"] for engine in engines.values()) < _PARALLEL:
        return said + "."
    return (f"{said}: the downloads paid for the GIL too. Each time one comes back from the network it waits "
            f"for the GIL, which a computing thread gives up only when asked, after "
            f"{downloads['switch_interval'] * 1000:g} ms (sys.getswitchinterval()); so CPU work beside downloads "
            f"belongs on processes, where the post stage runs it.")


def _downloads_table(downloads: dict | None) -> Iterator[str]:
    if downloads is None:
        return
    yield (f"Downloads: {downloads['files']} x {downloads['size'] / 1024:g} KiB from the mock server (a subprocess, "
           f"{downloads['latency'] * 1000:g} ms a response), -j {downloads['jobs']}, by each engine in this process, "
           f"alone, then beside a thread computing fib")
    yield (f"  {'engine':<8}{'ok':>9}{'wall s':>9}{'cpu s':>8}{'ms/file':>9}{'beside s':>10}{'slower':>8}"
           f"{'fib pace':>10}{'GIL left':>10}")
    for name, run in downloads["engines"].items():
        ok = f"{run['ok']}/{downloads['files']}"
        yield (f"  {name:<8}{ok:>9}{run['wall']:>9.3f}{run['cpu']:>8.3f}{run['cpu_per_file'] * 1000:>9.2f}"
               f"{run['beside_wall']:>10.3f}{run['slowdown']:>7.2f}x{run['fib_pace']:>10.0%}{run['gil_left']:>10.1%}")
    for name, why in downloads["skipped"].items():
        yield f"  {name}: skipped, {why}"
    source = ("the kernel's count of its sleep (schedstat)" if downloads["measured_with"] == "schedstat" else
              "its CPU time (this system does not count its sleep): waiting for a CPU counts too")
    yield f"  wall s, cpu s: the least of {DOWNLOAD_ROUNDS} runs alone; slower: beside s over wall s"
    yield "  fib pace: the computing thread's progress beside the batch, as a share of its progress alone"
    yield f"  GIL left: the share of the batch's time it did not wait for the GIL, from {source}"
    yield ""
