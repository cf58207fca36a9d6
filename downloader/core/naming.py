"""Which name a download is saved under: always one safe path component.

    >>> target_name("https://h/dir/My%20File.iso?x=1", None)
    'My File.iso'
    >>> target_name("https://h/a", 'attachment; filename="../../etc/passwd"')
    'passwd'

The name comes from `Content-Disposition` (RFC 6266 `filename*=` preferred over `filename=`, with or
without a disposition type before them), else the URL's last path segment, percent-decoded, without
the query; `index.html` for an empty path.
Whatever the source, the result has no separators, no `..`, no control characters, and fits in
`MAX_NAME_BYTES`, so `NAME.part.state` still fits in a 255-byte file-system name.
"""
from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import unquote, urlsplit

from .headers import header_text
from .urls import plain_parts

PART_SUFFIX = ".part"
STATE_SUFFIX = ".part.state"
STATE_DIR = ".downloader"
"""Folder inside the output folder where the batch index lives, out of the user's way."""
MAX_NAME_BYTES = 255 - len(STATE_SUFFIX)
_RESERVED = {STATE_DIR}


def name_from_content_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition header asks for (unsanitised), or None.

        >>> name_from_content_disposition('filename="report.pdf"')
        'report.pdf'

    RFC 6266 wants a disposition type first (`attachment; filename=...`), but real servers send
    `filename="report.pdf"` or `filename=name; charset=x` alone, and curl and wget take the name
    from those too: a header that opens with a parameter is read as if it said `attachment` first.
    """
    if not value:
        return None
    from email.message import Message
    from email.utils import collapse_rfc2231_value
    value = header_text(value)  # raw UTF-8 in filename="..." reads the same in every engine
    if "=" in value.split(";", 1)[0]:  # no disposition type: the first item is a parameter
        value = "attachment; " + value
    message = Message()
    try:
        message["content-disposition"] = value
        params = message.get_params(header="content-disposition") or []
    except (ValueError, TypeError, IndexError):
        return None
    plain = extended = None
    for key, param in params[1:]:
        if key.lower() != "filename":
            continue
        if isinstance(param, tuple):
            try:
                extended = collapse_rfc2231_value(param)
            except (LookupError, UnicodeError):
                continue
        else:
            plain = param
    return extended or plain or None


def name_from_url(url: str) -> str:
    """The last path segment of a URL, percent-decoded, without the query; `index.html` if empty."""
    plain = plain_parts(url)
    path = plain[2] if plain is not None else urlsplit(url).path
    segment = path.rsplit("/", 1)[-1]
    if "%" in segment:
        segment = unquote(segment, errors="replace")
    return segment or "index.html"


def safe_name(raw: str) -> str:
    """Make any string one safe path component (see the module docstring)."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if not name.isprintable():  # printable rules out every category replaced here (most names are)
        name = "".join("_" if (unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") or c == "\x7f")
                       else c for c in name)
    name = name.strip().rstrip(".").strip()
    if not name or set(name) <= {"."}:
        name = "_"
    name = _fit(name, MAX_NAME_BYTES - 1)
    if name in _RESERVED or name.endswith(PART_SUFFIX) or name.endswith(STATE_SUFFIX):
        name += "_"
    return name


def target_name(url: str, content_disposition: str | None) -> str:
    """The safe name to save `url` under, given the response's Content-Disposition header."""
    return safe_name(name_from_content_disposition(content_disposition) or name_from_url(url))


def disambiguate(name: str, url: str) -> str:
    """A distinct, deterministic name for `url` when `name` is taken by another URL of the batch:
    `stem-<8 hex of the URL's digest>.ext`."""
    tag = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem, dot, ext = name.rpartition(".")
    if not stem or len(ext) > 10:
        stem, dot, ext = name, "", ""
    return _fit(f"{stem}-{tag}{dot}{ext}", MAX_NAME_BYTES, keep_tail=len(tag) + 1 + len(dot + ext))


def _fit(name: str, limit: int, keep_tail: int | None = None) -> str:
    """Cut `name` to at most `limit` UTF-8 bytes, keeping its extension (or `keep_tail` chars)."""
    if len(name.encode("utf-8", "surrogatepass")) <= limit:
        return name
    if keep_tail is None:
        stem, dot, ext = name.rpartition(".")
        keep_tail = len(dot + ext) if stem and len(ext) <= 10 else 0
    tail = name[len(name) - keep_tail:] if keep_tail else ""
    head = name[:len(name) - keep_tail] if keep_tail else name
    budget = limit - len(tail.encode("utf-8", "surrogatepass"))
    encoded = head.encode("utf-8", "surrogatepass")[:max(budget, 1)]
    return encoded.decode("utf-8", "ignore").rstrip(".") + tail or "_"


def relative_target(url: str, content_disposition: str | None = None, *, out: str | None = None,
                    subdir: str | None = None) -> str:
    """Where a job's file goes, relative to the output folder: the name the input asked for (aria2
    `out=`), else `target_name`; inside the safe form of `subdir` (aria2 `dir=`) when given."""
    base = safe_name(out) if out else target_name(url, content_disposition)
    sub = safe_subdir(subdir) if subdir else None
    return f"{sub}/{base}" if sub else base


def safe_subdir(raw: str) -> str | None:
    """A relative folder path from aria2 `dir=`, each part made safe; None for an empty path.
    `..` goes up only within the output folder, and absolute paths are taken as relative to it:
    `sub/../x` is `x`, `../../x` is `x`, `/srv/x` is `srv/x`."""
    parts: list[str] = []
    for part in raw.replace("\\", "/").split("/"):
        part = part.strip()
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(safe_name(part))
    return "/".join(parts) or None
