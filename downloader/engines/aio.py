"""The aiohttp twin: `async` mode, one ClientSession and `jobs` worker tasks (never a task per URL).
Mirror image of `engines.sync`: same names with `_async`, same steps in the same order; a diff of
the two shows only the I/O.

Each worker task is one connection: it asks the scheduler for work, and either starts a file or
helps a file in flight with one of its segments.
"""
from __future__ import annotations

import asyncio
import functools
import signal
import ssl
import sys
import threading

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError

from ..core.redirects import REDIRECT_STATUSES, redact, split_userinfo
from ..core.results import Result
from ..core.schedule import WAIT, Help, Start
from ..core.tls import TlsFailure, TlsSettings, certificate_rejected, handshake_failed
from ..errors import IncompleteBody, StallError, TransferError, invalid_http
from ..transfer import Context, Transfer


def translate(exc: BaseException, proxy: str | None = None, tls: TlsSettings | None = None) -> TransferError:
    """The one place an aiohttp/asyncio error becomes the project's own (naming the proxy when
    the request went through one; a TLS failure worded by core.tls, which `tls` tells whether a
    client certificate was sent)."""
    error = _translate(exc, tls)
    if proxy and isinstance(exc, aiohttp.ClientHttpProxyError):
        error = TransferError(f"proxy {redact(proxy)}: it answered {exc.status} {exc.message} to CONNECT")
    elif proxy and isinstance(exc, aiohttp.ClientProxyConnectionError):
        error = TransferError(f"proxy {redact(proxy)}: {_reason(exc)}")
    return error


