"""The requests twin: `thread` mode (a pool of workers, one requests.Session each) and `sequential`
mode (the same with one worker). Mirror image of `engines.aio`: same names with `_async`, same
steps in the same order; a diff of the two shows only the I/O.

Each worker is one connection: it asks the scheduler for work, and either starts a file or helps a
file in flight with one of its segments.
"""
from __future__ import annotations

import re
import ssl
import threading
import warnings

import requests
import urllib3

from ..core.redirects import REDIRECT_STATUSES, redact
from ..core.results import Result
from ..core.schedule import WAIT, Help, Start
from ..core.tls import TlsFailure, TlsSettings, certificate_rejected, handshake_failed
from ..errors import IncompleteBody, StallError, TransferError, invalid_http
from ..transfer import Context, Transfer

_STALL = (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)
_SHORT = (urllib3.exceptions.IncompleteRead, urllib3.exceptions.ProtocolError,
          requests.exceptions.ChunkedEncodingError)
HTTP_VERSIONS = {10: "1.0", 11: "1.1"}
"""urllib3's response.version, as the report shows it (`Result.http_version`)."""


def translate(exc: BaseException, proxy: str | None = None, tls: TlsSettings | None = None) -> TransferError:
    """The one place a requests/urllib3 error becomes the project's own (naming the proxy when
    the request went through one; a TLS failure worded by core.tls, which `tls` tells whether a
    client certificate was sent)."""
    error = _translate(exc, tls)
    if proxy and isinstance(exc, requests.exceptions.ProxyError):
        error = TransferError(f"proxy {redact(proxy)}: {_reason(exc)}", retryable=error.retryable)
    return error


def _translate(exc: BaseException, tls: TlsSettings | None) -> TransferError:
    failure = _tls_failure(exc, tls)
    if failure is not None:
        return TransferError(failure.message, retryable=failure.retryable)
    if isinstance(exc, requests.exceptions.InvalidHeader) or "InvalidChunkLength" in str(exc):
        return invalid_http(str(exc))
    if isinstance(exc, _STALL):
        return StallError("no data for the stall timeout (--timeout)")
    if isinstance(exc, _SHORT):
        return IncompleteBody(f"connection broken mid-body ({type(exc).__name__})")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransferError("connect timeout (--timeout)")
    if isinstance(exc, requests.exceptions.InvalidURL):
        return TransferError(f"invalid URL: {exc}", retryable=False)
    if isinstance(exc, requests.exceptions.ProxyError):
        return TransferError(f"the proxy failed: {_reason(exc)}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return TransferError(f"connection failed: {_reason(exc)}")
    return TransferError(f"{type(exc).__name__}: {exc}")


def _tls_failure(exc: BaseException, tls: TlsSettings | None) -> TlsFailure | None:
    """The TLS failure behind `exc`, if that is what it is: requests wraps urllib3's error, which
    wraps Python's ssl error, which has the verify code or the reason core.tls words."""
    cause = _ssl_error_in(exc)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        return certificate_rejected(cause.verify_code, cause.verify_message, tls)
    reason = cause.reason or str(cause)
    # requests raises its SSLError only while connecting; later an alert is still a refusal, but an
    # EOF is a body cut short (the caller's IncompleteBody)
    if isinstance(exc, requests.exceptions.SSLError) or "ALERT" in reason.upper():
        return handshake_failed(reason, tls)
    return None


def _ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    tunnel = re.search(r"Tunnel connection failed: (\d{3}[^'\")]*)", text)
    if tunnel:
        return f"it answered {tunnel.group(1).strip()} to CONNECT"
    for marker in ("Connection refused", "Name or service not known", "Connection reset",
                   "Remote end closed connection", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:160]


class TlsAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose TLS is the batch's (core.tls): one ssl context for every connection,
    direct or through a proxy's CONNECT, built on the first https:// request. A plain HTTPAdapter
    loads certifi's bundle (or the file given as `verify`) into each new connection's context."""

    def __init__(self, tls: TlsSettings, **kwargs) -> None:
        self.tls = tls
        super().__init__(**kwargs)

    def cert_verify(self, conn, url, verify, cert) -> None:
        """Called before every request with the pool that will carry it."""
        if url[:6].lower() == "https:":
            conn.conn_kw["ssl_context"] = self.tls.ssl_context
            conn.cert_reqs = "CERT_REQUIRED" if self.tls.verify else "CERT_NONE"
            conn.ca_certs = conn.ca_cert_dir = conn.cert_file = conn.key_file = None


def new_session(ctx: Context) -> requests.Session:
    session = requests.Session()
    adapter = TlsAdapter(ctx.tls, pool_connections=4, pool_maxsize=4, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.pop("Accept-Encoding", None)
    # proxies (core.proxies) and netrc logins (core.redirects) are read once per batch for every
    # engine; requests' own reading of the environment would repeat it on every request
    session.trust_env = False
    session.verify = ctx.tls.verify
    if not ctx.tls.verify:  # said once for the batch by the API, not by urllib3 for every connection
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    return session


def open_response(session: requests.Session, t: Transfer, url: str, headers: list, ctx: Context):
    """Send the request, following redirects by core.redirects' rules; the final response."""
    timeout = (ctx.options.timeout, ctx.options.timeout)
    hops = 0
    while True:
        proxy = ctx.proxies.for_url(url)
        try:
            resp = session.get(url, headers=dict(headers), stream=True, allow_redirects=False, timeout=timeout,
                               proxies={"http": proxy, "https": proxy} if proxy else None)
        except requests.RequestException as exc:
            raise translate(exc, proxy, ctx.tls) from exc
        if resp.status_code not in REDIRECT_STATUSES:
            t.http_version = HTTP_VERSIONS.get(resp.raw.version, t.http_version)
            return resp
        resp.close()
        url, headers = t.follow(url, resp.status_code, resp.headers.get("location"), hops, headers)
        hops += 1


def read_chunk(resp, chunk_size: int) -> bytes:
    """The next bytes of the body as they arrive (at most `chunk_size`; b"" at its end), raw
    as on the wire. What arrived is handed over at once, not held until a whole chunk is in,
    so bytes that came before a stall reach the file, as in every engine."""
    try:
        return resp.raw.read1(chunk_size, decode_content=False)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc) from exc


