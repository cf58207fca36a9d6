"""A bare pycurl CurlMulti loop, the floor the curl engine is measured against: N easy handles
reused from URL to URL, each body written by libcurl through WRITEDATA into NAME.part, renamed
to NAME when its transfer is done.

It does the least a downloader must (read the list, fetch, write, rename) and nothing else: no
retry, no resume, no index, no report. Exit status 0 when every URL answered 200, 1 otherwise.

    .venv/bin/python benchmarks/bare_pycurl.py -j 64 -d OUT LIST
"""

import os
import sys

import pycurl

import bare_cli  # beside this script


def fetch_all(urls: list[str], out: str, jobs: int) -> list[str]:
    """Fetch every URL into `out` with `jobs` reused easy handles on one multi; the failures."""
    failures: list[str] = []
    pending = iter(urls)
    multi = pycurl.CurlMulti()
    idle = [pycurl.Curl() for _ in range(jobs)]
    files = {}  # handle -> (url, open .part file, final path)
    while True:
        while idle:
            url = next(pending, None)
            if url is None:
                break
            handle = idle.pop()
            final = os.path.join(out, url.rsplit("/", 1)[-1])
            part = open(final + ".part", "wb")
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.WRITEDATA, part)
            files[handle] = (url, part, final)
            multi.add_handle(handle)
        if not files:
            break
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        finished = 0
        while True:
            queued, done, failed = multi.info_read()
            outcomes = [(handle, None) for handle in done] + [(handle, message) for handle, _, message in failed]
            for handle, error in outcomes:
                url, part, final = files.pop(handle)
                part.close()
                status = handle.getinfo(pycurl.RESPONSE_CODE)
                multi.remove_handle(handle)
                idle.append(handle)
                finished += 1
                if error or status != 200:
                    failures.append(f"{url}: {error or f'HTTP {status}'}")
                    continue
                os.rename(final + ".part", final)
            if not queued:
                break
        if files and not finished:  # nothing to hand a freed handle: wait for the sockets
            wait = multi.timeout()
            multi.select(min(wait / 1000, 1.0) if wait >= 0 else 1.0)
    for handle in idle:
        handle.close()
    multi.close()
    return failures


def main(argv: list[str] | None = None) -> int:
    return bare_cli.run(fetch_all, __doc__.splitlines()[0], "easy handles", argv)


if __name__ == "__main__":
    sys.exit(main())
