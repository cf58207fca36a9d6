"""Peers for the TLS tests that the mock server does not play: a blocking HTTPS server with the
certificate a test asks for, and a TCP relay that counts connections (and cuts the first ones).

    with TlsServer(tmp_path, certificate="expired") as server:
        download([server.url], ...)          # fails: certificate has expired
        assert server.handshakes == 1        # and was not tried again

The mock server runs on asyncio, whose TLS drops the alert a server sends when it refuses a client
certificate (the client sees the connection close); a TLS server on a plain socket sends it, as
nginx or Apache do, so `TlsServer(client_ca=...)` is the one that shows a refusal as a refusal.
"""
from __future__ import annotations

import datetime
import socket
import ssl
import struct
import threading
from pathlib import Path

import trustme

BODY = b"hello over TLS\n"


def write_pem(path: Path, *blobs) -> Path:
    path.write_bytes(b"".join(blob.bytes() for blob in blobs))
    return path


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) PEM files of a certificate that signs itself, valid for `host` (an IP
    address): only the issuer is wrong, so every TLS library names the same reason."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "self-signed.pem", folder / "self-signed.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Listener:
    """A listening socket on 127.0.0.1 served by a thread per connection; leaving the `with` block
    stops listening, wakes every thread still reading and waits for them."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self):
        self._start(self._accept)
        return self

    def __exit__(self, *exc_info) -> None:
        _stop_listening(self._listener)
        for sock in self._sockets:  # wakes the threads still reading from a client
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connected(conn)

    def _connected(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TlsServer(_Listener):
    """HTTPS on 127.0.0.1 from a thread per connection, answering every GET with BODY. Connections
    stay open until the client closes them: a server that closes first leaves asyncio's TLS shutdown
    of the client's side running when the async engine's loop ends (a ResourceWarning, now and then).

    `certificate`: "valid" (for 127.0.0.1, from a CA of its own: `ca_file`), "expired" (yesterday),
    "other-host" (valid, but for other.example only) or "self-signed". `client_ca`: a trustme CA
    whose certificates it requires of clients. `max_version`: e.g. TLS 1.2, where a refused client
    certificate fails the handshake itself (in TLS 1.3 the client learns it on its first read).
    `handshakes` counts the connections that started one."""

    def __init__(self, folder: Path, certificate: str = "valid", client_ca: trustme.CA | None = None,
                 max_version: ssl.TLSVersion | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="tls_servers test CA")
        self.ca_file = write_pem(folder / "server-ca.pem", ca.cert_pem)
        now = datetime.datetime.now(datetime.timezone.utc)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if certificate == "self-signed":
            context.load_cert_chain(*self_signed(folder))
        else:
            if certificate == "valid":
                leaf = ca.issue_cert("127.0.0.1", "localhost")
            elif certificate == "expired":
                leaf = ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=10),
                                     not_after=now - datetime.timedelta(days=1))
            elif certificate == "other-host":
                leaf = ca.issue_cert("other.example")
            else:
                raise ValueError(f"certificate: {certificate!r}")
            leaf.configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        if max_version is not None:
            context.maximum_version = max_version
        self.context = context
        self.handshakes = 0
        super().__init__()
        self.url = f"https://127.0.0.1:{self.port}/tls.bin"

    def _connected(self, conn: socket.socket) -> None:
        self.handshakes += 1
        self._start(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        self._sockets.append(tls)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError):
            _close_gently(tls)  # the alert is out; closing with the request unread would reset it away
            return
        with tls:  # kept alive until the client closes it (these GETs come whole in one read)
            try:
                while tls.recv(65536):
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            except (ssl.SSLError, OSError):
                pass


def _stop_listening(listener: socket.socket) -> None:
    """Close a listening socket, waking the thread blocked in its accept() (close alone does not)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def _close_gently(conn: socket.socket) -> None:
    """Close after the peer does: the bytes it sent stay unread, and closing over them would send
    a TCP reset that can overtake the TLS alert already on its way."""
    try:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    except OSError:
        pass
    finally:
        conn.close()


class Relay(_Listener):
    """A TCP relay on 127.0.0.1 in front of `target` (host, port): `connections` counts what
    clients opened (every try of a download opens one); the first `reset_first` are cut with a TCP
    reset once the client's first bytes (its TLS ClientHello) arrive, a handshake dropped by the
    network."""

    def __init__(self, target: tuple[str, int], reset_first: int = 0) -> None:
        self.target = target
        self.reset_first = reset_first
        self.connections = 0
        super().__init__()

    def _connected(self, conn: socket.socket) -> None:
        self.connections += 1
        if self.connections <= self.reset_first:
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        upstream = socket.create_connection(self.target)
        self._sockets += [conn, upstream]
        self._start(self._pump, conn, upstream)
        self._start(self._pump, upstream, conn)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
