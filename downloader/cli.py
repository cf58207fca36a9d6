"""The command line: a thin typer layer over the public API. It parses options, builds the
config, calls the API, prints the summary and maps the outcome to an exit code; nothing else in
the package calls sys.exit. Heavy modules (requests, aiohttp, tqdm) are imported lazily, so
`downloader --help` answers at once.

Exit codes: 0 everything done (downloaded or already there); 1 some URL failed or some input line
was rejected (the rest still ran); 2 usage error; 130 interrupted.
"""
from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .config import MODES
from .errors import DownloaderError, UsageError

EXIT_CODES_HELP = ("Exit codes: 0 everything done (downloaded or already there); 1 some URL failed or "
                   "some input line was rejected (the rest still ran); 2 usage error; 130 interrupted.")

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Parallel file downloader: sequential, thread, async and curl (libcurl) engines; "
                       "segmented, resumable, verified downloads; lists from files or pipes; a Dask "
                       "cluster backend; a misbehaving mock server to test against.\n\n"
                       + EXIT_CODES_HELP)


class Mode(str, enum.Enum):
    async_ = "async"
    thread = "thread"
    sequential = "sequential"
    curl = "curl"


class PostExecutor(str, enum.Enum):
    process = "process"
    thread = "thread"
    inline = "inline"


_said = {"interrupted": False}
"""Whether a line about an interruption was printed (main prints one when nothing else did)."""


def _fail(message: str, code: int) -> "typer.Exit":
    print(f"downloader: {message}" if code != 130 else message, file=sys.stderr)
    _said["interrupted"] = _said["interrupted"] or code == 130
    return typer.Exit(code)


def _take_over_signals() -> None:
    """A command that does not handle SIGINT itself: from now on Ctrl-C raises KeyboardInterrupt
    as usual, at once if one came during start-up (see __main__)."""
    import signal
    early = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if getattr(early, "pending", None):
        raise KeyboardInterrupt


def version_report() -> str:
    """What `downloader --version` prints, as `curl --version` does: this package, Python, the
    HTTP libraries, and each optional accelerator that is installed.

        downloader 0.1.0
        Python 3.11.7 (CPython)
        aiohttp 3.14.5
        requests 2.34.2
        pycurl 7.45.6 (libcurl/8.12.1 OpenSSL/3.4.1 zlib/1.3.1)

    Versions come from the installed packages' metadata, so nothing heavy is imported; only
    pycurl is, because libcurl's version (and whether it loads at all) is known only that way."""
    import platform
    from importlib import metadata

    from . import __version__

    def installed(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    lines = [f"downloader {__version__}",
             f"Python {platform.python_version()} ({platform.python_implementation()})"]
    lines += [f"{package} {installed(package) or 'missing'}" for package in ("aiohttp", "requests")]
    pycurl_version = installed("pycurl")
    if pycurl_version:
        try:
            import pycurl
            libcurl = pycurl.version.split(" ", 1)[1]  # "PycURL/7.45.6 libcurl/8.12.1 OpenSSL/3.4.1 ..."
        except (ImportError, IndexError) as exc:
            libcurl = f"cannot be loaded: {exc}"
        lines.append(f"pycurl {pycurl_version} ({libcurl})")
    return "\n".join(lines)


def _print_version(asked: bool) -> None:
    if asked:
        print(version_report())
        raise typer.Exit(0)


@app.callback()
def _app_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the versions of downloader, Python and its libraries, and exit."),
) -> None:
    """Options of `downloader` itself, before the command."""


