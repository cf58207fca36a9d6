"""The TLS options on the command line: usage errors are one line and exit 2, --insecure warns once,
a refused certificate is one line and exit 1, and `serve --tls` says how to trust its CA."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import trustme

from conftest import CA_VARIABLES, MODES, run_cli
from downloader.api import INSECURE_WARNING
from downloader.mockserver import MockServer, gen_bytes
from tls_servers import write_pem

UNTRUSTED = ("TLS: certificate verify failed (unable to get local issuer certificate); "
             "use --ca-certificate FILE to trust it")


@pytest.fixture(scope="module")
def https_server():
    with MockServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def client_pems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client")
    leaf = trustme.CA().issue_cert("client.example")
    return (write_pem(folder / "client.pem", *leaf.cert_chain_pems), write_pem(folder / "client.key",
                                                                               leaf.private_key_pem))


@pytest.fixture
def bare_environment(monkeypatch):
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("args, line", [
    (["--ca-certificate", "/no/such.pem"], "--ca-certificate: cannot read /no/such.pem (No such file or directory)"),
    (["--private-key", "{key}"], "--private-key goes with --certificate FILE"),
    (["--certificate", "{cert}"], "--certificate: {cert} holds no private key; give it with --private-key FILE"),
    (["--certificate", "{key}", "--private-key", "{key}"],
     "--certificate: cannot use {key} with {key} (not a PEM certificate and key)"),
])
def test_a_tls_file_that_cannot_be_used_is_one_usage_line(https_server, client_pems, tmp_path, args, line):
    names = {"cert": client_pems[0], "key": client_pems[1]}
    proc = run_cli("get", f"{https_server.url}/gen/a.bin?size=1", "-d", str(tmp_path / "out"),
                   *(arg.format(**names) for arg in args))
    assert (proc.returncode, proc.stderr) == (2, f"downloader: {line.format(**names)}\n")
    assert not (tmp_path / "out").exists()


def test_a_ca_variable_naming_a_missing_file_is_one_usage_line(https_server, tmp_path, monkeypatch, bare_environment):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
    proc = run_cli("get", f"{https_server.url}/gen/a.bin?size=1", "-d", str(tmp_path / "out"))
    assert (proc.returncode, proc.stderr) == (
        2, f"downloader: SSL_CERT_FILE={tmp_path}/gone.pem: cannot read {tmp_path}/gone.pem (No such file or "
           "directory)\n")


@pytest.mark.parametrize("flag", ["-k", "--insecure"])
def test_insecure_warns_once_at_the_start_and_downloads(https_server, tmp_path, flag):
    proc = run_cli("get", f"{https_server.url}/gen/k.bin?size=2000", "-d", str(tmp_path), flag)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == INSECURE_WARNING
    assert lines.count(INSECURE_WARNING) == 1
    assert (tmp_path / "k.bin").read_bytes() == gen_bytes(2000)


@pytest.mark.parametrize("mode", MODES)
def test_an_untrusted_server_is_one_line_and_exit_1(https_server, tmp_path, bare_environment, mode):
    url = f"{https_server.url}/gen/refused.bin?size=2000&m={mode}"
    proc = run_cli("get", url, "-d", str(tmp_path), "-m", mode)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[0] == f"failed: {url}: {UNTRUSTED}"
    assert "0 downloaded, 0 already there, 1 failed" in proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != ".downloader"] == []


def test_ca_certificate_and_a_client_certificate_on_the_command_line(tmp_path):
    with MockServer(tls=True, client_cert_required=True) as server:
        proc = run_cli("get", f"{server.url}/gen/c.bin?size=3000", "-d", str(tmp_path), "--ca-certificate",
                       str(server.ca_file), "--certificate", str(server.client_cert_file), "--private-key",
                       str(server.client_key_file))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.bin").read_bytes() == gen_bytes(3000)


def test_help_names_the_tls_options():
    text = run_cli("get", "--help").stdout
    for shown in ("--ca-certificate FILE", "-k, --insecure", "--certificate FILE", "--private-key FILE"):
        assert shown in text, shown


def test_serve_tls_says_to_trust_its_ca_with_ca_certificate(tmp_path):
    command = [sys.executable, "-m", "downloader", "serve", "--port", "0", "--tls"]
    with subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as server:
        try:
            url = re.search(r"(https://\S+?)/\s", server.stdout.readline()).group(1)
            hint = server.stdout.readline()
            ca_file = re.fullmatch(r"CA certificate: (\S+) \(trust it with: downloader get --ca-certificate "
                                   r"(\S+) URL\.\.\.\)\n", hint)
            assert ca_file is not None and ca_file.group(1) == ca_file.group(2), hint
            proc = run_cli("get", f"{url}/gen/s.bin?size=9", "-d", str(tmp_path), "--ca-certificate",
                           ca_file.group(1))
            assert proc.returncode == 0, proc.stderr
            assert (tmp_path / "s.bin").read_bytes() == gen_bytes(9)
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=10)
