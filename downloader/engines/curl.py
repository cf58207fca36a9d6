"""The libcurl twin: `curl` mode, libcurl's multi interface through pycurl, on one thread.

The other engines run a connection per worker (a thread, a task) through the same steps; here each
connection is a `Connection` around one reused easy handle, and the steps are driven by libcurl's
callbacks instead of a loop: the same `Transfer` calls, in the same order, as `engines.sync`::

    begin -> request -> (3xx: follow, again) -> accept -> write... -> body_ended
          -> (error: failed_try, wait, again) -> release, claim -> leave -> finish

libcurl only moves bytes: redirects are not followed by it (core.redirects decides the next hop),
nor are proxies read from the environment or logins from netrc (core decides both, for every
engine alike); connection reuse, HTTP/2 multiplexing and TLS are libcurl's. One event loop watches
every socket with epoll through `socket_action`, plus a pipe other threads use to wake it (new
jobs from the feed, a stop).

    >>> from downloader import download
    >>> download(["https://example.org/a.iso"], "out", mode="curl")  # doctest: +SKIP
"""
from __future__ import annotations

import errno
import heapq
import os
import re
import select
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pycurl

from ..core.redirects import REDIRECT_STATUSES, redact
from ..core.results import Result
from ..core.schedule import WAIT, Help, Start
from ..core.tls import HOST_MISMATCH, TlsSettings, certificate_rejected, handshake_failed
from ..errors import IncompleteBody, StallError, TransferError, invalid_http
from ..transfer import Context, Transfer

HTTP_VERSIONS = {pycurl.CURL_HTTP_VERSION_1_0: "1.0", pycurl.CURL_HTTP_VERSION_1_1: "1.1",
                 pycurl.CURL_HTTP_VERSION_2_0: "2", getattr(pycurl, "CURL_HTTP_VERSION_3", 30): "3"}
BUFFER_BUDGET = 64 << 20
"""Bytes of receive buffers for all connections together: each gets its share, between
BUFFER_RANGE's bounds (libcurl hands the write callback at most a buffer at a time, so a big buffer
means few Python calls for a big file: measured on 512 MiB, 256 KiB took 1.32 s, 1 MiB 1.03 s,
4 MiB 0.87 s; a buffer's pages are only touched as far as a read fills them, so small files do
not pay for it)."""
BUFFER_RANGE = (256 << 10, 4 << 20)

_STALL = "no data for the stall timeout (--timeout)"
_WEIRD_REPLY = getattr(pycurl, "E_WEIRD_SERVER_REPLY", 8)  # CURLE_WEIRD_SERVER_REPLY, once FTP_ only
_EPOLL_EVENTS = {pycurl.POLL_NONE: 0, pycurl.POLL_IN: select.EPOLLIN, pycurl.POLL_OUT: select.EPOLLOUT,
                 pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT, pycurl.POLL_REMOVE: 0}
_READABLE = select.EPOLLIN | select.EPOLLHUP


def translate(code: int, message: str, *, proxy: str | None = None, connected: bool = True, os_errno: int = 0,
              tunnel_answer: str | None = None, tls: TlsSettings | None = None,
              verify_result: int = 0) -> TransferError:
    """The one place a libcurl error becomes the project's own, worded as the other engines word
    it. `os_errno` is libcurl's OS_ERRNO (it says "Could not connect" where the others say
    "connection refused"); `tunnel_answer` the status line a proxy gave to CONNECT, if not 2xx;
    `verify_result` OpenSSL's verify code (SSL_VERIFYRESULT) and `tls` the batch's settings, for
    TLS failures worded by core.tls."""
    tls_error = _tls_error(code, message, os_errno, tls, verify_result)
    if tls_error is not None:
        return tls_error
    text = message or f"libcurl error {code}"
    if os_errno:
        text = f"{text} ({os.strerror(os_errno)})"
    if proxy and tunnel_answer:
        return TransferError(f"proxy {redact(proxy)}: it answered {tunnel_answer} to CONNECT")
    if proxy and code in (pycurl.E_COULDNT_CONNECT, getattr(pycurl, "E_COULDNT_RESOLVE_PROXY", 5)):
        return TransferError(f"proxy {redact(proxy)}: {_reason(text)}")
    if code == _WEIRD_REPLY or "chunk" in text.lower():
        return invalid_http(message)
    if code == pycurl.E_OPERATION_TIMEDOUT:
        if not connected:
            return TransferError("connect timeout (--timeout)")
        return StallError(_STALL)
    if code in (pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR):
        return IncompleteBody(f"connection broken mid-body ({_reason(text)})")
    if code == pycurl.E_GOT_NOTHING:
        return IncompleteBody("connection broken before the response (the server sent nothing)")
    if code in (pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL):
        return TransferError(f"invalid URL: {text}", retryable=False)
    if code in (pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_SEND_ERROR):
        return TransferError(f"connection failed: {_reason(text)}")
    return TransferError(f"{text} (libcurl error {code})")


