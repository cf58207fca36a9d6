"""Byte ranges: when resumed bytes may be kept, and how a file is split between connections.

Response headers are read by lower-case name (`headers.get("content-range")`) from any mapping that
answers such names: requests' and aiohttp's are case-insensitive, and the libcurl engine's is a
plain dict with lower-case keys, the cheapest lookup there is.

Resumed bytes are appended only when the server proves they belong (invariant 2): a 206 whose
Content-Range starts where we asked, for the same total size, with the same validator (ETag, or
Last-Modified when there is no strong ETag, sent as If-Range). Anything else starts the file again::

    >>> v = Validator(etag='"abc"', last_modified=None)
    >>> judge(206, {"content-range": "bytes 100-199/200", "etag": '"abc"'}, start=100, validator=v,
    ...       size=200)
    Verdict(action='write', offset=100, size=200, reason='')

`SegmentPlan` hands out the bytes still missing to connections, a piece at a time and in file
order: a free connection always takes the lowest bytes nobody has asked for yet, so no connection
sits on a long range while others idle, and what is on disk is a prefix of the file with at most a
piece missing per connection (a digest can follow the download; see sink.PrefixHasher).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import NamedTuple

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


class Validator(NamedTuple):
    """What identifies one version of a file on the server (a named tuple: every response makes
    one)."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers) -> "Validator":
        return cls(headers.get("etag") or None, headers.get("last-modified") or None)

    def if_range(self) -> str | None:
        """The If-Range value to send: a strong ETag, else Last-Modified, else None (cannot prove)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def same_as(self, other: "Validator") -> bool:
        """Whether a response with `other` is provably the version we have bytes of."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag == other.etag
        return bool(self.last_modified) and self.last_modified == other.last_modified

    def to_json(self) -> dict:
        return {"etag": self.etag, "last_modified": self.last_modified}

    @classmethod
    def from_json(cls, data: dict | None) -> "Validator":
        data = data or {}
        return cls(data.get("etag"), data.get("last_modified"))


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total) from "bytes 0-99/200"; total None for "*"; None when malformed."""
    if value and value[:6] == "bytes ":  # the usual spelling, without the regular expression
        span, _, total_text = value[6:].partition("/")
        first_text, _, last_text = span.partition("-")
        if first_text.isdecimal() and last_text.isdecimal() and (total_text.isdecimal() or total_text == "*"):
            first, last = int(first_text), int(last_text)
            total = None if total_text == "*" else int(total_text)
            if last < first or (total is not None and last >= total):
                return None
            return first, last, total
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def content_length(headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def length_disagrees(headers, crange: tuple | None | bool = False) -> str | None:
    """Why a 206's Content-Length and Content-Range cannot both be true, or None when they agree
    (`crange`: the Content-Range already parsed, when the caller has it)."""
    if crange is False:
        crange = parse_content_range(headers.get("content-range"))
    length = content_length(headers)
    if crange is None or length is None or length == crange[1] - crange[0] + 1:
        return None
    return (f"the server's Content-Length ({length:,}) disagrees with its Content-Range "
            f"({crange[1] - crange[0] + 1:,} bytes)")


def range_header(start: int, end: int | None) -> str:
    """The Range value for bytes [start, end) (end None: to the end of the file)."""
    return f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"


@dataclass(frozen=True)
class Verdict:
    """What to do with a response's body.

    action: "write" (body bytes go at `offset`), "restart" (drop what is on disk and ask again from
    zero), or "done" (the file on disk is already complete)."""

    action: str
    offset: int = 0
    size: int | None = None
    """The whole file's size when the response told it."""
    reason: str = ""


