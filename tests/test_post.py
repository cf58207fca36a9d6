"""The post stage as users meet it through the downloader: every engine, every executor."""
from __future__ import annotations

import hashlib
import os

import pytest

from downloader.mockserver import gen_bytes


@pytest.mark.parametrize("executor", ["process", "thread", "inline"])
def test_post_digests_equal_hashlib_and_fib_runs_per_file(fetch, url, executor, tmp_path):
    sizes = [1000, 250_000, 3_000_000]
    urls = [url(f"/gen/p{i}.bin", size=n, seed=i) for i, n in enumerate(sizes)]
    results = fetch(urls, post=("sha256", "md5", "blake2b", "fib:15"), post_executor=executor, post_workers=2,
                    manifest=tmp_path / "out/SHA256SUMS")
    assert results.counts["ok"] == 3
    for result in results:
        i = int(result.path.rsplit("p", 1)[1].split(".")[0])
        data = gen_bytes(sizes[i], i)
        post = {p["task"]: p for p in result.post}
        assert post["sha256"]["value"] == hashlib.sha256(data).hexdigest() == result.sha256
        assert post["md5"]["value"] == hashlib.md5(data).hexdigest()
        assert post["blake2b"]["value"] == hashlib.blake2b(data).hexdigest()
        assert post["fib:15"]["value"] == 610
        assert all(p["error"] is None and p["cpu_seconds"] >= 0 for p in result.post)
        if executor == "process":
            assert post["fib:15"]["pid"] != os.getpid()
        else:
            assert post["fib:15"]["pid"] == os.getpid()
    manifest = (tmp_path / "out/SHA256SUMS").read_text()
    assert all(r.sha256 in manifest for r in results)


def test_a_failing_post_task_fails_only_that_step(fetch, url, tmp_path, monkeypatch):
    # the file vanishes between landing and its post task (another program took it away)
    import downloader.postprocess as post
    real = post.run_tasks

    def vanish_then_run(tasks, path):
        if path.endswith("gone.bin"):
            os.remove(path)
        return real(tasks, path)

    monkeypatch.setattr(post, "run_tasks", vanish_then_run)
    results = fetch([url("/gen/gone.bin", size=100), url("/gen/kept.bin", size=100)], post=("sha256",),
                    post_executor="thread")
    by_name = {r.path.rsplit("/", 1)[1]: r for r in results}
    assert by_name["kept.bin"].post[0]["error"] is None
    error = by_name["gone.bin"].post[0]["error"]
    assert error and "gone.bin" in error
    assert ("message", f"post-processing failed: {error}") in results.events
    assert results.counts["ok"] == 2
