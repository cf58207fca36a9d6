"""TLS for a batch, decided once for every engine, and how a TLS failure is worded.

Which certificate authorities to trust, whether to verify at all and which client certificate to
present are read once per batch, from the options and the environment, into one frozen
`TlsSettings` that every engine consumes alike: libcurl as CAINFO/CAPATH/SSLCERT options, requests
and aiohttp as one Python `ssl.SSLContext`. Left to themselves they would disagree (requests trusts
certifi's bundle, aiohttp the system's, the pycurl wheel's libcurl a Red Hat path that other
systems do not have)::

    >>> decide_tls(ca_certificate=None, environ={"SSL_CERT_FILE": "/etc/hosts"}).ca_file
    '/etc/hosts'

Trust, first match wins: `--insecure` (no verification); `--ca-certificate FILE`; the variables
`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `SSL_CERT_FILE`, `SSL_CERT_DIR` (a file, or a folder of
hashed certificates as `c_rehash` makes); the system's store as OpenSSL finds it
(`/etc/ssl/certs/ca-certificates.crt` on Debian); certifi's bundle when the system has none. A
file named by an option or a variable that cannot be used is refused up front (`ValueError`, one
line naming it), as curl refuses it, rather than found out on the first https:// URL.

A failure is worded here too (`certificate_rejected`, `handshake_failed`), so that every engine
says the same line for the same event: each engine only digs the verify code or the TLS reason out
of its library's exception.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import ssl

CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
"""Environment variables that name the certificates to trust, in the order they are looked at."""

CA_OPTION = "--ca-certificate"
HTTP_ALPN = ("http/1.1",)
"""What the Python engines offer in ALPN: they speak HTTP/1.1 only (libcurl offers h2 too)."""


@dataclass(frozen=True)
class TlsSettings:
    """How every engine of a batch does TLS (see the module docstring)."""

    verify: bool = True
    """Check the server's certificate and host name (`--insecure` turns it off)."""
    ca_file: str | None = None
    """A PEM bundle of the certificate authorities to trust."""
    ca_dir: str | None = None
    """A folder of hashed certificates to trust (OpenSSL's CApath), when no bundle is named."""
    trusted: str = ""
    """Where the trust came from, for messages: "--ca-certificate", a variable's name, "the
    system store", "certifi"."""
    cert_file: str | None = None
    """A client certificate (PEM) to present; its key is in `key_file`, or in this file too."""
    key_file: str | None = None
    system_pending: bool = False
    """The trust is the system's store, not looked up yet: `trust()` looks it up when a first
    https:// connection needs it, on the machine that makes it (a cluster's worker finds its own).
    Finding it loads Python's ssl module (about 6 ms), which an http:// batch in the curl mode
    does not need at all."""

    def trust(self) -> TlsSettings:
        """These settings with the system's store looked up (`ca_file`, `ca_dir` and `trusted`
        final), once; the settings themselves when nothing was left to look up."""
        if not self.system_pending:
            return self
        found = self.__dict__.get("_found")
        if found is None:  # two threads may both look: they find the same store
            ca_file, ca_dir = system_store()
            found = self.__dict__["_found"] = replace(
                self, ca_file=ca_file, ca_dir=ca_dir, system_pending=False,
                trusted="the system store" if (ca_file or ca_dir) else "nothing")
        return found

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """These settings as a Python ssl context: the thread and async engines' TLS, shared by
        every connection. Built on first use, once, as loading a CA bundle costs tens of
        milliseconds (34 ms for Debian's), which a batch of http:// URLs need not pay."""
        context = self.__dict__.get("_ssl_context")
        if context is None:
            with _BUILDING:
                context = self.__dict__.get("_ssl_context")
                if context is None:
                    context = self.__dict__["_ssl_context"] = self.trust()._new_ssl_context()
        return context

    def _new_ssl_context(self) -> ssl.SSLContext:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.verify:
            if self.ca_file or self.ca_dir:
                context.load_verify_locations(cafile=self.ca_file, capath=self.ca_dir)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            context.post_handshake_auth = True
        context.set_alpn_protocols(list(HTTP_ALPN))
        return context


_BUILDING = threading.Lock()