def judge(status: int, headers, *, start: int, validator: Validator, size: int | None) -> Verdict:
    """Decide what a 2xx/416 answer to a request for bytes from `start` of a file we already know
    (its `validator`, and `size` when told) means for the bytes on disk."""
    fresh = Validator.from_headers(headers)
    if status == 416:
        match = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", headers.get("content-range") or "")
        total = int(match.group(1)) if match else None
        if size is not None and start >= size and total in (None, size):
            return Verdict("done", start, size)
        told = f"the server says the file has {total:,} bytes, not {size:,}" \
            if total is not None and size is not None and total != size else "the server refused the range (416)"
        return Verdict("restart", 0, total, told)
    if status == 200:
        changed = validator.if_range() and not validator.same_as(fresh)
        return Verdict("restart", 0, content_length(headers),
                       "the file changed on the server" if changed else "the server ignored the range")
    if status == 206:
        crange = parse_content_range(headers.get("content-range"))
        if crange is None:
            return Verdict("restart", 0, None, "a 206 without a usable Content-Range")
        first, _last, total = crange
        disagreement = length_disagrees(headers, crange)
        if disagreement:
            return Verdict("restart", 0, total, disagreement)
        if first != start:
            return Verdict("restart", 0, total, f"asked for bytes from {start}, got them from {first}")
        if size is not None and total is not None and total != size:
            return Verdict("restart", 0, total, "the file changed size on the server")
        if validator.if_range() and not validator.same_as(fresh):
            return Verdict("restart", 0, total, "the file changed on the server (validator differs)")
        return Verdict("write", first, total if total is not None else size)
    return Verdict("restart", 0, None, f"unexpected HTTP {status}")


class Opening(NamedTuple):
    """What the first answer for a file means (`judge_first`), for Transfer to act on."""

    size: int | None = None
    """The whole file's size, when the answer tells it."""
    carried_end: int | None = None
    """Where the bytes this answer carries end: a 206 to the first-piece request (None: a 200,
    whose body is the file)."""
    validator: Validator = Validator()
    connections: int = 1
    """How many connections the file may take."""
    whole: bool = False
    """Whether this answer carries the whole file (so a Content-Digest describes the file)."""
    refused: str = ""
    """Why this answer cannot start the file; "" when it can."""
    lengths_disagree: bool = False
    """The refusal is a 206 whose lengths contradict each other (asked again like a cut body)."""


def judge_first(status: int, headers, *, segments: int, min_segment: int) -> Opening:
    """The first 2xx/416 answer for a file (to a plain GET, or to a request for its first piece):
    its size, the bytes it carries, and how many connections the file may take.

    >>> judge_first(206, {"content-range": "bytes 0-99/1000", "etag": '"e"'}, segments=4, min_segment=100)[:2]
    (1000, 100)
    """
    if status == 200:
        size, end = content_length(headers), None
    elif status == 206:
        crange = parse_content_range(headers.get("content-range"))
        disagreement = length_disagrees(headers, crange)
        if disagreement:
            return Opening(refused=disagreement, lengths_disagree=True)
        if not (crange and crange[0] == 0 and crange[2] is not None):
            return Opening(refused=f"unexpected HTTP 206 to the first request "
                                   f"(Content-Range {headers.get('content-range')!r})")
        size, end = crange[2], crange[1] + 1
    elif status == 416 and (headers.get("content-range") or "").replace(" ", "").endswith("*/0"):
        size, end = 0, 0  # an empty file has no first piece
    else:
        return Opening(refused=f"unexpected HTTP {status} to the first request")
    validator = Validator.from_headers(headers)
    ranges = (status == 206 or "bytes" in (headers.get("accept-ranges") or "").lower()) and bool(validator.if_range())
    return Opening(size, end, validator, connections_for(size, ranges, segments, min_segment),
                   status == 200 or (end is not None and end == size))


class Segment:
    """One connection's share of a file: bytes [pos, end) are still to come. The connection asks
    for them in requests, [cursor, req_end); bytes before `cursor` are on disk or queued for it."""

    __slots__ = ("pos", "cursor", "end", "req_end", "owned")

    def __init__(self, pos: int, end: int, owned: bool = False) -> None:
        self.pos = pos
        """Bytes before this are on disk."""
        self.cursor = pos
        """Bytes before this are on disk or being written right now."""
        self.end = end
        self.req_end = pos
        """End of the range the current request asked for (`pos`: nothing asked yet)."""
        self.owned = owned

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.cursor)

    @property
    def unrequested(self) -> int:
        """Bytes of this segment no request has asked for yet."""
        return max(0, self.end - max(self.cursor, self.req_end)) if self.owned else self.remaining

    def __repr__(self) -> str:
        return f"Segment({self.pos}, {self.end}, owned={self.owned})"


