"""The post stage: right answers from every executor, failures as data, back-pressure that holds."""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import threading
from pathlib import Path

import pytest

from downloader.postprocess import PostStage, PostTask, TaskResult, parse_post_spec, run_task

SHA256 = PostTask("sha256")
EVERY_KIND = tuple(parse_post_spec(spec) for spec in ("sha256", "md5", "blake2b", "fib:15"))
SIZES = {"empty.bin": 0, "small.bin": 1000, "big.bin": 1024 * 1024 + 3}
"""big.bin ends 3 bytes into a second read block."""
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="uses FIFOs and SIGKILL")


class Finished:
    """An `on_done` that records each file's results by key and lets a test wait for one."""

    def __init__(self) -> None:
        self.results: dict[object, list[TaskResult]] = {}
        self._changed = threading.Condition()

    def __call__(self, path: str, key: object, results: list[TaskResult]) -> None:
        with self._changed:
            self.results[key] = results
            self._changed.notify_all()

    def wait_for(self, key: object, timeout: float = 10.0) -> list[TaskResult]:
        with self._changed:
            assert self._changed.wait_for(lambda: key in self.results, timeout), f"{key} never finished"
            return self.results[key]


class Gate:
    """A FIFO standing in for a file whose bytes are still arriving: a task reading it waits until
    `release` writes them, which lets a test hold tasks in work for as long as it likes."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        self._released = False
        self._lock = threading.Lock()

    def release(self, data: bytes = b"") -> None:
        """Write the rest of the file, the first time only, from whichever thread calls first
        (waits for the task to open the file, if it has not yet)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        with open(self.path, "wb") as pipe:
            pipe.write(data)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    """Files of SIZES written under tmp_path: {path: content}."""
    contents = {}
    for name, size in SIZES.items():
        data = random.Random(name).randbytes(size)
        (tmp_path / name).write_bytes(data)
        contents[str(tmp_path / name)] = data
    return contents


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _values(results: list[TaskResult]) -> list[tuple]:
    return [(result.task, result.value, result.error) for result in results]


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "blake2b"])
def test_digests_match_hashlib(files: dict[str, bytes], algorithm: str) -> None:
    for path, data in files.items():
        result = run_task(PostTask(algorithm), path)
        assert result.value == hashlib.new(algorithm, data).hexdigest(), path
        assert (result.task, result.error, result.pid) == (algorithm, None, os.getpid())


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (1, 1), (2, 1), (10, 55), (20, 6765)])
def test_fib_gives_fibonacci_numbers_whatever_the_file(n: int, expected: int) -> None:
    result = run_task(PostTask("fib", n), "not-even-there.bin")
    assert (result.task, result.value, result.error) == (f"fib:{n}", expected, None)


@pytest.mark.parametrize(("spec", "task"), [("sha256", PostTask("sha256")), (" MD5 ", PostTask("md5")),
                                            ("blake2b", PostTask("blake2b")), ("fib:0", PostTask("fib", 0)),
                                            ("fib:27", PostTask("fib", 27)), ("FIB:40", PostTask("fib", 40))])
def test_parse_post_spec_reads_every_valid_form(spec: str, task: PostTask) -> None:
    assert parse_post_spec(spec) == task
    assert parse_post_spec(task.name) == task


@pytest.mark.parametrize("spec", ["sha1", "sha256:1", "fib", "fib:", "fib:41", "fib:-1", "fib:x", "fib:²",
                                  "fib:27:1", ""])