def decide_tls(*, ca_certificate: str | os.PathLike | None = None, insecure: bool = False,
               certificate: str | os.PathLike | None = None, private_key: str | os.PathLike | None = None,
               environ: Mapping[str, str] | None = None, system: tuple[str | None, str | None] | None = None,
               ) -> TlsSettings:
    """The batch's TLS settings from the options and the environment (`os.environ` by default).
    `system` is (CA file, CA folder) of the system store; by default `system_store()` finds it
    when a first https:// connection needs it (`TlsSettings.trust`).
    Raises ValueError with one line naming the option or variable whose file cannot be used."""
    environ = os.environ if environ is None else environ
    cert_file, key_file = _client_certificate(certificate, private_key)
    if insecure:
        return TlsSettings(verify=False, trusted="--insecure", cert_file=cert_file, key_file=key_file)
    ca_file, ca_dir, trusted = _trust(ca_certificate, environ, system)
    return TlsSettings(verify=True, ca_file=ca_file, ca_dir=ca_dir, trusted=trusted, cert_file=cert_file,
                       key_file=key_file, system_pending=not trusted)


def _trust(ca_certificate, environ: Mapping[str, str], system) -> tuple[str | None, str | None, str]:
    if ca_certificate is not None:
        path = os.fspath(ca_certificate)
        _check_ca_bundle(path, CA_OPTION)
        return path, None, CA_OPTION
    for name in CA_VARIABLES:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if os.path.isdir(value):
            return None, value, name
        _readable(value, f"{name}={value}")
        return value, None, name
    if system is None:
        return None, None, ""  # the system's store, looked up on first use
    ca_file, ca_dir = system
    return ca_file, ca_dir, "the system store" if (ca_file or ca_dir) else "nothing"


def system_store() -> tuple[str | None, str | None]:
    """(CA file, CA folder) this system's OpenSSL trusts by default, whatever the environment says;
    certifi's bundle (requests' dependency) when the system has neither; (None, None) when there
    is not even that, and then no certificate can be verified."""
    import ssl
    paths = ssl.get_default_verify_paths()
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        return paths.openssl_cafile, None
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath) and os.listdir(paths.openssl_capath):
        return None, paths.openssl_capath
    from importlib.util import find_spec  # located, not imported: core imports no third-party module
    spec = find_spec("certifi")
    if spec is not None and spec.origin:
        bundle = os.path.join(os.path.dirname(spec.origin), "cacert.pem")
        if os.path.isfile(bundle):
            return bundle, None
    return None, None


def _readable(path: str, what: str) -> bytes:
    """The first bytes of `path`, or ValueError naming `what` (an option or a variable)."""
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a folder, not a PEM file")
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 16)
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None


def _check_ca_bundle(path: str, what: str) -> None:
    import ssl
    _readable(path, what)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        raise ValueError(f"{what}: {path} holds no PEM certificate") from None


def _client_certificate(certificate, private_key) -> tuple[str | None, str | None]:
    """(certificate file, key file) once both are checked to load together; (None, None) without."""
    if certificate is None:
        if private_key is not None:
            raise ValueError("--private-key goes with --certificate FILE")
        return None, None
    cert_file = os.fspath(certificate)
    key_file = os.fspath(private_key) if private_key is not None else None
    head = _readable(cert_file, "--certificate")
    if key_file is None and b"PRIVATE KEY" not in head:
        raise ValueError(f"--certificate: {cert_file} holds no private key; give it with --private-key FILE")
    key_head = _readable(key_file, "--private-key") if key_file is not None else head
    if b"ENCRYPTED" in key_head:
        raise ValueError(f"--private-key: {key_file or cert_file} is protected by a passphrase, which is not "
                         "supported (decrypt it with: openssl pkey -in KEY -out PLAIN-KEY)")
    import ssl
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except (ssl.SSLError, ValueError, OSError) as exc:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else \
            "not a PEM certificate and key"
        shown = f"{cert_file} with {key_file}" if key_file else cert_file
        raise ValueError(f"--certificate: cannot use {shown} ({reason})") from None
    return cert_file, key_file


def _no_passphrase() -> bytes:
    raise ValueError("the private key is protected by a passphrase")


# --- how a failure is worded ----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFailure:
    """One try's TLS failure, worded alike for every engine (each raises it as a TransferError)."""

    message: str
    retryable: bool = False
    """A certificate or a refusal does not heal; only a connection cut during the handshake may."""


UNTRUSTED = {2: "unable to get issuer certificate", 18: "self-signed certificate",
             19: "self-signed certificate in certificate chain", 20: "unable to get local issuer certificate",
             21: "unable to verify the first certificate"}
"""OpenSSL's verify codes (X509_V_ERR_*) that mean: no trusted authority issued it."""
HOST_MISMATCH = {62, 64}
"""X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH."""
VERIFY_REASONS = {**UNTRUSTED, 9: "certificate is not yet valid", 10: "certificate has expired",
                  23: "certificate revoked", 62: "hostname mismatch", 64: "hostname mismatch"}
