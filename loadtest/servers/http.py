"""A small fast HTTP/1.1 server for load tests: gevent's event loop for connections, httptools (llhttp) for parsing.

Runs inside a server process (monkey-patched; see `loadtest.execution.servers`). Routes:

    /             a small HTML page
    /bytes/N      N bytes (0 <= N <= 100 MiB)
    /delay/MS     an answer after MS milliseconds (0 <= MS <= 60000)
    /status/CODE  that status (200 <= CODE <= 599)
    /stall/P/S    answers at once, except in the first S ms of every P ms of the wall
                  clock, when it answers as that stall ends (a server that freezes for
                  S ms every P ms, as in wrk2's coordinated-omission demonstration)
    /echo         the request body, back
    /login        POST {"user": U, "password": P} (JSON): 200 {"token": T, "user": U}, T signed for U
    /me           200 {"user": U} with "Authorization: Bearer T" from /login, else 401
    /site/K       a page that looks like a site's home page (K = 0..99), 2 KiB to 120 KiB
    anything else 404

Keep-alive, pipelining (answers in order, one send per batch), `Connection:
close`, HTTP/1.0, HEAD, chunked request bodies and `Expect: 100-continue` work.
Headers over 16 KiB get 431, bodies over 10 MiB get 413, a request not complete
within the idle timeout gets 408; each then closes the connection.

Counts: requests answered, and requests per route (`routes.ROUTE_NAMES`), shared
with the parent, which reports them (summary.json `servers[].served`).

Memory: only /echo and /login keep a request body (other routes count it and drop it).
What one process holds for its clients in all -- bodies kept for /echo, echo
answers and joined batches not yet sent, unfinished header sections -- is
capped (`max_buffered`, 256 MiB by default): a request that would pass the cap
gets 503 and its connection closes (near the cap, queued answers are sent one
by one rather than joined). A connection's buffers are released when it
closes, not at the next garbage collection: `close()` breaks the reference
cycles (parser and watchers hold the connection) explicitly.

Speed: a gevent `StreamServer` accepts, then each connection is served by
event-loop callbacks (read, parse, send) rather than a greenlet of its own: no
switch and no exception per read (`benchmarks/servers_throughput.py` measures
the requests/s one process reaches). The whole response of a deterministic route is cached as bytes per
(URL, HEAD or not, connection mode), so a warm request is a dict lookup; all
connections of a process read into one buffer (each read is parsed at once).
No Date header: it would defeat the byte cache.

Routes and replies are built in `routes.py`.

Try it:  loadtest serve http   then   curl -i http://127.0.0.1:8080/site/3
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import httptools

from loadtest.servers import sites
from loadtest.servers.connections import CallbackServer, fitting_cap
from loadtest.servers.http_sending import _READ, QueuedSender
from loadtest.servers.routes import (BODY_PATHS, CACHE_MAX_RESPONSE, CLOSE, KEEP_ALIVE_10, KEEP_ALIVE_11, TEXT, Reply,
                                     ROUTE_NAMES, reason, response_head, route, route_slot)

DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 10_000  # lowered to fit the open-file limit (see connections.py)
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024  # bytes one process holds for its clients in all
RECV_SIZE = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024
CACHE_MAX_ENTRIES = 4096  # per connection mode; cleared when full
CACHE_MAX_BYTES = 16 * 1024 * 1024  # per connection mode; cleared when full
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer `status`, then close."""

    def __init__(self, status: int) -> None:
        self.status = status

    @staticmethod
    def status_of(error: httptools.HttpParserError) -> int:
        """The status to answer a parser error with: a callback's `_Reject`, else 400.

        A function of its own so that no frame of the connection keeps the
        `_Reject`: its traceback holds the callback's frame, which holds the
        connection, and that cycle would keep the connection's buffers until the
        next garbage collection.
        """
        reject = error.__context__
        return reject.status if isinstance(reject, _Reject) else 400


