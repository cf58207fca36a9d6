"""`python -m downloader` and the `downloader` command.

`run` imports the CLI inside a guard, so a Ctrl-C during start-up (typer, the package) is one line
and exit code 130, not a traceback."""
import os
import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("downloader: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    main()


if __name__ == "__main__":
    run()
