"""A paced connection of `PacedTcp` (`tcp_paced`) and its messages' life, in hub callbacks.

`PacedConnection` is one held connection's record. `PacedExchange` is the driver's hot path: the
timer's tick that sends every message due (in send-time order, from a heap), a message's write (a
partial one finished from a write watcher), the read callback that checks the reply where each
chunk falls, and a message's end as a success or one failure, a timeout from the FIFO of deadlines
included. `PacedTcp` inherits it and owns the connections' lifecycle (connectors, level, close).
"""

from __future__ import annotations

import sys
from collections import deque
from heapq import heappop, heappush
from time import perf_counter_ns
from typing import Any

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.budget import Budget
from loadtest.engine.protocols import NO_DEADLINE_NS, RequestTimer
from loadtest.engine.protocols.channel import WRITE
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, HubTimer, spin_until
from loadtest.engine.protocols.tcp import OVERREAD_BYTES, RESET_ERRORS, SAMPLE_BYTES, failure_message
from loadtest.model.config import TcpTarget

FIFO_SLACK = 64  # ended messages the deadline queue may hold beyond twice those in flight before it is compacted
_FAR_NS = 1 << 62  # no timer armed
_DRIVER_ERROR = "paced tcp driver"  # starts the message of a failure the driver's own bug caused


class PacedConnection:
    """One held connection's state (or its place, while closed), driven by its target's `PacedTcp`."""

    __slots__ = ("index", "sock", "reader", "writer", "serial", "slot_ns", "late_slot_ns", "deadline_ns", "sent",
                 "received", "wrong", "answered", "ticket", "retry_at_ns", "queued")

    def __init__(self, index: int) -> None:
        self.index = index  # its place: open while below the (staged) level
        self.sock: Any = None
        self.reader: Any = None  # libev read watcher, started while open (stopped by bytes no message asked for)
        self.writer: Any = None  # libev write watcher, made on the first partial send
        self.serial = 0  # this connection's number in the driver; 0 while closed (its heap entries are stale)
        self.slot_ns = 0  # the scheduled send time of the message in flight
        self.late_slot_ns = 0  # a turn that came while a message was in flight: sent when its reply is in
        self.deadline_ns = 0  # non-zero while a message is in flight
        self.sent = 0
        self.received = 0
        self.wrong: bytes | None = None  # the start of a reply that is not the one expected
        self.answered = False  # has this connection had a whole reply yet?
        self.ticket = False  # holds a unit of the budget, taken before it connected, for its first message
        self.retry_at_ns = 0  # connect no sooner than this
        self.queued = False  # waiting for a connector


