"""`--cluster`: the same batch on a Dask cluster, against the mock server.

Most tests share one LocalCluster of two worker processes (started once for the module) and reach
it by its address, as a user reaches a running scheduler; the 2,000-URL batch and the Ctrl-C test
start their own `--cluster local:2`, as a user would on a laptop.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from downloader import Downloader
from downloader.cluster import (ALLOWED_FAILURES, ClusterEngine, Journal, RunFolder, ShardCutter, ShardIndex,
                                ShardJobs, ShardSpec, connect, run_shard)
from downloader.config import Options, parse_cluster
from downloader.core.results import OK, Result
from downloader.core.schedule import Feed, Scheduler
from downloader.core.sources import Job
from downloader.index import Index
from downloader.mockserver import gen_bytes
from downloader.postprocess import fib
from downloader.progress import RecordingReporter

from conftest import run_cli

CHUNK = 64 * 1024
"""--chunk-size of the tests that count re-fetched bytes: what a killed download may lose."""


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-thread worker processes for the module, as --cluster local:2
    starts one; yields its Client."""
    with connect("local:2", timeout=30) as client:
        yield client


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def start(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "downloader", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def report_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_until(condition, proc: subprocess.Popen, what: str, limit: float = 60.0):
    """Poll `condition()` until it gives something true; fails if `proc` ends first or time runs out."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"never saw {what}")


def names_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and ".downloader" not in p.parts}


# ======================================================================== the batch, end to end
@pytest.mark.slow
def test_two_thousand_urls_on_local_2_land_like_a_local_run(url, tmp_path):
    sizes = {}
    lines = []
    for i in range(2000):
        if i % 100 == 1:  # the same file name from two paths: the first in input order gets it plain
            link = url(f"/gen/d{i % 7}/same.bin", size=i)
        elif i % 100 == 2:  # a name only the response tells
            link = url("/gen/cd.bin", size=i, cd=f"told-{i}.bin")
        else:
            link = url(f"/gen/f{i}.bin", size=i)
        sizes[link] = i
        lines.append(link)
    lines.insert(1, url("/gen/x.bin", size=5, cd="f0.bin"))  # wants the name of line 1's URL, which claimed it first
    sizes[lines[1]] = 5
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.jsonl"
    proc = run_cli("get", "-i", str(listing), "-d", str(tmp_path / "out"), "--cluster", "local:2",
                   "--shard-size", "300", "--report", str(report), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "done: 2001 downloaded" in proc.stderr
    rows = report_rows(report)
    assert sorted(r["url"] for r in rows) == sorted(lines)
    for row in rows:
        assert row["status"] == OK, row
        assert Path(row["path"]).read_bytes() == gen_bytes(sizes[row["url"]]), row
    assert len(names_in(tmp_path / "out")) == 2001
    assert not list((tmp_path / "out").rglob("*.part"))

    local = Downloader(tmp_path / "local", retry_base=0.01).enqueue_lines(lines).run()
    assert local.counts[OK] == 2001
    assert names_in(tmp_path / "out") == names_in(tmp_path / "local")
    assert (tmp_path / "out" / "f0.bin").read_bytes() == gen_bytes(0)  # the URL's name, claimed first, wins


def test_failed_urls_fail_exactly_as_in_a_local_run(cluster, url, tmp_path):
    links = [url("/gen/good.bin", size=1000), url("/status/404"), url("/gen/bad.bin", size=3000, digest="bad")]
    reports = {}
    for where, extra in (("local", []), ("cluster", ["--cluster", cluster.scheduler.address])):
        reports[where] = tmp_path / f"{where}.jsonl"
        proc = run_cli("get", *links, "-d", str(tmp_path / where), "--retries", "1", "--report",
                       str(reports[where]), *extra)
        assert proc.returncode == 1, proc.stderr
        assert f"failed: {links[1]}: HTTP 404 Not Found" in proc.stderr
        assert "Traceback" not in proc.stderr
    seen = {where: {r["url"]: (r["status"], r["error"], r["path"] and Path(r["path"]).name)
                    for r in report_rows(path)} for where, path in reports.items()}
    assert seen["cluster"] == seen["local"]
    assert seen["cluster"][links[1]][:2] == ("failed", "HTTP 404 Not Found")
    assert seen["cluster"][links[2]][0] == "failed" and "sha256 mismatch" in seen["cluster"][links[2]][1]
    assert (tmp_path / "cluster" / "good.bin").read_bytes() == gen_bytes(1000)


def test_a_rerun_skips_what_the_cluster_downloaded_without_a_request(cluster, url, stats, tmp_path):
    links = [url(f"/gen/r{i}.bin", size=100 + i) for i in range(5)] + [url("/gen/r.bin", size=7, cd="named.bin")]
    args = ["get", *links, "-d", str(tmp_path), "--cluster", cluster.scheduler.address]
    assert run_cli(*args).returncode == 0
    before = [stats(link)["requests"] for link in links]
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "0 downloaded, 6 already there" in again.stderr
    assert [stats(link)["requests"] for link in links] == before
    assert (tmp_path / "named.bin").read_bytes() == gen_bytes(7)


def test_post_results_come_back_from_the_workers(cluster, url, tmp_path):
    links = [url(f"/gen/p{i}.bin", size=2000 + i) for i in range(6)]
    results = Downloader(tmp_path, cluster=cluster, post=["sha256", "fib:20"], post_executor="thread").enqueue(
        *links).run()
    assert results.counts[OK] == 6
    workers = set(worker_pids(cluster).values())
    for result in results.ok:
        digest, fibonacci = result.post
        assert digest["task"] == "sha256" and digest["value"] == hashlib.sha256(gen_bytes(result.size)).hexdigest()
        assert fibonacci["task"] == "fib:20" and fibonacci["value"] == fib(20)
        assert {digest["pid"], fibonacci["pid"]} <= workers  # ran on a worker, not here
        assert os.getpid() not in workers


def test_post_tasks_on_a_process_pool_of_each_worker(cluster, url, tmp_path):
    links = [url(f"/gen/q{i}.bin", size=300 + i) for i in range(4)]
    results = Downloader(tmp_path, cluster=cluster, post=["fib:18"]).enqueue(*links).run()
    assert results.counts[OK] == 4
    pids = {r.post[0]["pid"] for r in results.ok}
    assert all(r.post[0]["value"] == fib(18) and r.post[0]["error"] is None for r in results.ok)
    assert not pids & ({os.getpid(), 0} | set(worker_pids(cluster).values()))


def test_a_manifest_lists_every_file_the_workers_fetched(cluster, url, tmp_path):
    links = [url(f"/gen/m{i}.bin", size=40_000 + i) for i in range(4)] + [url("/gen/m.bin", size=9, cd="m-told.bin")]
    manifest = tmp_path / "SHA256SUMS"
    proc = run_cli("get", *links, "-d", str(tmp_path / "out"), "--manifest", str(manifest),
                   "--cluster", cluster.scheduler.address)
    assert proc.returncode == 0, proc.stderr
    expected = [f"{hashlib.sha256(gen_bytes(40_000 + i)).hexdigest()}  out/m{i}.bin" for i in range(4)]
    expected.append(f"{hashlib.sha256(gen_bytes(9)).hexdigest()}  out/m-told.bin")
    assert sorted(manifest.read_text().splitlines()) == sorted(expected)


def test_options_travel_to_the_workers_as_a_local_run_means_them(tmp_path):
    opts = Options.build(tmp_path / "out", jobs=8, per_host=2, max_speed="1M", manifest=tmp_path / "m",
                         sums_file=tmp_path / "s", cluster="local:4", post=["md5"])
    ctx = SimpleNamespace(options=opts, index=SimpleNamespace(salt=b"s" * 16), sums={"a": None}, logins={},
                          want_sha256=True)
    spec = ClusterEngine(ctx, 8, cluster="local:4")._spec("stop-event", threads=4)
    worker = spec.options
    assert (worker.jobs, worker.per_host, worker.post) == (8, 2, ("md5",))  # per worker, as given
    assert worker.max_speed == 1024 * 1024 // 4  # the batch's cap, split evenly over the worker threads
    assert worker.cluster is None and worker.dest == tmp_path / "out" and os.path.isabs(worker.dest)
    assert worker.manifest is None and spec.want_sha256 and spec.sums == {"a": None} and spec.salt == b"s" * 16
    pickle.loads(pickle.dumps(spec))  # it crosses the wire as it is


# ======================================================================== a worker that dies
@pytest.mark.slow
def test_a_worker_killed_mid_batch_costs_only_time(cluster, url, stats, tmp_path):
    size = 1 << 20
    links = [url(f"/gen/k{i}.bin", size=size, rate=512 * 1024) for i in range(16)]
    report = tmp_path / "report.jsonl"
    # two shards of 8, one per worker, 4 files at a time: each worker ends 4 files, then dies or not
    proc = start("get", *links, "-d", str(tmp_path / "out"), "-j", "4", "--shard-size", "8", "--chunk-size", "64K",
                 "--report", str(report), "--cluster", cluster.scheduler.address)

    def mid_batch():
        sent = [stats(link)["bytes_sent"] for link in links]
        return sum(s == size for s in sent) >= 4 and any(400_000 <= s < size for s in sent)

    victim = next(iter(worker_pids(cluster).values()))
    wait_until(mid_batch, proc, "4 files done and others well under way")
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    rows = report_rows(report)
    assert sorted(r["url"] for r in rows) == sorted(links) and all(r["status"] == OK for r in rows), rows
    for i in range(16):
        assert (tmp_path / "out" / f"k{i}.bin").read_bytes() == gen_bytes(size)
    sent = {link: stats(link) for link in links}
    # no file fetched twice in full: the files done before the death came from the shard's journal,
    # the others resumed from their .part (at most two chunks lost, one unsaved, one in flight)
    assert all(s["bytes_sent"] <= size + 2 * CHUNK + 32 * 1024 for s in sent.values()), sent
    assert any(s["gets"] == 2 for s in sent.values()), "no shard ran again"
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker for the next tests


def test_a_poisoned_shard_fails_its_urls_with_one_line_keeping_what_its_journal_has(tmp_path):
    import distributed
    index = Index(tmp_path)
    jobs = [Job(url=f"http://h/{n}.bin", line=n + 1, target=f"{n}.bin", host="h") for n in range(3)]
    recorded = []
    scheduler = Scheduler(Feed(iter([jobs])), per_host=None, connections=4)
    ctx = SimpleNamespace(options=Options.build(tmp_path, cluster="local:2"), index=index, scheduler=scheduler,
                          reporter=RecordingReporter(), post_submit=recorded.append)
    engine = ClusterEngine(ctx, 4, cluster="local:2")
    os.makedirs(engine._folder.root)
    journal = Journal(engine._folder.journal(7))
    journal.open()
    (tmp_path / "0.bin").write_bytes(b"done")
    journal.write(Result(url=jobs[0].url, status=OK, path=str(tmp_path / "0.bin"), bytes=4, size=4))
    journal.close()

    class Dead:
        def result(self):
            raise distributed.KilledWorker("downloader-shard-x-7", SimpleNamespace(address="tcp://10.0.0.9:4000"), 2)

    engine._collect(Dead(), 7, jobs)
    by_url = {r.url: r for r in recorded}
    assert by_url[jobs[0].url].status == OK and by_url[jobs[0].url].path == str(tmp_path / "0.bin")
    for job in jobs[1:]:
        assert by_url[job.url].status == "failed" and by_url[job.url].line == job.line
        assert by_url[job.url].error == ("shard 7: every worker that ran it died (3 in all, the last "
                                         "tcp://10.0.0.9:4000); see the worker logs")
    assert not os.path.exists(engine._folder.journal(7))
    index.close()


def test_a_local_cluster_lets_a_shard_kill_its_worker_a_bounded_number_of_times(cluster):
    assert cluster.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == ALLOWED_FAILURES


def test_a_shard_on_a_worker_that_cannot_see_the_folder_fails_its_urls_with_one_line(cluster, tmp_path):
    folder = RunFolder(str(tmp_path / "not-there"), "run")
    spec = ShardSpec(options=Options.build(tmp_path / "not-there"), salt=b"s", folder=folder, stop_event="e",
                     sums={}, logins={}, want_sha256=False)
    jobs = [Job(url="http://127.0.0.1:9/a.bin", line=3, target="a.bin", host="127.0.0.1")]
    [result] = cluster.submit(run_shard, 0, ShardJobs(jobs), spec, pure=False).result()
    assert (result.status, result.line) == ("failed", 3)
    assert result.error.startswith("worker tcp://127.0.0.1:") and result.error.endswith(
        f": cannot see {tmp_path / 'not-there'} (the output folder must be shared by every worker)")


# ======================================================================== Ctrl-C
@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_run_with_130_and_a_rerun_finishes(url, stats, tmp_path):
    size = 600_000
    links = [url(f"/gen/c{i}.bin", size=size, rate=200_000) for i in range(4)]
    links += [url("/gen/c.bin", size=size, rate=200_000, cd=f"told{i}.bin") for i in range(4)]
    args = ["get", *links, "-d", str(tmp_path / "out"), "--chunk-size", "64K", "--cluster", "local:2",
            "--shard-size", "4"]
    proc = start(*args, start_new_session=True)
    wait_until(lambda: all(stats(link)["bytes_sent"] >= 200_000 for link in links), proc, "every file under way")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the client and its workers
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to resume" in err
    out_dir = tmp_path / "out"
    parts = {p.name for p in out_dir.glob("*.part")}
    assert parts == {f"c{i}.bin.part" for i in range(4)} | {f"told{i}.bin.part" for i in range(4)}, err
    assert not (out_dir / ".downloader" / "cluster").exists()
    sent_before = {link: stats(link)["bytes_sent"] for link in links}

    rerun = run_cli(*args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    for i in range(4):
        assert (out_dir / f"c{i}.bin").read_bytes() == gen_bytes(size)
        assert (out_dir / f"told{i}.bin").read_bytes() == gen_bytes(size)
    assert not list(out_dir.glob("*.part*"))
    for link in links:  # resumed, not fetched again from zero
        assert stats(link)["bytes_sent"] - sent_before[link] < size - 100_000, link


# ======================================================================== bad input
@pytest.mark.parametrize("value, says", [
    ("local:0", "local:N takes a number of workers of at least 1"),
    ("local:x", "local:N takes a number of workers"),
    ("http://sched:8786", "http:// is not a Dask transport"),
    ("tcp://sched:8786/x", "not HOST:PORT"),
])
def test_a_bad_cluster_value_is_one_usage_line(value, says, tmp_path):
    proc = run_cli("get", "http://127.0.0.1:9/a", "-d", str(tmp_path), "--cluster", value)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"downloader: --cluster: {value!r}") and says in line


def test_the_cluster_can_come_from_the_environment(tmp_path):
    env_value = "local:nope"
    env = dict(os.environ, DOWNLOADER_CLUSTER=env_value)
    proc = subprocess.run([sys.executable, "-m", "downloader", "get", "http://127.0.0.1:9/a", "-d", str(tmp_path)],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2 and "--cluster: 'local:nope'" in proc.stderr


def test_an_unreachable_scheduler_is_one_usage_line(url, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        proc = run_cli("get", url("/gen/u.bin", size=10), "-d", str(tmp_path), "--cluster", address,
                       "--timeout", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"downloader: --cluster: cannot reach the Dask scheduler at {address} "
        f"(Timed out trying to connect to {address} after 1 s)"]


def test_a_worker_that_cannot_see_the_folder_is_named_before_any_work(cluster, url, tmp_path):
    # /proc/self/cwd/out is tmp_path/out for the client, started there, and another folder (one
    # that does not exist) for the workers, whose working folder is elsewhere: a folder not shared
    link = url("/gen/v.bin", size=10)
    proc = run_cli("get", link, "-d", "/proc/self/cwd/out", "--cluster", cluster.scheduler.address, cwd=tmp_path)
    assert proc.returncode == 2
    first = sorted(worker_pids(cluster))[0]
    assert proc.stderr.strip().splitlines() == [
        f"downloader: worker {first}: cannot see /proc/self/cwd/out (the output folder must be shared by every "
        "worker)"]
    assert not (tmp_path / "out" / "v.bin").exists()


# ======================================================================== start-up stays light
@pytest.mark.parametrize("argv", [["--help"], ["get", "--help"], ["get", "LOCAL"]])
def test_help_and_local_runs_never_import_dask(argv, url, tmp_path):
    argv = [url("/gen/light.bin", size=10) if a == "LOCAL" else a for a in argv]
    if argv[0] == "get" and argv[-1] != "--help":
        argv += ["-d", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "downloader", *argv], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    # the check can see a heavy import when there is one: the engine's HTTP library (pycurl by default, else aiohttp)
    assert imported & {"aiohttp", "pycurl"} or argv[-1] == "--help"
    assert not imported & {"dask", "distributed"}


# ======================================================================== the pieces
def test_parse_cluster_reads_every_form():
    assert parse_cluster("local") == "local" and parse_cluster("local:4") == "local:4"
    assert parse_cluster("sched:8786") == "tcp://sched:8786" and parse_cluster("tcp://sched") == "tcp://sched:8786"
    assert parse_cluster("tls://10.0.0.1:8786") == "tls://10.0.0.1:8786"
    assert parse_cluster("") is None and parse_cluster(None) is None


def test_shard_cutter_sends_full_shards_at_once_and_parts_only_when_waiting_cannot_help():
    cut = ShardCutter(size=1000, linger=1.0)
    assert cut.due(1000, 0.0, more_ready=True, input_ended=False, idle_threads=False)
    assert not cut.due(0, 9.0, more_ready=False, input_ended=True, idle_threads=True)
    assert not cut.due(10, 0.0, more_ready=True, input_ended=True, idle_threads=True)  # more is ready: take it
    assert not cut.due(10, 0.5, more_ready=False, input_ended=False, idle_threads=False)  # busy: fill it up
    assert cut.due(10, 0.0, more_ready=False, input_ended=True, idle_threads=False)
    assert cut.due(10, 0.0, more_ready=False, input_ended=False, idle_threads=True)
    assert cut.due(10, 1.0, more_ready=False, input_ended=False, idle_threads=False)


def test_staged_names_belong_to_one_url_and_read_back():
    folder = RunFolder("/shared/out", "run1")
    index = ShardIndex(b"salt", folder)
    a, b = index.claim("http://h/a", "isos/x.iso"), index.claim("http://h/b", "isos/x.iso")
    assert a != b and a.startswith(".downloader/cluster/run1/staged/")
    assert folder.unstaged(a) == folder.unstaged(b) == "isos/x.iso"
    assert index.claim("http://h/a", "isos/x.iso") == a  # a retry of the shard finds its own folder
    assert folder.unstaged("isos/x.iso") is None
    assert "secret" not in index.key("http://u:secret@h/a")  # state files keep URLs as the index does


def test_the_journal_tells_a_retry_what_an_earlier_attempt_finished(tmp_path):
    path = str(tmp_path / "shard-0.jsonl")
    first = Journal(path)
    assert first.open() == {} and not first.retried
    first.write(Result(url="http://h/a", status=OK, path="/o/a", bytes=5, size=5, post=[{"task": "md5"}]))
    first.close()
    with open(path, "a") as torn:
        torn.write('{"url": "http://h/b", "sta')  # the worker died mid-line
    second = Journal(path)
    earlier = second.open()
    second.close()
    assert second.retried and list(earlier) == ["http://h/a"]
    assert earlier["http://h/a"] == Result(url="http://h/a", status=OK, path="/o/a", bytes=5, size=5,
                                           post=[{"task": "md5"}])