def fetch(session: requests.Session, t: Transfer, seg, ctx: Context, stop: threading.Event) -> None:
    """Fetch segment `seg` of `t` on this connection, retrying it from where it got to."""
    failures = 0
    while not t.stopped() and seg.cursor < seg.end:
        url, headers = t.request(seg)
        try:
            resp = open_response(session, t, url, headers, ctx)
            try:
                if not t.accept(seg, resp.status_code, resp.reason, resp.headers):
                    return
                while chunk := read_chunk(resp, ctx.options.chunk_size):
                    pause = t.write(seg, chunk)
                    if pause is None:
                        break
                    if pause:
                        stop.wait(pause)
                else:
                    t.body_ended(seg)
            finally:
                resp.close()
        except TransferError as exc:
            failures += 1
            pause = t.failed_try(exc, failures)
            if pause is None:
                return
            stop.wait(pause)


def run_connection(session: requests.Session, t: Transfer, seg, ctx: Context,
                   stop: threading.Event) -> Result | None:
    """Work on `t` until it has nothing left for this connection; the last one out finishes it."""
    while True:
        while seg is not None:
            fetch(session, t, seg, ctx, stop)
            t.release(seg)
            seg = t.claim()
        if not t.leave():
            return None
        outcome = t.finish()
        if isinstance(outcome, Result):
            return outcome
        seg = outcome


def worker(ctx: Context, engine: "ThreadEngine") -> None:
    """One connection: take work from the scheduler until there is none."""
    session = new_session(ctx)
    try:
        while (work := engine.next_work()) is not None:
            if isinstance(work, Start):
                t = Transfer(work.job, ctx, work.host)
                engine.track(t)
                try:
                    first = t.begin()
                    outcome = first if isinstance(first, Result) else \
                        run_connection(session, t, first, ctx, engine.stop_event)
                except TransferError as exc:
                    outcome = t.failure(exc)
            else:
                assert isinstance(work, Help)
                outcome = run_connection(session, work.transfer, work.segment, ctx, engine.stop_event)
                t = work.transfer
            if outcome is not None:
                engine.untrack(t)
                ctx.post_submit(outcome)
            ctx.scheduler.connection_done(work.host, job_done=outcome is not None)
    finally:
        session.close()


class ThreadEngine:
    """Up to `workers` threads over requests; `sequential` mode is this with one worker.

    Threads start as work needs them: one more whenever a worker takes work and none is left
    idle, so `-j 10000` for three files starts a handful of threads, not ten thousand."""

    def __init__(self, ctx: Context, workers: int) -> None:
        self.ctx = ctx
        self.workers = workers
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._active: set[Transfer] = set()
        self._active_lock = threading.Lock()
        ctx.scheduler.wake = self._wake

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def next_work(self):
        with self._cond:
            while (work := self.ctx.scheduler.poll()) is WAIT:
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            if work is not None and self._idle == 0:
                self._spawn()
            return work

    def _spawn(self) -> None:
        """Start one more worker, within `workers` (the caller holds the condition's lock)."""
        if len(self._threads) < self.workers:
            thread = threading.Thread(target=worker, args=(self.ctx, self), daemon=True,
                                      name=f"conn-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def track(self, t: Transfer) -> None:
        with self._active_lock:
            self._active.add(t)

    def untrack(self, t: Transfer) -> None:
        with self._active_lock:
            self._active.discard(t)

    def run(self, grace: float = 5.0) -> None:
        """Run the workers until the batch is done; after a stop, give stuck reads `grace` seconds.
        (SIGINT and SIGTERM go to the batch's handler, installed by the API for the whole run.)"""
        with self._cond:
            self._spawn()
        while True:
            with self._cond:
                alive = [thread for thread in self._threads if thread.is_alive()]
            if not alive:
                return
            alive[0].join(0.5 if not self.stop_event.is_set() else grace)
            if self.stop_event.is_set() and alive[0].is_alive():
                self._abandon()
                return

    def stop(self) -> None:
        """First Ctrl-C: start nothing new, let in-flight chunks land, keep every `.part`."""
        self.stop_event.set()
        self.ctx.scheduler.stop()

    def _abandon(self) -> None:
        """Workers still blocked in a read after the grace period: save their files' state."""
        with self._active_lock:
            stuck = list(self._active)
        for t in stuck:
            self.ctx.post_submit(t.park_quietly())