"""The reason shown for each verify code, in OpenSSL 3's words, whatever the OpenSSL an engine links
says (1.1 wrote "self signed"; libcurl checks host names itself and words it its own way)."""
SKIP = "--insecure skips verification"


def certificate_rejected(code: int | None, said: str, settings: TlsSettings | None = None) -> TlsFailure:
    """The failure for a server certificate that did not verify: OpenSSL's verify `code`
    (`HOST_MISMATCH` for a host name it does not name), `said` the library's words for it.

        >>> certificate_rejected(18, "self signed certificate").message
        'TLS: certificate verify failed (self-signed certificate); use --ca-certificate FILE to trust it'
    """
    reason = VERIFY_REASONS.get(code) or _clean(said) or "unknown reason"
    if code in UNTRUSTED:
        if settings is not None and settings.trusted == CA_OPTION:
            hint = f"no authority in the {CA_OPTION} file issued it"
        else:
            hint = f"use {CA_OPTION} FILE to trust it"
    elif code in HOST_MISMATCH:
        hint = f"use a host name the certificate names ({SKIP})"
    elif code == 10:
        hint = f"the server must renew it ({SKIP})"
    elif code == 9:
        hint = f"check this machine's clock ({SKIP})"
    else:
        hint = SKIP
    return TlsFailure(f"TLS: certificate verify failed ({reason}); {hint}")


CLIENT_CERTIFICATE_ALERTS = frozenset({
    "handshake failure", "certificate required", "bad certificate", "unknown ca", "certificate unknown",
    "certificate expired", "certificate revoked", "unsupported certificate", "access denied", "decrypt error"})
"""Alerts a server sends when it does not accept the client certificate it asked for (or got none)."""
GIVE_CERTIFICATE = "use --certificate FILE with --private-key FILE"


def handshake_failed(reason: str, settings: TlsSettings | None = None) -> TlsFailure:
    """The failure for a handshake that did not complete, from the TLS library's reason: an alert
    the server sent ("sslv3 alert handshake failure", "SSLV3_ALERT_HANDSHAKE_FAILURE", "ssl/tls
    alert handshake failure"), a connection cut ("unexpected eof while reading", "connection
    reset": retried, like any dropped connection), or anything else ("wrong version number").

        >>> handshake_failed("TLSV13_ALERT_CERTIFICATE_REQUIRED").message
        'TLS: the server requires a client certificate (alert: certificate required); use --certificate FILE \
with --private-key FILE'
    """
    text = _clean(reason)
    sent = settings is not None and settings.cert_file is not None
    alert = re.search(r"alert ([a-z ]+)", text)
    if alert:
        name = alert.group(1).strip()
        if sent and name in CLIENT_CERTIFICATE_ALERTS:
            return TlsFailure(f"TLS: the server refused the client certificate (alert: {name})")
        if not sent and name == "certificate required":
            return TlsFailure(f"TLS: the server requires a client certificate (alert: {name}); {GIVE_CERTIFICATE}")
        if not sent and name == "handshake failure":
            return TlsFailure(f"TLS: the server refused the handshake (alert: {name}); if it requires a client "
                              f"certificate, {GIVE_CERTIFICATE}")
        return TlsFailure(f"TLS: the server refused the handshake (alert: {name})")
    if any(word in text for word in ("eof", "reset", "closed", "broken pipe")):
        hint = "it may have refused the client certificate" if sent else \
            f"if it requires a client certificate, {GIVE_CERTIFICATE}"
        return TlsFailure(f"TLS: the server closed the connection during the handshake; {hint}", retryable=True)
    if "wrong version number" in text or "packet length too long" in text:
        return TlsFailure(f"TLS: handshake failed ({text}); does the server speak HTTPS on this port?")
    return TlsFailure(f"TLS: handshake failed ({text or 'unknown reason'})")


def _clean(text: str | None) -> str:
    """A library's reason in OpenSSL's lower-case words: "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3
    alert handshake failure (_ssl.c:1006)" and "error:0A000410:SSL routines::ssl/tls alert handshake
    failure, errno 0" both end in "... alert handshake failure"."""
    text = (text or "").strip()
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    text = re.sub(r"^\[[A-Z0-9_: ]+\]\s*", "", text)
    text = text.rsplit("::", 1)[-1]
    text = re.sub(r",\s*errno \d+$", "", text)
    return text.replace("_", " ").strip().rstrip(".").lower()
