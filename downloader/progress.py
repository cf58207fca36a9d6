"""What the user sees while a batch runs: tqdm bars on a terminal, plain lines otherwise.

Reporters are called from worker threads and from the event loop alike, so every method takes a
lock. tqdm is imported here and nowhere else.

- `BarReporter`: one overall bar (files done of total when known, bytes, rate, ETA) and a bar for
  each active large file, at most `MAX_FILE_BARS`; messages go through `tqdm.write` so they never
  tear the bars.
- `LineReporter`: no bars; messages as plain lines on stderr (pipes, CI logs, `--no-progress`).
- `RecordingReporter`: keeps every event, for tests.
"""
from __future__ import annotations

import sys
import threading

BIG_FILE = 1 << 20
"""Files at least this large (or of unknown size) get a bar of their own."""
MAX_FILE_BARS = 4


class LineReporter:
    """Plain lines on stderr: messages always, `info` only when verbose."""

    follows_files = False
    """Whether the file_* events show anything (bars do): transfers skip the calls when not, as a
    long list of small files would make several per file for nothing."""

    def __init__(self, verbose: bool = False, stream=None) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def set_total(self, files: int) -> None: ...
    def file_started(self, key, name: str, size: int | None) -> None: ...
    def file_progress(self, key, n: int) -> None: ...
    def file_restarted(self, key) -> None: ...
    def file_finished(self, key, result) -> None: ...
    def job_recorded(self, result) -> None: ...

    def message(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def info(self, text: str) -> None:
        if self.verbose:
            self.message(text)

    def close(self) -> None: ...


class RecordingReporter(LineReporter):
    """Keeps events in `events` (tests assert on what a user would have been shown)."""

    follows_files = True

    def __init__(self) -> None:
        super().__init__(verbose=True)
        self.events: list[tuple] = []

    def file_started(self, key, name, size):
        self.events.append(("start", name, size))

    def file_progress(self, key, n):
        self.events.append(("progress", n))

    def file_finished(self, key, result):
        self.events.append(("finish", result.status))

    def message(self, text):
        self.events.append(("message", text))

    def info(self, text):
        self.events.append(("info", text))


class BarReporter(LineReporter):
    """tqdm bars on a terminal (see the module docstring)."""

    follows_files = True

    def __init__(self, verbose: bool = False, stream=None) -> None:
        super().__init__(verbose, stream)
        from tqdm import tqdm
        self._tqdm = tqdm
        self._file_bar = _bytes_bar(tqdm)
        self._overall = tqdm(total=None, unit="file", desc="files", position=0, file=self.stream,
                             dynamic_ncols=True, mininterval=0.2, leave=True,
                             bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")
        self._bytes = 0
        self.post_status = None
        """A callable giving a short text about the post stage ("post: 3 queued"), or None."""
        self._bars: dict = {}
        self._free_slots = list(range(MAX_FILE_BARS, 0, -1))

    def set_total(self, files: int) -> None:
        with self._lock:
            self._overall.total = files
            self._overall.refresh()

    def file_started(self, key, name: str, size: int | None) -> None:
        with self._lock:
            if (size is None or size >= BIG_FILE) and self._free_slots and key not in self._bars:
                slot = self._free_slots.pop()
                self._bars[key] = self._file_bar(total=size, desc=_short(name), position=slot, leave=False,
                                                 file=self.stream, dynamic_ncols=True, mininterval=0.2,
                                                 bar_format=FILE_BAR)

    def file_progress(self, key, n: int) -> None:
        with self._lock:
            self._bytes += n
            bar = self._bars.get(key)
            if bar is not None:
                bar.update(n)
            self._overall.set_postfix_str(self._postfix(), refresh=False)
            self._overall.update(0)

    def file_restarted(self, key) -> None:
        with self._lock:
            bar = self._bars.get(key)
            if bar is not None:
                bar.reset(total=bar.total)

    def file_finished(self, key, result) -> None:
        with self._lock:
            bar = self._bars.pop(key, None)
            if bar is not None:
                self._free_slots.append(bar.pos if bar.pos > 0 else abs(bar.pos))
                bar.close()

    def job_recorded(self, result) -> None:
        with self._lock:
            if self.post_status is not None:
                self._overall.set_postfix_str(self._postfix(), refresh=False)
            self._overall.update(1)

    def message(self, text: str) -> None:
        with self._lock:
            self._tqdm.write(text, file=self.stream)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            self._overall.set_postfix_str(self._postfix(), refresh=False)
            self._overall.close()

    def _postfix(self) -> str:
        text = _rate(self._bytes, self._overall)
        return f"{text}, {self.post_status()}" if self.post_status is not None else text


FILE_BAR = "{desc}: {percentage:3.0f}%|{bar}| {done_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}]"
"""A file's bar, with sizes in the summary's units (KiB, MiB: powers of 1024 named as such; tqdm's
own scaling shows "3.00M" and "MB/s")."""


def _bytes_bar(tqdm):
    """A tqdm class whose bars can show sizes and rates as `human_bytes` does (fields done_iec,
    total_iec, rate_iec)."""
    from .core.results import human_bytes

    class BytesBar(tqdm):
        @property
        def format_dict(self):
            fields = super().format_dict
            rate = fields.get("rate")
            fields["done_iec"] = human_bytes(fields["n"])
            fields["total_iec"] = human_bytes(fields["total"]) if fields.get("total") else "?"
            fields["rate_iec"] = f"{human_bytes(rate)}/s" if rate else "? B/s"
            return fields
    return BytesBar


def _rate(total: int, bar) -> str:
    from .core.results import human_bytes
    elapsed = max(bar.format_dict.get("elapsed", 0.0), 1e-6)
    return f"{human_bytes(total)} at {human_bytes(total / elapsed)}/s"


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
