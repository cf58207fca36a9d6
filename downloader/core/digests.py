"""Digests: parsing what users and servers say a file's digest is, and checking it.

Names follow aria2 (`md5`, `sha-1`, `sha-224`, `sha-256`, `sha-384`, `sha-512`) and accept the
unhyphenated spellings (`sha256`)::

    >>> parse_checksum("sha-256=" + "ab" * 32).algorithm
    'sha256'

Servers announce digests in RFC 9530 `Repr-Digest` (the whole representation, valid on any
response) and `Content-Digest` / `Content-MD5` (the body of *this* message, so only a full 200
body can be checked against them).
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Iterable

ALGORITHMS = {"md5": "md5", "sha-1": "sha1", "sha1": "sha1", "sha-224": "sha224", "sha224": "sha224",
              "sha-256": "sha256", "sha256": "sha256", "sha-384": "sha384", "sha384": "sha384",
              "sha-512": "sha512", "sha512": "sha512"}
"""Accepted names, mapped to hashlib's."""

_HEX_LENGTH = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
_ALGO_BY_LENGTH = {length: algo for algo, length in _HEX_LENGTH.items()}
_SF_ITEM = re.compile(r"\s*([a-z0-9*_.-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:;[^,]*)?$")
_SUMS_GNU = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.+)$")
_SUMS_BSD = re.compile(r"^([A-Za-z0-9-]+) ?\((.+)\) ?= ?([0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Expected:
    """A digest the bytes must have, and who said so (for the error line)."""

    algorithm: str
    """hashlib name: "sha256"."""
    hexdigest: str
    """Lower-case hex."""
    source: str = "--checksum"


def parse_checksum(text: str, source: str = "--checksum") -> Expected:
    """`Expected` from "ALGO=HEX"; ValueError naming what is wrong."""
    algo, sep, hexdigest = text.strip().partition("=")
    algorithm = ALGORITHMS.get(algo.strip().lower())
    if not sep or algorithm is None:
        raise ValueError(f"checksum {text!r} is not ALGO=HEX with ALGO one of "
                         "md5, sha-1, sha-224, sha-256, sha-384, sha-512")
    hexdigest = hexdigest.strip().lower()
    if len(hexdigest) != _HEX_LENGTH[algorithm] or not re.fullmatch(r"[0-9a-f]+", hexdigest):
        raise ValueError(f"checksum {text!r}: a {algo} digest is {_HEX_LENGTH[algorithm]} hex digits")
    return Expected(algorithm, hexdigest, source)


def user_digests(name: str, line_checksum: str | None, checksum: Expected | None,
                 sums: dict[str, Expected]) -> list[Expected]:
    """Every digest the user gave for the file named `name` (a path in the output folder): its
    URL-file line's `checksum=`, `--checksum` (`checksum`, parsed once per batch), and its line in
    `--sums` (by base name, else by path). The intake checks a file already there against them,
    a download is verified against them."""
    if not (line_checksum or checksum or sums):
        return []
    found = []
    if line_checksum:
        found.append(parse_checksum(line_checksum, "checksum= in the URL file"))
    if checksum is not None:
        found.append(checksum)
    by_name = sums.get(os.path.basename(name)) or sums.get(name) if sums else None
    if by_name:
        found.append(by_name)
    return found


def mismatch(expected: Iterable[Expected], actual: dict[str, str]) -> Expected | None:
    """The first of `expected` that the bytes' digests (`actual`, `{algorithm: hex}`) do not
    match; None when every one matches."""
    for e in expected:
        if actual.get(e.algorithm) != e.hexdigest:
            return e
    return None


def spelled(algorithm: str) -> str:
    """An algorithm as users write it (aria2's names): "sha256" -> "sha-256"."""
    return f"sha-{algorithm[3:]}" if algorithm.startswith("sha") else algorithm


def server_digests(status: int, headers) -> list[Expected]:
    """Digests the response's headers promise for the whole file (see the module docstring).
    `headers` answers lower-case names (see core.ranges)."""
    found = []
    for header, whole_only in (("Repr-Digest", False), ("Content-Digest", True)):
        value = headers.get(header.lower())
        if value and (status == 200 or not whole_only):
            found += _structured_digests(value, header)
    md5 = headers.get("content-md5")
    if md5 and status == 200:
        try:
            raw = base64.b64decode(md5.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) * 2 == _HEX_LENGTH["md5"]:
            found.append(Expected("md5", raw.hex(), "Content-MD5"))
    return found


def _structured_digests(value: str, header: str) -> list[Expected]:
    found = []
    for item in value.split(","):
        match = _SF_ITEM.match(item)
        if not match:
            continue
        algorithm = {"sha-256": "sha256", "sha-512": "sha512"}.get(match.group(1))
        if algorithm:
            try:
                raw = base64.b64decode(match.group(2), validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) * 2 == _HEX_LENGTH[algorithm]:
                found.append(Expected(algorithm, raw.hex(), header))
    return found


def parse_sums_line(line: str) -> tuple[str, Expected] | None:
    """(file name, digest) from one line of `sha256sum`/`md5sum` output, GNU or BSD style."""
    line = line.rstrip("\r\n")
    gnu = _SUMS_GNU.match(line)
    if gnu:
        algorithm = _ALGO_BY_LENGTH.get(len(gnu.group(1)))
        name = gnu.group(2)
        if algorithm:
            return name, Expected(algorithm, gnu.group(1).lower(), "--sums")
        return None
    bsd = _SUMS_BSD.match(line)
    if bsd:
        algorithm = ALGORITHMS.get(bsd.group(1).lower())
        if algorithm and len(bsd.group(3)) == _HEX_LENGTH[algorithm]:
            return bsd.group(2), Expected(algorithm, bsd.group(3).lower(), "--sums")
    return None
