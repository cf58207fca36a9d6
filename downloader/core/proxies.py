"""Which proxy a request goes through, decided once per batch for every engine.

The rules are the ones curl, wget and requests follow: `http_proxy`, `https_proxy` and
`all_proxy` (lower case wins over upper case; `HTTP_PROXY` is ignored when `REQUEST_METHOD` says
we run as a CGI script), and `no_proxy` (host names, domain suffixes with or without a leading
dot, `host:port`, IP networks like `10.0.0.0/8`, or `*`). The environment is read once: asking it
for every request costs requests and aiohttp about a fifth of a small file's time, and twin engines
must route alike, so they both get the proxy from here and neither reads the environment itself.

Proxies are http:// ones (https:// URLs go through them with CONNECT); a proxy URL may carry
`user:password@`. Anything else is refused up front by `problem()`.
"""
from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlsplit

from .redirects import redact

SCHEMES = ("http", "https")


def _read(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """{'http' | 'https' | 'all' | 'no': (value, variable name)} from `environ`."""
    found: dict[str, tuple[str, str]] = {}
    cgi = "REQUEST_METHOD" in environ
    for lower_wins in (False, True):
        for name, value in environ.items():
            key = name.lower()
            if not key.endswith("_proxy") or (name.islower() != lower_wins):
                continue
            if cgi and name == "HTTP_PROXY":
                continue
            if value.strip():
                found[key[:-len("_proxy")]] = (value.strip(), name)
            elif lower_wins:
                found.pop(key[:-len("_proxy")], None)  # http_proxy= (empty) unsets HTTP_PROXY
    return found


class Proxies:
    """The proxy for each URL of a batch (see the module docstring). Thread-safe (a dict cache)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        table = _read(os.environ if environ is None else environ)
        self._proxy: dict[str, str] = {}
        self._names: dict[str, str] = {}
        for scheme in SCHEMES:
            key = scheme if scheme in table else "all"
            if key in table:
                self._proxy[scheme] = _normal(table[key][0])
                self._names[scheme] = table[key][1]
        self._no = [entry.strip().lower() for entry in table.get("no", ("", ""))[0].split(",") if entry.strip()]
        self._cache: dict[tuple[str, str, int | None], str | None] = {}

    def problem(self) -> str | None:
        """Why the proxy settings cannot be used (one line naming the variable), or None."""
        for scheme, proxy in self._proxy.items():
            shown = f"{self._names[scheme]}={redact(proxy)!r}"
            try:
                parts = urlsplit(proxy)
                port = parts.port
            except ValueError as exc:
                return f"{shown}: not a proxy URL ({exc})"
            if parts.scheme != "http":
                return f"{shown}: only http:// proxies are supported (https:// URLs go through them with CONNECT)"
            if not parts.hostname or port == 0:
                return f"{shown}: not a proxy URL (no host or port)"
        return None

    def for_url(self, url: str) -> str | None:
        """The proxy URL (maybe with `user:password@`) for `url`, or None to connect directly."""
        if not self._proxy:
            return None
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower().rstrip(".")
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = None
        key = (scheme, host, port)
        if key not in self._cache:
            proxy = self._proxy.get(scheme)
            self._cache[key] = None if proxy is None or self._bypass(host, port) else proxy
        return self._cache[key]

    def _bypass(self, host: str, port: int | None) -> bool:
        import ipaddress  # only when a proxy is set and no_proxy lists something (not at start-up)
        address = _address(host)
        for entry in self._no:
            if entry == "*":
                return True
            name, entry_port = _split_port(entry)
            if entry_port is not None and entry_port != port:
                continue
            if address is not None:  # an IP address matches an equal address or a network
                try:
                    if address in ipaddress.ip_network(name, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = name.lstrip(".").rstrip(".")
            if name and (host == name or host.endswith("." + name)):
                return True
        return False


DEFAULT_PORTS = {"http": 80, "https": 443}


def _address(host: str):
    import ipaddress  # only with a no_proxy list to check, and then once
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """A no_proxy entry as (host or network, port or None): `h:81`, `[::1]:8080`, `::1`, `10.0.0.0/8`."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else -1  # a port that is not a number matches nothing
    return entry, None


def _normal(proxy: str) -> str:
    """A proxy given as `host:port` means http://host:port, as everywhere else."""
    return proxy if "://" in proxy else "http://" + proxy
