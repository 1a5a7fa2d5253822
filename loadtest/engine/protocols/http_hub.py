"""Plain HTTP/1.1 targets driven by hub callbacks: one driver per target per worker, no greenlet per request.

A greenlet per virtual user pays two switches and a generator of Python frames
for every request. Here one `HttpHub` holds all of a worker's connections of a
target as small `HubConnection` records and drives them from the gevent hub:

- each connection keeps one read watcher started for its life (a restart would
  cost an `epoll_ctl`); its callback reads what has come, feeds the connection's
  llhttp parser (httptools; the record is the parser's callback object) and,
  once the response is whole, records it and, in the closed model, writes the
  user's next request at once, all in the same callback;
- connects are non-blocking, finished by a write watcher's callback;
- request and connect timeouts are the worker's `Deadlines` scan's, as for a
  greenlet's session: each record is one of its timers (a response still
  arriving also notices its own deadline when a read wakes it);
- the open model's arrivals come from a `HubTimer` (a timerfd: microseconds,
  not the loop's millisecond): each due arrival takes an idle connection (or a
  new one, up to the worker's share of `max_concurrency`) and is sent from the
  timer's callback; at the cap, arrivals wait for a request to end, and one
  that cannot start within `MAX_LATENESS_S` of its time is dropped.

What a request is and how it ends is `HttpSession`'s (`http_fast`): the same
request bytes, keep-alive and its one retry of a connection the server closed
while idle, HEAD, a body delimited by the server closing, `MAX_HEAD_BYTES`,
`expect_status`, the same failure kinds and messages, latency from the first
byte written (closed) or from the arrival's scheduled time (open, with the
uncorrected latency beside it). Every request started (a unit of the budget
taken) ends once: a success or one failure, `cancelled` when the driver is
killed at the end of the run.

It serves targets on the fast engine with plain `http://` URLs of one origin
and no think time; the others (HTTPS, several origins, think time) keep a
greenlet per user (`HttpSession`). An exception in a hub callback never escapes
into gevent: it ends that request as an `error` and is counted in
`callback_errors`.
"""

from __future__ import annotations

import _socket
import errno
import math
import os
import sys
from itertools import cycle
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import gevent
import httptools
from gevent.event import Event
from gevent.hub import get_hub

from loadtest.core.outcome import status_ok
from loadtest.core.histograms import HIGHEST_NS, LOWEST_NS
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import NO_DEADLINE_NS, Deadlines
from loadtest.engine.protocols.channel import READ, WRITE, ConnectTimeout
from loadtest.engine.protocols.http_fast import (_LENGTH_OR_CHUNKED, _STALE, MAX_HEAD_BYTES, RECV_SIZE, Endpoint,
                                                 HttpSession, connect_failure, read_failure)
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, HubTimer, spin_until
from loadtest.model.config import DEFAULT_FAILURE_BACKOFF_S, FIRST_BACKOFF_S
from loadtest.model.kinds.http import HttpTarget

if TYPE_CHECKING:
    from gevent.pool import Pool

    from loadtest.core.schedule import ArrivalSchedule
    from loadtest.engine.budget import Budget, Level

LEVEL_POLL_S = 0.1  # the driver follows a staged level, and notices the end of the load, this often
MAX_LATENESS_S = 1.0  # an open-model arrival that cannot start this soon after its time is dropped (as `arrivals`)
_DRIVER_ERROR = "http driver"  # starts the message of a failure the driver's own bug caused
_IDLE, _CONNECTING, _WAITING, _BACKING_OFF = 0, 1, 2, 3


