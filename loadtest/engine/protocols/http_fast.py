"""The fast HTTP/1.1 engine: keep-alive sockets, responses parsed by httptools.

One `HttpSession` per virtual user holds one keep-alive connection per origin.
Each request is one prebuilt byte string written with one `send` on a
`Channel`; the response is fed to an llhttp parser whose only Python
callbacks are headers-complete, body and message-complete, so a request
costs a handful of microseconds of Python.
Bodies are counted, never kept; a status line plus headers longer than
`MAX_HEAD_BYTES` is a `protocol` failure (llhttp sets no limit of its own).

Failure kinds: refused, connect_timeout, read_timeout, reset, closed, status,
protocol, tls, error, cancelled.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from dataclasses import dataclass
from itertools import cycle
from time import perf_counter_ns
from typing import Any, Iterator
from urllib.parse import urlsplit

import httptools
from gevent import GreenletExit
from gevent import ssl as gevent_ssl

from loadtest.core.outcome import start_ns, status_ok
from loadtest.model.config import HttpTarget
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import Deadlines, RequestTimer
from loadtest.engine.protocols.channel import Channel, ConnectTimeout, RequestTimeout, TlsChannel

# Under glibc's mmap threshold (128 KiB at start): a `recv` allocates its whole size and shrinks it,
# and a 256 KiB read was mapped and unmapped each time (two page faults, 14 µs against 2 µs) until
# some larger free happened to raise the threshold.
RECV_SIZE = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # a status line plus headers longer than this is not a server speaking HTTP
USER_AGENT = "loadtest/0.1"
_STALE = ("closed", "reset")
_LENGTH_OR_CHUNKED = re.compile(rb"\r\n(content-length|transfer-encoding)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Endpoint:
    """One URL, resolved once and with its request bytes built once."""

    origin: tuple[str, str, int]  # scheme, host, port
    family: int
    sockaddr: tuple  # type: ignore[type-arg]
    request: bytes
    head: bool


def build_endpoints(target: HttpTarget, urls: list[str]) -> list[Endpoint]:
    """Resolve each URL and build its request; raises OSError if a host does not resolve."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        host_header = parts.netloc.rpartition("@")[2]
        lines = [f"{target.method} {path} HTTP/1.1", f"Host: {host_header}"]
        names = {k.lower() for k, _ in target.headers}
        if "user-agent" not in names:
            lines.append(f"User-Agent: {USER_AGENT}")
        lines.extend(f"{k}: {v}" for k, v in target.headers)
        if target.body or target.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(target.body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + target.body
        out.append(Endpoint((scheme, host, port), family, sockaddr, request, target.method == "HEAD"))
    return out


def read_failure(e: BaseException, timeout: float) -> tuple[str, str]:
    """The failure kind and message of an exception raised while a request was written or its response read."""
    if isinstance(e, RequestTimeout):
        return "read_timeout", f"no complete response within {timeout:g} s"
    if isinstance(e, httptools.HttpParserError):
        return "protocol", f"malformed response: {e}"
    if isinstance(e, ssl.SSLError):
        return "tls", f"TLS error: {e.reason or e}"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset", f"connection reset: {e.strerror or e}"
    return "error", f"socket error: {getattr(e, 'strerror', None) or e}"


class BodyCounter:
    """The parser's callback object: counts body bytes, notes completion (the fast engine's and the flow
    client's, which keeps bodies in a subclass)."""

    __slots__ = ("body", "complete", "headers_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.body = 0
        self.complete = False
        self.headers_done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def reset(self) -> None:
        """Ready for the next response on the same connection."""
        self.body = 0
        self.complete = False
        self.headers_done = False

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # llhttp forgets this once the message is complete, so ask while the headers are fresh
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]

    def on_body(self, chunk: bytes) -> None:
        self.body += len(chunk)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    __slots__ = ("channel", "parser", "response", "reused")

    def __init__(self, channel: Channel | TlsChannel) -> None:
        self.channel = channel
        self.reused = False
        self.response = BodyCounter()
        self.parser = self.response.parser = httptools.HttpResponseParser(self.response)


class ReplyReader:
    """Writes one request and reads its whole response over a keep-alive connection: the read loop the
    fast engine and the flow client share.

    A subclass sets `timeout` and `_timer` (its `RequestTimer`). What the last `_read_reply` read is left on
    the object rather than returned in a tuple (one fewer allocation per request on the hot path): the
    bytes read in `_received`, the bytes that held the status line and headers in `_heading`, a failure's
    message in `_message`.
    """

    timeout: float
    _timer: RequestTimer
    _received = 0
    _heading = b""
    _message = ""

    def _read_reply(self, channel: Channel | TlsChannel, response: Any, parser: Any, request: bytes,
                    head: bool) -> str | None:
        """Write `request`, read one whole response into `parser` (whose callbacks are `response`): the
        failure kind, or None."""
        timer = self._timer
        self._received = received = 0
        self._heading = heading = b""
        try:
            channel.send_all(request)
            channel.await_reply()  # park first when replies come late: a recv that finds nothing costs a raise
            while True:
                data = channel.recv(RECV_SIZE)
                if not data:
                    if response.headers_done and not _LENGTH_OR_CHUNKED.search(heading):
                        return None  # a body delimited by the server closing
                    return self._fail("closed", "the server closed the connection before the response ended")
                received += len(data)
                self._received = received
                in_head = not response.headers_done
                if in_head:
                    heading += data
                    self._heading = heading
                parser.feed_data(data)
                # Checked only while the head is arriving, and the search only when this much has come
                # (a big response's first read): the head must end within MAX_HEAD_BYTES.
                if in_head and len(heading) > MAX_HEAD_BYTES and heading.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES) < 0:
                    return self._fail("protocol", f"the status line and headers run past {MAX_HEAD_BYTES // 1024} KiB")
                if response.complete or (head and response.headers_done):
                    return None
                # A response still arriving notices its own deadline here, without waiting for the
                # worker's scan: a dripping server wakes this greenlet often enough.
                if perf_counter_ns() >= timer.deadline_ns:
                    raise RequestTimeout
        except (RequestTimeout, httptools.HttpParserError, OSError) as e:
            return self._fail(*read_failure(e, self.timeout))

    def _fail(self, kind: str, message: str) -> str:
        self._heading = b""
        self._message = message
        return kind


