"""Taking apart the URLs of a long list quickly: host and path without `urlsplit`.

Most URLs in a list are plain: `http(s)://host[:port]/path?query`, a host name or IPv4 address,
no credentials, no IPv6 literal. For those one regular expression gives the host and the path
(urlsplit costs several microseconds, and every URL of a million-line list is taken apart more
than once); anything else goes through urlsplit, which stays the authority::

    >>> plain_parts("https://Example.org:8443/a/b.iso?x=1")
    ('example.org', 8443, '/a/b.iso')
    >>> plain_parts("http://user@host/a") is None
    True
"""
from __future__ import annotations

import functools
import re

_PLAIN_URL = re.compile(r"https?://([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?([/?#].*)?",
                        re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=2048)
def plain_parts(url: str) -> tuple[str, int | None, str] | None:
    """(host in lower case, port or None, path without query and fragment) of a plain URL, or
    None when the URL is not plain (then use urlsplit). A port above 65535 is not plain either.
    Cached for the last few thousand URLs: a URL is checked when its line is read, then named and
    counted against its host a batch later."""
    match = _PLAIN_URL.fullmatch(url)
    if match is None:
        return None
    host, port, rest = match.groups()
    if port is not None:
        port = int(port)
        if port > 65535:
            return None
    path = rest or ""
    if path[:1] != "/":
        path = ""
    else:
        for mark in ("?", "#"):
            cut = path.find(mark)
            if cut >= 0:
                path = path[:cut]
    return host.lower(), port, path