class HubConnection:
    """One virtual user's connection (closed model) or one pooled connection (open model), and its request.

    It is its parser's callback object and one of the worker's `Deadlines` timers.
    """

    __slots__ = ("index", "driver", "sock", "reader", "writer", "parser", "state", "seq", "deadline_ns", "started_ns",
                 "sending_ns", "connect_ns", "scheduled", "request", "head", "sent", "received", "body", "complete",
                 "headers_done", "keep_alive", "heading", "reused", "retried", "request_deadline_ns", "wait",
                 "backoff_timer")

    def __init__(self, index: int, driver: HttpHub) -> None:
        self.index = index  # closed model: its place, working while below the (staged) level
        self.driver = driver
        self.sock: Any = None
        self.reader: Any = None
        self.writer: Any = None
        self.parser: Any = None
        self.state = _IDLE
        self.seq = 0  # one per connect and per request: a timeout queued for an earlier one does nothing
        self.deadline_ns = 0  # non-zero while a request is in flight (connecting or awaiting its response)
        self.started_ns = 0  # latency counts from here: the first byte written, or the scheduled time (open)
        self.sending_ns = 0  # the first byte written (open model: the uncorrected latency's start)
        self.connect_ns = 0
        self.scheduled = False
        self.request = b""
        self.head = False
        self.sent = 0
        self.received = 0
        self.body = 0
        self.complete = False
        self.headers_done = False
        self.keep_alive = False
        self.heading = b""
        self.reused = False  # has this socket had a whole response yet?
        self.retried = False  # this request already reconnected once
        self.request_deadline_ns = 0
        self.wait = 0.0  # closed model: the back-off after this user's last failed connect, 0 after a success
        self.backoff_timer: Any = None

    # httptools' callbacks: llhttp calls only these three

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # llhttp forgets this once the message is complete, so ask while the headers are fresh
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, chunk: bytes) -> None:
        self.body += len(chunk)

    def on_message_complete(self) -> None:
        self.complete = True

    # the Deadlines scan's side

    def expire(self) -> None:
        """Past its deadline: ended from a hub callback, once (the next scans leave it alone)."""
        self.driver.loop.run_callback(self.driver._expire_now, self, self.seq)
        self.deadline_ns = NO_DEADLINE_NS