class PacedExchange:
    """The message side of `PacedTcp`: its methods run in hub callbacks (the timer's tick, a socket's).

    The attributes below are the driver's (set in `PacedTcp.__init__`); `_want` and `_close` are the
    driver's too.
    """

    target: TcpTarget
    recorder: TargetRecorder
    budget: Budget
    message: bytes
    size: int
    expected: bytes | None
    timeout_ns: int
    interval_ns: int
    pause_ns: int
    flight: RequestTimer
    open_below: int
    heap: list[tuple[int, int, PacedConnection]]
    fifo: deque[tuple[int, PacedConnection]]
    starved: list[PacedConnection]
    in_flight: int
    tickets: int
    timer: Any
    armed_ns: int
    closed: bool
    callback_errors: int
    loop: Any

    def _want(self, conn: PacedConnection) -> None:
        raise NotImplementedError  # PacedTcp's

    def _close(self, conn: PacedConnection) -> None:
        raise NotImplementedError  # PacedTcp's


    def _arm(self, when_ns: int) -> None:
        """Wake the driver's timer at `when_ns` (a perf_counter_ns time) instead of when it was armed for."""
        if self.closed:
            return
        if self.timer is None:  # a timerfd, not a loop timer: turns leave on time, not up to 1 ms late
            self.timer = HubTimer(self.loop, self._tick)
        self.timer.arm(when_ns)
        self.armed_ns = when_ns

    def _on_tick(self) -> None:
        """Expire messages past their deadline and send every message whose turn has come."""
        armed, self.armed_ns = self.armed_ns, 0  # sends made here push later turns; they re-arm once, at the end
        try:
            now = perf_counter_ns()
            if now < armed <= now + 2 * ARM_EARLY_NS:  # the timer fires a wake-up's length early
                now = spin_until(armed)
            fifo = self.fifo
            while fifo:
                deadline, conn = fifo[0]
                if conn.deadline_ns != deadline:  # that message ended: a stale entry
                    fifo.popleft()
                elif deadline <= now:
                    fifo.popleft()
                    self._fail(conn, "read_timeout", "")
                else:
                    break
            heap = self.heap
            send = self._send
            while heap and heap[0][0] <= now:
                slot, serial, conn = heappop(heap)
                if conn.serial != serial:  # closed since: a stale entry
                    continue
                if conn.deadline_ns:  # its reply is late: the next message goes when it is in
                    conn.late_slot_ns = slot
                    continue
                send(conn, slot, now)
        except Exception as e:  # noqa: BLE001 - a callback's exception would be printed by gevent, not counted
            self.callback_errors += 1
            if self.callback_errors == 1:  # no message of its own to end: said once, on the worker's stderr
                sys.stderr.write(f"loadtest: worker: {self.target.name}: the paced driver's timer failed "
                                 f"({type(e).__name__}: {e}); its sends may stall\n")
        finally:
            self._rearm()

    def _rearm(self) -> None:
        self.armed_ns = _FAR_NS
        if self.closed:
            return
        nearest = self.heap[0][0] if self.heap else _FAR_NS
        if self.fifo and self.fifo[0][0] < nearest:
            nearest = self.fifo[0][0]
        if nearest < _FAR_NS:
            self._arm(nearest)

    def _send(self, conn: PacedConnection, slot: int, now: int) -> None:
        """Send this connection's message for the turn at `slot`, if the budget allows."""
        if conn.ticket:
            conn.ticket = False
            self.tickets -= 1
            if self.budget.stopping:
                return
        elif not self.budget.take():
            if not self.budget.stopping:  # spent for now: a unit a ramp gives back later wakes it
                self.starved.append(conn)
            return
        if self.interval_ns:  # (0: back to back, which a kind on this driver runs from its replies)
            nxt = slot + self.interval_ns
            heappush(self.heap, (nxt, conn.serial, conn))
            if nxt < self.armed_ns:
                self._arm(nxt)
        conn.slot_ns = slot
        conn.received = 0
        conn.sent = 0
        conn.wrong = None
        deadline = now + self.timeout_ns  # from the first byte written, even when the turn came late
        conn.deadline_ns = deadline
        fifo = self.fifo
        fifo.append((deadline, conn))
        if len(fifo) > 2 * self.in_flight + FIFO_SLACK:
            self._compact_fifo()
        if not self.in_flight:
            self.flight.deadline_ns = NO_DEADLINE_NS
            if deadline < self.armed_ns:
                self._arm(deadline)
        self.in_flight += 1
        reader = conn.reader
        if not reader.active:
            reader.start(self._readable, conn)
        self._put(conn)

    def _put(self, conn: PacedConnection) -> None:
        """Write the message of the turn `_send` started (the rest from the write watcher)."""
        size = self.size
        try:
            sent = conn.sock.send(self.message)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._socket_failed(conn, e)
            return
        conn.sent = sent
        if sent < size:
            if conn.writer is None:
                conn.writer = self.loop.io(conn.sock.fileno(), WRITE)
            conn.writer.start(self._writable, conn)

    def _compact_fifo(self) -> None:
        """Drop the entries of messages that already ended. The tick pops them only from the front, so one
        message waiting for its timeout would keep every later, finished one queued behind it (rate ×
        timeout entries: 16 MB at 15,000 messages/s and a 10 s timeout)."""
        fifo = self.fifo
        live = [entry for entry in fifo if entry[1].deadline_ns == entry[0]]
        fifo.clear()
        fifo.extend(live)

    def _on_writable(self, conn: PacedConnection) -> None:
        """The rest of a message the socket buffer did not take at once."""
        try:
            try:
                sent = conn.sock.send(memoryview(self.message)[conn.sent:])
            except BlockingIOError:
                return
            except OSError as e:
                self._socket_failed(conn, e)
                return
            conn.sent += sent
            if conn.sent == self.size:
                conn.writer.stop()
                if conn.received == self.size:
                    self._complete(conn)
        except Exception as e:  # noqa: BLE001 - see _on_tick
            self._internal_error(conn, e)

    def _on_readable(self, conn: PacedConnection) -> None:
        """Read what has come of the reply (and one byte past its end: more is a mismatch) and check it where it
        falls."""
        try:
            received = conn.received
            if received == self.size or not conn.deadline_ns:
                # bytes (or a close) no message asked for: they wait for the next message, as in TcpSession
                conn.reader.stop()
                return
            lacking = self.size - received
            try:
                data = conn.sock.recv(lacking + OVERREAD_BYTES)  # more than the reply: a mismatch, as in TcpSession
            except BlockingIOError:
                return
            except OSError as e:
                self._socket_failed(conn, e)
                return
            if not data:
                self._fail(conn, "closed", "")
                return
            if len(data) > lacking:
                conn.received = received + len(data)
                conn.wrong = ((conn.wrong or b"") + data)[:SAMPLE_BYTES]
                self._fail(conn, "mismatch", "longer")
                return
            wrong = conn.wrong
            if wrong is None:
                expected = self.expected
                if expected is not None and not expected.startswith(data, received):
                    conn.wrong = (expected[:received] + data)[:SAMPLE_BYTES]
            elif len(wrong) < SAMPLE_BYTES:  # the failure quotes the reply's start, as a session's does
                conn.wrong = (wrong + data)[:SAMPLE_BYTES]
            received += len(data)
            conn.received = received
            if received == self.size:
                if conn.sent == received:
                    self._complete(conn)
        except Exception as e:  # noqa: BLE001 - see _on_tick
            self._internal_error(conn, e)

    def _complete(self, conn: PacedConnection) -> None:
        """A whole reply to a whole message: a success or a mismatch; then a late turn, or a ramp's close."""
        if conn.wrong is not None:
            self._fail(conn, "mismatch", "")
            return
        now = perf_counter_ns()
        conn.deadline_ns = 0
        self.in_flight -= 1
        if not self.in_flight:
            self.flight.deadline_ns = 0
        conn.answered = True
        size = self.size
        self.recorder.success(now - conn.slot_ns, size, size, size)
        if conn.index >= self.open_below:  # a ramp down: this place closes after its message
            self._close(conn)
        elif conn.late_slot_ns:
            slot, conn.late_slot_ns = conn.late_slot_ns, 0
            self._send(conn, slot, now)

    def _fail(self, conn: PacedConnection, kind: str, detail: str) -> None:
        """End the message in flight as a failure of `kind`, close the connection and queue its reconnect."""
        now = perf_counter_ns()
        if conn.deadline_ns:
            conn.deadline_ns = 0
            self.in_flight -= 1
            if not self.in_flight:
                self.flight.deadline_ns = 0
        message = self._failure_message(conn, kind, detail)
        self.recorder.failure(kind, message, now - conn.slot_ns, conn.received, conn.sent)
        if not conn.answered:  # failed before any reply: pause as after a failed connect
            conn.retry_at_ns = now + self.pause_ns
        self._close(conn)
        budget = self.budget
        if conn.index < self.open_below and not budget.stopping and budget.left != 0:
            self._want(conn)

    def _failure_message(self, conn: PacedConnection, kind: str, detail: str) -> str:
        """What a message's failure of `kind` says (`detail`: the socket error's, or the driver's own)."""
        if detail.startswith(_DRIVER_ERROR):
            return detail
        return failure_message(self.target, kind, detail, conn.wrong or b"")

    def _socket_failed(self, conn: PacedConnection, e: OSError) -> None:
        """A send or a read failed: `reset` for a reset or a broken pipe, `error` for anything else."""
        self._fail(conn, "reset" if isinstance(e, RESET_ERRORS) else "error", e.strerror or str(e))

    def _internal_error(self, conn: PacedConnection, e: Exception) -> None:
        self.callback_errors += 1
        try:
            if conn.deadline_ns:
                self._fail(conn, "error", f"{_DRIVER_ERROR}: {type(e).__name__}: {e}")
        except Exception:  # noqa: BLE001 - counted above; nothing may escape into the hub
            pass
