"""Side-by-side benchmarks: the downloader against curl, aria2c, wget2, parfive and bare loops.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME] [--runs N] [--json PATH] [--scratch DIR]

Everything is served from 127.0.0.1 by an nginx started here with its own config, logs and
data under .bench/ (gitignored). Each scenario runs the downloader and its peers in the same
session, interleaved (peer, downloader, peer, downloader, ...), checks the size and sha256 of
every output file against the file served (wrong bytes fail the run), and reports the median
wall time and the median CPU time (user + sys of the child, from os.wait4), per file too when
there are many, against the product's targets. Exit status: 0 when every run was correct and
every target met, 1 otherwise.

The bare loops (bare_aiohttp.py, bare_requests.py, bare_pycurl.py beside this script) do the
least a downloader must per URL with each engine's library: they are the floor of `many-tiny`.
`million` is of another shape (ListScenario): one long run per engine over a generated list,
stopped with SIGINT, then a short list to the end and a re-run of it.

Standard library only; the peers are run through their own command lines, and the tools the
script needs are installed with apt-get when missing.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
HERE = Path(__file__).resolve().parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))

KiB = 1024
MiB = 1024 * KiB

DELAY = 0.05
"""Seconds nginx waits before every response under /delay/."""
SLOW_RATE = 2 * MiB
"""Bytes a second per connection under /slow/ (nginx `limit_rate 2m` means 2 MiB/s)."""
FAIL_RATE = 0.2
"""Share of responses under /flaky/ that are a 503 with Retry-After: 0."""

DOWNLOADER_STATE = r"\.downloader/index\.sqlite(-wal|-shm|-journal)?"
"""What the downloader may leave in its output folder besides the files: its batch index
(downloader/index.py). Anything else there (a .part, a state file) fails the run."""

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
APT_PACKAGES = {"nginx": "nginx-light", "curl": "curl", "aria2c": "aria2", "wget2": "wget2"}
"""The programs this script runs, and the Debian package of each."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DataSet:
    """`count` random files of `size` bytes, made once under .bench/data/ and reused."""

    prefix: str
    count: int
    size: int

    @property
    def folder(self) -> str:
        return f"{self.prefix}-{self.count}x{self.size}"

    @property
    def total(self) -> int:
        return self.count * self.size

    def names(self) -> list[str]:
        return [f"{self.prefix}{i:05d}.bin" for i in range(self.count)]

    def describe(self) -> str:
        return f"{self.count} x {human_size(self.size)}"


Digests = dict[str, tuple[int, str]]
"""File name -> (size, sha256 hex) of what a download must produce."""

ONE_FILE = DataSet("one", 1, 1 * KiB)
"""The 1 KiB file nginx answers for every path under /m/ (the URLs of the million scenario)."""


def ensure_data(data: DataSet) -> Digests:
    """Make the files of `data` unless they are there from an earlier run; return their digests."""
    folder = BENCH / "data" / data.folder
    manifest = folder / "manifest.json"
    if manifest.exists():
        known = {name: tuple(value) for name, value in json.loads(manifest.read_text()).items()}
        if sorted(known) == data.names() and all(
            (folder / name).is_file() and (folder / name).stat().st_size == data.size for name in known
        ):
            return known
    print(f"making {data.describe()} of random bytes in {folder}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in data.names():
        digest = hashlib.sha256()
        with open(folder / name, "wb") as out:
            left = data.size
            while left:
                chunk = os.urandom(min(left, 4 * MiB))
                out.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        digests[name] = (data.size, digest.hexdigest())
    manifest.write_text(json.dumps(digests))
    return digests


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (Python 3.10 has no hashlib.file_digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while block := data.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(out: Path, expected: Digests, allowed: str | None = None) -> str | None:
    """None when `out` holds exactly the expected files with the expected bytes (and files whose
    path matches the regex `allowed`), else what is wrong."""
    found = {path.relative_to(out).as_posix(): path for path in out.rglob("*") if path.is_file()}
    if allowed:
        found = {name: path for name, path in found.items() if not re.fullmatch(allowed, name)}
    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    if missing or extra:
        return (f"{len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]} "
                f"({len(found)} files found, {len(expected)} expected)")
    for name, (size, sha256) in sorted(expected.items()):
        got = found[name].stat().st_size
        if got != size:
            return f"{name}: {got} bytes, expected {size}"
        if file_sha256(found[name]) != sha256:
            return f"{name}: wrong bytes (sha256 differs)"
    return None


# ---------------------------------------------------------------------------------------------
# Tools and servers


def byte_compile() -> None:
    """Compile the package's modules to bytecode, as `pip install` does for a wheel: the checkout
    is installed editable, and where PYTHONDONTWRITEBYTECODE is set (or __pycache__ is stale),
    every run would otherwise compile about forty modules again (~0.1 s a run, not a user's cost)."""
    for folder in (ROOT / "downloader", Path(__file__).resolve().parent):
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(folder)], check=True)


def ensure_tools() -> None:
    """Install with apt-get whatever program (or the nginx echo module) is missing."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin"
    wanted = [pkg for tool, pkg in APT_PACKAGES.items() if not shutil.which(tool, path=path)]
    if not ECHO_MODULE.exists():
        wanted.append("libnginx-mod-http-echo")
    if not wanted:
        return
    print(f"installing {' '.join(wanted)} with apt-get", flush=True)
    if os.geteuid() != 0:
        sys.exit(f"run.py: {' '.join(wanted)} missing and not root: apt-get install -y {' '.join(wanted)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found or not ECHO_MODULE.exists():
        sys.exit("run.py: nginx with the echo module is needed (apt-get install nginx-light "
                 "libnginx-mod-http-echo) and could not be installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lasting_port(record: Path) -> int:
    """The port saved in `record` while it is still free, else a new free one (then saved): the
    long URL lists generated under .bench name the server's port, and are reused while it holds."""
    try:
        port = int(record.read_text())
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx binds
            sock.bind(("127.0.0.1", port))
        return port
    except (OSError, ValueError):
        port = free_port()
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{port}\n")
        return port


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = """\
load_module @ECHO@;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 8192;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    log_format timing "$msec $request_time $connection";
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path @DIR@/tmp/body;
    proxy_temp_path @DIR@/tmp/proxy;
    fastcgi_temp_path @DIR@/tmp/fastcgi;
    uwsgi_temp_path @DIR@/tmp/uwsgi;
    scgi_temp_path @DIR@/tmp/scgi;
    types { }
    default_type application/octet-stream;
    split_clients "${request_id}" $bench_fail { @FAIL_PERCENT@% 1; * 0; }
    server {
        listen 127.0.0.1:@PORT@;
        # every response waits @DELAY@ s on a timer (echo module), then the static file is sent
        location ~ ^/delay/(.*)$ { echo_sleep @DELAY@; echo_exec /static/$1; }
        location /static/ { internal; alias @DATA@/; }
        location /files/ { alias @DATA@/; }
        location /slow/ { alias @DATA@/; limit_rate @RATE@; sendfile off; access_log @DIR@/slow.log timing; }
        location /flaky/ {
            alias @DATA@/;
            if ($bench_fail) { add_header Retry-After 0 always; return 503; }
        }
        # any path under /m/ is the one 1 KiB file: a list of a million distinct URLs needs no
        # million files on the server
        location /m/ { root @DATA@/@ONE_DIR@; try_files /@ONE_NAME@ =404; }
        location = /status { stub_status; }
    }
}
"""


class Nginx:
    """nginx in the foreground (master + 1 worker) on a free loopback port, serving `data`."""

    def __init__(self, data: Path):
        self.data = data
        self.dir = BENCH / "nginx"
        self.port = lasting_port(self.dir / "port")
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def requests_served(self) -> int:
        """nginx's count of requests since it started (stub_status), this one included."""
        with urllib.request.urlopen(f"{self.base}/status", timeout=10) as answer:
            text = answer.read().decode()
        accepts, handled, requests = re.search(r"(\d+)\s+(\d+)\s+(\d+)", text).groups()
        return int(requests)

    def __enter__(self) -> "Nginx":
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        values = {"@ECHO@": str(ECHO_MODULE), "@DIR@": str(self.dir), "@DATA@": str(self.data),
                  "@PORT@": str(self.port), "@DELAY@": f"{DELAY:g}", "@RATE@": f"{SLOW_RATE // MiB}m",
                  "@FAIL_PERCENT@": f"{FAIL_RATE * 100:g}", "@ONE_DIR@": ONE_FILE.folder,
                  "@ONE_NAME@": ONE_FILE.names()[0]}
        text = NGINX_CONF
        for key, value in values.items():
            text = text.replace(key, value)
        conf.write_text(text)
        log = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_for_port(self.port, self.proc, f"nginx (see {self.dir}/error.log)")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop(self.proc)


MOCK_SERVE = """\
import sys
from pathlib import Path
from downloader.mockserver import MockConfig, serve
config = MockConfig(fail_rate=float(sys.argv[3]), faults=("503",), retry_after="0")
serve(Path(sys.argv[1]), "127.0.0.1", int(sys.argv[2]), config, lambda url: print(url, flush=True))
"""


def mock_server_available() -> bool:
    probe = "from downloader.mockserver import MockConfig, serve"
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, cwd=ROOT)
    return done.returncode == 0