def _tls_error(code: int, message: str, os_errno: int, tls: TlsSettings | None,
               verify_result: int) -> TransferError | None:
    if code == pycurl.E_PEER_FAILED_VERIFICATION:
        # libcurl checks the host name itself (its own words) before OpenSSL's verdict on the chain
        if re.search(r"subject name|does not match|common name", message, re.IGNORECASE):
            failure = certificate_rejected(min(HOST_MISMATCH), message, tls)
        else:
            said = re.search(r"verify result: (.*?) \((\d+)\)$", message)
            verify_code = int(said.group(2)) if said else verify_result or None
            failure = certificate_rejected(verify_code, said.group(1) if said else message, tls)
    elif code == pycurl.E_SSL_CONNECT_ERROR or \
            (code in (pycurl.E_RECV_ERROR, pycurl.E_SEND_ERROR) and "alert" in message.lower()):
        failure = handshake_failed("connection reset" if os_errno == errno.ECONNRESET else message, tls)
    elif code in (pycurl.E_SSL_CERTPROBLEM, pycurl.E_SSL_CACERT_BADFILE):  # checked up front: rare
        return TransferError(f"TLS: {message}", retryable=False)
    else:
        return None
    return TransferError(failure.message, retryable=failure.retryable)


def _reason(text: str) -> str:
    lowered = text.lower()
    for marker, said in (("refused", "connection refused"), ("could not resolve", "name or service not known"),
                         ("reset", "connection reset"), ("timed out", "timed out"),
                         ("no route", "no route to host"), ("unreachable", "network is unreachable")):
        if marker in lowered:
            return said
    return text[:160]


_FOLDED = re.compile(r"\r?\n[ \t]+")


def _status_line(line: bytes) -> tuple[int, str]:
    """(status, reason) from "HTTP/1.1 206 Partial Content"."""
    parts = line.decode("latin-1").split(None, 2)
    try:
        return int(parts[1]), parts[2].strip() if len(parts) > 2 else ""
    except (IndexError, ValueError):
        return 0, ""