class HttpHub:
    """One worker's connections of a plain-HTTP target, driven by hub callbacks: `drive` (closed model, a
    virtual user per connection) or `arrive` (open model), each run by one greenlet that only waits.

    Calling it makes a lone `HttpSession` of the target, so it is a session factory too.
    """

    def __init__(self, target: HttpTarget, endpoints: list[Endpoint], recorder: TargetRecorder, budget: Budget,
                 deadlines: Deadlines | None = None, backoff: float = DEFAULT_FAILURE_BACKOFF_S) -> None:
        self.target = target
        self.backoff = backoff
        self.endpoints = endpoints
        self.recorder = recorder
        self.budget = budget
        self.deadlines = deadlines
        self.family = endpoints[0].family
        self.sockaddr = endpoints[0].sockaddr
        self.timeout = target.timeout
        self.timeout_ns = int(target.timeout * 1e9)
        self.expect = frozenset(target.expect_status)
        self._single = endpoints[0] if len(endpoints) == 1 else None
        self._urls = cycle(endpoints)  # every user visits the next URL, as a crawler does
        self.conns: list[HubConnection] = []
        self.in_flight = 0  # requests started (a budget unit taken) and not yet ended
        self.open_below = 0  # closed model: places below this work
        self.closed = False
        self.callback_errors = 0
        self.loop: Any = None
        self.wake = Event()  # the driving greenlet looks again: the load may be over
        # open model
        self.open = False
        self.idle: list[HubConnection] = []
        self.cap = 0
        self.schedule: ArrivalSchedule | None = None
        self.due_ns = 0
        self.until_ns: float = 0.0
        self.blocked = False  # at the cap: the next due arrival waits for a request to end
        self.spent = False  # the `requests:` total ran out before the schedule did
        self.schedule_over = False
        self.timer: HubTimer | None = None
        self.max_late_ns = int(MAX_LATENESS_S * 1e9)
        # bound once: a bound method made per request would be an allocation per request
        self._readable = self._on_readable
        self._writable = self._on_writable
        self._connectable = self._on_connectable
        self._next_turn = self._turn

    def __call__(self) -> HttpSession:
        return HttpSession(self.target, self.endpoints, self.recorder, self._urls, None, self.deadlines)

    # -- the driving greenlets -------------------------------------------------------------------

    def drive(self, pool: Pool, share: int, level: Level | None = None) -> None:
        """Closed model: `share` virtual users (those below `level`, if staged or steered; none while it is
        paused), each sending its next request when the last one ended, until the budget says stop (or is
        spent) and nothing is in flight. A user whose connect failed waits before its next turn, as
        `workload.virtual_user` does: FIRST_BACKOFF_S, doubled after each failure in a row up to `backoff`."""
        self._start()
        self.conns = [self._new_connection(i) for i in range(share)]
        budget = self.budget
        try:
            while True:
                self._follow(share if level is None else 0 if level.paused else min(share, math.ceil(level.value)))
                if (budget.stopping or budget.left == 0) and not self.in_flight:
                    return
                self.wake.clear()
                self.wake.wait(LEVEL_POLL_S)
        except BaseException:
            self._cancel_in_flight()
            raise
        finally:
            self._close_all()

    def arrive(self, pool: Pool, cap: int, schedule: ArrivalSchedule, first_ns: int) -> None:
        """Open model: start requests on `schedule` from `first_ns` whatever their latency, at most `cap` in
        flight; return once the schedule is over (and the run's duration with it) and nothing is in flight."""
        self._start()
        self.open = True
        self.cap = cap
        self.schedule = schedule
        self.due_ns = first_ns
        self.until_ns = schedule.until_ns
        self.timer = HubTimer(self.loop, self._on_due)
        budget = self.budget
        try:
            self.timer.arm(first_ns)
            while not self.schedule_over:
                self.wake.clear()
                self.wake.wait(LEVEL_POLL_S)
            # The schedule has nothing more before the end (a last stage at rate 0, say): the run still
            # lasts its duration, unless the other targets spend the `requests:` total first.
            now = perf_counter_ns()
            while not budget.stopping and budget.left != 0 and now < self.until_ns < float("inf"):
                gevent.sleep(min(LEVEL_POLL_S, (self.until_ns - now) / 1e9))
                now = perf_counter_ns()
            while self.in_flight:
                self.wake.clear()
                self.wake.wait(LEVEL_POLL_S)
        except BaseException:
            self._cancel_in_flight()
            raise
        finally:
            self._close_all()

    def _start(self) -> None:
        self.loop = get_hub().loop

    def _new_connection(self, index: int) -> HubConnection:
        conn = HubConnection(index, self)
        if self.deadlines is not None:
            self.deadlines.timers.add(conn)  # type: ignore[arg-type] # a timer in all but its class
        return conn

    def _follow(self, count: int) -> None:
        """Closed model: start the idle places below `count`; close the idle ones above it (a place in flight
        closes after its response)."""
        budget = self.budget
        self.open_below = count
        for conn in self.conns:
            if conn.state != _IDLE:
                continue
            if conn.index < count:
                if budget.stopping or budget.left == 0:
                    continue
                self._turn(conn)
            elif conn.sock is not None:
                self._close(conn)

    def _cancel_in_flight(self) -> None:
        rec = self.recorder
        for conn in self.conns:
            if conn.state == _CONNECTING:
                rec.failure("cancelled", "the run stopped while this request was connecting", None)
            elif conn.state == _WAITING:
                rec.failure("cancelled", "the run stopped while this request was in flight", None, conn.received,
                            conn.sent)
            conn.state = _IDLE
            conn.deadline_ns = 0
        self.in_flight = 0
        if self.open:
            rec.users = 0

    def _close_all(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if self.open and not self.spent and self.schedule is not None:
            # The load stopped: arrivals already due that never started were dropped too.
            end = min(perf_counter_ns(), self.until_ns, self.budget.end_ns)  # the controller's end is the run's
            due = self.due_ns
            while due < end:
                self.recorder.dropped += 1
                due = self.schedule.next_due(due)
            self.due_ns = due
        for conn in self.conns:
            conn.deadline_ns = 0
            conn.state = _IDLE
            if conn.backoff_timer is not None:
                conn.backoff_timer.close()
                conn.backoff_timer = None
            self._close(conn)
            if self.deadlines is not None:
                self.deadlines.timers.discard(conn)  # type: ignore[arg-type]
            conn.parser = None  # parser and callbacks refer to each other
        self.idle.clear()

    # -- a request's start -----------------------------------------------------------------------

    def _turn(self, conn: HubConnection) -> None:
        """Closed model: this user's next request, if its place works and the budget allows."""
        if self.closed or conn.state != _IDLE:
            return
        if conn.index >= self.open_below:
            if conn.sock is not None:
                self._close(conn)
            return
        if not self.budget.take():
            if not self.in_flight:
                self.wake.set()
            return
        self.in_flight += 1
        conn.scheduled = False
        self._begin(conn)

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
                self._complete(conn)
            elif perf_counter_ns() >= conn.deadline_ns:
                # a response still arriving notices its own deadline, without waiting for the worker's scan
                self._fail(conn, "read_timeout", f"no complete response within {self.timeout:g} s")
        except Exception as e:  # noqa: BLE001 - see _on_connectable
            self._internal_error(conn, e)

    def _complete(self, conn: HubConnection) -> None:
        """A whole response: a success, or a `status` failure; then the next request (closed model)."""
        now = perf_counter_ns()
        conn.deadline_ns = 0
        conn.state = _IDLE
        rec = self.recorder
        status = conn.parser.get_status_code()
        latency = now - conn.started_ns
        if conn.scheduled:  # open model: also what a closed-loop tool would have measured
            rec.uncorrected.record(now - conn.sending_ns)
        if not conn.keep_alive:
            self._close(conn)
        else:
            conn.reused = True
            if conn.head:  # llhttp would wait for a body that HEAD never gets
                conn.parser = httptools.HttpResponseParser(conn)
        if status_ok(status, self.expect):
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
        # Closed model, the connection kept: the user's next request at once, from this callback (`_ended`,
        # `_turn`, `_begin` and `_send` inlined, and the clock read once: this is the hot path).
        if left > 0:
            budget.left = left - 1
        ep = self._single or next(self._urls)
        conn.request = ep.request
        conn.head = ep.head
        conn.state = _WAITING
        conn.seq += 1
        conn.started_ns = conn.sending_ns = now
        conn.deadline_ns = conn.request_deadline_ns = now + self.timeout_ns
        conn.received = conn.body = conn.sent = 0
        conn.complete = conn.headers_done = conn.retried = False
        conn.heading = b""
        if not conn.reader.active:  # stopped by bytes (or a close) that came while it was idle
            conn.reader.start(self._readable, conn)
        self._write(conn)

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

    def _ended(self, conn: HubConnection, failed: bool, back_off: bool = False) -> None:
        """A request ended (its outcome recorded): the next one, or the connection waits for an arrival."""
        conn.deadline_ns = 0
        conn.state = _IDLE
        self.in_flight -= 1
        if not self.open and back_off and self.backoff:
            wait = conn.wait = min(self.backoff, conn.wait * 2 if conn.wait else FIRST_BACKOFF_S)
            rec = self.recorder
            rec.backoffs += 1
            rec.backoff_s += wait
            conn.state = _BACKING_OFF  # not idle: `_follow` leaves it to its timer
            if conn.backoff_timer is not None:
                conn.backoff_timer.close()
            conn.backoff_timer = timer = self.loop.timer(wait)
            timer.start(self._backed_off, conn)
            if not self.in_flight:
                self.wake.set()
            return
        conn.wait = 0.0  # anything but a failed connect starts the back-off over, as in `virtual_user`
        if self.open:
            self.recorder.users -= 1
            self.idle.append(conn)
            if self.blocked:  # an arrival waited for this slot
                self.blocked = False
                self.loop.run_callback(self._on_due)
            elif not self.in_flight:
                self.wake.set()
        elif failed:
            # after a failure the next turn waits for the next turn of the loop: a connect that fails at
            # once, again and again, must not recurse
            self.loop.run_callback(self._next_turn, conn)
        else:
            self._turn(conn)

    def _backed_off(self, conn: HubConnection) -> None:
        conn.backoff_timer.close()
        conn.backoff_timer = None
        if conn.state == _BACKING_OFF:
            conn.state = _IDLE
            self._turn(conn)

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
        if conn.reader is not None:
            conn.reader.close()
            conn.reader = None
        if conn.writer is not None:
            conn.writer.close()
            conn.writer = None
        sock, conn.sock = conn.sock, None
        if sock is not None:
            sock.close()
            if connected:
                self.recorder.disconnected()

    def _close(self, conn: HubConnection) -> None:
        """Close the connection's socket (a connected one: `disconnected` counted)."""
        if conn.sock is not None:
            self._drop_socket(conn, connected=conn.reader is not None)

    # -- the open model's arrivals ---------------------------------------------------------------

    def _on_due(self) -> None:
        """Start every arrival that is due (the timer's callback, and a slot freed at the cap), then re-arm."""
        try:
            self._arrivals()
        except Exception as e:  # noqa: BLE001 - see _on_connectable
            self.callback_errors += 1
            if self.callback_errors == 1:
                sys.stderr.write(f"loadtest: worker: {self.target.name}: the HTTP driver's timer failed "
                                 f"({type(e).__name__}: {e}); its arrivals may stall\n")

    def _arrivals(self) -> None:
        if self.closed or self.schedule_over:
            return
        budget, rec, schedule, timer = self.budget, self.recorder, self.schedule, self.timer
        due, until = self.due_ns, self.until_ns
        now = perf_counter_ns()
        if now < due:
            now = spin_until(due) if due - now <= 2 * ARM_EARLY_NS else now  # the timer fires that early
        while not budget.stopping and due < until:
            if due > now:
                now = perf_counter_ns()
                if due > now:
                    self.due_ns = due
                    timer.arm(due)  # type: ignore[union-attr]
                    return
            late = now - due
            if late > self.max_late_ns:
                rec.dropped += 1
            elif self.in_flight >= self.cap:
                self.due_ns = due
                self.blocked = True
                timer.arm(due + self.max_late_ns + 1)  # type: ignore[union-attr] # dropped then, if nothing ends
                return
            elif not budget.take():
                self.spent = True  # a `requests:` total reached: nothing more is due
                break
            else:
                conn = self.idle.pop() if self.idle else self._new_open_connection()
                rec.users += 1
                self.in_flight += 1
                rec.lateness.record(late)
                conn.scheduled = True
                conn.started_ns = due
                self._begin(conn)
            due = schedule.next_due(due)  # type: ignore[union-attr]
        self.due_ns = due
        self.schedule_over = True
        self.wake.set()

    def _new_open_connection(self) -> HubConnection:
        conn = self._new_connection(len(self.conns))
        self.conns.append(conn)
        return conn


def hub_eligible(target: HttpTarget, endpoints: list[Endpoint]) -> bool:
    """Whether `HttpHub` serves this target: the fast engine, plain http:// URLs of one origin, no think time."""
    return (target.engine == "fast" and target.think == (0.0, 0.0)
            and all(ep.origin[0] == "http" for ep in endpoints)
            and len({(ep.origin, ep.sockaddr) for ep in endpoints}) == 1)
