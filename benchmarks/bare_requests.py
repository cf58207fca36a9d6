"""A bare requests thread pool, the floor the thread engine is measured against: N threads with
one Session each, each reading a whole body, writing it to NAME.part and renaming it to NAME.

It does the least a downloader must (read the list, fetch, write, rename) and nothing else: no
retry, no resume, no index, no report. Exit status 0 when every URL answered 200, 1 otherwise.

    .venv/bin/python benchmarks/bare_requests.py -j 64 -d OUT LIST
"""

import os
import sys
import threading

import requests

import bare_cli  # beside this script


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
    return bare_cli.run(fetch_all, __doc__.splitlines()[0], "threads", argv)


if __name__ == "__main__":
    sys.exit(main())