class MockFaults:
    """The project's own mock server (downloader.mockserver) failing FAIL_RATE of GETs with a 503 and
    Retry-After: 0. Its faults are drawn per URL and per GET number, from a fixed seed, so a server
    started afresh before each run (`fresh`) serves every tool the very same fault sequence."""

    def __init__(self, data: Path):
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = BENCH / "mockserver.log"

    def fresh(self) -> None:
        self.close()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-c", MOCK_SERVE, str(self.data), str(self.port), str(FAIL_RATE)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for_port(self.port, self.proc, f"mock server (see {self.log})")

    def traffic(self) -> str:
        """What the server saw since it started: GETs and HEADs in all."""
        try:
            with urllib.request.urlopen(f"{self.base}/__stats", timeout=10) as answer:
                counts = list(json.load(answer).values())
        except (OSError, ValueError) as exc:
            return f"no stats from the mock server: {exc}"
        return (f"server saw {sum(c.get('gets', 0) for c in counts)} GETs, "
                f"{sum(c.get('heads', 0) for c in counts)} HEADs")

    def close(self) -> None:
        if self.proc:
            stop(self.proc)
            self.proc = None

    def __enter__(self) -> "MockFaults":
        self.fresh()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Server checks: the delays, caps and faults the scenarios rely on, measured with curl


def curl_times(urls: list[str], parallel: int = 0, head: bool = False) -> tuple[float, list[list[str]]]:
    """Fetch `urls` with one curl (in parallel when asked); wall time and, per transfer,
    [http_code, time_total, size_download, retry-after header]."""
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
        for url in urls:
            cfg.write(f'url = "{url}"\noutput = "/dev/null"\n')
    write_out = r"%{http_code} %{time_total} %{size_download} %header{retry-after}\n"
    argv = ["curl", "-s", "-K", cfg.name, "-w", write_out]
    if parallel:
        argv[1:1] = ["--parallel", "--parallel-immediate", "--parallel-max", str(parallel)]
    if head:
        argv.insert(1, "-I")
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    wall = time.perf_counter() - start
    os.unlink(cfg.name)
    return wall, [(line.split() + [""])[:4] for line in out.splitlines() if line.strip()]


@dataclass
class Check:
    name: str
    measured: str
    ok: bool


def file_cost(scratch: Path, count: int = 1000) -> tuple[float, float]:
    """CPU and wall seconds a 1 KiB file costs the file system under `scratch` (where the downloads
    land), written as the bare loops write one (create NAME.part, write, rename), in this process.

    On a disk shared with other work this swings widely (from about 0.05 to 1 ms of kernel CPU a
    file on the 2-core test VM, as other processes create and delete files), and it is part of every
    tool's CPU per file; it is printed before and after the scenarios with many files to read them by.
    """
    folder = scratch / "file-cost"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    body = os.urandom(KiB)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        final = folder / f"{index:05d}.bin"
        part = folder / f"{index:05d}.bin.part"
        with open(part, "wb") as out:
            out.write(body)
        os.rename(part, final)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(folder, ignore_errors=True)
    return cpu / count, wall / count


def print_file_cost(scratch: Path, when: str) -> dict[str, float]:
    cpu, wall = file_cost(scratch)
    print(f"  file system {when}: a 1 KiB file (create .part, write, rename) costs {cpu * 1000:.3f} ms CPU, "
          f"{wall * 1000:.3f} ms wall", flush=True)
    return {"cpu_s": cpu, "wall_s": wall}


def check_servers(urls: dict[str, str], small: str, medium: str, medium_size: int) -> list[Check]:
    """Measure that /delay/ delays each response, /slow/ caps the rate and /flaky/ fails as meant."""
    checks = []
    delay_url = urls["delay"] + small
    _, rows = curl_times([delay_url] * 5)
    times = [float(row[1]) for row in rows]
    median = statistics.median(times)
    checks.append(Check(f"GET /delay/ waits {DELAY * 1000:.0f} ms", f"median {median * 1000:.1f} ms of 5",
                        DELAY * 0.9 <= median <= DELAY + 0.05 and all(row[0] == "200" for row in rows)))
    _, rows = curl_times([delay_url] * 3, head=True)
    median = statistics.median(float(row[1]) for row in rows)
    checks.append(Check("HEAD /delay/ waits too", f"median {median * 1000:.1f} ms of 3",
                        median >= DELAY * 0.9))
    wall, rows = curl_times([delay_url] * 32, parallel=32)
    checks.append(Check("32 parallel GETs on /delay/ overlap", f"{wall * 1000:.0f} ms for all 32",
                        wall < DELAY * 4 and all(row[0] == "200" for row in rows)))
    probe = min(2 * MiB, medium_size)
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-r", f"0-{probe - 1}", "-o", "/dev/null", urls["slow"] + medium],
                   check=False)
    rate = probe / (time.perf_counter() - start)
    checks.append(Check(f"/slow/ holds {SLOW_RATE / MiB:g} MiB/s per connection",
                        f"{rate / MiB:.2f} MiB/s over {human_size(probe)}", 0.85 <= rate / SLOW_RATE <= 1.2))
    _, rows = curl_times([urls["flaky"] + small] * 200, parallel=16)
    failed = [row for row in rows if row[0] == "503"]
    share = len(failed) / max(1, len(rows))
    checks.append(Check(f"{FAIL_RATE:.0%} of responses on the fault server are 503 + Retry-After: 0",
                        f"{len(failed)}/{len(rows)} 503s",
                        abs(share - FAIL_RATE) < 0.08 and all(row[3] == "0" for row in failed)
                        and all(row[0] in ("200", "503") for row in rows)))
    return checks


# ---------------------------------------------------------------------------------------------
# One function per tool invocation. Each takes the job and returns the argv to time.


@dataclass
class Job:
    """What one run of a scenario fetches, and where to."""

    urls: list[str]
    out: Path
    work: Path
    expected: Digests

    def url_list(self) -> Path:
        path = self.work / "urls.txt"
        if not path.exists():
            path.write_text("".join(url + "\n" for url in self.urls))
        return path

    def sha256(self) -> str:
        """The digest of the one file of a single-file job."""
        (value,) = self.expected.values()
        return value[1]


def curl_parallel(job: Job, jobs: int) -> list[str]:
    cfg = job.work / "curl.cfg"
    cfg.write_text("".join(f'url = "{url}"\noutput = "{job.out / url.rsplit("/", 1)[-1]}"\n'
                           for url in job.urls))
    return ["curl", "--parallel", "--parallel-max", str(jobs), "-s", "--create-dirs", "-K", str(cfg)]


def curl_single(job: Job) -> list[str]:
    (url,) = job.urls
    return ["curl", "-s", "-o", str(job.out / url.rsplit("/", 1)[-1]), url]


def aria2c(job: Job, *options: str) -> list[str]:
    return ["aria2c", "-q", "--no-conf", "-d", str(job.out), "-i", str(job.url_list()), *options]


def wget2(job: Job, jobs: int) -> list[str]:
    return ["wget2", "-q", "--no-config", f"--max-threads={jobs}", "-P", str(job.out),
            "-i", str(job.url_list())]


def parfive(job: Job, jobs: int, *options: str) -> list[str]:
    return [PYTHON, str(HERE / "parfive_get.py"), "-j", str(jobs), "-d", str(job.out), *options,
            str(job.url_list())]


def bare_loop(job: Job, library: str, jobs: int) -> list[str]:
    """One of the bare loops beside this script (bare_aiohttp.py, bare_requests.py, bare_pycurl.py):
    the least a downloader does per URL with that library, the floor each engine is held to."""
    return [PYTHON, str(HERE / f"bare_{library}.py"), "-j", str(jobs), "-d", str(job.out), str(job.url_list())]


def downloader(job: Job, mode: str, *options: str) -> list[str]:
    sources = job.urls if len(job.urls) == 1 else ["-i", str(job.url_list())]
    return [PYTHON, "-m", "downloader", "get", *sources, "-d", str(job.out), "-m", mode,
            "--no-progress", "-q", *options]


def downloader_help(job: Job) -> list[str]:
    return [PYTHON, "-m", "downloader", "--help"]


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Variant:
    label: str
    tool: str
    """"downloader" for the product; "python" for a peer script run with the bench's Python;
    otherwise the program the peer needs."""
    build: Callable[[Job], list[str]]
    needs: tuple[str, ...] = ()
    """Options of `downloader get` this variant uses that may not exist yet."""
    mode: str | None = None
    """The engine (`-m`) a downloader variant runs, skipped while `get --help` does not list it."""
    imports: tuple[str, ...] = ()
    """Modules a "python" peer imports, skipped while the bench's Python lacks one."""
    first_only: bool = False
    """Fetch only the first file of the data set, without delay (from /files/): the run measures
    the tool's start-up, for targets such as "the floor plus start-up"."""

    @property
    def is_peer(self) -> bool:
        return self.tool != "downloader"

    @property
    def allowed(self) -> str | None:
        """Regex of the paths this tool may leave in the output folder besides the files."""
        return None if self.is_peer else DOWNLOADER_STATE


