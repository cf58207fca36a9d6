"""The command line the bare loops share (bare_aiohttp.py, bare_requests.py, bare_pycurl.py):
`LOOP -j N -d OUT LIST`, exit status 0 when every URL answered 200, 1 otherwise, with the first
failures on stderr. Only the loops themselves differ, which is what they are there to measure."""

import argparse
import asyncio
import inspect
import os
import sys
from typing import Callable


def run(fetch_all: Callable, description: str, connections: str, argv: list[str] | None = None) -> int:
    """Parse the arguments, run `fetch_all(urls, out, jobs)` (a coroutine function too), report."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("list", help="file with one URL a line")
    parser.add_argument("-d", "--dir", required=True, help="output folder")
    parser.add_argument("-j", "--jobs", type=int, default=64, help=f"{connections} (connections)")
    args = parser.parse_args(argv)
    with open(args.list, encoding="utf-8") as lines:
        urls = [line.strip() for line in lines if line.strip()]
    os.makedirs(args.dir, exist_ok=True)
    outcome = fetch_all(urls, args.dir, args.jobs)
    failures = asyncio.run(outcome) if inspect.iscoroutine(outcome) else outcome
    for line in failures[:5]:
        print(line, file=sys.stderr)
    return 1 if failures else 0