class HttpConnection(QueuedSender):
    """One client connection: the httptools callbacks and the responses they queue.

    What it holds for its client is charged to its server's budget
    (`HttpServer.buffered`) for as long as it holds it: `held_body`, the /echo
    body being received; `held_out`, echo answers queued (until the queue is
    empty); `held_batch`, the joined batch at the head of the queue; and
    `held_header`, an upper bound of the unfinished header section httptools keeps.
    """

    def __init__(self, server: HttpServer, sock: Any) -> None:
        self.server = server
        self.sock = sock  # a plain non-blocking socket: the loop's watchers say when to read and write
        self.reader: Any = server.loop.io(sock.fileno(), _READ)
        self.writer: Any = None
        self.timer: Any = None
        self.mark = time.monotonic()  # last progress, for the idle timeout
        self.parser: Any = httptools.HttpRequestParser(self)
        self.out: deque[bytes | memoryview | float] = deque()
        self.served = 0
        self.closing = False
        self.closed = False
        self.linger = False  # an error answer is queued: close without a reset (see linger_then_close)
        self.lingered = 0
        self.in_request = False
        self.in_headers = False
        self.began = False  # a request began in the current read
        self.url = b""
        self.path = b""
        self.header_bytes = 0
        self.expect_continue = False
        self.content_length = 0
        self.keep_body = False  # this request's route reads its body (/echo, /login)
        self.authorization = b""  # this request's Authorization header (only /me reads it)
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.held_body = 0
        self.held_out = 0
        self.held_batch = 0
        self.held_header = 0
        self.reader.start(self.on_readable)

    # httptools callbacks: they only queue; the shared receive buffer is being parsed.

    def on_message_begin(self) -> None:
        if self.closing:  # a request pipelined after "Connection: close" is not answered
            raise _Reject(0)
        self.in_request = self.in_headers = self.began = True
        self.url = b""
        self.header_bytes = 0
        self.content_length = 0
        self.body_bytes = 0
        self.authorization = b""

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
            if value.strip().isdigit():
                self.content_length = int(value)
                if self.content_length > MAX_BODY_BYTES:
                    raise _Reject(413)
        elif size == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            self.expect_continue = True
        elif size == 13 and name.lower() == b"authorization":
            self.authorization = value

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.path = self.url.partition(b"?")[0]  # the routes ignore the query
        self.keep_body = self.path in BODY_PATHS
        if self.keep_body and self.content_length > self.server.max_buffered - self.server.buffered:
            raise _Reject(503)  # the body could not be kept: say so before the client sends it
        if self.expect_continue:
            self.expect_continue = False
            self.out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self.body_bytes += size
        if self.body_bytes > MAX_BODY_BYTES:
            raise _Reject(413)
        if self.keep_body:
            server = self.server
            if server.buffered + size > server.max_buffered:
                raise _Reject(503)
            server.buffered += size
            self.held_body += size
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        parser = self.parser
        if parser.should_keep_alive() and not parser.should_upgrade():  # no upgrades here: answer, then close
            mode = KEEP_ALIVE_11 if parser.get_http_version() == "1.1" else KEEP_ALIVE_10
        else:
            mode = CLOSE
            self.closing = True
        head = parser.get_method() == b"HEAD"
        self.served += 1
        server = self.server
        server.route_counts[route_slot(self.path)] += 1
        slot = mode * 2 + head
        cache = server.caches[slot]
        path = self.path
        cached = cache.get(path)
        if cached is not None:
            self.out.append(cached)
            return
        body = self.body
        if body:  # the echo answer takes the chunks over, and their charge until it is sent
            self.body = []
            self.held_out += self.held_body
            self.held_body = 0
        reply = route(path, body, self.authorization)
        response_bytes = server.render(reply, mode, head, self.out)
        if reply.cacheable and response_bytes is not None:
            size = len(response_bytes)
            if len(cache) >= CACHE_MAX_ENTRIES or server.cache_bytes[slot] + size > CACHE_MAX_BYTES:
                cache.clear()
                server.cache_bytes[slot] = 0
            cache[path] = response_bytes
            server.cache_bytes[slot] += size

    # Event loop callbacks: read and parse, then send the queued responses in order.

    def on_readable(self) -> None:
        server = self.server
        try:
            n = self.sock.recv_into(server.buffer_view)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not n:
            self.close()
            return
        out = self.out
        try:
            self.parser.feed_data(server.buffer_view[:n])
        except httptools.HttpParserUpgrade:
            self.closing = True
        except httptools.HttpParserError as error:
            status = _Reject.status_of(error)
            if status and not self.closing:  # llhttp refuses data after "Connection: close": no answer
                out.append(self._error_response(status))
            self.closing = True
            self._release_body()
        if self.in_headers and not self.closing:
            self._hold_header(n)
        elif self.held_header:
            server.buffered -= self.held_header
            self.held_header = 0
        # The idle timeout runs from the last complete request, or from the start of the one under way.
        if self.began or not self.in_request:
            self.mark = time.monotonic()
            self.began = False
        if out:
            server.counts[0] += self.served
            self.served = 0
            self.send_queued()
        elif self.closing:
            self.close()

    def _hold_header(self, n: int) -> None:
        """Charge the unfinished header section, `n` more bytes read; answer 431 or 503 when it must end.

        The bound counts from the section's start, not across reads: that is what
        lets a pipelining client split its requests anywhere. A section that began
        in this read lies after the last blank line in it (a header section has none).
        """
        if self.began:
            blank = self.server.buffer.rfind(b"\r\n\r\n", 0, n)
            pending = n - (blank + 4 if blank >= 0 else 0)
        else:
            pending = self.held_header + n
        server = self.server
        if pending > MAX_HEADER_BYTES + RECV_SIZE:
            status = 431
        elif server.buffered - self.held_header + pending > server.max_buffered:
            status = 503
        else:
            server.buffered += pending - self.held_header
            self.held_header = pending
            return
        self.out.append(self._error_response(status))
        self.closing = True
        server.buffered -= self.held_header
        self.held_header = 0

    def _error_response(self, status: int) -> bytes:
        self.linger = True
        self.server.counts[0] += 1
        body = b"%d %s\n" % (status, reason(status).encode())
        return response_head(status, TEXT, len(body), CLOSE) + body

    def _release_body(self) -> None:
        """Drop the request body being kept, and its charge."""
        self.body = []
        self.server.buffered -= self.held_body
        self.held_body = 0

    def expire(self) -> None:
        """End the connection from outside (idle timeout, server stop), answering 408 to a request under way."""
        if self.in_request and not self.out and not self.linger:
            try:
                self.sock.send(self._error_response(408))
            except OSError:
                pass
            else:
                self._release_body()
                self.linger_then_close()
                return
        self.close()

    def close(self) -> None:
        """Close the socket and release at once everything this connection holds, and its charge.

        The parser and the watchers' callbacks refer back to this connection:
        dropping them here breaks those cycles, so its buffers are freed now by
        reference counting, not whenever the cycle collector next runs.
        """
        if self.closed:
            return
        self.closed = True
        for watcher in (self.reader, self.writer, self.timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.reader = self.writer = self.timer = self.parser = None
        self.sock.close()
        self.server.buffered -= self.held_body + self.held_out + self.held_batch + self.held_header
        self.held_body = self.held_out = self.held_batch = self.held_header = 0
        self.body = []
        self.out.clear()
        self.server.table.discard(self)


class HttpServer(CallbackServer):
    """The HTTP server of one process, on a listening socket it is given.

    `buffered` is what its connections hold for their clients, in bytes; it
    stays at most `max_buffered`.
    """

    kind = "http"

    def __init__(self, listener: Any, counts: Any, max_connections: int = 0, idle_timeout: float = 0.0,
                 max_buffered: int = 0) -> None:
        self.counts = counts  # [requests answered, then one per route of ROUTE_NAMES] (shared with the parent)
        # Counts given without the route slots (a server run on its own) count routes privately.
        self.route_counts = counts[1:] if len(counts) > len(ROUTE_NAMES) else [0] * len(ROUTE_NAMES)
        self.caches: list[dict[bytes, bytes]] = [{} for _ in range(6)]  # [mode * 2 + is_head]
        self.cache_bytes = [0] * 6
        # One receive buffer for every connection: each read is parsed at once, and the parser copies.
        self.buffer = bytearray(RECV_SIZE)
        self.buffer_view = memoryview(self.buffer)
        self.max_buffered = max_buffered or DEFAULT_MAX_BUFFERED
        self.buffered = 0
        super().__init__(listener, max_connections or fitting_cap(DEFAULT_MAX_CONNECTIONS),
                         idle_timeout or DEFAULT_IDLE_TIMEOUT_S)

    def render(self, reply: Reply, mode: int, head: bool, out: deque[Any]) -> bytes | None:
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
        if isinstance(body, list):  # an echoed body: its chunks as they came (a small one joined)
            if reply.length > CACHE_MAX_RESPONSE:
                out.append(response_head_bytes)
                out.extend(body)
                return None
            body = b"".join(body)
        whole_response = response_head_bytes + body
        out.append(whole_response)
        if not reply.cacheable or len(whole_response) > CACHE_MAX_RESPONSE:
            return None
        return whole_response

    def serve(self, sock: Any) -> None:
        self.table.add(HttpConnection(self, sock))