@dataclass(frozen=True)
class Target:
    variant: str
    metric: str
    """"wall", "cpu" or "cpu_per_file" (CPU seconds over the files of the run): the variant's median."""
    ref: str
    """"limit" (the scenario's theoretical limit), "limit+LABEL" (the limit times `factor`, plus
    the median wall time of the variant LABEL: a start-up), "abs" (seconds), "best peer" (the peer
    with the lowest median wall time) or another variant's label."""
    factor: float
    strict: bool = False
    """True for `<`, False for `<=`."""

    def describe(self) -> str:
        sign = "<" if self.strict else "<="
        name = self.metric.replace("_", " ")
        if self.ref == "abs":
            return f"{name} {sign} {fmt_metric(self.metric, self.factor)}"
        if self.ref.startswith("limit+"):
            return f"{name} {sign} {self.factor:g}x limit + {self.ref[6:]}"
        return f"{name} {sign} {self.factor:g}x {self.ref}"


def fmt_metric(metric: str, seconds: float | None) -> str:
    """A median as the report shows it: per-file CPU in milliseconds, the rest in seconds."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.3f} ms" if metric == "cpu_per_file" else f"{seconds:.3f} s"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    data: DataSet | None
    location: str
    """Which server prefix the files come from: delay, files, slow or flaky."""
    variants: tuple[Variant, ...]
    targets: tuple[Target, ...]
    limit: float | None = None
    runs: int | None = None
    """Repetitions, when not the command line's --runs."""
    timeout: float = 180.0


@dataclass(frozen=True)
class ListScenario:
    """A long generated list of distinct URLs, every one answered by the same 1 KiB file (/m/): what
    the downloader spends per URL as the list grows, without a million files on the server.

    For each engine: the long list runs for `window` seconds, then gets SIGINT (it must exit 130);
    the short list runs to the end (the folder is then checked file by file); then the very same
    command runs again over the complete folder, where every URL must be skipped without a request.
    Each of these runs once (they are long; --runs does not apply)."""

    name: str
    title: str
    long: int
    """Lines of the long list (a million)."""
    short: int
    """Lines of the list the long one is compared with, and that the re-run skips."""
    window: float
    """Seconds over which the rates are counted (then the long run gets SIGINT)."""
    jobs: int
    modes: tuple[tuple[str, float], ...]
    """Each engine measured, with the files/s it must sustain on the long list."""
    max_rss: int = 100 * 1000 * 1000
    """Bytes of peak resident memory no run may exceed (100 MB)."""
    rate_spread: float = 0.10
    """How far apart the long and the short list's rates may be (10%): nothing may grow with the list."""
    skip_rate: float = 25_000.0
    """URLs a second a re-run over a complete folder must skip, without one request."""
    data: None = None
    """No data set to make beforehand: the one file under /m/ is ONE_FILE."""


@dataclass(frozen=True)
class ClusterScenario:
    """The same batches through one local async process and through `--cluster local:N` (N worker
    processes, each running the async engine on shards of the list, under a client that reads the
    list, claims names and records results): wall time, files/s, the client's peak RSS, and where
    the CPU went (the client, the workers, nginx), each run once. Also the cost of a shard's round
    trip through the Dask scheduler, measured on its own (SHARD_TRIP)."""

    name: str
    title: str
    tiny: DataSet
    """The many-tiny batch (served from /files/)."""
    long: int
    """Lines of the generated list (/m/), the one the speed-up target is judged on."""
    workers: int
    jobs: int
    shard_size: int
    speedup: float
    """files/s of --cluster local:N over one local async process, on the long list."""
    max_rss: int = 150 * 1000 * 1000
    """Bytes of peak resident memory the client may use, whatever the list length."""
    data: None = None