@app.command(help="Download URLs (arguments, a URL file, or stdin) into a folder.\n\n" + EXIT_CODES_HELP)
def get(
    urls: Optional[List[str]] = typer.Argument(None, metavar="[URL]...", help="URLs to fetch; with none and "
                                               "no -i, stdin is read when it is not a terminal.", show_default=False),
    input_file: List[str] = typer.Option([], "-i", "--input-file", metavar="FILE", help="A URL file (plain or "
                                         "aria2-style); '-' is stdin; repeatable.", show_default=False),
    dest: Path = typer.Option(Path("."), "-d", "--dir", metavar="DIR", help="Output folder, created if missing."),
    mode: Optional[Mode] = typer.Option(None, "-m", "--mode", help="Engine [default: curl when pycurl is "
                                        "installed, else async; with --cluster, the one every worker runs: "
                                        "async unless given].", show_default=False),
    jobs: int = typer.Option(16, "-j", "--jobs", min=1, metavar="N", help="Connections in flight at once, "
                             "segments included (per worker with --cluster)."),
    per_host: Optional[int] = typer.Option(None, "--per-host", min=1, metavar="N", help="Connections to one "
                                           "host at once (default: no extra cap; per worker with --cluster)."),
    retries: int = typer.Option(5, "--retries", min=0, metavar="N", help="Retries after the first try."),
    timeout: str = typer.Option("30", "--timeout", metavar="DURATION", help="Connect timeout and stall "
                                "timeout (no byte for that long): 30, 30s, 2m; never a cap on a whole "
                                "transfer."),
    header: List[str] = typer.Option([], "--header", metavar="'NAME: VALUE'", help="Extra request header "
                                     "(repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Fetch again files that already exist."),
    check_integrity: bool = typer.Option(False, "--check-integrity", help="Hash the files already there "
                                         "against the sha256 the index recorded (and any digest given) and "
                                         "fetch again those that differ."),
    segments: int = typer.Option(4, "-s", "--segments", min=1, metavar="N", help="Connections per file, for "
                                 "files that accept ranges."),
    min_segment_size: str = typer.Option("8M", "--min-segment-size", metavar="SIZE", help="Smallest segment "
                                         "(e.g. 512K, 8M)."),
    max_speed: Optional[str] = typer.Option(None, "--max-speed", metavar="RATE", help="Cap for the whole batch "
                                            "in bytes per second (2M, 500K); 0 means no limit. With --cluster, "
                                            "split evenly over the workers."),
    checksum: Optional[str] = typer.Option(None, "--checksum", metavar="ALGO=HEX", help="Digest the file must "
                                           "match (one URL)."),
    sums: Optional[Path] = typer.Option(None, "--sums", metavar="FILE", help="A sha256sum/md5sum-style file to "
                                        "verify against."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", metavar="FILE", help="Write 'HEX  NAME' sha256 "
                                            "lines for every file of the batch."),
    post: List[str] = typer.Option([], "--post", metavar="SPEC", help="Post-process each file: sha256, md5, "
                                   "blake2b, fib:N (repeatable)."),
    post_executor: PostExecutor = typer.Option(PostExecutor.process, "--post-executor",
                                               help="Where post tasks run."),
    post_workers: Optional[int] = typer.Option(None, "--post-workers", min=1, metavar="N", help="Post workers "
                                               "(default: CPU count; per worker with --cluster)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", metavar="local[:N]|ADDRESS", envvar="DOWNLOADER_CLUSTER",
                                          help="Run the batch on Dask: 'local' or 'local:N' starts N worker "
                                          "processes here (default: the CPU count), an address such as "
                                          "tcp://sched:8786 uses a running scheduler. Each worker runs the --mode "
                                          "engine (async by default) and the --post tasks on shards of the list; "
                                          "the output folder must be shared by every worker. Needs "
                                          "downloader[cluster].", show_default=False),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, metavar="N", help="URLs per shard, the unit "
                                   "of work a --cluster worker takes."),
    report: Optional[Path] = typer.Option(None, "--report", metavar="FILE", help="JSON lines, one object per "
                                          "URL."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Bars (default: when "
                                            "stderr is a terminal).", show_default=False),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors and the final summary line."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also say each retry and restart."),
    ca_certificate: Optional[Path] = typer.Option(None, "--ca-certificate", metavar="FILE", help="PEM bundle of "
                                                  "the certificate authorities to trust, instead of the default "
                                                  "store."),
    insecure: bool = typer.Option(False, "-k", "--insecure", help="Do not verify server certificates (a warning "
                                  "says so)."),
    certificate: Optional[Path] = typer.Option(None, "--certificate", metavar="FILE", help="Client certificate "
                                               "(PEM) for servers that ask for one."),
    private_key: Optional[Path] = typer.Option(None, "--private-key", metavar="FILE", help="Private key (PEM) of "
                                               "--certificate, when it is not in that file."),
    chunk_size: str = typer.Option("256K", "--chunk-size", hidden=True),
) -> None:
    from . import api
    from .progress import BarReporter, LineReporter

    if checksum and (input_file or len(urls or []) != 1):
        raise _fail("--checksum goes with exactly one URL (use checksum= lines or --sums for lists)",
                    api.EXIT_USAGE)
    show_bars = (sys.stderr.isatty() if progress is None else progress) and not quiet
    reporter = BarReporter(verbose=verbose) if show_bars else LineReporter(verbose=verbose and not quiet)
    try:
        downloader = api.Downloader(
            dest, mode=mode.value if mode is not None else None, jobs=jobs, per_host=per_host, retries=retries,
            timeout=timeout,
            headers=header, overwrite=overwrite, check_integrity=check_integrity, segments=segments,
            min_segment_size=min_segment_size,
            max_speed=max_speed, checksum=checksum, sums_file=sums, manifest=manifest, post=post,
            post_executor=post_executor.value, post_workers=post_workers, chunk_size=chunk_size,
            ca_certificate=ca_certificate, insecure=insecure, certificate=certificate, private_key=private_key,
            cluster=cluster, shard_size=shard_size, reporter=reporter, report=report, keep_results=False)
        for url in urls or []:
            downloader.enqueue(url)
        if input_file.count("-") > 1:
            raise UsageError("-i -: stdin can be read only once")
        for path in input_file:
            downloader.enqueue_file(path)
        if not input_file and not urls:
            if sys.stdin is None or sys.stdin.isatty():
                raise UsageError("no URLs: give them as arguments, with -i FILE, or on stdin")
            downloader.enqueue_file("-")
        results = downloader.run()
    except KeyboardInterrupt:  # before the batch took over SIGINT (library use): nothing has started
        reporter.close()
        raise _fail("interrupted before anything started: run the same command again", api.EXIT_INTERRUPTED)
    except UsageError as exc:
        reporter.close()
        raise _fail(str(exc), api.EXIT_USAGE)
    except DownloaderError as exc:
        reporter.close()
        raise _fail(str(exc), api.EXIT_SOME_FAILED)
    _print_summary(results)
    if results.interrupted:
        raise typer.Exit(api.EXIT_INTERRUPTED)
    raise typer.Exit(api.EXIT_OK if results.success else api.EXIT_SOME_FAILED)


