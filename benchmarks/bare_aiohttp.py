"""A bare aiohttp loop, the floor the async engine is measured against: one ClientSession, N
worker tasks, each reading a whole body, writing it to NAME.part and renaming it to NAME.

It does the least a downloader must (read the list, fetch, write, rename) and nothing else: no
retry, no resume, no index, no report. Exit status 0 when every URL answered 200, 1 otherwise.

    .venv/bin/python benchmarks/bare_aiohttp.py -j 64 -d OUT LIST
"""

import asyncio
import os
import sys

import aiohttp

import bare_cli  # beside this script


async def fetch_all(urls: list[str], out: str, jobs: int) -> list[str]:
    """Fetch every URL into `out` with `jobs` tasks sharing one session; the failures, as lines."""
    failures: list[str] = []
    pending = iter(urls)  # shared by the tasks: next() never awaits, so no two take the same URL
    connector = aiohttp.TCPConnector(limit=jobs)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for url in pending:
                try:
                    async with session.get(url) as response:
                        body = await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    failures.append(f"{url}: {exc}")
                    continue
                if status != 200:
                    failures.append(f"{url}: HTTP {status}")
                    continue
                final = os.path.join(out, url.rsplit("/", 1)[-1])
                with open(final + ".part", "wb") as part:
                    part.write(body)
                os.rename(final + ".part", final)

        await asyncio.gather(*(worker() for _ in range(jobs)))
    return failures


def main(argv: list[str] | None = None) -> int:
    return bare_cli.run(fetch_all, __doc__.splitlines()[0], "worker tasks", argv)


if __name__ == "__main__":
    sys.exit(main())