def scenarios(quick: bool) -> list[Scenario | ListScenario | ClusterScenario]:
    small = DataSet("small", 200 if quick else 1000, 16 * KiB)
    medium = DataSet("medium", 8 if quick else 20, (2 if quick else 4) * MiB)
    big = DataSet("big", 1, (64 if quick else 512) * MiB)
    retry = DataSet("retry", 100 if quick else 300, 16 * KiB)
    tiny = DataSet("tiny", 1000 if quick else 5000, 1 * KiB)
    long_list, short_list, window = (100_000, 10_000, 20.0) if quick else (1_000_000, 100_000, 60.0)
    jobs, segments, min_segment = 32, 8, "512K"
    # aria2c's smallest piece (-k) is 1M: its best split of a medium file, with as many connections in all
    aria2_split = min(segments, medium.size // MiB)

    def dl(label: str, mode: str, *options: str, needs: tuple[str, ...] = ()) -> Variant:
        return Variant(label, "downloader", lambda job: downloader(job, mode, *options), needs=needs, mode=mode)

    many_jobs = ("-j", str(jobs))
    seg_options = ("-j", str(jobs), "-s", str(segments), "--min-segment-size", min_segment)
    tiny_jobs = 64
    tiny_options = ("-j", str(tiny_jobs))
    return [
        Scenario(
            "many-small",
            f"{small.describe()} from /delay/ ({DELAY * 1000:.0f} ms a response), {jobs} at a time",
            small, "delay",
            (Variant("curl", "curl", lambda job: curl_parallel(job, jobs)),
             Variant("aria2c", "aria2c", lambda job: aria2c(job, "-j", str(jobs))),
             Variant("wget2", "wget2", lambda job: wget2(job, jobs)),
             dl("dl async", "async", *many_jobs),
             dl("dl thread", "thread", *many_jobs),
             dl("dl curl", "curl", *many_jobs),
             Variant("dl curl start-up", "downloader", lambda job: downloader(job, "curl"), mode="curl",
                     first_only=True)),
            # issue 8: async ahead of curl and within 1.15x of the floor, thread within 1.3x; issue
            # 13: the curl mode ahead of curl and within 1.05x of the floor plus its start-up
            (Target("dl async", "wall", "curl", 1.0, strict=True), Target("dl async", "wall", "limit", 1.15),
             Target("dl thread", "wall", "limit", 1.3),
             Target("dl curl", "wall", "curl", 1.0, strict=True),
             Target("dl curl", "wall", "limit+dl curl start-up", 1.05)),
            limit=math.ceil(small.count / jobs) * DELAY,
        ),
        Scenario(
            "one-big", f"one {human_size(big.size)} file from /files/ (sendfile)", big, "files",
            (Variant("curl", "curl", curl_single),
             dl("dl async -s 1", "async", "-s", "1", needs=("-s",)),
             dl("dl async", "async"),
             dl("dl thread", "thread"),
             dl("dl curl", "curl"),
             # a one-stream file is hashed as its bytes stream in; a segmented one as its on-disk
             # prefix grows (sink.PrefixHasher): neither reads the file again at the end
             Variant("dl async -s 1 +checksum", "downloader",
                     lambda job: downloader(job, "async", "-s", "1", "--checksum", f"sha-256={job.sha256()}"),
                     needs=("--checksum", "-s"), mode="async"),
             Variant("dl async +checksum", "downloader",
                     lambda job: downloader(job, "async", "--checksum", f"sha-256={job.sha256()}"),
                     needs=("--checksum",), mode="async")),
            tuple(Target(label, metric, "curl", factor)
                  for label in ("dl async -s 1", "dl async", "dl thread")
                  for metric, factor in (("wall", 1.3), ("cpu", 2.0)))
            + (Target("dl curl", "wall", "curl", 1.1),)
            + (Target("dl async -s 1 +checksum", "wall", "dl async -s 1", 1.15),
               Target("dl async +checksum", "wall", "dl async", 1.15)),
            timeout=600.0,
        ),
        Scenario(
            "segmented-slow",
            f"{medium.describe()} from /slow/ ({SLOW_RATE / MiB:g} MiB/s a connection), "
            f"{jobs} connections in {segments}-segment files",
            medium, "slow",
            (Variant("aria2c", "aria2c", lambda job: aria2c(
                job, "-j", str(jobs // aria2_split), "-x", str(aria2_split), "-s", str(aria2_split),
                "-k", "1M")),
             dl("dl async", "async", *seg_options, needs=("-s", "--min-segment-size")),
             dl("dl thread", "thread", *seg_options, needs=("-s", "--min-segment-size")),
             dl("dl curl", "curl", *seg_options, needs=("-s", "--min-segment-size"))),
            (Target("dl async", "wall", "limit", 1.10), Target("dl curl", "wall", "limit", 1.10)),
            limit=medium.total / (jobs * SLOW_RATE),
        ),
        Scenario(
            "retry-503",
            f"{retry.describe()}, {FAIL_RATE:.0%} of responses 503 with Retry-After: 0, {jobs} at a time",
            retry, "flaky",
            (Variant("parfive", "python", lambda job: parfive(job, jobs), imports=("parfive",)),
             Variant("parfive splits=1", "python", lambda job: parfive(job, jobs, "--max-splits", "1"),
                     imports=("parfive",)),
             dl("dl async", "async", *many_jobs),
             dl("dl thread", "thread", *many_jobs),
             dl("dl curl", "curl", *many_jobs)),
            # issue 8: faster than parfive, as shipped and with max_splits=1, in the same run
            (Target("dl async", "wall", "best peer", 1.0, strict=True),
             Target("dl thread", "wall", "parfive", 1.0, strict=True),
             Target("dl thread", "wall", "parfive splits=1", 1.0, strict=True),
             Target("dl curl", "wall", "best peer", 1.0, strict=True)),
        ),
        Scenario(
            "help", "python -m downloader --help", None, "",
            (Variant("dl --help", "downloader", downloader_help),),
            (Target("dl --help", "wall", "abs", 0.3, strict=True),),
            runs=3 if quick else 10, timeout=30.0,
        ),
        Scenario(
            "many-tiny",
            f"{tiny.describe()} from /files/, {tiny_jobs} at a time: the cost of a URL, against bare "
            f"loops doing only fetch, write .part, rename",
            tiny, "files",
            (Variant("curl", "curl", lambda job: curl_parallel(job, tiny_jobs)),
             Variant("wget2", "wget2", lambda job: wget2(job, tiny_jobs)),
             Variant("bare aiohttp", "python", lambda job: bare_loop(job, "aiohttp", tiny_jobs),
                     imports=("aiohttp",)),
             Variant("bare requests", "python", lambda job: bare_loop(job, "requests", tiny_jobs),
                     imports=("requests",)),
             Variant("bare pycurl", "python", lambda job: bare_loop(job, "pycurl", tiny_jobs),
                     imports=("pycurl",)),
             dl("dl async", "async", *tiny_options),
             dl("dl thread", "thread", *tiny_options),
             dl("dl curl", "curl", *tiny_options)),
            (Target("dl async", "wall", "bare aiohttp", 1.3),
             Target("dl thread", "wall", "bare requests", 1.3),
             Target("dl curl", "wall", "curl", 1.3),
             Target("dl curl", "cpu_per_file", "abs", 0.3e-3, strict=True)),
        ),
        ListScenario(
            "million",
            f"a generated list of {long_list:,} distinct URLs of one 1 KiB file (/m/), {tiny_jobs} at a time: "
            f"files/s over the first {window:g} s, against a {short_list:,}-line list, and a re-run of the "
            f"complete {short_list:,}",
            long_list, short_list, window, tiny_jobs,
            (("async", 1200.0), ("curl", 5000.0)),
        ),
        ClusterScenario(
            "cluster",
            f"{tiny.describe()} from /files/ and a list of {short_list:,} URLs (/m/), {tiny_jobs} connections a "
            "process: one local async process against --cluster local:2",
            tiny, short_list, workers=2, jobs=tiny_jobs, shard_size=1000, speedup=1.4,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Run:
    wall: float
    user: float
    sys: float
    rc: int
    error: str | None = None
    server: str | None = None
    """What the fault server saw during the run, when it can tell."""
    files: int = 0
    """How many files the run fetched (for the CPU per file)."""

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def cpu_per_file(self) -> float | None:
        return self.cpu / self.files if self.files else None


@dataclass
class Outcome:
    """All the runs of one variant, or why it was skipped."""

    label: str
    argv: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    skipped: str | None = None

    @property
    def failures(self) -> list[Run]:
        return [run for run in self.runs if run.error]

    def median(self, metric: str) -> float | None:
        good = [getattr(run, metric) for run in self.runs if not run.error]
        good = [value for value in good if value is not None]
        return statistics.median(good) if good else None


def timed(argv: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run argv to its end; wall time, and the child's own rusage from os.wait4."""
    os.sync()  # write back the previous run's pages now rather than during this one
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=BENCH, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(wall, usage.ru_utime, usage.ru_stime, proc.returncode)
    if wall >= timeout:
        run.error = f"killed after {timeout:.0f} s"
    elif run.rc != 0:
        run.error = f"exit status {run.rc}"
    return run


def log_tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


@dataclass(frozen=True)
class CliFeatures:
    """What `downloader get --help` lists: its options and the engines `-m` accepts. A variant
    that needs an option or a mode still being built is skipped, with the reason, until it lands."""

    options: frozenset[str]
    modes: frozenset[str]


def downloader_features() -> CliFeatures | None:
    """The options and modes `downloader get --help` lists, or None while the CLI does not run."""
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1", TERM="dumb", PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([PYTHON, "-m", "downloader", "get", "--help"], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    choices = re.search(r"--mode\s+\[([\w|]+)\]", done.stdout)
    return CliFeatures(frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", done.stdout)),
                       frozenset(choices.group(1).split("|") if choices else ()))


SLOW_LOG = BENCH / "nginx" / "slow.log"
"""nginx's log of requests under /slow/: end time, duration and connection of each."""


def slow_traffic() -> str | None:
    """How busy the connections were during a run on /slow/: the share of connection time spent
    waiting between requests or after the last one (the scheduling a downloader does itself)."""
    try:
        rows = [line.split() for line in SLOW_LOG.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    if not rows:
        return None
    spans = [(float(end) - float(took), float(end), conn) for end, took, conn in rows]
    start, stop = min(s[0] for s in spans), max(s[1] for s in spans)
    connections = len({s[2] for s in spans})
    busy = sum(b - a for a, b, _ in spans)
    idle = 1 - busy / ((stop - start) * connections) if stop > start else 0.0
    return (f"{len(rows)} requests on {connections} connections, server busy {stop - start:.3f} s, "
            f"connections idle {idle:.1%} of it")


def run_scenario(scenario: Scenario, urls: dict[str, str], expected: Digests, runs: int,
                 cli: CliFeatures | None, mock: MockFaults | None, scratch: Path) -> list[Outcome]:
    """Every run of every variant, interleaved; `mock`, when the faults come from it, is restarted
    before each run of the flaky scenario."""
    work = BENCH / "work" / scenario.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = scratch / "out"
    names = scenario.data.names() if scenario.data else []
    job = Job([urls.get(scenario.location, "") + f"{scenario.data.folder}/{name}" for name in names],
              out, work, expected)
    child_env = dict(os.environ, PYTHONPATH=str(ROOT))
    outcomes = []
    first = names[:1]
    first_job = Job([urls.get("files", "") + f"{scenario.data.folder}/{name}" for name in first], out, work,
                    {name: expected[name] for name in first}) if first else job
    for variant in scenario.variants:
        outcome = Outcome(variant.label)
        outcome.skipped = skip_reason(variant, cli)
        if not outcome.skipped:
            outcome.argv = variant.build(first_job if variant.first_only else job)
        outcomes.append(outcome)
    active = [(variant, outcome) for variant, outcome in zip(scenario.variants, outcomes)
              if not outcome.skipped]
    if scenario.data is None and shutil.which("hyperfine"):  # a command without downloads
        for variant, outcome in active:
            outcome.runs = hyperfine(outcome.argv, scenario.runs or runs, child_env)
        return outcomes
    for index in range(scenario.runs or runs):
        for variant, outcome in active:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            log = work / f"{re.sub(r'[^A-Za-z0-9.]+', '_', variant.label)}.{index}.log"
            if mock and scenario.location == "flaky":
                mock.fresh()
            if scenario.location == "slow":
                SLOW_LOG.write_text("")  # nginx appends to the file it holds open
            run = timed(outcome.argv, log, scenario.timeout, child_env)
            run.files = 1 if variant.first_only else len(names)
            if mock and scenario.location == "flaky":
                run.server = mock.traffic()
            if scenario.location == "slow":
                run.server = slow_traffic()
            if scenario.data is not None and not run.error:
                run.error = verify(out, first_job.expected if variant.first_only else expected, variant.allowed)
            if run.error:
                run.error += f" [{log_tail(log)}]" if log.stat().st_size else ""
                print(f"  ! {scenario.name} / {variant.label} run {index + 1}: {run.error}", flush=True)
            outcome.runs.append(run)
    shutil.rmtree(out, ignore_errors=True)
    return outcomes


def skip_reason(variant: Variant, cli: CliFeatures | None) -> str | None:
    """Why `variant` cannot run here (None when it can): an option or mode the CLI does not list
    yet, a module the bench's Python lacks, a program that is not installed."""
    if variant.tool == "downloader":
        if cli is None:
            return "downloader CLI not available (python -m downloader get --help fails)"
        if variant.mode and variant.mode not in cli.modes:
            return mode_missing(variant.mode, cli)
        missing = [name for name in variant.needs if name not in cli.options]
        return f"`get --help` lists no {', '.join(missing)}" if missing else None
    if variant.tool == "python":
        missing = [name for name in variant.imports if not importable(name)]
        return f"{', '.join(missing)} not importable in {PYTHON} (make bench installs it)" if missing else None
    return None if shutil.which(variant.tool) else f"{variant.tool} is not installed"


def mode_missing(mode: str, cli: CliFeatures) -> str:
    return f"`get --help` lists no {mode} mode (-m {'|'.join(sorted(cli.modes)) or '?'})"


def importable(module: str) -> bool:
    """Whether the bench's Python (the venv's) can import `module`."""
    return subprocess.run([PYTHON, "-c", f"import {module}"], capture_output=True).returncode == 0


def hyperfine(argv: list[str], runs: int, env: dict[str, str]) -> list[Run]:
    """Time argv `runs` times with hyperfine (no shell, 2 warm-up runs)."""
    export = BENCH / "work" / "hyperfine.json"
    subprocess.run(["hyperfine", "-N", "--warmup", "2", "--runs", str(runs), "--style", "none",
                    "--export-json", str(export), shlex.join(argv)], cwd=BENCH, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    if not export.exists():
        return [Run(0.0, 0.0, 0.0, -1, "hyperfine failed")]
    (result,) = json.loads(export.read_text())["results"]
    codes = result.get("exit_codes") or [0] * len(result["times"])
    return [Run(wall, result["user"], result["system"], code, f"exit status {code}" if code else None)
            for wall, code in zip(result["times"], codes)]


# ---------------------------------------------------------------------------------------------
# Long lists (the million scenario)


LIST_PATH = "/m/"
"""Where nginx answers every path with ONE_FILE; a list line is BASE/m/NNNNNNN.bin (all of one length)."""
SIGINT_GRACE = 30.0
"""Seconds a run may take to stop after SIGINT before it is killed (and fails)."""


def url_list(base: str, count: int) -> Path:
    """.bench/lists/m-COUNT.txt: COUNT distinct URLs under /m/ of the server at `base`, written once
    (about a second for a million) and reused while nginx keeps its port (see lasting_port).

        url_list("http://127.0.0.1:8080", 3)  # .../m/0000000.bin, .../m/0000001.bin, .../m/0000002.bin
    """
    path = BENCH / "lists" / f"m-{count}.txt"
    prefix = base + LIST_PATH
    first = f"{prefix}{0:07d}.bin\n".encode()
    try:
        with open(path, "rb") as lines:
            if lines.readline() == first and path.stat().st_size == len(first) * count:
                return path
    except OSError:
        pass
    print(f"writing a list of {count:,} URLs to {path}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    block = 100_000
    with open(partial, "w", encoding="ascii") as out:
        for start in range(0, count, block):
            out.write("".join(f"{prefix}{index:07d}.bin\n" for index in range(start, min(count, start + block))))
    os.replace(partial, path)
    return path


def list_digests(count: int, one: tuple[int, str]) -> Digests:
    """What a complete folder of the `count`-line list holds: NNNNNNN.bin, each the one file."""
    return {f"{index:07d}.bin": one for index in range(count)}


def files_done(out: Path) -> int:
    """Files under their final name in `out`: not a .part, not a state file, not the index folder.
    Counting the folder (rather than a --report file) costs the downloader nothing and counts
    only what is really on disk under its name."""
    try:
        with os.scandir(out) as entries:
            return sum(1 for entry in entries
                       if not entry.name.startswith(".") and not entry.name.endswith((".part", ".part.state")))
    except FileNotFoundError:
        return 0


@dataclass
class ListRun:
    """One downloader run over a generated list: its rate over the window, its cost, how it ended."""

    what: str
    lines: int
    seconds: float = 0.0
    """When the rate was taken: the end of the window, or the exit when the run ended sooner."""
    files: int = 0
    """Files under their final name at that moment."""
    samples: dict[str, tuple[float, int]] = field(default_factory=dict)
    """(seconds, files) counted at "half" the window, at the "window" and at the "match" point."""
    done: int = 0
    """Files under their final name after the exit."""
    wall: float = 0.0
    cpu: float = 0.0
    maxrss: int = 0
    """Peak resident memory in bytes, as last read from /proc before the exit (see peak_rss)."""
    rc: int | None = None
    interrupted: bool = False
    """Whether it got SIGINT at the end of the window."""
    requests: int | None = None
    """Requests nginx answered during the run, when counted."""
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return self.files / self.seconds if self.seconds else None

    @property
    def late_rate(self) -> float | None:
        """Files a second over the second half of the window: a rate that sinks as the run goes on
        shows something growing with the files done."""
        half = self.samples.get("half")
        if half is None or self.seconds <= half[0]:
            return None
        return (self.files - half[1]) / (self.seconds - half[0])

    def rate_at(self, mark: str) -> float | None:
        """Files a second from the start to the count taken at `mark`, or over the window without it."""
        seconds, files = self.samples.get(mark, (self.seconds, self.files))
        return files / seconds if seconds else None

    @property
    def cpu_per_file(self) -> float | None:
        return self.cpu / self.done if self.done else None


def peak_rss(pid: int) -> int | None:
    """The high-water mark of a running process's resident memory (VmHWM), in bytes.

    Not ru_maxrss from wait4: Linux carries the memory of the process before its exec into that
    figure, and subprocess spawns with vfork, so every child would report the bench's own peak
    (about 120 MB once it has checked a 100,000-file folder)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def watch(argv: list[str], out: Path, log: Path, window: float | None, interrupt: bool, timeout: float,
          env: dict[str, str], what: str, lines: int, match: float | None = None) -> ListRun:
    """Run argv; count the files done in `out` at half `window`, at `match` seconds (when given) and
    at `window` (or at its exit, if sooner; no count without a window); then SIGINT it when
    `interrupt`, else let it finish within `timeout`. CPU comes from os.wait4 (so the process is
    polled with WNOHANG, never reaped by Popen), the peak RSS from /proc every 50 ms. A count is one
    scan of the folder (about 80 ms for 100,000 names), so only these few are taken."""
    run = ListRun(what, lines)
    marks = [] if window is None else [(window / 2, "half"), (window, "window")]
    marks = sorted(marks + ([(match, "match")] if match else []))
    os.sync()
    with open(log, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                cwd=BENCH, env=env)
    signalled = killed = None
    pid = 0
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.perf_counter() - start
            if pid:
                break
            run.maxrss = peak_rss(proc.pid) or run.maxrss
            while marks and now >= marks[0][0]:
                _, name = marks.pop(0)
                run.samples[name] = (time.perf_counter() - start, files_done(out))
                if name == "window" and interrupt:
                    proc.send_signal(signal.SIGINT)
                    signalled, run.interrupted = now, True
            overdue = (signalled is not None and now - signalled > SIGINT_GRACE) or now > timeout
            if overdue and killed is None:
                proc.kill()
                killed = now
            time.sleep(0.05)
    finally:
        if not pid:  # the bench itself was interrupted: leave nothing running
            proc.kill()
            os.waitpid(proc.pid, 0)
    run.wall = time.perf_counter() - start
    proc.returncode = run.rc = os.waitstatus_to_exitcode(status)
    run.cpu = usage.ru_utime + usage.ru_stime
    run.done = files_done(out)
    run.seconds, run.files = run.samples.get("window", (run.wall, run.done))
    if killed is not None:
        run.error = (f"still running {SIGINT_GRACE:.0f} s after SIGINT, killed" if signalled is not None
                     and killed - signalled > SIGINT_GRACE else f"not done after {timeout:.0f} s, killed")
    elif run.interrupted and run.rc != 130:
        run.error = f"exit status {run.rc} after SIGINT, not 130"
    elif not run.interrupted and run.rc != 0:
        run.error = f"exit status {run.rc}"
    if run.error and log.stat().st_size:
        run.error += f" [{log_tail(log)}]"
    return run


def run_list_scenario(scenario: ListScenario, nginx: "Nginx", cli: CliFeatures | None,
                      scratch: Path) -> tuple[list[dict], list[dict]]:
    """Every engine of `scenario` in turn (see ListScenario); the verdicts and the raw runs."""
    started = time.perf_counter()
    one = ensure_data(ONE_FILE)[ONE_FILE.names()[0]]
    long_list, short_list = url_list(nginx.base, scenario.long), url_list(nginx.base, scenario.short)
    work = BENCH / "work" / scenario.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    verdicts: list[dict] = []
    raw: list[dict] = []
    runs_by_mode: dict[str, list[ListRun]] = {}
    for mode, _ in scenario.modes:
        reason = ("downloader CLI not available (python -m downloader get --help fails)" if cli is None
                  else None if mode in cli.modes else mode_missing(mode, cli))
        if reason:
            print(f"  {mode}: SKIP {reason}", flush=True)
            verdicts += [{"variant": f"dl {mode}", "target": "all", "status": "SKIP", "detail": reason}]
            raw.append({"mode": mode, "skipped": reason})
            continue
        out = scratch / scenario.name / f"out-{mode}"

        def command(url_file: Path) -> list[str]:
            return [PYTHON, "-m", "downloader", "get", "-i", str(url_file), "-d", str(out), "-m", mode,
                    "-j", str(scenario.jobs), "--no-progress", "-q"]

        print(f"  {mode}: {scenario.short:,} URLs to the end", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        short_run = watch(command(short_list), out, work / f"{mode}.short.log", scenario.window, False,
                          4 * scenario.window, env, f"{scenario.short:,} URLs", scenario.short)
        if not short_run.error:
            short_run.error = verify(out, list_digests(scenario.short, one), DOWNLOADER_STATE)
        rerun_what = f"re-run {scenario.short:,}"
        if short_run.error:
            rerun = ListRun(rerun_what, scenario.short, error="no complete folder to re-run over")
        else:
            print(f"  {mode}: the same {scenario.short:,} URLs again, over the complete folder", flush=True)
            before = nginx.requests_served()
            rerun = watch(command(short_list), out, work / f"{mode}.rerun.log", None, False,
                          3 * scenario.window, env, rerun_what, scenario.short)
            rerun.requests = nginx.requests_served() - before - 1
            rerun.files = scenario.short  # every URL answered (skipped) by the end
        shutil.rmtree(out, ignore_errors=True)
        print(f"  {mode}: {scenario.long:,} URLs for {scenario.window:g} s, then SIGINT", flush=True)
        # when the short list ended inside the window, the long one is also counted at that moment:
        # both rates then cover the same start-up and ramp
        ended = short_run.seconds if short_run.seconds < scenario.window else None
        long_run = watch(command(long_list), out, work / f"{mode}.long.log", scenario.window, True,
                         scenario.window + SIGINT_GRACE, env, f"{scenario.long:,} URLs", scenario.long, match=ended)
        shutil.rmtree(out, ignore_errors=True)
        for run in (long_run, short_run, rerun):
            if run.error:
                print(f"  ! {scenario.name} / dl {mode} {run.what}: {run.error}", flush=True)
        runs_by_mode[mode] = [long_run, short_run, rerun]
        raw.append({"mode": mode, "runs": [dict(asdict(run), rate=run.rate, late_rate=run.late_rate)
                                           for run in (long_run, short_run, rerun)]})
    verdicts += print_list_report(scenario, runs_by_mode)
    print(f"({scenario.name} took {time.perf_counter() - started:.0f} s; each run once; files counted in the "
          f"output folder; rates from the start of the process)")
    return verdicts, raw


def list_verdicts(scenario: ListScenario, mode: str, files_per_s: float, long_run: ListRun,
                  short_run: ListRun, rerun: ListRun) -> list[tuple[str, str, str]]:
    """(target, PASS|FAIL|SKIP, detail) for one engine's three runs."""
    def judged(name: str, ok: bool | None, detail: str, *depends: ListRun) -> tuple[str, str, str]:
        broken = [run for run in depends if run.error]
        if broken:
            return name, "FAIL", f"{broken[0].what}: {broken[0].error}"
        return name, "SKIP" if ok is None else "PASS" if ok else "FAIL", detail

    window = f"first {scenario.window:g} s"
    rate, short_rate = long_run.rate or 0.0, short_run.rate or 0.0
    matched = long_run.rate_at("match") or 0.0
    spread = min(matched, short_rate) / max(matched, short_rate) if matched and short_rate else 0.0
    same_span = (f"both over their first {short_run.seconds:.1f} s" if "match" in long_run.samples
                 else f"both over the {window}")
    peak = max(run.maxrss for run in (long_run, short_run, rerun))
    skip_rate = scenario.short / rerun.wall if rerun.wall else 0.0
    return [
        judged("exits 130 on SIGINT", long_run.rc == 130 if long_run.interrupted else None,
               f"exit status {long_run.rc}" if long_run.interrupted else "ended before the window", long_run),
        judged(f"files/s over the {window} of the {scenario.long:,} list >= {files_per_s:g}",
               rate >= files_per_s, f"{rate:,.0f} files/s = {rate / files_per_s:.2f}x the target", long_run),
        judged(f"{scenario.long:,} vs {scenario.short:,} list rates within {scenario.rate_spread:.0%}",
               spread >= 1 - scenario.rate_spread,
               f"{matched:,.0f} vs {short_rate:,.0f} files/s {same_span} = "
               f"{matched / short_rate if short_rate else 0:.2f}x",
               long_run, short_run),
        judged(f"peak RSS < {scenario.max_rss / 1e6:g} MB", peak < scenario.max_rss,
               ", ".join(f"{run.what} {run.maxrss / 1e6:.1f} MB" for run in (long_run, short_run, rerun)
                         if run.maxrss)),
        judged(f"re-run skips >= {scenario.skip_rate:,.0f} URLs/s", skip_rate >= scenario.skip_rate,
               f"{skip_rate:,.0f} URLs/s = {skip_rate / scenario.skip_rate:.2f}x the target", rerun),
        judged("re-run sends no request", rerun.requests == 0, f"nginx answered {rerun.requests} requests", rerun),
    ]


def print_list_report(scenario: ListScenario, runs_by_mode: dict[str, list[ListRun]]) -> list[dict]:
    print(f"\n== {scenario.name}: {scenario.title}")
    print(f"{'tool':<10} {'run':<18} {'files/s':>9} {'2nd half':>9} {'files':>9} {'seconds':>8} "
          f"{'cpu':>8} {'cpu/file':>12} {'peak RSS':>9} {'exit':>5}")
    verdicts = []
    for mode, files_per_s in scenario.modes:
        if mode not in runs_by_mode:
            continue
        label = f"dl {mode}"
        for run in runs_by_mode[mode]:
            rate = "-" if run.rate is None else f"{run.rate:,.0f}"
            late = "-" if run.late_rate is None else f"{run.late_rate:,.0f}"
            rc = "-" if run.rc is None else str(run.rc)
            print(f"{label:<10} {run.what:<18} {rate:>9} {late:>9} {run.files:>9,} {run.seconds:>8.1f} "
                  f"{run.cpu:>8.1f} {fmt_metric('cpu_per_file', run.cpu_per_file):>12} "
                  f"{run.maxrss / 1e6:>6.1f} MB {rc:>5}")
        for target, status, detail in list_verdicts(scenario, mode, files_per_s, *runs_by_mode[mode]):
            print(f"  {label}: {target}: {status} ({detail})")
            verdicts.append({"variant": label, "target": target, "status": status, "detail": detail})
    return verdicts


# ---------------------------------------------------------------------------------------------
# The cluster scenario: one local async process against --cluster local:N


SHARD_TRIP = """\
import json, statistics, sys, time
from downloader.cluster import ShardJobs, ShardResults, connect
from downloader.core.results import Result
from downloader.core.sources import Job

base, size = sys.argv[1], int(sys.argv[2])
jobs = [Job(url=f"{base}/m/{i:07d}.bin", line=i + 1, target=f"{i:07d}.bin", host="127.0.0.1") for i in range(size)]


def results_of(shard):
    return ShardResults(Result(url=j.url, status="ok", path="/out/" + j.target, http_status=200, bytes=1024,
                               size=1024, attempts=1, seconds=0.004, line=j.line) for j in shard.jobs())


with connect("local:2", timeout=30) as client:
    def trip(fn, *args):
        start = time.perf_counter()
        client.submit(fn, *args, pure=False).result()
        return time.perf_counter() - start
    for _ in range(5):
        trip(results_of, ShardJobs(jobs))
    empty = statistics.median(trip(int) for _ in range(100))
    workers_before, client_before = client.run(time.process_time), time.process_time()
    shard = statistics.median(trip(results_of, ShardJobs(jobs)) for _ in range(50))
    workers_cpu = sum(client.run(time.process_time).values()) - sum(workers_before.values())
    client_cpu = time.process_time() - client_before
    start = time.perf_counter()
    results_of(ShardJobs(jobs))
    local = time.perf_counter() - start
print(json.dumps({"empty_s": empty, "shard_s": shard, "build_s": local, "size": size,
                  "client_cpu_s": client_cpu / 50, "workers_cpu_s": workers_cpu / 50}))
"""
"""Times a task's round trip through a LocalCluster's scheduler: an empty one, and one the size of
a shard (its Jobs in, a Result each out, built on the worker as run_shard builds them)."""


SPIN = "sum(i * i for i in range(6_000_000))"
"""A second or so of pure-Python work, for `parallel_ceiling`."""


def parallel_ceiling() -> float:
    """How much more work two CPU-bound Python processes do at once than one alone, here and now:
    2 x (time alone) / (time of the pair). 2.0 on two idle cores; less when the cores are shared
    with other work (or are two threads of one core). No split of a batch over two processes can
    beat it."""
    def timed_spin(count: int) -> float:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - start
    alone = statistics.median(timed_spin(1) for _ in range(3))
    pair = statistics.median(timed_spin(2) for _ in range(3))
    return 2 * alone / pair


@dataclass
class ClusterRun:
    """One run of the cluster scenario: a batch through one engine process or through a cluster."""

    batch: str
    how: str
    files: int
    wall: float = 0.0
    rc: int | None = None
    client_rss: int = 0
    """Peak resident memory of the client process alone (VmHWM), in bytes."""
    client_cpu: float = 0.0
    """CPU seconds of the client process: the run's total (wait4) less its workers'."""
    workers_cpu: float = 0.0
    """CPU seconds of the processes the client started (the Dask workers), as last read from /proc."""
    nginx_cpu: float = 0.0
    other_cpu: float = 0.0
    """CPU seconds the rest of the machine spent meanwhile (other users of the two cores): the
    machine's busy time from /proc/stat, less the run's and nginx's."""
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.files / self.wall if self.wall else 0.0


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a live process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (one scan of /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def measured(argv: list[str], log: Path, env: dict[str, str], timeout: float, server: list[int]) -> ClusterRun:
    """Run argv to its end; wall time, the client's peak RSS and CPU, its children's CPU (sampled
    from /proc every 0.1 s: a worker's last tenth of a second counts as the client's), and the
    CPU the `server` processes spent meanwhile."""
    run = ClusterRun("", "", 0)
    os.sync()
    server_before = sum(cpu_seconds(pid) or 0.0 for pid in server)
    busy_before = machine_busy()
    children: dict[int, float] = {}
    with open(log, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, cwd=BENCH,
                                env=env)
    pid = 0
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            run.client_rss = peak_rss(proc.pid) or run.client_rss
            for child in descendants(proc.pid):
                children[child] = cpu_seconds(child) or children.get(child, 0.0)
            if time.perf_counter() - start > timeout:
                proc.kill()
                run.error = f"not done after {timeout:.0f} s, killed"
            time.sleep(0.1)
    finally:
        if not pid:
            proc.kill()
            os.waitpid(proc.pid, 0)
    run.wall = time.perf_counter() - start
    proc.returncode = run.rc = os.waitstatus_to_exitcode(status)
    run.workers_cpu = sum(children.values())
    run.client_cpu = max(0.0, usage.ru_utime + usage.ru_stime - run.workers_cpu)
    run.nginx_cpu = sum(cpu_seconds(pid) or 0.0 for pid in server) - server_before
    run.other_cpu = max(0.0, machine_busy() - busy_before - run.nginx_cpu - run.client_cpu - run.workers_cpu)
    if run.rc != 0 and not run.error:
        run.error = f"exit status {run.rc}"
    if run.error and log.stat().st_size:
        run.error += f" [{log_tail(log)}]"
    return run


def run_cluster_scenario(scenario: ClusterScenario, nginx: "Nginx", cli: CliFeatures | None, runs: int,
                         scratch: Path) -> tuple[list[dict], dict]:
    """Each batch through one local async process and through --cluster local:N, alternately; then the
    shard round trip on its own. Returns the verdicts and the raw numbers."""
    started = time.perf_counter()
    if cli is None or "--cluster" not in cli.options:
        reason = "downloader CLI not available" if cli is None else "`get --help` lists no --cluster"
        print(f"  SKIP {reason}")
        return [{"variant": "cluster", "target": "all", "status": "SKIP", "detail": reason}], {"skipped": reason}
    if not importable("distributed"):
        reason = f"distributed is not importable in {PYTHON} (pip install -e '.[cluster]')"
        print(f"  SKIP {reason}")
        return [{"variant": "cluster", "target": "all", "status": "SKIP", "detail": reason}], {"skipped": reason}
    tiny = ensure_data(scenario.tiny)
    one = ensure_data(ONE_FILE)[ONE_FILE.names()[0]]
    work = BENCH / "work" / scenario.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiny_list = work / "tiny.txt"
    tiny_list.write_text("".join(f"{nginx.base}/files/{scenario.tiny.folder}/{name}\n"
                                 for name in scenario.tiny.names()))
    batches = [(scenario.tiny.describe(), tiny_list, tiny, runs),
               (f"{scenario.long:,} URLs", url_list(nginx.base, scenario.long), list_digests(scenario.long, one), 1)]
    ways = [("local async", []),
            (f"local:{scenario.workers}", ["--cluster", f"local:{scenario.workers}", "--shard-size",
                                           str(scenario.shard_size)])]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = [nginx.proc.pid, *descendants(nginx.proc.pid)]
    out = scratch / scenario.name / "out"
    table: list[ClusterRun] = []
    for batch, listing, expected, repeat in batches:
        for index in range(repeat):
            for how, extra in ways:
                shutil.rmtree(out, ignore_errors=True)
                print(f"  {batch}, {how}, run {index + 1} of {repeat}", flush=True)
                argv = [PYTHON, "-m", "downloader", "get", "-i", str(listing), "-d", str(out), "-m", "async",
                        "-j", str(scenario.jobs), "--no-progress", "-q", *extra]
                run = measured(argv, work / f"{re.sub(r'[^A-Za-z0-9]+', '_', batch + how)}.{index}.log", env,
                               600.0, server)
                run.batch, run.how, run.files = batch, how, len(expected)
                if not run.error:
                    run.error = verify(out, expected, DOWNLOADER_STATE)
                if run.error:
                    print(f"  ! {scenario.name} / {batch} / {how}: {run.error}", flush=True)
                table.append(run)
    shutil.rmtree(out, ignore_errors=True)
    trip = subprocess.run([PYTHON, "-c", SHARD_TRIP, nginx.base, str(scenario.shard_size)], capture_output=True,
                          text=True, env=env, cwd=BENCH, timeout=300)
    shard_trip = json.loads(trip.stdout) if trip.returncode == 0 else {"error": trip.stderr[-500:]}
    shard_trip["parallel_ceiling"] = parallel_ceiling()
    verdicts = print_cluster_report(scenario, table, shard_trip)
    print(f"({scenario.name} took {time.perf_counter() - started:.0f} s; the {scenario.long:,}-URL list once, the "
          f"{scenario.tiny.describe()} batch {runs} times (medians); CPU from /proc and wait4)")
    return verdicts, {"runs": [dict(asdict(run), rate=run.rate) for run in table], "shard_trip": shard_trip}


def print_cluster_report(scenario: ClusterScenario, table: list[ClusterRun], shard_trip: dict) -> list[dict]:
    print(f"\n== {scenario.name}: {scenario.title}")
    print(f"{'batch':<16} {'how':<12} {'wall s':>7} {'files/s':>8} {'client RSS':>11} {'client cpu':>11} "
          f"{'workers cpu':>12} {'nginx cpu':>10} {'others cpu':>11} {'runs ok':>8}")
    medians: dict[tuple[str, str], ClusterRun] = {}
    for batch, how in dict.fromkeys((run.batch, run.how) for run in table):
        runs = [run for run in table if (run.batch, run.how) == (batch, how)]
        good = [run for run in runs if not run.error] or runs
        middle = sorted(good, key=lambda run: run.wall)[len(good) // 2]
        medians[batch, how] = middle
        ok = f"{sum(not run.error for run in runs)}/{len(runs)}"
        print(f"{batch:<16} {how:<12} {middle.wall:>7.2f} {middle.rate:>8,.0f} {middle.client_rss / 1e6:>8.1f} MB "
              f"{middle.client_cpu:>10.2f}s {middle.workers_cpu:>11.2f}s {middle.nginx_cpu:>9.2f}s "
              f"{middle.other_cpu:>10.2f}s {ok:>8}")
    if "shard_s" in shard_trip:
        per_url = shard_trip["shard_s"] / shard_trip["size"]
        print(f"shard round trip through the scheduler (local:2): an empty task "
              f"{shard_trip['empty_s'] * 1000:.1f} ms; "
              f"a {shard_trip['size']:,}-URL shard (Jobs in, Results out) {shard_trip['shard_s'] * 1000:.1f} ms, "
              f"{per_url * 1e6:.1f} us a URL (building its Results alone: {shard_trip['build_s'] * 1000:.1f} ms); "
              f"CPU a shard: {shard_trip['client_cpu_s'] * 1000:.1f} ms in the client and its scheduler, "
              f"{shard_trip['workers_cpu_s'] * 1000:.1f} ms on the worker")
    else:
        print(f"shard round trip: not measured ({shard_trip.get('error', '?')})")
    print(f"parallel ceiling: two CPU-bound Python processes at once did {shard_trip['parallel_ceiling']:.2f}x the "
          "work of one, on this machine at the end of the scenario (2.00x on two idle cores)")
    for batch in dict.fromkeys(run.batch for run in table):
        rows = [(how, run) for (b, how), run in medians.items() if b == batch and run.files]
        print(f"CPU a file, {batch}: " + "; ".join(
            f"{how} {(run.client_cpu + run.workers_cpu) / run.files * 1000:.3f} ms "
            f"(+ nginx {run.nginx_cpu / run.files * 1000:.3f})" for how, run in rows))

    def judged(name: str, ok: bool | None, detail: str, *depends: ClusterRun) -> dict:
        broken = [run for run in depends if run.error]
        status = "FAIL" if broken else "SKIP" if ok is None else "PASS" if ok else "FAIL"
        detail = f"{broken[0].batch} {broken[0].how}: {broken[0].error}" if broken else detail
        print(f"  {name}: {status} ({detail})")
        return {"variant": "cluster", "target": name, "status": status, "detail": detail}

    long_batch = f"{scenario.long:,} URLs"
    local, cluster = medians.get((long_batch, "local async")), medians.get((long_batch, f"local:{scenario.workers}"))
    verdicts = []
    if local and cluster:
        ratio = cluster.rate / local.rate if local.rate else 0.0
        verdicts.append(judged(f"local:{scenario.workers} files/s on the {long_batch} list >= {scenario.speedup:g}x "
                               "one local async process", ratio >= scenario.speedup,
                               f"{cluster.rate:,.0f} vs {local.rate:,.0f} files/s = {ratio:.2f}x", local, cluster))
    clusters = [run for run in table if run.how != "local async"]
    peak = max((run.client_rss for run in clusters), default=0)
    verdicts.append(judged(f"client peak RSS < {scenario.max_rss / 1e6:g} MB",
                           peak < scenario.max_rss if peak else None,
                           ", ".join(f"{run.batch} {run.client_rss / 1e6:.1f} MB" for run in clusters), *clusters))
    verdicts.append(judged("every run complete and correct", all(not run.error for run in table),
                           f"{sum(not run.error for run in table)}/{len(table)} runs", *table))
    return verdicts


# ---------------------------------------------------------------------------------------------
# Report


def verdict(target: Target, scenario: Scenario, outcomes: dict[str, Outcome]) -> tuple[str, str]:
    """("PASS"|"FAIL"|"SKIP", detail) for one target."""
    outcome = outcomes[target.variant]
    if outcome.skipped:
        return "SKIP", outcome.skipped
    if outcome.failures:
        return "FAIL", f"{len(outcome.failures)}/{len(outcome.runs)} runs failed: {outcome.failures[0].error}"
    value = outcome.median(target.metric)
    if target.ref.startswith("limit+"):
        startup = outcomes[target.ref[6:]]
        if startup.skipped or startup.failures or value is None:
            return "SKIP", f"no clean runs of {target.ref[6:]}"
        bound = target.factor * scenario.limit + startup.median("wall")
        ok = value < bound if target.strict else value <= bound
        return ("PASS" if ok else "FAIL"), (f"{fmt_metric(target.metric, value)} vs {fmt_metric(target.metric, bound)}"
                                            f" ({target.factor:g} x {scenario.limit:.3f} s + "
                                            f"{startup.median('wall'):.3f} s start-up)")
    if target.ref == "limit":
        ref = scenario.limit
    elif target.ref == "abs":
        ref = 1.0
    else:
        other = best_peer(scenario, outcomes) if target.ref == "best peer" else outcomes[target.ref]
        ref = None if other is None or other.skipped or other.failures else other.median(target.metric)
    if ref is None or value is None:
        return "SKIP", f"no clean runs of {target.ref}"
    bound = target.factor * ref
    ok = value < bound if target.strict else value <= bound
    detail = f"{fmt_metric(target.metric, value)} vs {fmt_metric(target.metric, bound)}"
    if target.ref != "abs":
        detail += f", {value / ref:.2f}x {target.ref}" if ref else ""
    return ("PASS" if ok else "FAIL"), detail


def best_peer(scenario: Scenario, outcomes: dict[str, Outcome]) -> Outcome | None:
    """The peer with the lowest median wall time among those whose every run was correct."""
    peers = [outcomes[v.label] for v in scenario.variants if v.is_peer]
    clean = [peer for peer in peers if peer.runs and not peer.skipped and not peer.failures]
    return min(clean, key=lambda peer: peer.median("wall"), default=None)


def print_report(scenario: Scenario, outcomes: list[Outcome]) -> list[dict]:
    by_label = {outcome.label: outcome for outcome in outcomes}
    best = best_peer(scenario, by_label)
    limit = f"; theoretical limit {scenario.limit:.2f} s" if scenario.limit else ""
    per_file = scenario.data is not None and scenario.data.count >= MANY_FILES
    print(f"\n== {scenario.name}: {scenario.title}{limit}")
    header = (f"{'tool':<20} {'wall med':>9} {'cpu med':>9}{f' {CPU_PER_FILE:>12}' if per_file else ''} "
              f"{'runs ok':>8} {'vs best peer':>13} {'vs limit':>9}")
    print(header + "  targets")
    verdicts = []
    for variant in scenario.variants:
        outcome = by_label[variant.label]
        if outcome.skipped:
            print(f"{variant.label:<20} {'SKIP':>9}  {outcome.skipped}")
            continue
        wall, cpu = outcome.median("wall"), outcome.median("cpu")
        ok_runs = f"{len(outcome.runs) - len(outcome.failures)}/{len(outcome.runs)}"
        vs_peer = f"{wall / best.median('wall'):.2f}x" if wall and best else "-"
        vs_limit = f"{wall / scenario.limit:.2f}x" if wall and scenario.limit else "-"
        marks = []
        for target in scenario.targets:
            if target.variant == variant.label:
                status, detail = verdict(target, scenario, by_label)
                marks.append(f"{target.describe()}: {status} ({detail})")
                verdicts.append({"variant": variant.label, "target": target.describe(), "status": status,
                                 "detail": detail})
        cpu_file = f" {fmt_metric('cpu_per_file', outcome.median('cpu_per_file')):>12}" if per_file else ""
        print(f"{variant.label:<20} {fmt_seconds(wall):>9} {fmt_seconds(cpu):>9}{cpu_file} {ok_runs:>8} "
              f"{vs_peer:>13} {vs_limit:>9}  {'; '.join(marks)}")
    if best:
        print(f"(best peer: {best.label})")
    for outcome in outcomes:
        if outcome.runs and outcome.runs[0].server:
            print(f"  {outcome.label}, run 1: {outcome.runs[0].server}")
    return verdicts


MANY_FILES = 100
"""From this many files a scenario's table has a CPU-per-file column."""
CPU_PER_FILE = "cpu/file med"


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def human_size(size: int) -> str:
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the downloader against curl, aria2c, "
                                                 "wget2 and parfive on a local nginx.")
    parser.add_argument("--quick", action="store_true", help="1 run each, smaller files (smoke check)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this scenario (repeatable, or comma-separated)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per tool (default 5, quick 1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every raw run here")
    parser.add_argument("--faults", choices=("auto", "mock", "nginx"), default="auto",
                        help="where the 503s come from: the project's mock server (deterministic, "
                             "restarted before each run), nginx (split_clients on $request_id, random) "
                             "or auto: the mock server when downloader.mockserver imports")
    parser.add_argument("--scratch", type=Path, default=BENCH, metavar="DIR",
                        help="folder the downloads are written under (default .bench); a tmpfs such as "
                             "/dev/shm keeps a busy shared disk out of the CPU per file")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 5)
    args.scratch = args.scratch.resolve()

    chosen = scenarios(args.quick)
    if args.only:
        wanted = {name for item in args.only for name in item.split(",") if name}
        unknown = wanted - {scenario.name for scenario in chosen}
        if unknown:
            parser.error(f"unknown scenario {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(scenario.name for scenario in chosen)}")
        chosen = [scenario for scenario in chosen if scenario.name in wanted]

    ensure_tools()
    byte_compile()
    BENCH.mkdir(exist_ok=True)
    cli = downloader_features()
    print(f"downloader CLI: {'found' if cli is not None else 'NOT AVAILABLE, its runs are skipped'}"
          + (f", modes {', '.join(sorted(cli.modes))}" if cli else ""))
    every_set = {s.name: s.data for s in scenarios(args.quick)}
    small, medium = every_set["many-small"], every_set["segmented-slow"]  # the server checks use them
    needed = {small, medium} | {scenario.data for scenario in chosen if scenario.data}
    digests = {data: ensure_data(data) for data in sorted(needed, key=lambda d: d.total)}
    use_mock = args.faults == "mock" or (args.faults == "auto" and mock_server_available())

    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": PYTHON, "runs": runs, "quick": args.quick},
              "scratch": str(args.scratch),
              "server": {"delay_s": DELAY, "slow_rate_bytes_s": SLOW_RATE, "fail_rate": FAIL_RATE,
                         "faults": "mock" if use_mock else "nginx"},
              "checks": [], "scenarios": []}
    all_good = True
    with ExitStack() as servers:
        nginx = servers.enter_context(Nginx(BENCH / "data"))
        urls = {location: f"{nginx.base}/{location}/" for location in ("delay", "files", "slow", "flaky")}
        print(f"nginx on {nginx.base} (config {nginx.dir / 'nginx.conf'})")
        mock = servers.enter_context(MockFaults(BENCH / "data")) if use_mock else None
        if mock:
            urls["flaky"] = f"{mock.base}/"
            print(f"503s from the project's mock server on {mock.base}, restarted before every run")
        else:
            print("503s from nginx (split_clients on $request_id: random, not the same for every tool)")
        checks = check_servers(urls, f"{small.folder}/{small.names()[0]}",
                               f"{medium.folder}/{medium.names()[0]}", medium.size)
        for check in checks:
            print(f"  check {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.measured}")
            all_good &= check.ok
        report["checks"] = [asdict(check) for check in checks]
        for scenario in chosen:
            print(f"\nrunning {scenario.name} ...", flush=True)
            many_files = isinstance(scenario, (ListScenario, ClusterScenario)) or \
                scenario.data and scenario.data.count >= MANY_FILES
            file_costs = {"before": print_file_cost(args.scratch, "before")} if many_files else {}
            if isinstance(scenario, ClusterScenario):
                verdicts, raw = run_cluster_scenario(scenario, nginx, cli, runs, args.scratch)
                file_costs["after"] = print_file_cost(args.scratch, "after")
                all_good &= all(v["status"] != "FAIL" for v in verdicts)
                report["scenarios"].append({"name": scenario.name, "title": scenario.title, "verdicts": verdicts,
                                            "raw": raw, "file_cost": file_costs})
                continue
            if isinstance(scenario, ListScenario):
                verdicts, raw = run_list_scenario(scenario, nginx, cli, args.scratch)
                file_costs["after"] = print_file_cost(args.scratch, "after")
                all_good &= all(v["status"] != "FAIL" for v in verdicts)
                report["scenarios"].append({"name": scenario.name, "title": scenario.title,
                                            "verdicts": verdicts, "modes": raw, "file_cost": file_costs})
                continue
            outcomes = run_scenario(scenario, urls, digests.get(scenario.data, {}), runs, cli, mock, args.scratch)
            verdicts = print_report(scenario, outcomes)
            if many_files:
                file_costs["after"] = print_file_cost(args.scratch, "after")
            all_good &= all(v["status"] != "FAIL" for v in verdicts)
            all_good &= not any(outcome.failures for outcome in outcomes)
            report["scenarios"].append({
                "name": scenario.name, "title": scenario.title, "limit_s": scenario.limit,
                "verdicts": verdicts, "file_cost": file_costs,
                "variants": [{"label": o.label, "argv": o.argv, "skipped": o.skipped,
                              "median_wall_s": o.median("wall"), "median_cpu_s": o.median("cpu"),
                              "median_cpu_per_file_s": o.median("cpu_per_file"),
                              "runs": [dict(asdict(run), cpu=run.cpu, cpu_per_file=run.cpu_per_file)
                                       for run in o.runs]}
                             for o in outcomes]})
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nraw runs written to {args.json}")
    return 0 if all_good else 1


if __name__ == "__main__":
    sys.exit(main())
