"""The `requests` engine: slower, but follows redirects and keeps cookies.

One `requests.Session` per virtual user, so cookies, auth and connection
pooling behave as they would for one browser. Proxies come from the usual
environment variables. Use it for what the fast engine does not do.

It honours the same whole-response `timeout` as the fast engine: the
request's `RequestTimer` runs from the moment the request starts (a new
connection's connect and every redirect followed are part of it) and the
worker's deadline scan aborts it when it runs past, wherever it waits; the
body is streamed and counted, never kept, and checks the deadline after
every piece. requests' own timeouts (connect, and each read) are the same
value, so a session used outside a worker is still bounded per read.
Failures are classified from the exceptions' types and errno values, never
from their message text.
"""

from __future__ import annotations

import errno
import http.client
import ssl
from itertools import cycle
from time import perf_counter_ns
from typing import Iterator

import requests
import urllib3.exceptions
from gevent import GreenletExit

from loadtest.core.outcome import start_ns, status_ok
from loadtest.model.config import HttpTarget
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import Deadlines, RequestTimer
from loadtest.engine.protocols.channel import RequestTimeout, give_way

BODY_CHUNK = 256 * 1024
TURN_NS = 2_000_000  # reading a body that keeps arriving gives the hub a turn this often (2 ms)
MAX_CAUSES = 32  # exceptions looked at in one failure's chain of causes
NO_LATENCY_KINDS = frozenset({"refused", "connect_timeout", "resources"})  # never connected: no latency
_RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)
_RESOURCE_ERRNOS = (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ENOBUFS)


class RequestsSession:
    """One virtual user driving a target through a `requests.Session`."""

    back_off = False  # set by a request that never connected (see protocols.Session)

    def __init__(self, target: HttpTarget, urls: list[str], recorder: TargetRecorder,
                 url_cycle: Iterator[str] | None = None, deadlines: Deadlines | None = None) -> None:
        self.target = target
        self.recorder = recorder
        self.expect = frozenset(target.expect_status)
        self.timeout_ns = int(target.timeout * 1e9)
        self._urls = url_cycle if url_cycle is not None else cycle(urls)
        self._session = requests.Session()
        self._session.headers.update(dict(target.headers))
        self._session.verify = target.verify_tls
        self._timer = RequestTimer(deadlines)

    def exchange(self, scheduled_ns: int = 0) -> None:
        url = next(self._urls)
        rec = self.recorder
        t = self.target
        sending = perf_counter_ns()
        started = start_ns(scheduled_ns, sending)
        deadline = sending + self.timeout_ns
        timer = self._timer
        timer.start(deadline)
        try:
            resp = self._session.request(t.method, url, data=t.body or None, timeout=(t.timeout, t.timeout),
                                         allow_redirects=True, stream=True)
            try:
                body = read_body(resp, deadline)
            finally:
                resp.close()
        except GreenletExit:
            timer.stop()
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is counted, none escapes
            timer.stop()
            kind, message = request_failure(e, t.timeout)
            never_connected = kind in NO_LATENCY_KINDS
            rec.failure(kind, message, None if never_connected else perf_counter_ns() - started)
            if never_connected:
                self.back_off = True
            return
        timer.stop()
        ended = perf_counter_ns()
        latency = ended - started
        if scheduled_ns:  # open model: also what a closed-loop tool would have measured
            rec.uncorrected.record(ended - sending)
        sent = len(t.body)
        status = resp.status_code
        if status_ok(status, self.expect):
            rec.success(latency, body, sent, body)
        else:
            rec.failure("status", f"HTTP {status}", latency, body, sent, body)

    def close(self) -> None:
        self._session.close()
        self._timer.close()


def read_body(resp: requests.Response, deadline_ns: int) -> int:
    """Read a streamed response's body to its end and return its length (decoded, as requests gives it).

    A body that keeps arriving would never park this greenlet (a patched
    socket with bytes waiting returns at once), so it gives the hub a turn
    every `TURN_NS`; and it raises `RequestTimeout` once past the deadline.
    """
    size = 0
    turn = perf_counter_ns() + TURN_NS
    for chunk in resp.iter_content(BODY_CHUNK):
        size += len(chunk)
        now = perf_counter_ns()
        if now >= deadline_ns:
            raise RequestTimeout
        if now >= turn:
            give_way()
            turn = perf_counter_ns() + TURN_NS
    return size


def causes(e: BaseException) -> Iterator[BaseException]:
    """`e` and every exception behind it: causes, contexts, urllib3's `reason` and exceptions in `args`."""
    seen: set[int] = set()
    todo = [e]
    while todo and len(seen) < MAX_CAUSES:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        behind = [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args]
        todo.extend(b for b in behind if isinstance(b, BaseException))


def request_failure(e: BaseException, timeout: float) -> tuple[str, str]:
    """Map a failed request (a `requests` exception and its causes) to the fast engine's failure kinds."""
    chain = list(causes(e))

    def first(*types: type[BaseException]) -> BaseException | None:
        return next((x for x in chain if isinstance(x, types)), None)

    if first(RequestTimeout):
        return "read_timeout", f"no complete response within {timeout:g} s"
    if first(requests.exceptions.TooManyRedirects):
        return "redirects", "too many redirects"
    tls = first(ssl.SSLError, ssl.CertificateError)
    if tls is not None:
        return "tls", f"TLS error: {getattr(tls, 'reason', None) or type(tls).__name__}"
    if first(requests.exceptions.SSLError, urllib3.exceptions.SSLError):
        return "tls", "TLS error"
    connecting = first(urllib3.exceptions.NewConnectionError)  # also a ConnectTimeoutError, but a refusal
    if first(requests.exceptions.ConnectTimeout) or (
            first(urllib3.exceptions.ConnectTimeoutError) and not connecting):
        return "connect_timeout", f"no connection within {timeout:g} s"
    if first(urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout, TimeoutError):
        return "read_timeout", f"no complete response within {timeout:g} s"
    if first(http.client.RemoteDisconnected, http.client.IncompleteRead, urllib3.exceptions.IncompleteRead):
        return "closed", "the server closed the connection before the response ended"
    for x in chain:
        if isinstance(x, OSError) and x.errno is not None:
            code = x.errno
            if code == errno.ECONNREFUSED:
                return "refused", "connection refused"
            if code in _RESET_ERRNOS:
                return "reset", f"connection reset: {x.strerror}"
            if code in _RESOURCE_ERRNOS:
                return "resources", f"cannot open a connection: {x.strerror}"
            if code == errno.ETIMEDOUT:
                return ("connect_timeout", f"no connection within {timeout:g} s") if connecting else (
                    "read_timeout", f"no complete response within {timeout:g} s")
            return "error", f"{'cannot connect' if connecting else 'socket error'}: {x.strerror}"
    if first(ConnectionRefusedError):
        return "refused", "connection refused"
    if first(ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return "reset", "connection reset"
    # the parser's own exception names what was wrong; the wrappers around it only say "aborted"
    malformed = first(http.client.HTTPException) or first(
        requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
        urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError)
    if malformed is not None:
        return "protocol", f"malformed response: {type(malformed).__name__}: {str(malformed)[:200]}"
    if connecting is not None:
        return "error", f"cannot connect: {type(connecting).__name__}"
    inner = chain[-1]
    return "error", f"{type(inner).__name__}: {str(inner)[:200]}"