def _translate(exc: BaseException, tls: TlsSettings | None) -> TransferError:
    failure = _tls_failure(exc, tls)
    if failure is not None:
        return TransferError(failure.message, retryable=failure.retryable)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return StallError("no data for the stall timeout (--timeout)")
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400 and exc.message:
        return invalid_http(str(exc.message))  # aiohttp's parser refused the answer's head
    if isinstance(exc, aiohttp.ClientPayloadError) and "chunk" in str(exc).lower():
        return invalid_http(str(exc))
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return IncompleteBody(f"connection broken mid-body ({type(exc).__name__})")
    if isinstance(exc, aiohttp.InvalidURL):
        return TransferError(f"invalid URL: {exc}", retryable=False)
    if isinstance(exc, ValueError):  # a request aiohttp refuses to build: trying again cannot help
        return TransferError(f"invalid request: {exc}", retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransferError(f"connection failed: {_reason(exc)}")
    return TransferError(f"{type(exc).__name__}: {exc}")


def _tls_failure(exc: BaseException, tls: TlsSettings | None) -> TlsFailure | None:
    """The TLS failure behind `exc`, if that is what it is: aiohttp keeps Python's ssl error, which
    has the verify code or the reason core.tls words."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        return certificate_rejected(getattr(cause, "verify_code", None),
                                    getattr(cause, "verify_message", None) or str(cause), tls)
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return certificate_rejected(cause.verify_code, cause.verify_message, tls)
    if isinstance(cause, ConnectionResetError) and getattr(getattr(exc, "_conn_key", None), "is_ssl", False):
        return handshake_failed("connection reset", tls)  # asyncio's word for an EOF in the handshake
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        # while connecting, any TLS error; later an alert is still a refusal, but an EOF is a body
        # cut short (the caller's IncompleteBody)
        if isinstance(exc, aiohttp.ClientConnectorError) or "ALERT" in reason.upper():
            return handshake_failed(reason, tls)
    return None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "os_error", exc))
    for marker in ("Connect call failed", "Name or service not known", "Connection reset", "timed out"):
        if marker in text:
            return {"Connect call failed": "connection refused"}.get(marker, marker.lower())
    return text[:160]


class _HeadApart(ResponseHandler):
    """aiohttp's connection protocol, handing a response's head to the parser apart from the
    bytes after it. When a server sends more than its Content-Length and closes, and all of it
    comes in one read, aiohttp's parser rejects the read ("Data after `Connection: close`") and
    the whole response is lost; fed the head first, the body reaches the file and only the extra
    bytes are refused, so the file keeps exactly the declared bytes, as requests and curl do."""

    def data_received(self, data: bytes) -> None:
        if data[:5] == b"HTTP/":
            end = data.find(b"\r\n\r\n") + 4
            # only an answer that closes the connection can be refused so (others are kept alive)
            if 4 < end < len(data) and b"close" in data[:end].lower():
                super().data_received(data[:end])
                data = data[end:]
        super().data_received(data)


def new_session_async(ctx: Context) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    if isinstance(getattr(connector, "_factory", None), functools.partial):  # see _HeadApart
        connector._factory = functools.partial(_HeadApart, **connector._factory.keywords)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=ctx.options.timeout,
                                    sock_read=ctx.options.timeout)
    # read_bufsize: aiohttp pauses the socket once twice this much is buffered; at its 64 KiB
    # default a fast body pauses and resumes every chunk (about 4% of a 512 MiB download)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                    read_bufsize=4 * ctx.options.chunk_size,
                                    cookie_jar=aiohttp.CookieJar(unsafe=True),
                                    skip_auto_headers=("Accept-Encoding",))
    # every try is core.retry's to decide and count: aiohttp would send a GET again on its own after
    # a connection error (a TLS 1.3 refusal of a client certificate included); its own test client
    # turns that off the same way, having no public switch for it
    session._retry_connection = False
    return session


async def open_response_async(session: aiohttp.ClientSession, t: Transfer, url: str, headers: list,
                              ctx: Context):
    """Send the request, following redirects by core.redirects' rules; the final response."""
    hops = 0
    while True:
        proxy = ctx.proxies.for_url(url)
        bare, sent, proxy_headers = _through_proxy(proxy, url, headers)
        try:
            resp = await session.get(url, headers=sent, allow_redirects=False, proxy=bare,
                                     proxy_headers=proxy_headers, ssl=_tls_for(url, ctx))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise translate(exc, proxy, ctx.tls) from exc
        if resp.status not in REDIRECT_STATUSES:
            t.http_version = f"{resp.version.major}.{resp.version.minor}"
            return resp
        resp.release()
        url, headers = t.follow(url, resp.status, resp.headers.get("location"), hops, headers)
        hops += 1


def _tls_for(url: str, ctx: Context):
    """The batch's ssl context (core.tls) for an https:// URL, built on the first one; aiohttp's
    default for the others, which do not use it."""
    return ctx.tls.ssl_context if url[:6].lower() == "https:" else True


def _through_proxy(proxy: str | None, url: str, headers: list):
    """(proxy URL, request headers, CONNECT headers) for aiohttp: proxy credentials become a
    Proxy-Authorization header, which aiohttp sends on CONNECT only when given as proxy_headers,
    so a plain http:// request carries it itself (requests does both from the proxy URL)."""
    if proxy is None:
        return None, headers, None
    bare, auth = split_userinfo(proxy)
    if not auth:
        return bare, headers, None
    if any(name.lower() == "proxy-authorization" for name, _ in headers):
        return bare, headers, None  # the user's own --header wins, as with requests
    credentials = [("Proxy-Authorization", auth[0][1])]
    if url.lower().startswith("https:"):
        return bare, headers, dict(credentials)
    return bare, headers + credentials, None


async def read_chunk_async(resp, chunk_size: int, stall: float) -> bytes:
    """The next bytes of the body as they arrive (at most `chunk_size`; b"" at its end), raw
    as on the wire. What arrived is handed over at once, not held until a whole chunk is in,
    so bytes that came before a stall reach the file, as in every engine.

    The wait is watched here, not only by aiohttp's read timeout: when aiohttp's parser rejects
    the rest of a body (a bad chunk size, a malformed trailer) it closes the connection and drops
    its timeout, but never wakes the reader. Every second of waiting the connection is checked for
    such an error; a malformed trailer after a complete chunked body ends the body, as requests
    and the libcurl engine take it."""
    content = resp.content
    try:
        data = content.read_nowait(chunk_size)  # what is already in: no timer to set (small bodies)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise translate(exc) from exc
    if data or content.at_eof():
        return data
    waited = 0.0
    while True:
        window = _timeout(min(_WATCH, stall - waited))
        try:
            async with window:
                return await content.read(chunk_size)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if not _expired(window):
                raise translate(exc) from exc
        waited += _WATCH
        rejected = _rejected_by_parser(resp)
        if rejected is not None:
            if "chunked" in (resp.headers.get("transfer-encoding") or "").lower() and _about_a_trailer(rejected):
                return b""
            raise invalid_http(rejected)
        if waited >= stall:
            raise StallError("no data for the stall timeout (--timeout)")


_WATCH = 1.0
"""Seconds between looks at a connection whose body is not coming (see read_chunk_async)."""
if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # aiohttp's own dependency on Python 3.10
    from async_timeout import timeout as _timeout


def _expired(window) -> bool:
    expired = window.expired  # a method of asyncio.Timeout, a property of async_timeout's
    return expired() if callable(expired) else expired


def _rejected_by_parser(resp) -> str | None:
    """What aiohttp's parser said of the rest of this response, if it rejected it."""
    connection = resp.connection
    protocol = connection.protocol if connection is not None else None
    exc = protocol.exception() if protocol is not None else None
    if not isinstance(exc, HttpProcessingError):  # a timeout, a reset: not the parser's verdict
        return None
    cause = exc.__cause__ or exc
    return str(getattr(cause, "message", None) or cause).strip() or type(cause).__name__


def _about_a_trailer(message: str) -> bool:
    """Whether a parser error concerns header syntax, which after the body's head can only be
    a trailer (llhttp says "Invalid header token", aiohttp's own parser names the trailer)."""
    lowered = message.lower()
    return "header" in lowered or "trailer" in lowered


async def fetch_async(session: aiohttp.ClientSession, t: Transfer, seg, ctx: Context,
                      stop: asyncio.Event) -> None:
    """Fetch segment `seg` of `t` on this connection, retrying it from where it got to."""
    failures = 0
    while not t.stopped() and seg.cursor < seg.end:
        url, headers = t.request(seg)
        try:
            resp = await open_response_async(session, t, url, headers, ctx)
            try:
                if not t.accept(seg, resp.status, resp.reason or "", resp.headers):
                    return
                while chunk := await read_chunk_async(resp, ctx.options.chunk_size, ctx.options.timeout):
                    pause = t.write(seg, chunk)
                    if pause is None:
                        break
                    if pause:
                        await _wait(stop, pause)
                else:
                    t.body_ended(seg)
            finally:
                resp.close()
        except TransferError as exc:
            failures += 1
            pause = t.failed_try(exc, failures)
            if pause is None:
                return
            await _wait(stop, pause)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when a stop is asked."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def run_connection_async(session: aiohttp.ClientSession, t: Transfer, seg, ctx: Context,
                               stop: asyncio.Event) -> Result | None:
    """Work on `t` until it has nothing left for this connection; the last one out finishes it."""
    while True:
        while seg is not None:
            await fetch_async(session, t, seg, ctx, stop)
            t.release(seg)
            seg = t.claim()
        if not t.leave():
            return None
        outcome = await asyncio.to_thread(t.finish) if t.finish_blocks() else t.finish()
        if isinstance(outcome, Result):
            return outcome
        seg = outcome


