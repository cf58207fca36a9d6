"""Turning lines of text into download jobs, streamed: one line in, at most one job out.

Plain lists hold one URL a line; blank lines and `#` comments are skipped; surrounding white
space, CRLF line ends and a UTF-8 byte-order mark are tolerated. aria2-style lists may follow a URL
with indented `key=value` lines that apply to it::

    https://example.org/a.iso
      out=debian.iso
      dir=isos
      header=Authorization: Bearer xyz
      checksum=sha-256=0f3a...

A `#fragment` is dropped: it never reaches the server, so `a#1` and `a#2` are one download.

Because options come *after* their URL, a job is yielded when the next URL (or the end) shows up:
a one-line look-ahead, never the whole file. A million-line list costs one job of memory here.

A reader that sees its input go quiet (a pipe from a slow producer) puts `QUIET` in the stream of
lines: the URL held for its options is yielded at once, so it starts without waiting for the next
line, and `QUIET` is passed on so whoever batches the jobs sends them on too. An option line that
arrives after its URL was sent on that way is rejected with a line that says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from .digests import parse_checksum
from .urls import plain_parts

OPTION_KEYS = ("out", "dir", "header", "checksum")
"""The aria2 per-URL options this tool applies."""


class _Quiet:
    def __repr__(self) -> str:
        return "QUIET"


QUIET = _Quiet()
"""In a stream of lines (or of jobs): no more input is readable right now; send on what is held."""


@dataclass(frozen=True)
class Job:
    """One URL to fetch, with what the input said about it."""

    url: str
    line: int = 0
    """Line number in its input (0 for URLs given as arguments or through the API)."""
    name: str | None = None
    """File name the input asked for (aria2 `out=`); sanitised later like any other name."""
    subdir: str | None = None
    """Sub folder of the output folder (aria2 `dir=`); always kept inside the output folder."""
    headers: tuple[tuple[str, str], ...] = ()
    """Headers for this URL only, sent after the batch-wide ones."""
    checksum: str | None = None
    """"algo=hex" the bytes must match (aria2 `checksum=`)."""
    target: str | None = None
    """The name claimed for it in the output folder, relative to it (set when the batch reads it)."""
    host: str = ""
    """The URL's host, lower case (set with `target`; the scheduler counts connections by it)."""
    resume: bool = True
    """Whether an earlier run may have left a `.part` for it (False when its name was claimed just
    now: nothing can have been written under a name before it is claimed)."""
    replace: str | None = None
    """Why the file already under its name must be fetched again and replaced (it did not match
    its digest or the size the index recorded); None when there is no such file."""


@dataclass(frozen=True)
class Rejected:
    """An input line that is not usable, with the reason; the rest of the input still runs."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text!r}"


@dataclass(frozen=True)
class Notice:
    """Something worth telling about an input line that does not stop it (an option we ignore)."""

    line: int
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


_SPACE_OR_SURROGATE = re.compile(r"[\s\ud800-\udfff]")


def url_problem(text: str) -> str | None:
    """Why `text` is not an http(s) URL with a host, or None when it is one."""
    bad = _SPACE_OR_SURROGATE.search(text)
    if bad is None:
        if plain_parts(text) is not None:  # the common case, without urlsplit
            return None
    elif bad.group().isspace():
        return "not a URL (contains white space)"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "not an http(s) URL" if parts.scheme else "not a URL (no http:// or https://)"
    if not parts.hostname:
        return "URL has no host"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return "not valid UTF-8"
    return None


def parse_lines(lines: Iterable[str], first_line: int = 1) -> Iterator[Job | Rejected | Notice]:
    """Jobs, rejected lines and notices from an iterable of text lines, lazily and in input order
    (`QUIET` markers in the lines are passed on, see the module docstring)."""
    pending: dict | None = None
    sent_early: int | None = None
    """Line of the URL last sent on by a QUIET, while an option for it could still turn up."""
    number = first_line - 1
    for raw in lines:
        if raw is QUIET:
            if pending is not None:
                yield _finish(pending)
                sent_early, pending = pending["line"], None
            yield QUIET
            continue
        number += 1
        if number == first_line:
            raw = raw.lstrip("\ufeff")
        text = raw.rstrip("\r\n")
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indented = text[:1] in (" ", "\t")
        key, sep, value = stripped.partition("=")
        if indented and sep and key.strip() and "/" not in key and ":" not in key:
            if pending is None:
                yield Rejected(number, stripped, "option line with no URL before it" if sent_early is None else
                               f"option line arrived after the URL of line {sent_early} had started "
                               "(write a URL and its options together)")
            else:
                yield from _apply_option(pending, number, key.strip().lower(), value.strip())
            continue
        sent_early = None
        if pending is not None:
            yield _finish(pending)
            pending = None
        url = stripped.split("\t")[0].split("#", 1)[0]
        problem = url_problem(url)
        if problem:
            yield Rejected(number, stripped, problem)
        else:
            pending = {"url": url, "line": number, "headers": []}
    if pending is not None:
        yield _finish(pending)


def _apply_option(pending: dict, number: int, key: str, value: str) -> Iterator[Rejected | Notice]:
    if key in ("out", "dir"):
        if not value:
            yield Rejected(number, f"{key}=", f"empty {key}=")
        else:
            pending["name" if key == "out" else "subdir"] = value
    elif key == "header":
        name, sep, hvalue = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            yield Rejected(number, value, "header is not 'Name: value'")
        else:
            pending["headers"].append((name.strip(), hvalue.strip()))
    elif key == "checksum":
        try:
            parse_checksum(value)
        except ValueError as exc:
            yield Rejected(number, value, str(exc))
        else:
            pending["checksum"] = value
    else:
        yield Notice(number, f"option {key!r} is not supported and was ignored")


def _finish(pending: dict) -> Job:
    if len(pending) == 3 and not pending["headers"]:  # a URL without options: most lines
        return Job(pending["url"], pending["line"])
    return Job(url=pending["url"], line=pending["line"], name=pending.get("name"),
               subdir=pending.get("subdir"), headers=tuple(pending["headers"]),
               checksum=pending.get("checksum"))


def jobs_from_urls(urls: Iterable[str]) -> Iterator[Job | Rejected]:
    """Jobs from URLs given one by one (command-line arguments, the API); each is checked."""
    for url in urls:
        if isinstance(url, Job):
            yield url
            continue
        problem = url_problem(url)
        yield Rejected(0, url, problem) if problem else Job(url=url.split("#", 1)[0])


class Deduplicator:
    """Remembers which URLs were seen, as a 64-bit hash each rather than the whole string.

    A set of 64-bit ints costs about 60 bytes a URL (a million URLs: ~60 MB), a fraction of
    keeping the URLs. Python's string hash is SipHash, keyed anew in every process, which is all
    a single run needs; two URLs sharing a hash by chance (odds ~3e-8 for a million URLs) would
    make the second one count as a duplicate.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def first_time(self, url: str) -> bool:
        """True the first time a URL is offered, False after."""
        key = hash(url)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