def _print_summary(results) -> None:
    """The last lines of a run (failures were printed as they happened)."""
    err = sys.stderr
    if results.nothing_in is not None:
        print(f"nothing to download: no URLs in {results.nothing_in}", file=err)
        return
    print(("interrupted: " if results.interrupted else "done: ") + results.summary(), file=err)
    _said["interrupted"] = results.interrupted
    if results.interrupted:
        parked = results.counts["interrupted"] > 0
        print("partial files are kept as .part: " if parked else "", "run the same command again to resume",
              sep="", file=err)


@app.command(help="Serve a folder on loopback with Range/ETag/HEAD and faults on demand (the mock server).")
def serve(
    root: Optional[Path] = typer.Argument(None, metavar="[DIR]", help="Folder to serve (virtual files under "
                                          "/gen/ work without one)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on (loopback by "
                             "default; ::1 for IPv6)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one."),
    latency: str = typer.Option("0", "--latency", metavar="DURATION", help="Delay before each response "
                                "(50ms, 1s)."),
    rate: Optional[str] = typer.Option(None, "--rate", metavar="RATE", help="Bandwidth cap per connection "
                                       "(1M, 500K)."),
    fail_rate: float = typer.Option(0.0, "--fail-rate", min=0.0, max=1.0, metavar="SHARE", help="Share of GETs "
                                    "that fail."),
    faults: str = typer.Option("503", "--faults", metavar="KIND,...", help="Comma-separated kinds fail-rate draws "
                               "from: 503, 429, reset, truncate, lie, stall, ignore-range, etag-change."),
    retry_after: str = typer.Option("0", "--retry-after", metavar="N|date:N", help="Retry-After for 503/429: N "
                                    "or date:N."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed: the same seed gives the same faults per URL."),
    tls: bool = typer.Option(False, "--tls", help="Serve HTTPS with a certificate from a throwaway CA, "
                             "whose file is printed (needs: pip install 'downloader[tls]')."),
) -> None:
    _take_over_signals()
    import tempfile
    from .config import parse_duration, parse_rate
    from . import mockserver

    if root is not None and not root.is_dir():
        raise _fail(f"{root} is not a folder", 2)
    try:
        kinds = mockserver.check_faults((f.strip() for f in faults.split(",") if f.strip()), "--faults")
        config = mockserver.MockConfig(latency=parse_duration(latency, "--latency"),
                                       rate=parse_rate(rate, "--rate"), fail_rate=fail_rate, faults=kinds,
                                       retry_after=retry_after, seed=seed)
    except (UsageError, ValueError) as exc:
        raise _fail(str(exc), 2)

    with tempfile.TemporaryDirectory(prefix="downloader-serve-tls-") as folder:
        ssl_context = None
        if tls:
            try:
                files = mockserver.TlsFiles.create(Path(folder))
            except ImportError as exc:
                raise _fail(f"--tls: {exc}", 2)
            ssl_context = files.server_context()

        def ready(url: str) -> None:
            print(f"serving {root or '(virtual files only)'} at {url}/  (Ctrl-C to stop)", flush=True)
            if tls:
                print(f"CA certificate: {files.ca_file} (trust it with: downloader get --ca-certificate "
                      f"{files.ca_file} URL...)", flush=True)

        try:
            mockserver.serve(root, host, port, config, ready, ssl_context)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise _fail(f"cannot listen on {where}: {exc.strerror or exc}", 2)


@app.command(help="Show, in numbers, how the GIL treats threads and processes (CPU-bound and I/O-bound), "
                  "and what each engine's downloads leave of it to a thread computing beside them.")
def gil(
    tasks: int = typer.Option(8, "--tasks", min=1, metavar="N", help="How many tasks."),
    n: int = typer.Option(27, "--n", min=1, max=40, metavar="N", help="fib(N) per CPU task."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, metavar="N", help="Pool size (default: "
                                          "CPU count)."),
    files: int = typer.Option(100, "--files", min=1, metavar="N", help="Files of 16 KiB in the downloads batch."),
    downloads: bool = typer.Option(True, "--downloads/--no-downloads", help="Also download a batch from the mock "
                                   "server with each engine, alone and beside a thread computing fib (the "
                                   "longest part)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    _take_over_signals()
    import json
    from .gil import format_report, run_gil_demo

    try:
        result = run_gil_demo(tasks=tasks, n=n, workers=workers, files=files if downloads else None)
    except DownloaderError as exc:
        raise _fail(str(exc), 1)
    print(json.dumps(result, indent=2) if json_out else format_report(result))


_MODES_HELP = (f"Comma-separated modes to run, of {', '.join(MODES)} (default: each of them, curl only when "
               "pycurl is installed).")


@app.command(help="Run the main job on the built-in mock server in every mode, verify it, compare the modes.")
def demo(
    latency: str = typer.Option("50ms", "--latency", metavar="DURATION", help="Delay the mock server adds to "
                                "every response."),
    jobs: int = typer.Option(16, "-j", "--jobs", min=1, metavar="N", help="Connections in flight."),
    out: Path = typer.Option(Path("demo-out"), "--out", metavar="DIR", help="Where the files go (one folder "
                             "per mode)."),
    modes: Optional[str] = typer.Option(None, "--modes", metavar="MODE,...", help=_MODES_HELP,
                                        show_default=False),
) -> None:
    _take_over_signals()
    from .demo import format_table, run_demo

    try:
        rows = run_demo(None if modes is None else modes.split(","), latency=latency, jobs=jobs, out=out)
    except UsageError as exc:
        raise _fail(str(exc), 2)
    except DownloaderError as exc:
        raise _fail(str(exc), 1)
    print()
    print(format_table(rows))
    if not all(r["verified"] for r in rows):
        raise typer.Exit(1)


@app.command(help="Time the same batch in each mode, each run a fresh `get` subprocess into a new temporary "
                  "folder: wall time, files/s, MB/s, download phase, CPU, peak memory (medians). With --post, "
                  "the thread and the process post executors side by side.")
def bench(
    urls: Optional[List[str]] = typer.Argument(None, metavar="[URL]...", help="URLs to fetch; with none and no "
                                               "-i, a batch of files from the built-in mock server, with "
                                               "latency.", show_default=False),
    input_file: Optional[str] = typer.Option(None, "-i", "--input-file", metavar="FILE", help="A URL file "
                                             "(plain or aria2-style), read again for every run."),
    modes: Optional[str] = typer.Option(None, "--modes", metavar="MODE,...", help=_MODES_HELP,
                                        show_default=False),
    post: List[str] = typer.Option([], "--post", metavar="SPEC", help="Post-process each file: sha256, md5, "
                                   "blake2b, fib:N "
                                   "(repeatable); each mode then runs with post tasks on threads and on "
                                   "processes."),
    runs: int = typer.Option(3, "--runs", min=1, metavar="N", help="Runs per row; the table shows medians."),
    jobs: int = typer.Option(16, "-j", "--jobs", min=1, metavar="N", help="Connections in flight."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write every run and the "
                                            "medians as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Write a bar chart PNG (needs the "
                                        "plot extra: pip install -e '.[plot]')."),
) -> None:
    _take_over_signals()
    from .benchcmd import check_plot_extra, format_table, run_bench, write_json, write_plot
    from .demo import available_modes

    try:
        if plot is not None:
            check_plot_extra()
        chosen = available_modes() if modes is None else modes.split(",")
        result = run_bench(urls, input_file, chosen, post, runs, jobs,
                           say=lambda line: print(line, file=sys.stderr, flush=True))
        print()
        print(format_table(result))
        if json_out is not None or plot is not None:
            print()
        if json_out is not None:
            print(f"wrote JSON {write_json(result, json_out)}")
        if plot is not None:
            print(f"wrote PNG {write_plot(result, plot)}")
    except UsageError as exc:
        raise _fail(str(exc), 2)
    except DownloaderError as exc:
        raise _fail(str(exc), 1)
    if any(run["exit_code"] for row in result["rows"] for run in row["runs"]):
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `downloader` command.

    It ends with `os._exit` once stdout and stderr are flushed: every command closes what it
    opened (files, pools, servers), and skipping the interpreter's teardown of aiohttp, requests
    and the rest saves about 30 ms a run, which shows on a batch that takes 0.4 s. The program
    is called `downloader` however it was started (`python -m downloader` too), so usage lines
    and the script `--show-completion` prints name the command people type."""
    try:
        app(prog_name="downloader")
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    if code == 130 and not _said["interrupted"]:  # typer turns a KeyboardInterrupt into a silent exit 130
        print("downloader: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
