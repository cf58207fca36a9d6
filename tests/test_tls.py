"""core.tls: which certificates a batch trusts and presents, decided once for every engine, and the
words every engine uses for a TLS failure."""
from __future__ import annotations

import ssl
import subprocess
import sys

import pytest
import trustme

from downloader.core.tls import (CA_VARIABLES, TlsSettings, certificate_rejected, decide_tls, handshake_failed,
                                 system_store)
from tls_servers import write_pem

SYSTEM = ("/system/ca.pem", None)
"""A system store for tests that must not depend on this machine's."""


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """A CA file, a client certificate with its key (apart and together), another key, an encrypted key."""
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    client = ca.issue_cert("client.example")
    stranger = trustme.CA().issue_cert("stranger.example")
    files = {
        "ca": write_pem(folder / "ca.pem", ca.cert_pem),
        "cert": write_pem(folder / "client.pem", *client.cert_chain_pems),
        "key": write_pem(folder / "client.key", client.private_key_pem),
        "both": write_pem(folder / "both.pem", client.private_key_pem, *client.cert_chain_pems),
        "other_key": write_pem(folder / "other.key", stranger.private_key_pem),
        "text": folder / "notes.txt",
    }
    files["text"].write_text("not a certificate\n")
    encrypted = folder / "encrypted.key"
    done = subprocess.run(["openssl", "pkey", "-in", str(files["key"]), "-aes256", "-passout", "pass:pw",
                           "-out", str(encrypted)], capture_output=True)
    files["encrypted"] = encrypted if done.returncode == 0 else None
    return files


def test_insecure_turns_verification_off_and_keeps_the_client_certificate(pems):
    settings = decide_tls(insecure=True, ca_certificate=pems["ca"], certificate=pems["cert"],
                          private_key=pems["key"], environ={}, system=SYSTEM)
    assert (settings.verify, settings.ca_file, settings.cert_file) == (False, None, str(pems["cert"]))
    context = settings.ssl_context
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)


def test_the_option_wins_over_every_variable(pems, tmp_path):
    environ = {name: str(pems["ca"]) for name in CA_VARIABLES}
    settings = decide_tls(ca_certificate=pems["cert"], environ=environ, system=SYSTEM)
    assert (settings.ca_file, settings.ca_dir, settings.trusted) == (str(pems["cert"]), None, "--ca-certificate")


@pytest.mark.parametrize("set_, wins", [
    (CA_VARIABLES, "REQUESTS_CA_BUNDLE"),
    (("CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"), "CURL_CA_BUNDLE"),
    (("SSL_CERT_FILE", "SSL_CERT_DIR"), "SSL_CERT_FILE"),
    (("SSL_CERT_DIR",), "SSL_CERT_DIR"),
])
def test_the_variables_are_looked_at_in_order(tmp_path, set_, wins):
    environ = {}
    for name in set_:
        path = tmp_path / name
        if name == "SSL_CERT_DIR":
            path.mkdir()
        else:
            path.write_text("-")
        environ[name] = str(path)
    settings = decide_tls(environ=environ, system=SYSTEM)
    assert settings.trusted == wins
    assert (settings.ca_dir if wins == "SSL_CERT_DIR" else settings.ca_file) == str(tmp_path / wins)


def test_an_empty_variable_counts_as_unset_and_then_the_system_store_is_trusted():
    settings = decide_tls(environ={"REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": "  "}, system=SYSTEM)
    assert (settings.ca_file, settings.trusted) == ("/system/ca.pem", "the system store")


def test_the_system_store_is_what_openssl_was_built_to_trust_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", "/nowhere.pem")
    ca_file, ca_dir = system_store()
    paths = ssl.get_default_verify_paths()
    assert (ca_file, ca_dir) != ("/nowhere.pem", None)
    assert ca_file in (paths.openssl_cafile, None) or ca_file.endswith("cacert.pem")  # else certifi's


def test_the_system_store_is_looked_up_when_a_first_https_connection_needs_it():
    settings = decide_tls(environ={})
    assert settings.system_pending and (settings.ca_file, settings.ca_dir) == (None, None)
    found = settings.trust()
    assert not found.system_pending and (found.ca_file, found.ca_dir) == system_store()
    assert found.trusted == ("the system store" if found.ca_file or found.ca_dir else "nothing")
    assert settings.trust() is found and found.trust() is found  # looked up once
    given = decide_tls(environ={}, system=SYSTEM)
    assert given.trust() is given and given.ca_file == "/system/ca.pem"


def test_an_http_batch_in_the_curl_mode_never_loads_pythons_ssl(url, tmp_path):
    pytest.importorskip("pycurl")
    argv = ["get", "-m", "curl", "-q", "-d", str(tmp_path), url("/gen/plain.bin", size=10)]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "downloader", *argv], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "pycurl" in imported and "ssl" not in imported  # the check can see an import when there is one
    assert (tmp_path / "plain.bin").stat().st_size == 10


