"""`python -m downloader` and the `downloader` command.

From the first line on, SIGINT and SIGTERM are only noted (`EARLY`) until a command takes them
over: a Ctrl-C while Python imports typer, aiohttp and the package would otherwise land anywhere
(inside a dataclass being built it even turns into a RuntimeError). `get` acts on a noted signal
as soon as its batch installs its own handlers; the other commands when they start.
"""
import _signal  # the C module: `signal` builds enums first, which takes long enough to be hit


class EarlySignals:
    """A signal handler that only remembers the first signal, for whoever takes over later."""

    def __init__(self) -> None:
        self.pending: int | None = None

    def __call__(self, signum, frame=None) -> None:
        self.pending = self.pending or signum


EARLY = EarlySignals()
for _sig in (_signal.SIGINT, _signal.SIGTERM):
    _signal.signal(_sig, EARLY)


def run() -> None:
    from .cli import main
    main()


if __name__ == "__main__":
    run()