class Connection:
    """One connection: an easy handle that carries one segment of one transfer at a time, and the
    state of the response it is reading."""

    def __init__(self, engine: "CurlEngine", number: int) -> None:
        self.engine = engine
        self.number = number
        self.curl = curl = pycurl.Curl()
        self.transfer: Transfer | None = None
        self.seg = None
        self.host = ""
        self.failures = 0
        self.hops = 0
        self.url = ""
        self.sent: list[tuple[str, str]] = []
        self.proxy: str | None = None
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.accepted = False
        """The response's body goes into the file (accept said so)."""
        self.tunnel = False
        """The next response head is a proxy's answer to CONNECT (an https:// URL through a proxy)."""
        self.tunnel_answer: str | None = None
        self.ended = False
        """We stopped this response on purpose (accept or write said stop): not an error."""
        self.error: TransferError | None = None
        self.requests = 0
        """Requests sent on this connection (a timer set for one request ignores the next)."""
        self._route: tuple | None = None
        """The (proxy, https) the handle's options are set for."""
        opts = engine.ctx.options
        self.lines: list[bytes] = []
        self.parsed = self.decided = False
        curl.setopt(pycurl.HEADERFUNCTION, self.lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, self._on_body)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(opts.timeout * 1000))
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, round(opts.timeout)))
        curl.setopt(pycurl.BUFFERSIZE, engine.buffer_size)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        curl.setopt(pycurl.ACCEPT_ENCODING, None)  # bytes as they are on the wire, never decoded
        curl.setopt(pycurl.NETRC, pycurl.NETRC_IGNORED)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.USERAGENT, engine.user_agent)
        self._tls_set = False

    def _set_tls(self, tls: TlsSettings) -> None:
        """The batch's TLS (core.tls), set before the handle's first https:// request: the pycurl
        wheel's libcurl would otherwise look for certificates where it was built (a Red Hat path),
        not where this system keeps them."""
        self._tls_set = True
        curl = self.curl
        if tls.verify:
            for option, path in ((pycurl.CAINFO, tls.ca_file), (pycurl.CAPATH, tls.ca_dir)):
                if path:
                    curl.setopt(option, path)
                else:
                    curl.unsetopt(option)
        else:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        if tls.cert_file:
            curl.setopt(pycurl.SSLCERT, tls.cert_file)
            curl.setopt(pycurl.SSLKEY, tls.key_file or tls.cert_file)

    # ------------------------------------------------------------------ one request
    def send(self, url: str, headers: list[tuple[str, str]]) -> None:
        """Start a request on this connection (the engine adds it to the multi handle)."""
        self.url, self.sent = url, headers
        proxy = self.engine.ctx.proxies.for_url(url)
        secure = url[:6].lower() == "https:"
        curl = self.curl
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers])
        if (proxy, secure) != self._route:  # options stay set on a reused handle: set them on change
            self._route = proxy, secure
            curl.setopt(pycurl.PROXY, proxy or "")
            # wait for a connection that may multiplex (HTTP/2, offered over TLS) rather than open
            # another; over plain http there is none, and libcurl would wait for the busy one to end
            curl.setopt(pycurl.PIPEWAIT, secure)
            if secure and not self._tls_set:
                self._set_tls(self.engine.ctx.tls.trust())
        self.proxy = proxy
        self.tunnel, self.tunnel_answer = proxy is not None and secure, None
        self.lines.clear()
        self.status, self.reason, self.headers = 0, "", {}
        self.parsed = self.decided = self.accepted = self.ended = False
        self.error = None
        self.requests += 1
        self.engine.add(self)

    def _parse_head(self) -> None:
        """The response's status and headers, from the lines libcurl handed over (it appends them
        to `lines` itself: no Python call per header line). The last head is the answer; a proxy's
        answer to CONNECT comes first, interim 1xx answers before the last. Headers go into a
        plain dict by lower-case name (core reads them so), repeated ones joined with ", "."""
        self.parsed = True
        lines = self.lines
        starts = [i for i, line in enumerate(lines) if line[:5] == b"HTTP/"]
        if not starts:
            return
        if self.tunnel:  # the proxy's answer to CONNECT: the real answer follows if it is a 2xx
            status, reason = _status_line(lines[starts[0]])
            if not 200 <= status < 300:
                self.tunnel_answer = f"{status} {reason}".strip()
        first = starts[-1]
        self.status, self.reason = _status_line(lines[first])
        end = first + 1
        while end < len(lines) and lines[end].strip():
            end += 1
        text = b"".join(lines[first + 1:end]).decode("latin-1")
        if "\n " in text or "\n\t" in text:
            text = _FOLDED.sub(" ", text)  # obsolete line folding: a continuation joins its header
        pairs = [line.partition(":")[::2] for line in text.splitlines() if ":" in line]
        headers = {name.strip().lower(): value.strip() for name, value in pairs}
        if len(headers) < len(pairs):  # a header given twice: its values joined, as requests does
            headers = {}
            for name, value in pairs:
                key, value = name.strip().lower(), value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers = headers

    def _in_trailer(self, message: str) -> bool:
        """Whether libcurl's complaint about a header came after a chunked body had begun: then
        it can only be about a trailer, after the final chunk (the body is complete)."""
        chunked = "chunked" in (self.headers.get("transfer-encoding") or "").lower()
        lowered = message.lower()
        return chunked and ("header" in lowered or "colon" in lowered)

    def _decide(self) -> None:
        """What the answer means for the file (Transfer.accept), once its head is in."""
        self.decided = True
        status = self.status
        if status < 200 or status in REDIRECT_STATUSES:
            return  # no answer yet, an interim one, or a redirect (its body is dropped; done() follows it)
        if self.transfer.accept(self.seg, status, self.reason, self.headers):
            self.accepted = True
        else:
            self.ended = True

    def _on_body(self, data: bytes):
        """libcurl's write callback: body bytes, into the file through the transfer (the head is
        complete when the first body bytes come)."""
        try:
            if not self.decided:
                if not self.parsed:
                    self._parse_head()
                self._decide()
                if self.ended:
                    return 0
            if not self.accepted:
                return None  # a redirect's body
            pause = self.transfer.write(self.seg, data)
        except TransferError as exc:
            self.error = exc
            return 0
        except Exception as exc:
            self.error = TransferError(f"internal error: {exc!r}", retryable=False)
            return 0
        if pause is None:
            self.ended = True
            return 0
        if pause:
            self.curl.pause(pycurl.PAUSE_RECV)
            request = self.requests
            self.engine.later(pause, lambda: self._resume(request))
        return None

    def _resume(self, request: int) -> None:
        if request == self.requests and self.curl in self.engine.busy:
            try:
                self.curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass

    def done(self, code: int, message: str) -> None:
        """The request ended: libcurl's result code (0 for a complete response)."""
        t, seg = self.transfer, self.seg
        t.http_version = HTTP_VERSIONS.get(self.curl.getinfo(pycurl.INFO_HTTP_VERSION), t.http_version)
        try:
            if not self.parsed:
                self._parse_head()
            if self.error is not None:
                raise self.error
            if not code and not self.decided and not self.ended:  # an answer without a body
                self._decide()
            if code == _WEIRD_REPLY and self.accepted and self._in_trailer(message):
                code = 0  # a malformed trailer after a complete chunked body: the body stands
            if code and not self.ended:
                curl = self.curl
                raise translate(code, message, proxy=self.proxy, connected=curl.getinfo(pycurl.CONNECT_TIME) > 0,
                                os_errno=curl.getinfo(pycurl.OS_ERRNO), tunnel_answer=self.tunnel_answer,
                                tls=self.engine.ctx.tls, verify_result=curl.getinfo(pycurl.SSL_VERIFYRESULT))
            if not code and not self.ended and self.status in REDIRECT_STATUSES:
                self.url, self.sent = t.follow(self.url, self.status, self.headers.get("location"), self.hops,
                                               self.sent)
                self.hops += 1
                self.send(self.url, self.sent)
                return
            if not code and self.accepted and not self.ended:
                t.body_ended(seg)
            if not code and not self.accepted and not self.ended:
                raise IncompleteBody("connection closed before the end of the response's headers")
        except TransferError as exc:
            self.failures += 1
            pause = t.failed_try(exc, self.failures)
            if pause is None:
                self.next_segment()
            else:
                self.engine.later(pause, self.fetch)
            return
        self.fetch()

    # ------------------------------------------------------------------ the steps around requests
    def fetch(self) -> None:
        """The next request for the current segment, or on to the next segment when it is done
        (the loop of `engines.sync.fetch`)."""
        t, seg = self.transfer, self.seg
        if seg is None or t.stopped() or seg.cursor >= seg.end:
            self.next_segment()
            return
        self.hops = 0
        url, headers = t.request(seg)
        self.send(url, headers)

    def next_segment(self) -> None:
        """This segment is done (or given up): more of the file for this connection, or leave it
        (the loop of `engines.sync.run_connection`)."""
        t = self.transfer
        t.release(self.seg)
        self.seg = t.claim()
        if self.seg is not None:
            self.failures = 0
            self.fetch()
            return
        if not t.leave():
            self.engine.connection_free(self, None)
            return
        if t.finish_blocks():
            self.engine.in_thread(t.finish, self.finished)
        else:
            self.finished(t.finish())

    def finished(self, outcome: Result | object) -> None:
        if isinstance(outcome, Result):
            self.engine.connection_free(self, outcome)
        else:  # the file starts over on this connection
            self.seg, self.failures = outcome, 0
            self.fetch()

    def start(self, work) -> None:
        """Take work from the scheduler: a new file, or a segment of one in flight."""
        self.host = work.host
        self.failures = 0
        if isinstance(work, Start):
            t = self.transfer = Transfer(work.job, self.engine.ctx, work.host)
            self.engine.track(t)
            try:
                first = t.begin()
            except TransferError as exc:
                self.engine.connection_free(self, t.failure(exc))
                return
            if isinstance(first, Result):
                self.engine.connection_free(self, first)
                return
            self.seg = first
        else:
            assert isinstance(work, Help)
            self.transfer, self.seg = work.transfer, work.segment
        self.fetch()


