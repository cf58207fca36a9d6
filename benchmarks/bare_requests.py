"""A bare requests thread pool, the floor the thread engine is measured against: N threads with
one Session each, each reading a whole body, writing it to NAME.part and renaming it to NAME.

It does the least a downloader must (read the list, fetch, write, rename) and nothing else: no
retry, no resume, no index, no report. Exit status 0 when every URL answered 200, 1 otherwise.

    .venv/bin/python benchmarks/bare_requests.py -j 64 -d OUT LIST
"""

import argparse
import os
import sys
import threading

import requests


def fetch_all(urls: list[str], out: str, jobs: int) -> list[str]:
    """Fetch every URL into `out` with `jobs` threads, one Session each; the failures, as lines."""
    failures: list[str] = []
    pending = iter(urls)  # a list iterator's next() is atomic under the GIL

    def worker() -> None:
        with requests.Session() as session:
            for url in pending:
                try:
                    response = session.get(url)
                except requests.RequestException as exc:
                    failures.append(f"{url}: {exc}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{url}: HTTP {response.status_code}")
                    continue
                final = os.path.join(out, url.rsplit("/", 1)[-1])
                with open(final + ".part", "wb") as part:
                    part.write(response.content)
                os.rename(final + ".part", final)

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("list", help="file with one URL a line")
    parser.add_argument("-d", "--dir", required=True, help="output folder")
    parser.add_argument("-j", "--jobs", type=int, default=64, help="threads (connections)")
    args = parser.parse_args(argv)
    with open(args.list, encoding="utf-8") as lines:
        urls = [line.strip() for line in lines if line.strip()]
    os.makedirs(args.dir, exist_ok=True)
    failures = fetch_all(urls, args.dir, args.jobs)
    for line in failures[:5]:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