def test_parse_post_spec_refuses_with_one_line_naming_the_spec(spec: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_post_spec(spec)
    message = str(refused.value)
    assert repr(spec) in message and "fib:N" in message and "\n" not in message


@pytest.mark.parametrize("executor", ["process", "thread", "inline"])
def test_every_executor_gives_the_same_results(files: dict[str, bytes], executor: str) -> None:
    finished = Finished()
    with PostStage(EVERY_KIND, executor=executor, workers=2, on_done=finished) as stage:
        for path in files:
            stage.submit(path, key=path)
    assert stage.completed() == len(files) and stage.pending() == 0
    for path, data in files.items():
        expected = [(task.name, value, None) for task, value in zip(EVERY_KIND, [
            hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(),
            hashlib.blake2b(data).hexdigest(), 610])]
        assert _values(finished.results[path]) == expected
        in_this_process = {result.pid == os.getpid() for result in finished.results[path]}
        assert in_this_process == {executor != "process"}


@pytest.mark.parametrize("executor", ["process", "thread", "inline"])
def test_a_vanished_file_fails_its_digest_and_the_rest_still_runs(tmp_path: Path, executor: str) -> None:
    gone, kept = tmp_path / "gone.bin", tmp_path / "kept.bin"
    kept.write_bytes(b"kept")
    finished = Finished()
    with PostStage((SHA256, PostTask("fib", 10)), executor=executor, on_done=finished) as stage:
        stage.submit(str(gone), "gone")
        stage.submit(str(kept), "kept")
    assert _values(finished.results["gone"]) == [("sha256", None, "sha256 on gone.bin: file vanished"),
                                                 ("fib:10", 55, None)]
    assert _values(finished.results["kept"]) == [("sha256", _sha256(b"kept"), None), ("fib:10", 55, None)]


@posix_only
def test_a_dead_worker_fails_its_file_and_the_next_file_gets_a_fresh_pool(tmp_path: Path) -> None:
    before, after = tmp_path / "before.bin", tmp_path / "after.bin"
    before.write_bytes(b"before")
    after.write_bytes(b"after")
    stuck = Gate(tmp_path / "stuck.fifo")
    finished = Finished()
    with PostStage((SHA256,), executor="process", workers=1, on_done=finished) as stage:
        stage.submit(str(before), "before")
        [before_result] = finished.wait_for("before")
        stage.submit(stuck.path, "stuck")
        os.kill(before_result.pid, signal.SIGKILL)
        [stuck_result] = finished.wait_for("stuck")
        stage.submit(str(after), "after")
    assert (stuck_result.value, stuck_result.error) == (None, "sha256 on stuck.fifo: worker process died")
    [after_result] = finished.results["after"]
    assert after_result.value == _sha256(b"after") and after_result.pid != before_result.pid


@posix_only
def test_submit_blocks_while_max_pending_files_are_in_work(tmp_path: Path) -> None:
    slow = [Gate(tmp_path / "slow1"), Gate(tmp_path / "slow2")]
    fast = tmp_path / "fast.bin"
    fast.write_bytes(b"fast")
    finished = Finished()
    admitted = threading.Event()
    completed_when_admitted = []

    def submit_a_third_file() -> None:
        stage.submit(str(fast), "fast")
        completed_when_admitted.append(stage.completed())
        admitted.set()

    with PostStage((SHA256,), executor="thread", workers=2, max_pending=2, on_done=finished) as stage:
        stage.submit(slow[0].path, "slow1")
        stage.submit(slow[1].path, "slow2")
        third = threading.Thread(target=submit_a_third_file)
        third.start()
        try:
            assert not admitted.wait(0.2), "a third file got in while two were in work"
            assert stage.pending() == 2
            slow[0].release(b"one")
            assert admitted.wait(10)
            assert completed_when_admitted[0] >= 1, "the third file got in before a slot was free"
        finally:
            slow[0].release(b"one")
            slow[1].release(b"two")
            third.join()
    assert [finished.results[key][0].value for key in ("slow1", "slow2", "fast")] == [
        _sha256(b"one"), _sha256(b"two"), _sha256(b"fast")]


@posix_only
def test_submit_async_lets_many_coroutines_wait_without_blocking_the_loop(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    others = {f"file{i}": bytes([i]) * 10 for i in range(4)}
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    finished = Finished()

    async def submit_all(stage: PostStage) -> None:
        first = asyncio.create_task(stage.submit_async(gate.path, "gate"))
        waiting = [asyncio.create_task(stage.submit_async(str(tmp_path / name), name)) for name in others]
        await first
        await asyncio.sleep(0)
        # A submit_async that blocked the loop would get here only after the watchdog opened the gate.
        assert stage.pending() == 1 and not any(task.done() for task in waiting), "the loop was blocked"
        await asyncio.to_thread(gate.release, b"gate")
        await asyncio.gather(*waiting)

    watchdog = threading.Timer(5.0, gate.release, args=(b"gate",))
    with PostStage((SHA256,), executor="thread", workers=1, max_pending=1, on_done=finished) as stage:
        watchdog.start()
        try:
            asyncio.run(submit_all(stage))
        finally:
            watchdog.cancel()
            gate.release()
    assert stage.completed() == 5
    assert finished.results["gate"][0].value == _sha256(b"gate")
    assert {name: finished.results[name][0].value for name in others} == {
        name: _sha256(data) for name, data in others.items()}


@posix_only
def test_leaving_on_an_exception_cancels_files_not_yet_started(tmp_path: Path) -> None:
    running = Gate(tmp_path / "running")
    queued = tmp_path / "queued.bin"
    queued.write_bytes(b"queued")
    finished = Finished()

    def release_once_queued_is_reported() -> None:
        try:
            finished.wait_for("queued", timeout=5)
        finally:
            running.release(b"running")

    releaser = threading.Thread(target=release_once_queued_is_reported)
    with pytest.raises(KeyboardInterrupt):
        with PostStage((SHA256,), executor="thread", workers=1, on_done=finished) as stage:
            stage.submit(running.path, "running")
            stage.submit(str(queued), "queued")
            releaser.start()
            raise KeyboardInterrupt
    releaser.join()
    assert _values(finished.results["queued"]) == [("sha256", None, "sha256 on queued.bin: cancelled")]
    assert _values(finished.results["running"]) == [("sha256", _sha256(b"running"), None)]


def test_after_a_cancel_close_returns_only_once_every_worker_process_has_ended(tmp_path: Path) -> None:
    """A program that ends with os._exit right after close (the CLI does) must leave no worker
    behind: one left blocked on its queue holds the program's stderr open for ever."""
    import multiprocessing
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(b"x" * (i + 1))
    before = set(multiprocessing.active_children())
    finished = Finished()
    stage = PostStage((SHA256,), executor="process", workers=2, on_done=finished)
    for i, path in enumerate(paths):
        stage.submit(str(path), f"f{i}")
    workers = set(multiprocessing.active_children()) - before
    assert workers  # the check can see the pool's processes
    stage.cancel()  # as a first Ctrl-C does, from the signal handler
    stage.close(cancel=True)
    assert not [p for p in workers if p.is_alive()]
    assert sorted(finished.results) == [f"f{i}" for i in range(4)]  # each finished or cancelled, none lost


def test_a_file_done_after_a_cancel_is_reported_cancelled_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "late.bin"
    path.write_bytes(b"late")
    finished = Finished()
    stage = PostStage((SHA256,), executor="thread", workers=1, on_done=finished)
    stage.cancel()  # the first Ctrl-C; a download in flight lands afterwards
    stage.submit(str(path), "late")
    stage.close(cancel=True)
    assert _values(finished.results["late"]) == [("sha256", None, "sha256 on late.bin: cancelled")]


def test_close_is_idempotent_and_refuses_later_files(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"a")
    finished = Finished()
    stage = PostStage((SHA256,), executor="thread", on_done=finished)
    stage.submit(str(path), "a")
    stage.close()
    assert _values(finished.results["a"]) == [("sha256", _sha256(b"a"), None)]
    stage.close()
    with pytest.raises(RuntimeError, match="closed"):
        stage.submit(str(path), "b")


@pytest.mark.parametrize(("options", "named"), [({"executor": "gpu"}, "'gpu'"), ({"workers": 0}, "workers=0"),
                                                ({"max_pending": 0}, "max_pending=0")])
def test_bad_stage_options_are_refused_by_name(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PostStage((SHA256,), **options)
