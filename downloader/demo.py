"""`downloader demo`: the main job, end to end, on the built-in mock server.

It starts the mock server on a free loopback port (a subprocess, so its CPU time is not counted
against the client) with latency on every response, downloads one batch of its virtual files
(`/gen/NAME?size=N&seed=S`) once in each mode with visible progress, checks every file, and
returns a row per mode for `format_table`::

    rows = run_demo(["thread", "async"], latency="10ms", out=Path("demo-out"))
    print(format_table(rows))

The batch (`demo_batch`) looks like a real list: many small files, some medium ones, one large
enough to be split into segments fetched on parallel connections, one named by the server
(Content-Disposition) and one aria2-style entry with `out=`, `dir=` and `checksum=`. Each file is
checked where it should have landed, byte for byte against `gen_bytes` (the server's own source of
those bytes), never with the tool's own checks. Nothing is read from the checkout, so the demo runs
the same from an installed wheel as from `make demo`.
"""
from __future__ import annotations

import hashlib
import importlib
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import MODES, Options, parse_duration
from .core.ranges import connections_for
from .errors import DownloaderError, UsageError

CURL_EXTRA = "pip install 'downloader[curl]'"
"""What installs the curl engine's binding, pycurl (an optional extra)."""
SMALL_FILES = 48
"""Small files in the batch (2 KiB to 64 KiB): where per-file overhead and latency show."""
MEDIUM_FILES = 10
"""Medium files (200 KB to 3 MB)."""
LARGE_SIZE = 24 << 20
"""The large file: three times the default `--min-segment-size` (8M), so it is fetched in three
segments on parallel connections (sequential mode has only one)."""
_VERIFY_CHUNK = 4 << 20


@dataclass(frozen=True)
class DemoFile:
    """One file of the demo batch: a virtual file of the mock server, and where it must land.

    >>> DemoFile("a.bin", 1000, seed=3).lines("http://127.0.0.1:8000")
    ['http://127.0.0.1:8000/gen/a.bin?size=1000&seed=3\\n']
    """

    name: str
    """The name in the /gen path, and the saved name unless `served_as` or `out` gives another."""
    size: int
    seed: int
    served_as: str | None = None
    """A name the server sends in Content-Disposition (the mock server's `cd=`)."""
    out: str | None = None
    """aria2-style `out=`: the name the list asks for."""
    folder: str | None = None
    """aria2-style `dir=`: the subfolder of the output folder the file goes to."""
    checksum: bool = False
    """Whether the list gives the file's sha-256 (aria2-style `checksum=`) for the tool to check."""

    def url(self, base: str) -> str:
        """The file's URL on the mock server at `base`."""
        disposition = f"&cd={self.served_as}" if self.served_as else ""
        return f"{base}/gen/{self.name}?size={self.size}&seed={self.seed}{disposition}"

    def lines(self, base: str) -> list[str]:
        """The file's entry in a URL list: the URL, then its aria2-style options, indented."""
        from .mockserver import gen_bytes

        options = [f"out={self.out}"] if self.out else []
        options += [f"dir={self.folder}"] if self.folder else []
        if self.checksum:
            options.append(f"checksum=sha-256={hashlib.sha256(gen_bytes(self.size, self.seed)).hexdigest()}")
        return [self.url(base) + "\n", *(f"  {option}\n" for option in options)]

    def target(self, dest: Path) -> Path:
        """Where the file must be under the output folder `dest`."""
        return dest / (self.folder or "") / (self.out or self.served_as or self.name)

    def mismatch(self, dest: Path) -> str | None:
        """Why the file under `dest` is not what the server sent, or None when it is.

        Compared chunk by chunk with `gen_bytes`, so a large file costs no more memory than a chunk."""
        from .mockserver import gen_bytes

        path = self.target(dest)
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != self.size:
            return f"{path} has {path.stat().st_size} bytes, not {self.size}"
        with open(path, "rb") as file:
            for start in range(0, self.size, _VERIFY_CHUNK):
                end = min(start + _VERIFY_CHUNK, self.size)
                if file.read(_VERIFY_CHUNK) != gen_bytes(self.size, self.seed, start, end):
                    return f"{path} differs from the source in bytes {start} to {end}"
        return None


def demo_batch() -> list[DemoFile]:
    """The demo's files, the same every run: sizes are drawn once from a fixed seed.

    >>> len(demo_batch()) == SMALL_FILES + MEDIUM_FILES + 3
    True
    """
    sizes = random.Random(2026)
    small = [DemoFile(f"small-{i:02d}.bin", round(2 ** sizes.uniform(11, 16)), seed=100 + i)
             for i in range(SMALL_FILES)]
    medium = [DemoFile(f"medium-{i:02d}.bin", sizes.randrange(200_000, 3_000_000), seed=200 + i)
              for i in range(MEDIUM_FILES)]
    return [DemoFile("large.bin", LARGE_SIZE, seed=1),
            DemoFile("report.bin", 2_500_000, seed=2, served_as="quarterly-report.pdf"),
            DemoFile("archive.tar", 6_000_000, seed=3, out="archive-2026.tar", folder="archives", checksum=True),
            *medium, *small]


