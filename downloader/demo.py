"""`downloader demo`: the main job, end to end, on the built-in mock server.

It starts the mock server on a free loopback port (a subprocess, so its CPU time is not counted
against the client), serving fixtures/data with latency on every response; downloads the demo
list (fixtures/lists/demo.txt) once in each mode with visible progress; verifies every file
against its source independently of the tool; and prints a table of wall time, files/s, MB/s and
CPU seconds per mode.
"""
from __future__ import annotations

import hashlib
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .config import MODES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def start_server(latency: str) -> tuple[subprocess.Popen, str]:
    """The mock server as a subprocess; returns it and its base URL once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "downloader", "serve", str(FIXTURES / "data"), "--port", "0",
                             "--latency", latency], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the mock server did not start: {line!r}")
    return proc, match.group(1)


def expected_digest(url: str) -> str:
    """sha256 of what the server holds for `url`, computed from the source, not from the download."""
    from .mockserver import gen_bytes
    parts = urlsplit(url)
    if parts.path.startswith("/gen/"):
        query = parse_qs(parts.query)
        return hashlib.sha256(gen_bytes(int(query["size"][0]), int(query.get("seed", ["0"])[0]))).hexdigest()
    return hashlib.sha256((FIXTURES / "data" / parts.path.lstrip("/")).read_bytes()).hexdigest()


def run_demo(modes=MODES, latency: str = "50ms", jobs: int = 16, out: Path = Path("demo-out"),
             progress: bool | None = None) -> list[dict]:
    from . import Downloader
    from .progress import BarReporter, LineReporter

    server, base = start_server(latency)
    rows = []
    try:
        lines = (FIXTURES / "lists/demo.txt").read_text().replace("{base}", base).splitlines(keepends=True)
        print(f"mock server at {base}/ with {latency} latency per response; "
              f"{sum(1 for x in lines if x.startswith('http'))} URLs per mode\n", flush=True)
        for mode in modes:
            dest = out / mode
            shutil.rmtree(dest, ignore_errors=True)
            show = sys.stderr.isatty() if progress is None else progress
            print(f"== {mode}", flush=True)
            reporter = BarReporter() if show else LineReporter()
            cpu0, wall0 = _cpu(), time.perf_counter()
            results = Downloader(dest, mode=mode, jobs=jobs, reporter=reporter).enqueue_lines(lines, "demo").run()
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
            bad = [r.url for r in results if r.status != "ok" or
                   hashlib.sha256(Path(r.path).read_bytes()).hexdigest() != expected_digest(r.url)]
            rows.append({"mode": mode, "files": len(results), "ok": results.counts["ok"], "verified": not bad,
                         "wall": wall, "cpu": cpu, "bytes": results.total_bytes})
            print(f"   {results.summary()}; every file verified: {'yes' if not bad else 'NO: ' + ', '.join(bad)}",
                  flush=True)
    finally:
        server.terminate()
        server.wait(10)
    return rows


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def format_table(rows: list[dict]) -> str:
    head = f"{'mode':<11} {'files':>5} {'wall s':>7} {'files/s':>8} {'MB/s':>7} {'CPU s':>6}  verified"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['mode']:<11} {r['ok']:>5} {r['wall']:>7.2f} {r['ok'] / r['wall']:>8.1f} "
                     f"{r['bytes'] / r['wall'] / 1e6:>7.1f} {r['cpu']:>6.2f}  {'yes' if r['verified'] else 'NO'}")
    return "\n".join(lines)