@pytest.mark.parametrize("options, line", [
    ({"ca_certificate": "/no/such.pem"}, "--ca-certificate: cannot read /no/such.pem (No such file or directory)"),
    ({"ca_certificate": "{text}"}, "--ca-certificate: {text} holds no PEM certificate"),
    ({"ca_certificate": "{folder}"}, "--ca-certificate: {folder} is a folder, not a PEM file"),
    ({"private_key": "{key}"}, "--private-key goes with --certificate FILE"),
    ({"certificate": "/no/cert.pem"}, "--certificate: cannot read /no/cert.pem (No such file or directory)"),
    ({"certificate": "{cert}"}, "--certificate: {cert} holds no private key; give it with --private-key FILE"),
    ({"certificate": "{cert}", "private_key": "/no/key"}, "--private-key: cannot read /no/key (No such file or "
                                                          "directory)"),
    ({"certificate": "{cert}", "private_key": "{other_key}"},
     "--certificate: cannot use {cert} with {other_key} (the key does not match the certificate)"),
    ({"certificate": "{text}", "private_key": "{key}"},
     "--certificate: cannot use {text} with {key} (not a PEM certificate and key)"),
])
def test_a_file_that_cannot_be_used_is_one_line_naming_the_option(pems, options, line):
    names = {k: str(v) for k, v in pems.items() if v is not None} | {"folder": str(pems["ca"].parent)}
    with pytest.raises(ValueError) as caught:
        decide_tls(environ={}, system=SYSTEM, **{k: v.format(**names) for k, v in options.items()})
    assert str(caught.value) == line.format(**names)


def test_a_passphrase_protected_key_is_refused_without_asking_for_the_passphrase(pems):
    if pems["encrypted"] is None:
        pytest.skip("openssl could not write an encrypted key")
    with pytest.raises(ValueError, match=r"^--private-key: .*encrypted\.key is protected by a passphrase"):
        decide_tls(certificate=pems["cert"], private_key=pems["encrypted"], environ={}, system=SYSTEM)


def test_a_variable_naming_a_missing_file_is_one_line_naming_the_variable():
    with pytest.raises(ValueError) as caught:
        decide_tls(environ={"CURL_CA_BUNDLE": "/gone/ca.pem"}, system=SYSTEM)
    assert str(caught.value) == "CURL_CA_BUNDLE=/gone/ca.pem: cannot read /gone/ca.pem (No such file or directory)"


def test_a_certificate_with_its_key_in_one_file_needs_no_private_key(pems):
    settings = decide_tls(certificate=pems["both"], environ={}, system=(str(pems["ca"]), None))
    assert (settings.cert_file, settings.key_file) == (str(pems["both"]), None)
    assert settings.ssl_context.post_handshake_auth  # a TLS 1.3 server may ask after the handshake


def test_the_python_context_trusts_only_what_was_decided(pems):
    context = decide_tls(ca_certificate=pems["ca"], environ={}, system=SYSTEM).ssl_context
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 1
    nothing = TlsSettings(verify=True, trusted="nothing").ssl_context
    assert nothing.cert_store_stats()["x509_ca"] == 0  # no store found: every certificate fails, none passes


@pytest.mark.parametrize("code, said, line", [
    (18, "self signed certificate", "TLS: certificate verify failed (self-signed certificate); "
                                    "use --ca-certificate FILE to trust it"),
    (20, "", "TLS: certificate verify failed (unable to get local issuer certificate); "
             "use --ca-certificate FILE to trust it"),
    (10, "certificate has expired", "TLS: certificate verify failed (certificate has expired); "
                                    "the server must renew it (--insecure skips verification)"),
    (9, "", "TLS: certificate verify failed (certificate is not yet valid); check this machine's clock "
            "(--insecure skips verification)"),
    (64, "IP address mismatch, certificate is not valid for '127.0.0.1'.",
     "TLS: certificate verify failed (hostname mismatch); use a host name the certificate names "
     "(--insecure skips verification)"),
    (26, "unsupported certificate purpose", "TLS: certificate verify failed (unsupported certificate purpose); "
                                            "--insecure skips verification"),
])
def test_a_rejected_certificate_is_worded_by_its_verify_code(code, said, line):
    failure = certificate_rejected(code, said)
    assert (failure.message, failure.retryable) == (line, False)


def test_an_untrusted_certificate_given_a_ca_file_says_that_file_does_not_hold_its_issuer():
    settings = TlsSettings(ca_file="/x.pem", trusted="--ca-certificate")
    assert certificate_rejected(20, "", settings).message == (
        "TLS: certificate verify failed (unable to get local issuer certificate); no authority in the "
        "--ca-certificate file issued it")


@pytest.mark.parametrize("reason", ["[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure (_ssl.c:1006)",
                                    "SSLV3_ALERT_HANDSHAKE_FAILURE",
                                    "TLS connect error: error:0A000410:SSL routines::ssl/tls alert handshake failure"])
def test_an_alert_reads_the_same_from_python_and_from_libcurl(reason):
    assert handshake_failed(reason).message == (
        "TLS: the server refused the handshake (alert: handshake failure); if it requires a client certificate, "
        "use --certificate FILE with --private-key FILE")
    with_certificate = TlsSettings(cert_file="/c.pem")
    assert handshake_failed(reason, with_certificate).message == (
        "TLS: the server refused the client certificate (alert: handshake failure)")


def test_only_a_connection_cut_during_the_handshake_is_worth_another_try():
    for reason in ("UNEXPECTED_EOF_WHILE_READING", "connection reset",
                   "TLS connect error: error:0A000126:SSL routines::unexpected eof while reading"):
        assert handshake_failed(reason).retryable, reason
    for reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_UNKNOWN_CA", "WRONG_VERSION_NUMBER",
                   "NO_PROTOCOLS_AVAILABLE", "OpenSSL SSL_read: OpenSSL/3.6.5: error:0A00045C:SSL "
                   "routines::tlsv13 alert certificate required, errno 0"):
        assert not handshake_failed(reason).retryable, reason
    assert handshake_failed("NO_PROTOCOLS_AVAILABLE").message == "TLS: handshake failed (no protocols available)"
