"""What a header's bytes say, whichever HTTP library read them.

Header values are bytes, and some servers put UTF-8 in them unencoded: a Location to `/café.bin`,
a Content-Disposition with `filename="café.pdf"`. The libraries disagree on what such bytes are.
http.client (so requests) decodes them as Latin-1 and hands over mojibake (`cafÃ©`); aiohttp
decodes them as UTF-8, keeping each byte that is not as a lone surrogate (`surrogateescape`).
`header_text` turns either spelling into the same text, so every engine names files and follows
redirects alike:

    >>> header_text("/caf\xc3\xa9.bin") == header_text("/café.bin") == "/café.bin"
    True
"""
from __future__ import annotations


def header_text(value: str) -> str:
    """The text a header value spells, as requests or aiohttp decoded it.

    A string of characters below U+0100 that, taken as Latin-1 bytes, is valid UTF-8 with
    non-ASCII bytes in it, is requests' spelling of those UTF-8 bytes. (From aiohttp the same
    string would be the UTF-8 of mojibake, which no server means.) Any other string is text
    already, save aiohttp's lone surrogates: bytes that are not UTF-8, read here as Latin-1, as
    requests reads them. What stays apart: a value mixing UTF-8 with other bytes, which requests
    hands over as all Latin-1."""
    if value.isascii():
        return value
    if max(value) < "\u0100":
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return value
    return "".join(chr(ord(c) - 0xDC00) if "\udc80" <= c <= "\udcff" else c for c in value)
