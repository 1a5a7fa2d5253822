"""One request's life on a connection of `HttpHub` (`http_hub`), in hub callbacks.

`HubExchange` is the socket side of the driver: connect (non-blocking, finished by a write
watcher's callback), write the request, read and parse the response as it comes, and end it as a
success or one failure (with the one reconnect of a connection the server closed while idle), a
timeout from the worker's `Deadlines` scan included. `HttpHub` inherits it and decides which
request comes next (`_ended`, `_turn`, the open model's arrivals).
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
from itertools import cycle
from time import perf_counter_ns
from typing import Any

import httptools

from loadtest.core.histograms import HIGHEST_NS, LOWEST_NS
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.budget import Budget
from loadtest.engine.protocols.channel import READ, WRITE, ConnectTimeout, drop_watched_socket
from loadtest.engine.protocols.http_fast import (_LENGTH_OR_CHUNKED, _STALE, MAX_HEAD_BYTES, RECV_SIZE, Endpoint,
                                                 connect_failure, read_failure)
from loadtest.engine.protocols.http_hub_connection import _CONNECTING, _IDLE, _WAITING, HubConnection
from loadtest.model.kinds.http import HttpTarget

REPEAT_PROBE_MAX = 1023  # at most this many responses parsed whole between two looks at one (`_parsed_whole`)
REPEATS_KEPT = 64  # responses kept to be recognised, one per length ...
REPEAT_MAX_BYTES = 4096  # ... each at most this long: 256 KiB a target and worker at most
_DRIVER_ERROR = "http driver"  # starts the message of a failure the driver's own bug caused


class HubExchange:
    """The request side of `HttpHub`: its methods run in hub callbacks, one connection at a time.

    The attributes below are the driver's (set in `HttpHub.__init__`); `_ended` is the driver's too.
    """

    target: HttpTarget
    recorder: TargetRecorder
    budget: Budget
    family: int
    sockaddr: Any
    timeout: float
    timeout_ns: int
    expect: frozenset[int]
    _single: Endpoint | None
    _urls: cycle[Endpoint]
    open: bool
    open_below: int
    closed: bool
    callback_errors: int
    loop: Any
    _queued: list[HubConnection]  # closed model: requests to write at the end of this turn of the loop
    _write_queued_cb: Any
    # Responses parsed whole in one read (`_parsed_whole`), the last of each length: (its bytes, and what llhttp
    # made of it: status, body bytes, keep-alive)
    _repeats: dict[int, tuple[bytes, int, int, bool]]
    _repeat_hits: int  # responses recognised since one was last kept
    _looking: bool  # reads are compared with the kept responses (not after many kept ones went unmatched)
    _probe_every: int  # responses parsed whole between two looks at one (`_parsed_whole`)
    _probe_in: int  # responses parsed whole before the next look

    def _ended(self, conn: HubConnection, failed: bool, back_off: bool = False) -> None:
        raise NotImplementedError  # HttpHub's

    def _begin(self, conn: HubConnection) -> None:
        """Send the next URL's request on this connection, connecting first if it has no socket."""
        ep = self._single or next(self._urls)
        conn.request = ep.request
        conn.head = ep.head
        conn.retried = False
        conn.sent = 0
        if conn.sock is None:
            self._connect(conn)
        else:
            self._send(conn, perf_counter_ns())

    def _connect(self, conn: HubConnection) -> None:
        now = perf_counter_ns()
        conn.state = _CONNECTING
        conn.seq += 1
        conn.connect_ns = now
        conn.deadline_ns = now + self.timeout_ns
        try:
            sock = _socket.socket(self.family, _socket.SOCK_STREAM)
        except OSError as e:
            self._connect_failed(conn, e)
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            err = sock.connect_ex(self.sockaddr)
        except OSError as e:
            sock.close()
            self._connect_failed(conn, e)
            return
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            conn.sock = sock
            conn.writer = writer = self.loop.io(sock.fileno(), WRITE)
            writer.start(self._connectable, conn)
        elif err:
            sock.close()
            self._connect_failed(conn, OSError(err, os.strerror(err)))
        else:
            conn.sock = sock
            self._connected(conn)

    def _on_connectable(self, conn: HubConnection) -> None:
        try:
            if conn.state != _CONNECTING:
                return
            err = conn.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if err:
                self._drop_socket(conn, connected=False)
                self._connect_failed(conn, OSError(err, os.strerror(err)))
            else:
                self._connected(conn)
        except Exception as e:  # noqa: BLE001 - a callback's exception would be printed by gevent, not counted
            self._internal_error(conn, e)

    def _connected(self, conn: HubConnection) -> None:
        now = perf_counter_ns()
        if conn.writer is not None:
            conn.writer.close()
            conn.writer = None
        self.recorder.connected(now - conn.connect_ns)
        sock = conn.sock
        conn.reader = reader = self.loop.io(sock.fileno(), READ)
        # Started for the connection's life, not per request: each restart costs an epoll_ctl.
        reader.start(self._readable, conn)
        conn.parser = httptools.HttpResponseParser(conn)
        conn.clean = True
        conn.reused = False
        if conn.retried:  # the one reconnect of a request whose idle connection the server had closed
            conn.seq += 1
            conn.state = _WAITING
            conn.deadline_ns = conn.request_deadline_ns
            self._write(conn)
        else:
            self._send(conn, now)

    def _connect_failed(self, conn: HubConnection, e: BaseException) -> None:
        kind, message = connect_failure(e, self.timeout)
        conn.sock = None
        self.recorder.failure(kind, message, None)  # the request failed; HTTP has no CONNECT row
        self._ended(conn, failed=True, back_off=True)

    def _send(self, conn: HubConnection, now: int) -> None:
        conn.state = _WAITING
        conn.seq += 1
        conn.sending_ns = now
        if not conn.scheduled:
            conn.started_ns = now
        # the deadline counts from the first byte written, even when the request started late
        conn.deadline_ns = conn.request_deadline_ns = now + self.timeout_ns
        conn.received = 0
        conn.body = 0
        conn.complete = False
        conn.headers_done = False
        conn.heading = b""
        if not conn.reader.active:  # stopped by bytes (or a close) that came while it was idle
            conn.reader.start(self._readable, conn)
        self._write(conn)

    def _write(self, conn: HubConnection) -> None:
        request = conn.request
        try:
            sent = conn.sock.send(request)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._fail(conn, *read_failure(e, self.timeout))
            return
        conn.sent += sent
        if sent < len(request):
            conn.writer = writer = conn.writer or self.loop.io(conn.sock.fileno(), WRITE)
            writer.start(self._writable, conn, len(request) - sent)

    def _on_writable(self, conn: HubConnection, left: int) -> None:
        """The rest of a request the socket buffer did not take at once."""
        try:
            if conn.state != _WAITING:
                conn.writer.stop()
                return
            request = conn.request
            try:
                sent = conn.sock.send(memoryview(request)[len(request) - left:])
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(conn, *read_failure(e, self.timeout))
                return
            conn.sent += sent
            if sent < left:
                conn.writer.start(self._writable, conn, left - sent)
            else:
                conn.writer.stop()
        except Exception as e:  # noqa: BLE001 - see _on_connectable
            self._internal_error(conn, e)

    # -- the hot path: a response arriving -------------------------------------------------------

    def _on_readable(self, conn: HubConnection) -> None:
        try:
            if conn.state != _WAITING:
                # bytes (or a close) no request asked for: they wait for the next request, as in HttpSession
                conn.reader.stop()
                return
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(conn, *read_failure(e, self.timeout))
                return
            if not data:
                if conn.headers_done and not _LENGTH_OR_CHUNKED.search(conn.heading):
                    self._complete(conn)  # a body delimited by the server closing
                else:
                    self._fail(conn, "closed", "the server closed the connection before the response ended")
                return
            if self._looking:
                kept = self._repeats.get(len(data))
                if kept is not None and kept[0] == data and conn.received == 0 and conn.clean and not conn.head:
                    # Byte for byte a response parsed whole in one read, and this one's parser stands at a
                    # message's start as that one's did: llhttp would parse it the same, so its result is reused.
                    conn.received = len(data)
                    _, conn.status, conn.body, conn.keep_alive = kept
                    conn.headers_done = conn.complete = True
                    self._repeat_hits += 1
                    self._complete(conn)
                    return
            conn.received += len(data)
            in_head = not conn.headers_done
            if in_head:
                conn.heading += data
            try:
                conn.parser.feed_data(data)
            except httptools.HttpParserError as e:
                self._fail(conn, *read_failure(e, self.timeout))
                return
            # Checked only while the head is arriving, and the search only when this much has come
            # (a big response's first read): the head must end within MAX_HEAD_BYTES.
            if in_head and len(conn.heading) > MAX_HEAD_BYTES and \
                    conn.heading.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES) < 0:
                self._fail(conn, "protocol", f"the status line and headers run past {MAX_HEAD_BYTES // 1024} KiB")
            elif conn.complete or (conn.head and conn.headers_done):
                self._probe_in -= 1
                if self._probe_in < 0 and conn.complete and not conn.head:
                    self._parsed_whole(conn, data)
                else:
                    conn.clean = False  # not looked at: it may have been fed bytes past its response
                self._complete(conn)
            elif perf_counter_ns() >= conn.deadline_ns:
                # a response still arriving notices its own deadline, without waiting for the worker's scan
                self._fail(conn, "read_timeout", f"no complete response within {self.timeout:g} s")
        except Exception as e:  # noqa: BLE001 - see _on_connectable
            self._internal_error(conn, e)

    def _parsed_whole(self, conn: HubConnection, data: bytes) -> None:
        """A response llhttp parsed to its end: did the parser stop at its last byte (nothing past it was fed)?
        If so, and it came in one read, its bytes and parse are kept for `_on_readable` to recognise, the
        last of each length (a target's several URLs each have their own, unless two pages have one length),
        at most `REPEATS_KEPT` of them, none longer than `REPEAT_MAX_BYTES` (a bigger response's parse is a
        small part of its cost).

        A server whose every response differs (an id, a clock finer than the second) would make this a cost
        on every request for nothing: each kept response that no later one matched doubles how many parsed
        responses go by before the next is looked at, and at `REPEAT_PROBE_MAX` reads stop being compared
        (`_looking`); a looked-at response that matches a kept one brings both back to every one."""
        head_end = conn.heading.find(b"\r\n\r\n")
        conn.clean = clean = head_end >= 0 and conn.received == head_end + 4 + conn.body
        size = len(data)
        if clean and conn.received == size <= REPEAT_MAX_BYTES:
            kept = self._repeats.get(size)
            if kept is not None and kept[0] == data:  # a repeat, not looked for (or its parser was not clean)
                self._looking = True
                self._probe_every = 0
            else:
                if self._repeat_hits:
                    self._probe_every = 0
                else:
                    self._probe_every = min(2 * self._probe_every + 1, REPEAT_PROBE_MAX)
                    self._looking = self._probe_every < REPEAT_PROBE_MAX
                if kept is None and len(self._repeats) >= REPEATS_KEPT:
                    self._repeats.clear()
                self._repeats[size] = (data, conn.status, conn.body, conn.keep_alive)
                self._repeat_hits = 0
        self._probe_in = self._probe_every

    def _complete(self, conn: HubConnection) -> None:
        """A whole response: a success, or a `status` failure; then the next request (closed model)."""
        now = perf_counter_ns()
        conn.deadline_ns = 0
        conn.state = _IDLE
        rec = self.recorder
        status = conn.status
        latency = now - conn.started_ns
        if conn.scheduled:  # open model: also what a closed-loop tool would have measured
            rec.uncorrected.record(now - conn.sending_ns)
        if not conn.keep_alive:
            self._close(conn)
        else:
            conn.reused = True
            if conn.head:  # llhttp would wait for a body that HEAD never gets
                conn.parser, conn.clean = httptools.HttpResponseParser(conn), True
        if (status in self.expect) if self.expect else 200 <= status < 400:  # `status_ok` inlined
            # `TargetRecorder.success` inlined: this runs once per request, and the call is a tenth of it
            rec.requests += 1
            rec.bytes_in += conn.received
            rec.bytes_out += conn.sent
            rec.content_bytes += conn.body
            h = rec.latency
            if latency < LOWEST_NS:
                latency = LOWEST_NS
            elif latency > HIGHEST_NS:
                latency = HIGHEST_NS
            bucket = (latency | h._mask).bit_length() - h._shift
            h._counts[((bucket + 1) << h._half_mag) + (latency >> (bucket + h._unit)) - h._half] += 1
            h.count += 1
            if latency < h.min:
                h.min = latency
            if latency > h.max:
                h.max = latency
        else:
            rec.failure("status", f"HTTP {status}", latency, conn.received, conn.sent, conn.body)
        budget = self.budget
        left = budget.left
        if self.open or conn.sock is None or conn.index >= self.open_below or budget.stopping or left == 0:
            self._ended(conn, failed=False)
            return
        # Closed model, the connection kept: the user's next request, written after this turn's reads
        # (`_write_queued`; `_ended`, `_turn`, `_begin` and `_send` inlined: this is the hot path).
        if left > 0:
            budget.left = left - 1
        ep = self._single or next(self._urls)
        conn.request = ep.request
        conn.head = ep.head
        conn.state = _WAITING
        conn.seq += 1
        conn.deadline_ns = conn.request_deadline_ns = now + self.timeout_ns
        conn.received = conn.body = conn.sent = 0
        conn.complete = conn.headers_done = conn.retried = False
        conn.heading = b""
        if not conn.reader.active:  # stopped by bytes (or a close) that came while it was idle
            conn.reader.start(self._readable, conn)
        if not self._queued:
            self.loop.run_callback(self._write_queued_cb)
        conn.queued_seq = conn.seq
        self._queued.append(conn)

    def _write_queued(self) -> None:
        """Write the requests queued in this turn of the loop, after its reads, each timed from its own write.

        The server is woken by the first of them and finds the rest waiting; writing each as its response
        was read woke it once a request. Measured with benchmarks/http_profile.py against nginx: 6.2-6.4 µs of
        worker CPU a request, 6.8 written one by one (wrk, too, writes on its next turn of the loop)."""
        queued = self._queued
        self._queued = []
        timeout_ns = self.timeout_ns
        for conn in queued:
            # Not ended, failed or retried since it was queued (each changes its state or seq)
            if conn.state == _WAITING and conn.seq == conn.queued_seq:
                try:
                    now = perf_counter_ns()
                    conn.started_ns = conn.sending_ns = now
                    conn.deadline_ns = conn.request_deadline_ns = now + timeout_ns
                    request = conn.request
                    try:  # `_write` inlined
                        sent = conn.sock.send(request)
                    except BlockingIOError:
                        sent = 0
                    except OSError as e:
                        self._fail(conn, *read_failure(e, self.timeout))
                        continue
                    conn.sent = sent
                    if sent < len(request):
                        conn.writer = writer = conn.writer or self.loop.io(conn.sock.fileno(), WRITE)
                        writer.start(self._writable, conn, len(request) - sent)
                except Exception as e:  # noqa: BLE001 - see _on_connectable
                    self._internal_error(conn, e)

    def _fail(self, conn: HubConnection, kind: str, message: str) -> None:
        """End the request in flight as a failure of `kind` (after the one reconnect of a stale connection)."""
        if conn.state != _WAITING:
            return
        if kind in _STALE and conn.received == 0 and conn.reused and not conn.retried:
            # The server closed an idle keep-alive connection: reconnect once, as browsers do.
            self._close(conn)
            conn.retried = True
            self._connect(conn)  # the connect keeps its own timeout; the request its first deadline
            return
        now = perf_counter_ns()
        conn.deadline_ns = 0
        conn.state = _IDLE
        if conn.scheduled:
            self.recorder.uncorrected.record(now - conn.sending_ns)
        self._close(conn)
        self.recorder.failure(kind, message, now - conn.started_ns, conn.received, conn.sent)
        self._ended(conn, failed=True)

    # -- timeouts and failures of the driver itself -----------------------------------------------

    def _expire_now(self, conn: HubConnection, seq: int) -> None:
        try:
            if conn.seq != seq or self.closed:
                return
            if conn.state == _CONNECTING:
                e = ConnectTimeout(errno.ETIMEDOUT, "connect timed out")
                self._drop_socket(conn, connected=False)
                self._connect_failed(conn, e)
            elif conn.state == _WAITING:
                self._fail(conn, "read_timeout", f"no complete response within {self.timeout:g} s")
        except Exception as e:  # noqa: BLE001 - see _on_connectable
            self._internal_error(conn, e)

    def _internal_error(self, conn: HubConnection, e: Exception) -> None:
        self.callback_errors += 1
        if self.callback_errors == 1:
            sys.stderr.write(f"loadtest: worker: {self.target.name}: the HTTP driver failed "
                             f"({type(e).__name__}: {e})\n")
        try:
            if conn.state == _WAITING:
                conn.retried = True  # no reconnect: end it
                self._fail(conn, "error", f"{_DRIVER_ERROR}: {type(e).__name__}: {e}")
            elif conn.state == _CONNECTING:
                self._drop_socket(conn, connected=False)
                self._connect_failed(conn, e)
        except Exception:  # noqa: BLE001 - counted above; nothing may escape into the hub
            pass

    # -- closing ---------------------------------------------------------------------------------

    def _drop_socket(self, conn: HubConnection, connected: bool) -> None:
        if drop_watched_socket(conn) and connected:
            self.recorder.disconnected()

    def _close(self, conn: HubConnection) -> None:
        """Close the connection's socket (a connected one: `disconnected` counted)."""
        if conn.sock is not None:
            self._drop_socket(conn, connected=conn.reader is not None)
