"""A small fast HTTP/1.1 server for load tests: gevent for connections, httptools (llhttp) for parsing.

Runs inside a server child process (monkey-patched; see `group.py`). Routes:

    /             a small HTML page
    /bytes/N      N bytes (0 <= N <= 100 MiB)
    /delay/MS     an answer after MS milliseconds (0 <= MS <= 60000)
    /status/CODE  that status (200 <= CODE <= 599)
    /echo         the request body, back
    /site/K       a page that looks like a site's home page (K = 0..99), 2 KiB to 120 KiB
    anything else 404

Keep-alive, pipelining (answers in order, one `sendall` per batch), `Connection:
close`, HTTP/1.0, HEAD, chunked request bodies and `Expect: 100-continue` work.
Headers over 16 KiB get 431, bodies over 10 MiB get 413, a request not complete
within the idle timeout gets 408; each then closes the connection.

Speed: the whole response of a deterministic route is cached as bytes per
(URL, HEAD or not, connection mode), so a warm request is a dict lookup; all
connections of a process read into one buffer (the parser copies what it keeps
before the next switch). No Date header: it would defeat the byte cache.

Try it:  loadtest serve http   then   curl -i http://127.0.0.1:8080/site/3
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any

import gevent
import httptools
from gevent.server import StreamServer

from loadtest.servers import sites
from loadtest.servers.connections import ConnectionTable, IdleTimeout

DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 10_000
RECV_SIZE = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_BYTES = 100 * 1024 * 1024
MAX_DELAY_MS = 60_000
CACHE_MAX_ENTRIES = 4096  # per connection mode; cleared when full
CACHE_MAX_RESPONSE = 256 * 1024  # larger responses are built per request from the pattern
SEND_BATCH_MAX = 256 * 1024  # above this, pipelined responses go out in several sendall calls
ERROR_SEND_TIMEOUT_S = 1.0

# Connection modes: what a response says about the connection. Index = mode.
KEEP_ALIVE_11, KEEP_ALIVE_10, CLOSE = 0, 1, 2
_MODE_HEADERS = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"
_CLASS_REASONS = {2: "Success", 3: "Redirection", 4: "Client Error", 5: "Server Error"}


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return _CLASS_REASONS.get(code // 100, "Unknown")


_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, _reason(code).encode()) for code in range(100, 600)}


def response_head(status: int, content_type: bytes, length: int, mode: int) -> bytes:
    """The status line and headers of a response with a body of `length` bytes."""
    if status == 204 or status == 304:  # no body, and no Content-Length (RFC 9110 8.6)
        fields = b""
    else:
        fields = b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, length)
    return b"%sServer: loadtest\r\n%s%s\r\n" % (_STATUS_LINES[status], fields, _MODE_HEADERS[mode])


class Reply:
    """What a route answers: status, body (bytes, or a length of pattern bytes) and a delay."""

    __slots__ = ("status", "content_type", "body", "length", "delay", "cacheable")

    def __init__(self, status: int, body: bytes | int, content_type: bytes = TEXT,
                 delay: float = 0.0, cacheable: bool = True) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.length = body if isinstance(body, int) else len(body)
        self.delay = delay
        self.cacheable = cacheable


def _number(text: bytes) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 10 else None


def _bad(why: str) -> Reply:
    return Reply(400, why.encode() + b"\n")


def route(path: bytes, body: bytes) -> Reply:
    """The reply to a request for `path` (query string removed) carrying `body`."""
    if path == b"/":
        return Reply(200, sites.INDEX_PAGE, HTML)
    kind, _, arg = path[1:].partition(b"/")
    if kind == b"echo" and not arg:
        return Reply(200, body, OCTETS, cacheable=False)
    n = _number(arg)
    if kind == b"bytes":
        if n is None or n > MAX_BYTES:
            return _bad(f"/bytes/N: N must be a whole number from 0 to {MAX_BYTES}")
        return Reply(200, n if n > CACHE_MAX_RESPONSE else sites.pattern()[:n], OCTETS)
    if kind == b"delay":
        if n is None or n > MAX_DELAY_MS:
            return _bad(f"/delay/MS: MS must be a whole number from 0 to {MAX_DELAY_MS}")
        return Reply(200, b"delayed %d ms\n" % n, delay=n / 1000, cacheable=False)
    if kind == b"status":
        # 1xx is excluded: it is an interim response, and clients would wait for the final one.
        if n is None or not 200 <= n <= 599:
            return _bad("/status/CODE: CODE must be a whole number from 200 to 599")
        return Reply(n, b"%d %s\n" % (n, _reason(n).encode()))
    if kind == b"site" and n is not None and n < sites.SITE_PAGES:
        return Reply(200, sites.site_page(n), HTML)
    return Reply(404, b"not found\n")


class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer `status`, then close."""

    def __init__(self, status: int) -> None:
        self.status = status


