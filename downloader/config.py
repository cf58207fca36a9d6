"""Frozen options, and the parsing of loose user input into them.

Loose input ("2M", "30s", 5, None) is turned into full types once, at the edge (the CLI or the
public API); everything past that edge sees only `Options`::

    >>> parse_size("8M")
    8388608
    >>> parse_duration("1.5m")
    90.0
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UsageError

MODES = ("async", "thread", "sequential", "curl")
"""The engines a user can pick with --mode."""


def default_mode() -> str:
    """The engine used when none is asked for: "curl" when pycurl is installed (the `curl` extra),
    which measured fastest on every benchmark but one big file (where it is level with threads),
    else "async", which needs nothing beyond the base install. Both behave the same; only the
    speed differs. (A cluster's workers run "async" unless told: they may not have pycurl.)"""
    from importlib.util import find_spec
    try:
        return "curl" if find_spec("pycurl") is not None else "async"
    except (ImportError, ValueError):
        return "async"


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 1024 ** 2, "MB": 1000 ** 2,
               "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1000 ** 3, "GIB": 1024 ** 3}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int | float, what: str = "size") -> int:
    """Bytes from `4096`, `"500K"`, `"2M"`, `"1.5G"` (K/M/G are powers of 1024; KB/MB/GB of 1000)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = _NUMBER.match(str(value))
        if not match or match.group(2).upper() not in _SIZE_UNITS:
            raise UsageError(f"{what}: {value!r} is not a size (examples: 4096, 500K, 2M, 1G)")
        number, unit = float(match.group(1)), match.group(2).upper()
    result = int(number * _SIZE_UNITS[unit])
    if result < 0:
        raise UsageError(f"{what}: {value!r} must not be negative")
    return result


def parse_rate(value: str | int | float | None, what: str = "--max-speed") -> int | None:
    """Bytes per second from `"2M"`, `"500K"`, `"1M/s"`; None means no limit.

        >>> parse_rate("0") is None
        True

    Zero in any spelling (`0`, `"0"`, `"0K"`, `""`) means no limit too, as `--max-speed 0` does in
    aria2 and `--limit-rate=0` in wget: a cap of nothing per second would never finish."""
    if value is None or value == "" or value == 0:
        return None
    text = str(value).strip()
    if text.lower().endswith("/s"):
        text = text[:-2]
    rate = parse_size(text, what)
    return rate or None


def parse_duration(value: str | int | float, what: str = "duration") -> float:
    """Seconds from `30`, `"30s"`, `"50ms"`, `"1.5m"`, `"2h"`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _NUMBER.match(str(value))
        if not match or match.group(2).lower() not in _DURATION_UNITS:
            raise UsageError(f"{what}: {value!r} is not a duration (examples: 30, 30s, 50ms, 2m)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds < 0:
        raise UsageError(f"{what}: {value!r} must not be negative")
    return seconds


CLUSTER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
"""The transports a Dask scheduler address may name (`tcp://` is the usual one)."""
_LOCAL_CLUSTER = re.compile(r"^local(?::(\d+))?$")


def parse_cluster(value: str | None) -> str | None:
    """Where `--cluster` runs the batch, checked: `"local"`, `"local:N"` (N worker processes on this
    machine) or a Dask scheduler address; None (or an empty string) runs it here, without Dask.

        >>> parse_cluster("sched.example.org:8786")
        'tcp://sched.example.org:8786'

    A bare `HOST:PORT` means `tcp://` (as `dask worker HOST:PORT` reads it); the port defaults to
    Dask's 8786. Only the form is checked here: whether a scheduler answers is known on connecting."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    local = _LOCAL_CLUSTER.match(text)
    if local or text.startswith("local:"):
        if not local or (local.group(1) is not None and int(local.group(1)) < 1):
            raise UsageError(f"--cluster: {value!r}: local:N takes a number of workers of at least 1 "
                             "(local:1, local:4)")
        return text
    address = text if "://" in text else f"tcp://{text}"
    problem = None
    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in CLUSTER_SCHEMES:
            problem = f"{parts.scheme}:// is not a Dask transport ({', '.join(CLUSTER_SCHEMES)})"
        elif not parts.hostname and parts.scheme != "inproc" or parts.path.strip("/") or parts.query \
                or any(c.isspace() for c in text):
            problem = "not HOST:PORT"
    if problem:
        raise UsageError(f"--cluster: {value!r} is not local, local:N or a scheduler address such as "
                         f"tcp://HOST:8786 ({problem})")
    return address if parts.port or parts.scheme == "inproc" else f"{address.rstrip('/')}:8786"


def parse_header(text: str) -> tuple[str, str]:
    """`("Name", "value")` from `"Name: value"`; a line without a colon or a name is a usage error."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n"):
        raise UsageError(f"header {text!r} is not 'Name: value'")
    if "\n" in value or "\r" in value:
        raise UsageError(f"header {name!r} has a line break in its value")
    return name, value.strip()


@dataclass(frozen=True)
class Options:
    """Everything a batch needs to know, frozen. Build it with `Options.build(...)` from loose input."""

    dest: Path = Path(".")
    """Output folder; created when missing. Nothing is ever written outside it."""
    mode: str = "async"
    """Engine: "async" (aiohttp), "thread" (a pool of requests sessions), "sequential" (one of
    them), or "curl" (libcurl's multi interface through pycurl)."""
    jobs: int = 16
    """Connections in flight at once across the batch, segments included."""
    per_host: int | None = None
    """Connections to one host at once; None means no cap beyond `jobs`."""
    retries: int = 5
    """Retries after the first try, per file (and per segment)."""
    timeout: float = 30.0
    """Connect timeout, and stall timeout: no byte for this long fails the try. Never a cap on a
    whole transfer."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers for every URL (a URL file can add its own)."""
    overwrite: bool = False
    """Fetch again files that already exist (by default a complete file is skipped)."""
    check_integrity: bool = False
    """Hash every complete file the index has a sha256 for (as well as those with a digest given)
    and fetch again those that differ, as aria2's option of that name does."""
    segments: int = 4
    """Connections per file, for files that accept ranges and are large enough."""
    min_segment_size: int = 8 * 1024 * 1024
    """Each segment gets at least this many bytes, so small files stay one stream."""
    max_speed: int | None = None
    """Bytes per second for the whole batch, shared by every connection; None is unlimited."""
    checksum: str | None = None
    """"ALGO=HEX" for a single URL given on the command line."""
    sums_file: Path | None = None
    """A sha256sum/md5sum-style file; each download is checked against the line for its name."""
    manifest: Path | None = None
    """Write "HEX  NAME" sha256 lines for every file of the batch present at the end."""
    chunk_size: int = 256 * 1024
    """Bytes read from the network per step; measured in benchmarks/ so Python overhead does not show."""
    max_redirects: int = 10
    """Redirect hops followed before giving up."""
    retry_base: float = 0.25
    """First backoff step in seconds; the n-th retry waits up to base * 2**n (full jitter)."""
    retry_cap: float = 30.0
    """Longest wait between tries, Retry-After included."""
    post: tuple[str, ...] = ()
    """Post-processing specs run on each completed file ("sha256", "fib:27")."""
    post_executor: str = "process"
    """Where post tasks run: "process", "thread" or "inline"."""
    post_workers: int | None = None
    """Post-processing workers; None means the CPU count."""
    seed: int | None = None
    """Seed for the retry jitter, for reproducible runs; None draws one."""
    ca_certificate: Path | None = None
    """A PEM bundle of the certificate authorities to trust, instead of the default store (which
    core.tls finds: the environment's variables, else the system's)."""
    insecure: bool = False
    """Do not verify servers' certificates (curl's -k): anyone on the path can pose as the server."""
    certificate: Path | None = None
    """A client certificate (PEM) for servers that ask for one; its key in `private_key`, or in
    this file too."""
    private_key: Path | None = None
    """The private key (PEM, not passphrase-protected) of `certificate`."""
    cluster: str | None = None
    """Where the batch runs: None here; "local" or "local:N" on a Dask LocalCluster of N worker
    processes started for the batch; or the address of a running Dask scheduler
    ("tcp://sched:8786"). On a cluster, `jobs`, `per_host` and `post_workers` count per worker
    (each runs the `mode` engine on its shards), and `max_speed` is split evenly over them."""
    shard_size: int = 1000
    """URLs per shard, the unit of work a cluster worker takes (with `cluster` only): big enough
    that a shard's trip through the Dask scheduler costs nothing next to its downloads, small
    enough that the tail of a batch spreads over every worker."""

    @classmethod
    def build(cls, dest: str | os.PathLike = ".", *, mode: str | None = None, jobs: int = 16,
              per_host: int | None = None, retries: int = 5, timeout: str | float = 30.0,
              headers=(), overwrite: bool = False, check_integrity: bool = False, segments: int = 4,
              min_segment_size: str | int = "8M", max_speed: str | int | None = None,
              checksum: str | None = None, sums_file=None, manifest=None,
              chunk_size: str | int = 256 * 1024, post=(), post_executor: str = "process",
              post_workers: int | None = None, seed: int | None = None, retry_base: float = 0.25,
              retry_cap: float = 30.0, max_redirects: int = 10, ca_certificate=None, insecure: bool = False,
              certificate=None, private_key=None, cluster: str | None = None,
              shard_size: int = 1000) -> "Options":
        """Options from loose input, with every value checked; raises UsageError naming the option.
        With no `mode`, the default engine (`default_mode`)."""
        if mode is None:
            mode = "async" if cluster else default_mode()
        if mode not in MODES:
            raise UsageError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
        for name, value, low in (("--jobs", jobs, 1), ("--retries", retries, 0), ("--segments", segments, 1),
                                 ("max_redirects", max_redirects, 0), ("--shard-size", shard_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"{name}: {value!r} must be a whole number of at least {low}")
        if per_host is not None and (not isinstance(per_host, int) or per_host < 1):
            raise UsageError(f"--per-host: {per_host!r} must be a whole number of at least 1")
        if post_executor not in ("process", "thread", "inline"):
            raise UsageError(f"--post-executor: {post_executor!r} is not one of process, thread, inline")
        if post_workers is not None and (not isinstance(post_workers, int) or post_workers < 1):
            raise UsageError(f"--post-workers: {post_workers!r} must be at least 1")
        parsed_headers = tuple(parse_header(h) if isinstance(h, str) else (str(h[0]), str(h[1]))
                               for h in headers)
        timeout_s = parse_duration(timeout, "--timeout")
        if timeout_s <= 0:
            raise UsageError("--timeout: must be more than 0")
        chunk = parse_size(chunk_size, "chunk size")
        if chunk < 1024:
            raise UsageError("chunk size: must be at least 1K")
        if private_key is not None and certificate is None:
            raise UsageError("--private-key goes with --certificate FILE")
        if mode == "sequential":
            jobs = 1
        return cls(dest=Path(dest), mode=mode, jobs=jobs, per_host=per_host, retries=retries,
                   timeout=timeout_s, headers=parsed_headers, overwrite=overwrite,
                   check_integrity=bool(check_integrity), segments=segments,
                   min_segment_size=max(1, parse_size(min_segment_size, "--min-segment-size")),
                   max_speed=parse_rate(max_speed), checksum=checksum,
                   sums_file=Path(sums_file) if sums_file else None,
                   manifest=Path(manifest) if manifest else None, chunk_size=chunk,
                   post=tuple(post), post_executor=post_executor, post_workers=post_workers,
                   seed=seed, retry_base=parse_duration(retry_base, "retry_base"),
                   retry_cap=parse_duration(retry_cap, "retry_cap"), max_redirects=max_redirects,
                   ca_certificate=_path(ca_certificate), insecure=bool(insecure),
                   certificate=_path(certificate), private_key=_path(private_key),
                   cluster=parse_cluster(cluster), shard_size=shard_size)


def _path(value: str | os.PathLike | None) -> Path | None:
    """A file option: None, or a Path (an empty string is None, as an unset option)."""
    return Path(value) if value not in (None, "") else None