class HttpSession(ReplyReader):
    """One virtual user's keep-alive connections to an HTTP target."""

    back_off = False  # set by a failed connect (see protocols.Session)

    def __init__(self, target: HttpTarget, endpoints: list[Endpoint], recorder: TargetRecorder,
                 urls: Iterator[Endpoint] | None = None, tls: ssl.SSLContext | None = None,
                 deadlines: Deadlines | None = None) -> None:
        self.target = target
        self.recorder = recorder
        self.timeout = target.timeout
        self.timeout_ns = int(target.timeout * 1e9)
        self.expect = frozenset(target.expect_status)
        self._single = endpoints[0] if len(endpoints) == 1 else None
        self._urls = urls if urls is not None else cycle(endpoints)
        self._conns: dict[tuple[str, str, int], _Connection] = {}
        self._tls = tls
        self._timer = RequestTimer(deadlines)

    def exchange(self, scheduled_ns: int = 0) -> None:
        ep = self._single or next(self._urls)
        rec = self.recorder
        conn = self._conns.get(ep.origin)
        if conn is None:
            try:
                conn = self._connect(ep)
            except GreenletExit:
                rec.failure("cancelled", "the run stopped while this request was connecting", None)
                raise
            if conn is None:
                return
        sending = perf_counter_ns()
        started = start_ns(scheduled_ns, sending)
        timer = self._timer
        deadline = sending + self.timeout_ns  # from the first byte written, even when the request started late
        timer.start(deadline)
        sent = len(ep.request)
        try:
            kind = self._read_reply(conn.channel, conn.response, conn.parser, ep.request, ep.head)
            if kind is not None and kind in _STALE and self._received == 0 and conn.reused:
                resent = self._resend(ep, deadline)
                if resent is None:
                    return
                conn, kind = resent
                sent += len(ep.request)
            conn.reused = True
        except GreenletExit:
            timer.stop()
            self._drop(ep.origin)
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            raise
        timer.stop()
        ended = perf_counter_ns()
        latency = ended - started
        received = self._received
        if scheduled_ns:  # open model: also what a closed-loop tool would have measured
            rec.uncorrected.record(ended - sending)
        if kind is None:
            status = conn.parser.get_status_code()
            response = conn.response
            body = response.body
            if not response.keep_alive:
                self._drop(ep.origin)
            else:
                response.complete = False
                response.headers_done = False
                response.body = 0
                if ep.head:  # llhttp would wait for a body that HEAD never gets
                    conn.parser = response.parser = httptools.HttpResponseParser(response)
            if status_ok(status, self.expect):
                rec.success(latency, received, sent, body)
            else:
                rec.failure("status", f"HTTP {status}", latency, received, sent, body)
        else:
            self._drop(ep.origin)
            rec.failure(kind, self._message, latency, received, sent)

    def _resend(self, ep: Endpoint, deadline: int) -> tuple[_Connection, str | None] | None:
        """The server closed an idle keep-alive connection: reconnect once, as browsers do, and send the
        request again by `deadline`; (the new connection, the reply's failure kind or None), or None if the
        connect failed (recorded)."""
        self._drop(ep.origin)
        self._timer.stop()  # the connect keeps its own timeout
        conn = self._connect(ep)
        if conn is None:
            return None
        self._timer.start(deadline)
        return conn, self._read_reply(conn.channel, conn.response, conn.parser, ep.request, ep.head)

    def _connect(self, ep: Endpoint) -> _Connection | None:
        rec = self.recorder
        started = perf_counter_ns()
        try:
            plain = Channel.connect(ep.family, ep.sockaddr, self.timeout)
            channel: Channel | TlsChannel = plain
            if ep.origin[0] == "https":
                channel = TlsChannel(plain, self._tls_context(), ep.origin[1], self.timeout)
        except GreenletExit:
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is counted, none escapes
            kind, message = connect_failure(e, self.timeout)
            rec.failure(kind, message, None)  # the request failed; HTTP has no CONNECT row
            self.back_off = True
            return None
        rec.connected(perf_counter_ns() - started)
        conn = self._conns[ep.origin] = _Connection(channel)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self.target)
        return self._tls

    def _drop(self, origin: tuple[str, str, int]) -> None:
        conn = self._conns.pop(origin, None)
        if conn is not None:
            conn.response.parser = None  # parser and callbacks refer to each other
            conn.channel.close()
            self.recorder.disconnected()

    def close(self) -> None:
        for origin in list(self._conns):
            self._drop(origin)
        self._timer.close()


def tls_context(target: HttpTarget) -> ssl.SSLContext:
    """The client TLS context for a target; `verify_tls: false` accepts any certificate."""
    ctx = gevent_ssl.create_default_context()
    if not target.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect_failure(e: BaseException, timeout: float) -> tuple[str, str]:
    """The failure kind and message of a connect that did not succeed."""
    if isinstance(e, (ConnectTimeout, socket.timeout)):
        return "connect_timeout", f"no connection within {timeout:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(e, ssl.SSLError):
        return "tls", f"TLS handshake failed: {e.reason or e}"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset", f"connection reset during connect: {e.strerror or e}"
    if isinstance(e, OSError) and e.errno in (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE):
        return "resources", f"cannot open a connection: {e.strerror}"
    if isinstance(e, OSError):
        return "error", f"cannot connect: {e.strerror or e}"
    return "error", f"cannot connect: {type(e).__name__}: {e}"
