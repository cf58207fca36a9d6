"""Following redirects by hand, so every engine follows the same rules.

Engines send requests with automatic redirects off and ask `next_hop` what to do with a 3xx:

    >>> hop = next_hop("https://a/x", 302, "https://b/y", hops=0, max_hops=10)
    >>> hop.url, hop.cross_host
    ('https://b/y', True)

Rules: at most `max_hops` hops; only http and https targets; headers the user set that carry
credentials (Authorization, Cookie, Proxy-Authorization) are dropped once the host changes and
stay dropped (see `headers_for`). A Location with raw UTF-8 bytes leads to the same URL in every
engine, percent-encoded as curl sends it (see `core.headers` and `percent_encoded`).
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from .headers import header_text

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_SCHEME_AND_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
"""What a URL may hold as it is: everything else (space, control characters, non-ASCII) is escaped."""


@dataclass(frozen=True)
class Hop:
    """Where a redirect leads and whether it left the original host; or, with `refused` set, why
    it must not be followed."""

    url: str
    cross_host: bool = False
    refused: str | None = None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports made explicit, for comparing hosts."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def next_hop(url: str, status: int, location: str | None, *, hops: int, max_hops: int,
             first_url: str | None = None) -> Hop:
    """The next URL after a 3xx answer to `url`, or a Hop whose `refused` says why not.
    `hops` is how many redirects were already followed; `first_url` the URL the user asked for."""
    if not location:
        return Hop(url, refused=f"HTTP {status} redirect without a Location header")
    if hops >= max_hops:
        return Hop(url, refused=f"more than {max_hops} redirects")
    text = header_text(location).strip()
    try:
        target = percent_encoded(urljoin(url, text))
        scheme, host, port = origin(target)
    except ValueError:  # an unclosed IPv6 bracket, a port like 99999
        return Hop(url, refused=f"redirect to an invalid URL refused ({text!r})")
    if scheme not in ("http", "https"):
        return Hop(target, refused=f"redirect to a {scheme or 'relative'}: URL refused ({target})")
    if not host:
        return Hop(target, refused=f"redirect to a URL without a host refused ({target})")
    if not host.isprintable() or " " in host:
        return Hop(url, refused=f"redirect to an invalid URL refused ({text!r})")
    start = first_url or url
    return Hop(target, cross_host=(host, port) != origin(start)[1:] or _downgraded(start, target))


def percent_encoded(url: str) -> str:
    """`url` with every non-ASCII character, space and control character after the host escaped
    as %XX of its UTF-8 bytes, as curl does before it sends a redirect's URL; existing %XX
    escapes and the host are left alone (the HTTP library turns an international host into IDNA).

        >>> percent_encoded("https://h/café?q=آ b")
        'https://h/caf%C3%A9?q=%D8%A2%20b'

    Every engine then sends the same request line, whatever its library would have done with
    raw text. Lone surrogates (how a URL file's bytes that are not UTF-8 are kept) become those
    bytes again."""
    head = _SCHEME_AND_AUTHORITY.match(url)
    cut = head.end() if head else 0
    tail = url[cut:]
    if tail.isascii() and tail.isprintable() and " " not in tail:
        return url
    try:
        return url[:cut] + quote(tail, safe=_PRINTABLE_ASCII, errors="surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte stands for (U+D800), from the API
        return url[:cut] + quote(tail, safe=_PRINTABLE_ASCII, errors="surrogatepass")


def _downgraded(start: str, target: str) -> bool:
    return origin(start)[0] == "https" and origin(target)[0] == "http"


def _host_port(parts) -> str:
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return host + (f":{parts.port}" if parts.port is not None else "")


def split_userinfo(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The URL without `user:password@`, and the Basic Authorization header it stood for. Every
    engine sends credentials the same way then, and they follow the rules of `headers_for`."""
    if "@" not in url:
        return url, ()
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, ()
    return urlunsplit(parts._replace(netloc=_host_port(parts))), \
        basic_auth(unquote(parts.username or ""), unquote(parts.password or ""))


def netrc_logins(path: str | None = None) -> dict[str, tuple[str, str]]:
    """{host: (login, password)} from the user's netrc file (`$NETRC`, else `~/.netrc`), read once
    per batch; an unreadable or malformed file counts as none (as curl, wget and requests treat
    it). A URL without `user:password@` to one of these hosts (or, with a `default` entry, any
    host: key "") sends the login as Basic auth."""
    import os
    path = path or os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return {}
    import netrc  # only when there is a file: most runs have none
    try:
        entries = netrc.netrc(path).hosts
    except (OSError, netrc.NetrcParseError):
        return {}
    # the `default` entry, for any other host, goes under ""
    return {("" if host == "default" else host.lower()): (login or "", password or "")
            for host, (login, _, password) in entries.items()}


def basic_auth(login: str, password: str) -> tuple[tuple[str, str], ...]:
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    return (("Authorization", f"Basic {token}"),)


def url_key(url: str, salt: bytes) -> str:
    """How a URL is kept on disk (the index, state files) without its credentials: the URL with
    them masked, plus, when it had any, a salted digest of the whole URL, so that two URLs that
    differ only in their password stay two files."""
    shown = redact(url)
    if shown == url:
        return url
    return f"{shown} #{hashlib.sha256(salt + url.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def redact(url: str) -> str:
    """The URL as shown to people and kept on disk (messages, the report, the index): a password
    becomes `***`, and so does a user name given alone (often a token: `https://TOKEN@host/`).
    Never fails, whatever the URL holds (a bad port, a broken IPv6 literal)."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@")[-1] if "@" in url else url
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def headers_for(headers: tuple[tuple[str, str], ...], cross_host: bool) -> tuple[tuple[str, str], ...]:
    """The user's headers to send after a redirect: credentials stay with the first host."""
    if not cross_host:
        return headers
    return tuple((k, v) for k, v in headers if k.lower() not in SENSITIVE_HEADERS)
