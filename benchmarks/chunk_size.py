"""How big a read should be: one 512 MiB file (one stream) through each engine, in-process, for
several `--chunk-size` values, medians of N runs. The default (256K) is chosen from this table:
the smallest size past which larger reads stop buying wall or CPU time.

    .venv/bin/python benchmarks/chunk_size.py [--runs 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the nginx and data helpers of the main benchmark)

SIZES = ("64K", "128K", "256K", "1M", "4M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    big = bench.DataSet("big", 1, 512 << 20)
    bench.ensure_tools()
    bench.ensure_data(big)
    from downloader import Downloader
    from downloader.progress import LineReporter
    import downloader.engines.aio  # noqa: F401  (imports are not what is measured)
    import downloader.engines.sync  # noqa: F401
    with bench.Nginx(bench.BENCH / "data") as nginx:
        url = f"{nginx.base}/files/{big.folder}/{big.names()[0]}"
        print(f"{'mode':<8} {'chunk':>6} {'wall s':>8} {'cpu s':>8}")
        for mode in ("async", "thread"):
            for size in SIZES:
                walls, cpus = [], []
                for _ in range(args.runs):
                    out = Path(tempfile.mkdtemp(dir=bench.BENCH))
                    wall, cpu = time.perf_counter(), time.process_time()
                    results = Downloader(out, mode=mode, segments=1, chunk_size=size,
                                         reporter=LineReporter()).enqueue(url).run()
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                    shutil.rmtree(out)
                    assert results.success, results.failures
                print(f"{mode:<8} {size:>6} {statistics.median(walls):>8.3f} {statistics.median(cpus):>8.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
