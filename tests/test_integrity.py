"""Verification: every digest source, the manifest, --max-speed, and a property over the mock
server's faults: the final file's bytes equal the source, or the job failed and no final file exists."""
from __future__ import annotations

import hashlib
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from downloader import Downloader
from downloader.mockserver import FAULT_KINDS, MockConfig, MockServer, gen_bytes
from downloader.progress import RecordingReporter


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checksum_option_match_and_mismatch(fetch, url, tmp_path):
    good = url("/gen/c.bin", size=40_000)
    ok = fetch([good], checksum=f"sha-256={sha256(gen_bytes(40_000))}")
    assert ok.counts["ok"] == 1
    bad = url("/gen/d.bin", size=40_000)
    wrong = "0" * 64
    failed = fetch([bad], checksum=f"sha256={wrong}", retries=1)
    (result,) = failed.failed
    assert f"expected {wrong}, got {sha256(gen_bytes(40_000))}" in result.error
    assert not (tmp_path / "out/d.bin").exists() and not (tmp_path / "out/d.bin.part").exists()


def test_checksum_lines_in_an_aria2_list(fetch, url, tmp_path):
    a, b = url("/gen/a1.bin", size=1000), url("/gen/b1.bin", size=2000)
    lines = [f"{a}\n", f"  checksum=md5={hashlib.md5(gen_bytes(1000)).hexdigest()}\n",
             f"{b}\n", f"  checksum=sha-1={'1' * 40}\n"]
    results = fetch(lines=lines, retries=0)
    assert results.counts == {"ok": 1, "skipped": 0, "failed": 1, "interrupted": 0}
    assert "sha1 mismatch (checksum= in the URL file)" in results.failed[0].error


def test_sums_file(fetch, url, tmp_path):
    a, b = url("/gen/s1.bin", size=3000), url("/gen/s2.bin", size=4000)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{sha256(gen_bytes(3000))}  s1.bin\n{'f' * 64} *s2.bin\n")
    results = fetch([a, b], sums_file=sums, retries=0)
    assert [r.status for r in sorted(results, key=lambda r: r.url)] == ["ok", "failed"]
    assert "(--sums)" in results.failed[0].error


def test_server_digests_are_verified(fetch, url, tmp_path):
    good = url("/gen/g.bin", size=600_000, digest=1)
    bad = url("/gen/b.bin", size=600_000, digest="bad")
    results = fetch([good, bad], retries=1)
    assert results.counts["ok"] == 1 and results.counts["failed"] == 1
    assert "Repr-Digest" in results.failed[0].error or "Content-MD5" in results.failed[0].error
    assert (tmp_path / "out/g.bin").read_bytes() == gen_bytes(600_000)
    assert not (tmp_path / "out/b.bin").exists()


def test_segmented_download_verified_after_the_last_segment(fetch, url, tmp_path):
    size = 5_000_000
    results = fetch([url("/gen/sv.bin", size=size, digest=1)], segments=4, min_segment_size="1M", jobs=4,
                    manifest=tmp_path / "out/SHA256SUMS")
    assert results.counts["ok"] == 1
    assert results.items[0].sha256 == sha256(gen_bytes(size))


def test_a_segmented_file_is_hashed_as_its_prefix_grows_not_read_again_at_the_end(fetch, url, tmp_path,
                                                                                  monkeypatch):
    import downloader.transfer
    reads = []
    real = downloader.transfer.file_digests
    monkeypatch.setattr(downloader.transfer, "file_digests", lambda *a, **k: reads.append(a) or real(*a, **k))
    size = 5_000_000
    good = sha256(gen_bytes(size))
    results = fetch([url("/gen/pf.bin", size=size)], segments=4, min_segment_size="512K", jobs=4,
                    sums_file=_sums(tmp_path, {"pf.bin": good}))
    assert results.counts["ok"] == 1, results.failures
    assert results.items[0].sha256 == good
    assert reads == []  # verified by the prefix hasher, no second pass over the file
    bad = fetch([url("/gen/pf2.bin", size=size)], segments=4, min_segment_size="512K", jobs=4, retries=0,
                sums_file=_sums(tmp_path, {"pf2.bin": "0" * 64}))
    assert bad.counts["failed"] == 1
    assert f"expected {'0' * 64}, got {sha256(gen_bytes(size))}" in bad.failed[0].error
    assert not (tmp_path / "out/pf2.bin").exists()


def _sums(folder, digests: dict) -> str:
    path = folder / f"sums-{len(list(folder.glob('sums-*')))}.txt"
    path.write_text("".join(f"{hexdigest}  {name}\n" for name, hexdigest in digests.items()))
    return str(path)


def test_manifest_is_accepted_by_sha256sum(fetch, url, tmp_path):
    out = tmp_path / "out"
    urls = [url("/gen/m1.bin", size=100), url("/gen/m2.bin", size=5_000_000), url("/status/404")]
    fetch(urls, manifest=out / "SHA256SUMS", segments=2, min_segment_size="1M")
    lines = (out / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 2
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # files already there on a re-run are in the manifest too
    fetch(urls[:2], manifest=out / "SHA256SUMS")
    assert len((out / "SHA256SUMS").read_text().splitlines()) == 2


def test_max_speed_caps_the_whole_batch(mode, url, tmp_path):
    # two files of 600 kB at 400 kB/s for the batch: at least ~2.6 s in all, whatever the engine
    urls = [url("/gen/ms1.bin", size=600_000), url("/gen/ms2.bin", size=600_000)]
    started = time.monotonic()
    results = Downloader(tmp_path, mode=mode, max_speed="400K", reporter=RecordingReporter()).enqueue(*urls).run()
    elapsed = time.monotonic() - started
    assert results.counts["ok"] == 2
    assert elapsed >= (1_200_000 - 100 * 1024) / (400 * 1024) * 0.95


faults = st.lists(st.tuples(st.sampled_from([k for k in FAULT_KINDS if k != "stall"]),
                            st.integers(min_value=1, max_value=3)), min_size=0, max_size=3)


@pytest.mark.parametrize("mode", ["thread", "async"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), fail_rate=st.sampled_from([0.0, 0.3, 0.6]), forced=faults,
       segments=st.sampled_from([1, 4]))
def test_any_faults_give_exact_bytes_or_a_failure_without_final_file(
        mode, tmp_path_factory, seed, fail_rate, forced, segments):
    dest = tmp_path_factory.mktemp("prop")
    config = MockConfig(fail_rate=fail_rate, faults=tuple(k for k in FAULT_KINDS if k != "stall"), seed=seed,
                        retry_after="0")
    size = 1_500_000 + seed
    with MockServer(None, config) as srv:
        urls = [f"{srv.url}/gen/p{i}.bin?size={size}&seed={seed}" + (f"&fault={kind}&times={times}")
                for i, (kind, times) in enumerate(forced)] + [f"{srv.url}/gen/plain.bin?size={size}&seed={seed}"]
        results = Downloader(dest, mode=mode, segments=segments, min_segment_size="512K", retries=4,
                             retry_base=0.001, timeout=5, reporter=RecordingReporter()).enqueue(*urls).run()
    expected = gen_bytes(size, seed)
    for result in results:
        name = result.url.split("/gen/")[1].split("?")[0]
        final = dest / name
        if result.status == "ok":
            assert final.read_bytes() == expected
        else:
            assert not final.exists()