def describe(batch: list[DemoFile]) -> str:
    """What is in the batch and what the tool should do with it, a few lines for people."""
    segments = connections_for(LARGE_SIZE, True, Options.segments, Options.min_segment_size)
    lines = [f"{len(batch)} files, {sum(f.size for f in batch) / 1e6:.1f} MB:",
             f"{SMALL_FILES} small (2-64 KiB) and {MEDIUM_FILES} medium (0.2-3 MB) files"]
    for file in batch:
        if file.size == LARGE_SIZE:
            lines.append(f"{file.name}, {file.size >> 20} MiB: {segments} segments on parallel connections "
                         f"(one after another in sequential mode)")
        if file.served_as:
            lines.append(f"{file.name}: saved as {file.served_as}, the name the server gives (Content-Disposition)")
        if file.out or file.folder or file.checksum:
            options = [f"out={file.out}"] * bool(file.out) + [f"dir={file.folder}"] * bool(file.folder)
            lines.append(f"{file.name}: aria2-style {', '.join(options)}" + ", checksum=sha-256=..." * file.checksum)
    return "\n  ".join(lines)


def available_modes() -> list[str]:
    """The modes of `config.MODES` that can run here, in its order: `curl` only when pycurl can be
    imported, as it is an optional extra. What `demo`, `bench` and `gil` run when not told.

    >>> available_modes()[:3]
    ['async', 'thread', 'sequential']
    """
    return [mode for mode in MODES if mode != "curl" or _curl_engine_loads()]


def _curl_engine_loads() -> bool:
    """Whether the curl engine imports, which it does only when pycurl does (pycurl can be
    installed and still fail to load its libcurl). The engine is pycurl's one home, so it is asked."""
    try:
        importlib.import_module(".engines.curl", __package__)
    except ImportError:
        return False
    return True


def check_modes(modes: Iterable[str], option: str = "--modes") -> list[str]:
    """The modes named in `modes` (blanks dropped), or UsageError saying, in one line, which is
    unknown, named twice, or cannot run here (curl without pycurl).

    >>> check_modes(["async", " curl"])
    ['async', 'curl']
    """
    chosen = [mode.strip() for mode in modes if mode.strip()]
    unknown = [mode for mode in chosen if mode not in MODES]
    if unknown or not chosen:
        raise UsageError(f"{option}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(MODES)}")
    if len(set(chosen)) != len(chosen):
        raise UsageError(f"{option}: {', '.join(chosen)} names a mode twice")
    if "curl" in chosen and "curl" not in available_modes():
        raise UsageError(f"{option}: curl needs pycurl, which cannot be imported: {CURL_EXTRA}")
    return chosen


def start_server(latency: str) -> tuple[subprocess.Popen, str]:
    """The mock server (virtual files only) as a subprocess; returns it and its base URL once it listens.

    Raises DownloaderError when it does not start; the server has said why on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "downloader", "serve", "--port", "0", "--latency", latency],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        proc.wait()
        raise DownloaderError("demo: the mock server did not start")
    return proc, match.group(1)


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server from `start_server` and close the pipe it printed its address on."""
    server.terminate()
    server.wait(10)
    server.stdout.close()


def run_demo(modes: Iterable[str] | None = None, latency: str = "50ms", jobs: int = 16, out: Path = Path("demo-out"),
             progress: bool | None = None) -> list[dict]:
    """Download the demo batch once per mode (default: `available_modes()`) into `out/<mode>/`,
    check it, and return a row per mode: {mode, files, ok, verified, wall, cpu, bytes}. `progress`:
    bars (True), lines (False) or bars when stderr is a terminal (None). Bad modes or latency raise
    UsageError before the server starts."""
    from . import Downloader
    from .progress import BarReporter, LineReporter

    modes = available_modes() if modes is None else check_modes(modes)
    parse_duration(latency, "--latency")
    batch = demo_batch()
    server, base = start_server(latency)
    rows = []
    try:
        lines = [line for file in batch for line in file.lines(base)]
        print(f"mock server at {base}/ with {latency} latency per response\n"
              f"batch: {describe(batch)}\n", flush=True)
        for mode in modes:
            dest = Path(out) / mode
            shutil.rmtree(dest, ignore_errors=True)
            show = sys.stderr.isatty() if progress is None else progress
            print(f"== {mode}", flush=True)
            reporter = BarReporter() if show else LineReporter()
            cpu0, wall0 = _cpu(), time.perf_counter()
            results = Downloader(dest, mode=mode, jobs=jobs, reporter=reporter).enqueue_lines(lines, "demo").run()
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
            bad = [f"{r.url}: {r.error}" for r in results if r.status != "ok"]
            bad += [why for why in (file.mismatch(dest) for file in batch) if why]
            rows.append({"mode": mode, "files": len(results), "ok": results.counts["ok"], "verified": not bad,
                         "wall": wall, "cpu": cpu, "bytes": results.total_bytes})
            print(f"   {results.summary()}; every file verified: {'yes' if not bad else 'NO'}", flush=True)
            for why in bad[:5]:
                print(f"   {why}", flush=True)
    finally:
        stop_server(server)
    return rows


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def format_table(rows: list[dict]) -> str:
    """The rows of `run_demo` as a table: mode, files, wall s, files/s, MB/s, CPU s, verified."""
    head = f"{'mode':<11} {'files':>5} {'wall s':>7} {'files/s':>8} {'MB/s':>7} {'CPU s':>6}  verified"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['mode']:<11} {r['ok']:>5} {r['wall']:>7.2f} {r['ok'] / r['wall']:>8.1f} "
                     f"{r['bytes'] / r['wall'] / 1e6:>7.1f} {r['cpu']:>6.2f}  {'yes' if r['verified'] else 'NO'}")
    return "\n".join(lines)