class HttpConnection:
    """One client connection: the httptools callbacks and the responses they queue."""

    def __init__(self, server: HttpServer, sock: Any) -> None:
        self.server = server
        self.sock = sock
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes | memoryview | float] = []
        self.served = 0
        self.closing = False
        self.in_request = False
        self.in_headers = False
        self.began = False  # a request began in the current read
        self.url = b""
        self.header_bytes = 0
        self.expect_continue = False
        self.body: list[bytes] = []
        self.body_bytes = 0

    # httptools callbacks: no blocking calls here, the shared receive buffer is being parsed.

    def on_message_begin(self) -> None:
        if self.closing:  # a request pipelined after "Connection: close" is not answered
            raise _Reject(0)
        self.in_request = self.in_headers = self.began = True
        self.url = b""
        self.header_bytes = 0
        if self.body:
            self.body = []
            self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431)
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            if value.strip().isdigit() and int(value) > MAX_BODY_BYTES:
                raise _Reject(413)
        elif size == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.expect_continue:
            self.expect_continue = False
            self.out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            raise _Reject(413)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        parser = self.parser
        if parser.should_keep_alive():
            mode = KEEP_ALIVE_11 if parser.get_http_version() == "1.1" else KEEP_ALIVE_10
        else:
            mode = CLOSE
            self.closing = True
        head = parser.get_method() == b"HEAD"
        self.served += 1
        cache = self.server.caches[mode * 2 + head]
        cached = cache.get(self.url)
        if cached is not None:
            self.out.append(cached)
            return
        body = b"".join(self.body) if self.body else b""
        reply = route(self.url.partition(b"?")[0], body)
        response_bytes = self.server.render(reply, mode, head, self.out)
        if reply.cacheable and response_bytes is not None:
            if len(cache) >= CACHE_MAX_ENTRIES:
                cache.clear()
            cache[self.url] = response_bytes

    # The connection's loop.

    def serve(self, conn: Any) -> None:
        sock = self.sock
        server = self.server
        view = server.buffer_view
        recv_into = sock.recv_into
        feed = self.parser.feed_data
        out = self.out
        counts = server.counts
        monotonic = time.monotonic
        pending_raw = 0  # bytes received while a header section was incomplete: bounds what llhttp buffers
        while True:
            n = recv_into(view)
            if not n:
                return
            try:
                feed(view[:n])
            except _Reject as reject:  # never happens: httptools wraps callback errors
                raise AssertionError from reject
            except httptools.HttpParserUpgrade:
                self.closing = True
            except httptools.HttpParserError as error:
                reject = error.__context__
                status = reject.status if isinstance(reject, _Reject) else 400
                if status:
                    out.append(self._error_response(status))
                self.closing = True
            # The idle timeout runs from the last complete request, or from the start of the one under way.
            if self.began or not self.in_request:
                conn.mark = monotonic()
                self.began = False
            if self.in_headers:
                pending_raw += n
                if pending_raw > MAX_HEADER_BYTES + RECV_SIZE:
                    out.append(self._error_response(431))
                    self.closing = True
            else:
                pending_raw = 0
            if out:
                counts[0] += self.served
                self.served = 0
                if len(out) == 1 and out[0].__class__ is bytes:
                    sock.sendall(out[0])
                    out.clear()
                else:
                    self._flush(conn)
            if self.closing:
                return

    def _flush(self, conn: Any) -> None:
        """Send the queued responses in order: batched, big bodies on their own, delays slept."""
        sock = self.sock
        batch: list[bytes | memoryview] = []
        batch_bytes = 0
        for item in self.out:
            if isinstance(item, float):
                if batch:
                    sock.sendall(b"".join(batch))
                    batch.clear()
                    batch_bytes = 0
                conn.mark = time.monotonic() + item
                gevent.sleep(item)
                continue
            batch.append(item)
            batch_bytes += len(item)
            if batch_bytes >= SEND_BATCH_MAX:
                sock.sendall(b"".join(batch) if len(batch) > 1 else batch[0])
                batch.clear()
                batch_bytes = 0
                conn.mark = time.monotonic()
        if batch:
            sock.sendall(b"".join(batch) if len(batch) > 1 else batch[0])
        self.out.clear()

    def _error_response(self, status: int) -> bytes:
        self.server.counts[0] += 1
        body = b"%d %s\n" % (status, _reason(status).encode())
        return response_head(status, TEXT, len(body), CLOSE) + body

    def send_timeout_response(self) -> None:
        """Answer 408 to a request that did not arrive in time, if one was under way."""
        if not self.in_request:
            return
        with gevent.Timeout(ERROR_SEND_TIMEOUT_S, False):
            self.sock.sendall(self._error_response(408))