class SegmentPlan:
    """Which parts of a file of `size` bytes are missing, and who fetches which. Thread-safe.

    `claim(piece)` gives a connection the lowest bytes nobody has asked for, at most `piece` of
    them (None: the whole of that range); `max_connections` caps connections on the file. Bytes a
    request has asked for are never handed out again, so no byte crosses the network twice.
    """

    def __init__(self, size: int, missing: list[tuple[int, int]] | None = None, *,
                 max_connections: int = 1) -> None:
        self.size = size
        self.max_connections = max(1, max_connections)
        ranges = [(a, b) for a, b in (missing if missing is not None else [(0, size)]) if a < b]
        self.segments = [Segment(a, b) for a, b in sorted(ranges)]
        self.bytes_written = 0
        """Bytes `written` so far (bytes this run put on disk)."""
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return sum(1 for s in self.segments if s.owned)

    def claim(self, piece: int | None = None) -> Segment | None:
        """The lowest bytes no request has asked for, at most `piece` of them, for one more
        connection; None when the cap is reached or nothing is left to ask for."""
        with self._lock:
            if self.active >= self.max_connections:
                return None
            free = min((s for s in self.segments if not s.owned and s.remaining > 0),
                       key=lambda s: s.cursor, default=None)
            if free is None:
                return None
            start = free.cursor
            stop = free.end if piece is None else min(free.end, start + max(1, piece))
            if free.pos == start and stop == free.end:
                free.owned = True  # the whole range, with nothing of it still on its way to disk
                free.req_end = start
                return free
            taken = Segment(start, stop, owned=True)
            self.segments.append(taken)
            if stop < free.end:
                self.segments.append(Segment(stop, free.end))
            free.end = start  # what it keeps: bytes still on their way to disk, if any
            if free.pos >= free.end:
                self.segments.remove(free)
            return taken

    def add(self, seg: Segment) -> None:
        """Put a segment a connection already works on into the plan (the first response of a
        fresh download)."""
        with self._lock:
            self.segments.append(seg)

    def can_help(self) -> bool:
        """Whether `claim` would give a range right now (a cheap look, for the scheduler)."""
        with self._lock:
            if self.active >= self.max_connections:
                return False
            return any(not s.owned and s.remaining for s in self.segments)

    def unrequested(self) -> int:
        """Bytes of the file no request has asked for yet."""
        with self._lock:
            return sum(s.unrequested for s in self.segments)

    def request(self, seg: Segment, piece: int | None) -> int:
        """The end of the next request for `seg`: at most `piece` bytes on (None: to its end)."""
        with self._lock:
            seg.req_end = seg.end if piece is None else min(seg.end, seg.cursor + piece)
            return seg.req_end

    def reserve(self, seg: Segment, length: int) -> tuple[int, int]:
        """(offset, count): where and how many of `length` arriving bytes the owner of `seg` may
        write; fewer than `length` when its request's end has been reached."""
        with self._lock:
            offset = seg.cursor
            take = max(0, min(length, min(seg.end, seg.req_end) - offset))
            seg.cursor += take
            return offset, take

    def written(self, seg: Segment, length: int) -> None:
        """Record that `length` reserved bytes are now on disk."""
        with self._lock:
            seg.pos += length
            self.bytes_written += length
            if seg.pos >= seg.end and not seg.owned and seg in self.segments:
                self.segments.remove(seg)

    def release(self, seg: Segment) -> None:
        """The owner stops working on `seg` (finished, failed or interrupted). Bytes it received
        stay counted (they are on disk, or queued to be written); the rest may be claimed again."""
        with self._lock:
            seg.req_end = seg.cursor
            seg.owned = False
            if seg.pos >= seg.end:
                self.segments.remove(seg)

    def missing(self) -> list[tuple[int, int]]:
        """Ranges not on disk yet, for the state file."""
        with self._lock:
            return [(s.pos, s.end) for s in sorted(self.segments, key=lambda s: s.pos) if s.pos < s.end]

    def prefix(self) -> int:
        """Bytes at the start of the file that are all on disk."""
        with self._lock:
            return min((s.pos for s in self.segments if s.pos < s.end), default=self.size)

    def done(self) -> bool:
        with self._lock:
            return all(s.pos >= s.end for s in self.segments)

    def fetched(self) -> int:
        """Bytes of the file on disk."""
        with self._lock:
            return self.size - sum(s.end - s.pos for s in self.segments if s.pos < s.end)


UNKNOWN_END = 1 << 62
"""End of a range whose file size the server has not told."""


def connections_for(size: int | None, accepts_ranges: bool, segments: int, min_segment: int) -> int:
    """How many connections a file of `size` may use: one unless it accepts ranges and each of at
    least two segments gets `min_segment` bytes."""
    if not accepts_ranges or size is None or segments < 2:
        return 1
    return max(1, min(segments, size // max(1, min_segment)))
