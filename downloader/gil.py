"""How the GIL treats threads and processes, shown in numbers: the model behind `downloader gil`.

The same batch runs three ways (on the calling thread, on a thread pool, on a process pool) for
two kinds of work: CPU-bound (naive `fib`, pure Python that holds the GIL) and I/O-bound
(`time.sleep`, which releases it, as socket reads do). On a standard CPython, threads speed up the
waiting but not the computing; processes speed up both, at the price of starting interpreters::

    result = run_gil_demo()            # about 5 s with the defaults
    print(format_report(result))       # or json.dumps(result)

This is why the downloader moves bytes on threads or an event loop and runs its CPU stage
(`postprocess`) on processes.
"""
from __future__ import annotations

import os
import platform
import sys
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


def run_gil_demo(tasks: int = 8, n: int = 27, workers: int | None = None, io_tasks: int = 16,
                 io_delay: float = 0.1) -> dict:
    """Time `tasks` x fib(n), then `io_tasks` x sleep(io_delay), sequentially, on threads and on processes.

    Both pools have `workers` workers (default: the CPU count). The process pool is started, every
    worker ready, before anything is timed: a program pays that once, so it is reported apart, as
    `startup`, instead of spoiling the comparison. The I/O batch reuses both warm pools.

    The fields, stable for JSON (seconds are floats)::

        python, implementation, gil_enabled, cpu_count, workers, tasks, n,
        cpu_bound: {sequential, thread, process: {wall, cpu, speedup}}, process also has startup,
        io_bound: {io_tasks, io_delay, sequential, thread, process: {wall, cpu, speedup}},
        verdict: [sentence, ...]

    `wall` is the whole batch (for CPU-bound work, the best of CPU_ROUNDS); `cpu` sums that batch's
    per-task CPU time, measured on the thread that ran each task; `speedup` is the sequential wall
    time divided by this one.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if min(tasks, io_tasks, workers) < 1 or n < 0 or io_delay < 0:
        raise ValueError(f"gil demo needs tasks, io_tasks and workers of at least 1 and n, io_delay of "
                         f"at least 0, not tasks={tasks}, io_tasks={io_tasks}, workers={workers}, "
                         f"n={n}, io_delay={io_delay}")
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
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict) -> list[str]:
    """Sentences that read a `run_gil_demo` result's numbers for people (its "verdict" field)."""
    cpu, io = result["cpu_bound"], result["io_bound"]
    return [_threads_on_cpu(cpu["thread"]["speedup"], result["gil_enabled"]),
            _processes_on_cpu(cpu, f"{result['workers']} per pool, {result['cpu_count']} CPUs"),
            _on_io(io, cpu["process"]["startup"])]


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
