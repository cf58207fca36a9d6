"""The parfive peer of the benchmarks: download every URL of a list into a folder.

parfive has no retry of its own (nor any Retry-After handling), so the failures of a round are
queued again with `Downloader.retry` until every file is in or `--rounds` rounds have run.
Exit status 0 when every file arrived, 1 otherwise.

    .venv/bin/python benchmarks/parfive_get.py -j 32 -d OUT LIST
"""

import argparse
import sys

import parfive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("list", help="file with one URL a line")
    parser.add_argument("-d", "--dir", required=True, help="output folder")
    parser.add_argument("-j", "--max-conn", type=int, default=32, help="parallel download slots")
    parser.add_argument("--max-splits", type=int, default=None,
                        help="connections per file (default: parfive's own)")
    parser.add_argument("--rounds", type=int, default=50, help="give up after this many rounds")
    args = parser.parse_args(argv)

    with open(args.list, encoding="utf-8") as lines:
        urls = [line.strip() for line in lines if line.strip()]
    options = {} if args.max_splits is None else {"max_splits": args.max_splits}
    downloader = parfive.Downloader(max_conn=args.max_conn, progress=False, overwrite=True, **options)
    for url in urls:
        downloader.enqueue_file(url, path=args.dir)
    results = downloader.download()
    rounds = 1
    while results.errors and rounds < args.rounds:
        results = downloader.retry(results)
        rounds += 1
    print(f"parfive {parfive.__version__}: {len(urls) - len(results.errors)}/{len(urls)} files "
          f"in {rounds} round(s)")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