class HttpServer:
    """The HTTP server of one process, on a listening socket it is given."""

    def __init__(self, listener: Any, counts: Any, max_connections: int = 0, idle_timeout: float = 0.0) -> None:
        self.counts = counts  # counts[0]: requests answered (shared with the parent)
        self.table = ConnectionTable(max_connections or DEFAULT_MAX_CONNECTIONS,
                                     idle_timeout or DEFAULT_IDLE_TIMEOUT_S)
        self.caches: list[dict[bytes, bytes]] = [{} for _ in range(6)]  # [mode * 2 + is_head]
        # One receive buffer for every connection: parsing follows each read with no switch between.
        self.buffer_view = memoryview(bytearray(RECV_SIZE))
        self.stream_server = StreamServer(listener, self._handle)

    def start(self) -> None:
        self.table.start()
        self.stream_server.start()

    def stop(self) -> None:
        self.stream_server.close()
        self.table.stop()

    def render(self, reply: Reply, mode: int, head: bool, out: list[Any]) -> bytes | None:
        """Queue `reply` on `out`; return its whole bytes when it can be cached, else None."""
        if reply.delay:
            out.append(reply.delay)
        response_head_bytes = response_head(reply.status, reply.content_type, reply.length, mode)
        if head:
            out.append(response_head_bytes)
            return response_head_bytes if reply.cacheable else None
        body = reply.body
        if isinstance(body, int):  # a big /bytes/N: slices of the pattern, never one big buffer
            out.append(response_head_bytes)
            pattern = memoryview(sites.pattern())
            whole, rest = divmod(body, len(pattern))
            out.extend([pattern] * whole)
            if rest:
                out.append(pattern[:rest])
            return None
        whole_response = response_head_bytes + body
        out.append(whole_response)
        if not reply.cacheable or len(whole_response) > CACHE_MAX_RESPONSE:
            return None
        return whole_response

    def _handle(self, sock: Any, address: Any) -> None:
        conn = self.table.open()
        if conn is None:
            sock.close()
            return
        connection = HttpConnection(self, sock)
        try:
            connection.serve(conn)
        except IdleTimeout:
            connection.send_timeout_response()
        except OSError:
            pass  # the client went away: nothing to answer
        finally:
            self.table.close(conn)
            sock.close()