class CurlEngine:
    """`jobs` connections (easy handles) on one libcurl multi handle, driven from one thread."""

    def __init__(self, ctx: Context, workers: int) -> None:
        self.ctx = ctx
        self.workers = workers
        self.stopping = False
        low, high = BUFFER_RANGE
        self.buffer_size = max(low, min(high, BUFFER_BUDGET // max(1, workers)))
        from .. import __version__
        self.user_agent = f"downloader/{__version__}"
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        self.poller = select.epoll()
        self._watched: set[int] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, select.EPOLLIN)
        self._woken = False
        self._loop_thread: int | None = None
        self._curl_deadline: float | None = None
        self._timers: list = []
        self._timer_seq = 0
        self._free: list[Connection] = []
        self._made = 0
        self.busy: dict[object, Connection] = {}
        """Connections with a request in the multi handle, by their easy handle."""
        self._holding = 0
        """Connections with work but no request in flight (waiting to retry, finishing in a thread)."""
        self._calls: deque = deque()
        """Callables other threads hand to the loop (a finish run in a thread, done)."""
        self._pool: ThreadPoolExecutor | None = None
        self._active: set[Transfer] = set()
        # libcurl's buffer comes in big pieces, and a pwrite into the page cache releases the GIL:
        # writing on a thread of its own only added hand-offs (512 MiB: 1.9 s with one, 1.15 s without)
        ctx.write_behind = False
        ctx.scheduler.wake = self._wake

    # ------------------------------------------------------------------ libcurl's callbacks
    def _on_socket(self, what: int, fd: int, multi, data) -> None:
        """libcurl says which sockets to watch. A socket it stops watching (an idle connection
        back in its pool) stays registered with no events, so reusing it costs one call, not two;
        one it closed has left epoll by itself, and is registered anew if its number comes back."""
        events = _EPOLL_EVENTS[what]
        if fd in self._watched:
            try:
                self.poller.modify(fd, events)
                return
            except FileNotFoundError:
                pass
        if what != pycurl.POLL_REMOVE:
            self.poller.register(fd, events)
            self._watched.add(fd)

    def _on_timer(self, ms: int) -> None:
        self._curl_deadline = None if ms < 0 else time.monotonic() + ms / 1000

    # ------------------------------------------------------------------ used by connections
    def add(self, conn: Connection) -> None:
        self.busy[conn.curl] = conn
        self.multi.add_handle(conn.curl)

    def later(self, seconds: float, call) -> None:
        """Run `call` on the loop after `seconds` (a retry's backoff, a --max-speed pause); at once
        when a stop is asked."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + seconds, self._timer_seq, call))

    def in_thread(self, fn, then) -> None:
        """Run `fn` on a helper thread (verifying a big file), then `then(result)` on the loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="finish")
        self._holding += 1

        def done(future) -> None:
            self._calls.append(lambda: (self._release_hold(), then(future.result())))
            self._wake()
        self._pool.submit(fn).add_done_callback(done)

    def _release_hold(self) -> None:
        self._holding -= 1

    def track(self, t: Transfer) -> None:
        self._active.add(t)

    def connection_free(self, conn: Connection, outcome: Result | None) -> None:
        """`conn` is done with its work item; `outcome` is the file's result when it ended it."""
        t = conn.transfer
        conn.transfer = conn.seg = None
        if outcome is not None:
            self._active.discard(t)
            self.ctx.post_submit(outcome)
        self.ctx.scheduler.connection_done(conn.host, job_done=outcome is not None)
        self._free.append(conn)

    # ------------------------------------------------------------------ the loop
    def _wake(self) -> None:
        """Called from any thread (the feed): the loop polls the scheduler again soon."""
        if threading.get_ident() == self._loop_thread:
            self._woken = True
            return
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def run(self, grace: float = 5.0) -> None:
        self._loop_thread = threading.get_ident()
        stop_deadline = None
        try:
            while True:
                more = self._start_work()
                if not more and not self.busy and not self._holding and not self._timers:
                    return
                if self.stopping:
                    stop_deadline = stop_deadline or time.monotonic() + grace
                    if time.monotonic() >= stop_deadline:
                        self._abandon()
                        return
                self._wait(stop_deadline)
                self._run_timers()
                self._read_done()
                while self._calls:
                    self._calls.popleft()()
        finally:
            self.ctx.scheduler.wake = lambda: None
            self._close()

    def _start_work(self) -> bool:
        """Give free connections work; False once the scheduler says everything is done."""
        self._woken = False
        scheduler = self.ctx.scheduler
        while True:
            if not self._free:
                if self._made >= self.workers:
                    return True
                self._made += 1
                self._free.append(Connection(self, self._made))
            work = scheduler.poll()
            if work is WAIT:
                return True
            if work is None:
                return False
            self._free.pop().start(work)

    def _wait(self, stop_deadline: float | None) -> None:
        now = time.monotonic()
        deadlines = [d for d in (self._curl_deadline, stop_deadline,
                                 self._timers[0][0] if self._timers else None) if d is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        if self._woken or self._calls:
            timeout = 0
        for fd, mask in self.poller.poll(-1 if timeout is None else timeout):
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            self._socket_action(fd, (pycurl.CSELECT_IN if mask & _READABLE else 0)
                                | (pycurl.CSELECT_OUT if mask & select.EPOLLOUT else 0)
                                | (pycurl.CSELECT_ERR if mask & select.EPOLLERR else 0))
        if self._curl_deadline is not None and time.monotonic() >= self._curl_deadline:
            self._curl_deadline = None
            self._socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _socket_action(self, fd: int, action: int) -> None:
        while True:
            try:
                ret, _ = self.multi.socket_action(fd, action)
            except pycurl.error as exc:  # only for a misuse of the multi handle: a bug
                raise RuntimeError(f"libcurl: {exc}") from exc
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                return

    def _read_done(self) -> None:
        while True:
            queued, ok, failed = self.multi.info_read()
            for curl in ok:
                self._done(curl, 0, "")
            for curl, code, message in failed:
                self._done(curl, code, message)
            if not queued:
                return

    def _done(self, curl, code: int, message: str) -> None:
        conn = self.busy.pop(curl)
        self.multi.remove_handle(curl)
        conn.done(code, message)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and (self._timers[0][0] <= now or self.stopping):
            _, _, call = heapq.heappop(self._timers)
            call()

    def stop(self) -> None:
        """First Ctrl-C: start nothing new, let what is in flight land, keep every `.part`. A
        response's bytes reach the file as they arrive, so the requests in flight are simply
        ended; the files are parked the usual way (their connections leave, the last finishes)."""
        self.stopping = True
        self.ctx.scheduler.stop()
        self._calls.append(self._end_requests)
        self._woken = True
        try:  # the pipe even from the loop's own thread: a signal handler runs there, mid-select
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _end_requests(self) -> None:
        for curl, conn in list(self.busy.items()):
            self.busy.pop(curl)
            self.multi.remove_handle(curl)
            conn.ended = True
            conn.done(0, "")

    def _abandon(self) -> None:
        """Connections still busy after the grace period (a finish stuck on a disk): park their files."""
        for t in list(self._active):
            self.ctx.post_submit(t.park_quietly())
        self._active.clear()

    def _close(self) -> None:
        for curl in list(self.busy):
            self.multi.remove_handle(curl)
        self.busy.clear()
        for conn in self._free:
            conn.curl.close()
        self.multi.close()
        self.poller.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
