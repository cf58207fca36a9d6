"""What to do about a file already under its final name: count it as there, check it, or fetch it
again. Decisions only; the caller stats and hashes.

    >>> from types import SimpleNamespace as Known
    >>> on_disk(Known(complete=True, size=10, sha256=None), present_size=10, digests=(), check_integrity=False)
    Verdict(action='skip', reason='', expected=())
    >>> on_disk(Known(complete=True, size=10, sha256=None), present_size=7, digests=(), check_integrity=False).action
    'fetch'

A file under its final name is complete (only verified bytes get that name), so by default it is
already there. It is not trusted when something known about it disagrees: the size the index
recorded when it was completed (a stat, cheap enough for every re-run), or a digest the user gave
for the URL (`--checksum`, `checksum=`, `--sums`: the file is hashed first). `--check-integrity`
also hashes every file the index has a sha256 for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .digests import Expected, mismatch, spelled

SKIP, FETCH, VERIFY = "skip", "fetch", "verify"
_SKIP = _FETCH = None  # set below: the plain verdicts, shared (asked for once per URL of a long list)


class Known(Protocol):
    """What the index recorded for a URL (index.Entry is one)."""

    complete: bool
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class Verdict:
    """`action`: "skip" (already there), "fetch" (get it; with `reason` set, the file under the
    name is to be replaced, and `reason` says why), or "verify" (hash it against `expected`,
    then call `after_hashing`)."""

    action: str
    reason: str = ""
    expected: tuple[Expected, ...] = ()


def on_disk(known: Known | None, present_size: int | None, digests: Sequence[Expected],
            check_integrity: bool) -> Verdict:
    """The verdict on a URL's final name: `present_size` is the size of the file under it (None
    when there is none), `digests` what the user said the bytes must hash to."""
    if present_size is None:
        return _FETCH
    if known is not None and known.complete and known.size is not None and known.size != present_size:
        return Verdict(FETCH, f"it has {present_size:,} bytes, not the {known.size:,} it was downloaded with")
    expected = tuple(digests)
    if check_integrity and known is not None and known.complete and known.sha256 and \
            not any(e.algorithm == "sha256" for e in expected):
        expected += (Expected("sha256", known.sha256, "the index"),)
    if expected:
        return Verdict(VERIFY, expected=expected)
    return _SKIP


def after_hashing(expected: Sequence[Expected], actual: dict[str, str]) -> Verdict:
    """The verdict once the file's digests (`{algorithm: hex}`) are known."""
    wrong = mismatch(expected, actual)
    if wrong is None:
        return _SKIP
    return Verdict(FETCH, f"it did not match the expected {spelled(wrong.algorithm)}"
                   + (" (--check-integrity)" if wrong.source == "the index" else ""))


_SKIP, _FETCH = Verdict(SKIP), Verdict(FETCH)