async def worker_async(session: aiohttp.ClientSession, ctx: Context, engine: "AsyncEngine") -> None:
    """One connection: take work from the scheduler until there is none."""
    while (work := await engine.next_work()) is not None:
        if isinstance(work, Start):
            t = Transfer(work.job, ctx, work.host)
            engine.track(t)
            try:
                first = t.begin()
                outcome = first if isinstance(first, Result) else \
                    await run_connection_async(session, t, first, ctx, engine.stop_event)
            except TransferError as exc:
                outcome = t.failure(exc)
        else:
            assert isinstance(work, Help)
            outcome = await run_connection_async(session, work.transfer, work.segment, ctx, engine.stop_event)
            t = work.transfer
        if outcome is not None:
            engine.untrack(t)
            if ctx.post_submit_async is not None:
                await ctx.post_submit_async(outcome)
            else:
                ctx.post_submit(outcome)
        ctx.scheduler.connection_done(work.host, job_done=outcome is not None)


class AsyncEngine:
    """`jobs` worker tasks over one aiohttp ClientSession, on an event loop of its own."""

    def __init__(self, ctx: Context, workers: int) -> None:
        self.ctx = ctx
        self.workers = workers
        self.stop_event: asyncio.Event | None = None
        self._wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: set[Transfer] = set()
        self._loop_thread: int | None = None
        self._wake_scheduled = False
        ctx.write_behind = True

    def _wake(self) -> None:
        """Called from any thread (the input feed reads in one of its own). On the loop's own
        thread the event is set at once; from another thread one call is scheduled, however many
        wakes come before it runs (each would cost the loop a system call and a turn)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            self._wake_event.set()
            return
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        try:
            loop.call_soon_threadsafe(self._wake_from_afar)
        except RuntimeError:
            self._wake_scheduled = False

    def _wake_from_afar(self) -> None:
        self._wake_scheduled = False
        self._wake_event.set()

    async def next_work(self):
        while True:
            self._wake_event.clear()
            work = self.ctx.scheduler.poll()
            if work is not WAIT:
                return work
            await self._wake_event.wait()

    def track(self, t: Transfer) -> None:
        self._active.add(t)

    def untrack(self, t: Transfer) -> None:
        self._active.discard(t)

    def run(self, grace: float = 5.0) -> None:
        """Run the batch on an event loop of its own. (uvloop was tried as an optional loop and
        measured no faster here: 5,000 tiny files in one process, medians of 5 alternating runs,
        2.25 s of CPU on asyncio's loop and 2.34 s on uvloop; aiohttp's own Python is the cost.)"""
        asyncio.run(self._main(grace))

    async def _main(self, grace: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.stop_event = asyncio.Event()
        self._wake_event = asyncio.Event()
        self.ctx.scheduler.wake = self._wake
        handlers = self._install_signals()
        try:
            async with new_session_async(self.ctx) as session:
                tasks = [asyncio.create_task(worker_async(session, self.ctx, self), name=f"conn-{i}")
                         for i in range(self.workers)]
                stopper = asyncio.create_task(self.stop_event.wait())
                pending = set(tasks)
                while pending:
                    done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                    pending.discard(stopper)
                    for task in done - {stopper}:
                        task.result()
                    if stopper in done:
                        break
                if pending:
                    _done, late = await asyncio.wait(pending, timeout=grace)
                    for task in late:
                        task.cancel()
                    await asyncio.gather(*late, return_exceptions=True)
                    self._abandon()
                stopper.cancel()
                await asyncio.gather(stopper, return_exceptions=True)
        finally:
            for sig in handlers:
                self._loop.remove_signal_handler(sig)
            self.ctx.scheduler.wake = lambda: None

    def _install_signals(self) -> list:
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = self.ctx.signal_handler
            if handler is None:
                continue
            try:
                self._loop.add_signal_handler(sig, handler, sig)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass
        return installed

    def stop(self) -> None:
        """First Ctrl-C: start nothing new, let in-flight chunks land, keep every `.part`."""
        self.ctx.scheduler.stop()
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.stop_event.set)
            except RuntimeError:
                pass

    def _abandon(self) -> None:
        for t in list(self._active):
            self.ctx.post_submit(t.park_quietly())
