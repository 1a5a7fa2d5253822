"""Paced TCP connections driven by hub callbacks: one driver per target per worker, not a greenlet each.

A paced connection (a tcp target with `rate:`) spends nearly all its life
waiting: for its turn, then for its reply. A greenlet per connection parks a
copy of its stack for each wait (about 7 KB) and pays two switches a message.
Here one `PacedTcp` holds all of a worker's connections of a target as small
`PacedConnection` records and drives them from the hub:

- a heap of next send times, one entry per connection: from a random phase
  after it connects, then every `interval_ns`, never drifting (the same
  schedule as `TcpSession._wait_turn`); one `HubTimer` (a timerfd: the
  loop's own timers round to the millisecond), armed for the earliest send or
  timeout, sends every message due with a non-blocking `send` (a partial send
  finishes from a write watcher);
- a read watcher per connection, started while it is open (restarting it
  per message would cost an `epoll_ctl` each time), whose callback reads the
  rest of the reply and one byte more (bytes past the reply, a peer's unasked
  ones, are a `mismatch` at once, as in `TcpSession`; bytes that come while no
  message is in flight wait for the next) and checks each chunk against the
  expected bytes where it falls (`bytes.startswith` with an offset: no reply
  buffer);
- a FIFO of in-flight deadlines: the timeout is the same for every message
  and messages start in time order, so the oldest live entry is the next to
  expire;
- short-lived connector greenlets (at most `MAX_CONNECTORS` at once) that
  open connections, paced by `connect_rate` and spread over `source_ips`.

Latency counts from the message's scheduled send time (coordinated omission
corrected); a reply later than the connection's next turn sends the next
message at once, its latency counted from its own slot. Failure kinds,
reconnects, the `RECONNECT_PAUSE_S` pause after a failed connect or a
connection that failed before its first reply, the `requests:` budget and
stop behave as in `TcpSession`; a stop that kills the driver records every
message still in flight as `cancelled`. The worker's grace period sees the
driver's messages in flight through a `RequestTimer` it holds in flight while
any is. An exception in a hub callback never escapes into gevent: it is
counted in `callback_errors`; in a read or write callback it ends the
message as an `error`, in the timer's it is said once on stderr.

Another kind may run on this driver (`protocols/ws.py` does): `_open` is
what a connector does to open a connection, `connection_class` what each is
kept in, `_put` how a message is written, and with no `rate` (`interval_ns`
0) the subclass sends back to back.

This module is the driver (its greenlet, the connectors, a place's open and close);
`tcp_paced_exchange` holds a connection's record and its messages' life in hub callbacks.
"""

from __future__ import annotations

import math
import random
import socket
from collections import deque
from heapq import heappush
from itertools import cycle
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import get_hub

from loadtest.model.config import TcpTarget
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import Deadlines, RequestTimer
from loadtest.engine.protocols.channel import READ, connect_socket, drop_watched_socket
from loadtest.engine.protocols.http_fast import connect_failure
from loadtest.engine.protocols.tcp import (RECONNECT_PAUSE_S, ConnectPacer, TcpSession, split_address,
                                           tcp_session_factory, wait_to_connect)
from loadtest.engine.protocols.tcp_paced_exchange import _FAR_NS, PacedConnection, PacedExchange

if TYPE_CHECKING:
    from gevent.pool import Pool

    from loadtest.engine.budget import Budget, Level

MAX_CONNECTORS = 64  # connects in progress at once: start-up in parallel, without a greenlet per connection
LEVEL_POLL_S = 0.1  # the driver follows a staged level, and notices the end of the load, this often


class PacedTcp(PacedExchange):
    """One worker's paced connections of a TCP target, run by `drive` in one greenlet and hub callbacks.

    Calling it makes a lone `TcpSession` of the target, so it is a session factory too.
    """

    def __init__(self, target: TcpTarget, address: str, recorder: TargetRecorder, budget: Budget,
                 workers: int = 1, deadlines: Deadlines | None = None,
                 reconnect_pause: float = RECONNECT_PAUSE_S) -> None:
        host, port = split_address(address)
        self.family, _, _, _, self.remote = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        self.make_session = tcp_session_factory(target, address, recorder, workers, deadlines, reconnect_pause,
                                                budget)
        self.target = target
        self.recorder = recorder
        self.budget = budget
        self.pacer = ConnectPacer(target.connect_rate / workers) if target.connect_rate > 0 else None
        self.sources = cycle(target.source_ips) if target.source_ips else None
        self.message = target.message
        self.size = len(target.message)
        self.expected: bytes | None = {"echo": target.message, "upper": target.message.upper()}.get(target.expect)
        self.timeout = target.timeout
        self.timeout_ns = int(target.timeout * 1e9)
        # each connection's share of the rate; 0: back to back (a kind that drives those on this driver)
        self.interval_ns = int(1e9 * target.peak_connections / target.rate) if target.rate > 0 else 0
        self.pause_ns = int(reconnect_pause * 1e9)
        self.flight = RequestTimer(deadlines)  # "in flight" for the worker's grace period while any message is
        self.conns: list[PacedConnection] = []
        self.open_below = 0  # places below this are to be connected; a staged level moves it
        self.heap: list[tuple[int, int, PacedConnection]] = []  # (send time, serial, connection)
        self.fifo: deque[tuple[int, PacedConnection]] = deque()  # (deadline, connection), oldest first
        self.want: deque[PacedConnection] = deque()  # places waiting for a connector
        self.starved: list[PacedConnection] = []  # open connections whose turn found the budget spent
        self.in_flight = 0
        self.tickets = 0  # budget units taken by connections not yet spent on a message
        self.connectors = 0
        self.serial = 0
        self.timer: Any = None
        self.armed_ns = _FAR_NS
        self.closed = False
        self.callback_errors = 0  # exceptions caught in hub callbacks
        self.pool: Pool | None = None
        self.loop: Any = None
        # bound once: a bound method made per message would be an allocation per message
        self._readable = self._on_readable
        self._writable = self._on_writable
        self._tick = self._on_tick

    connection_class: type[PacedConnection] = PacedConnection  # a kind on this driver may keep more per connection

    def __call__(self) -> TcpSession:
        return self.make_session()

    # -- the driver greenlet ---------------------------------------------------------------------

    def drive(self, pool: Pool, share: int, level: Level | None = None) -> None:
        """Hold `share` connections (those below `level`, if staged or steered; none while it is paused) until
        the load ends or this is killed.

        Returns once the budget says stop (or is spent) and no message or connect is left; killed, it
        records the messages in flight as cancelled. Every connection is closed on the way out.
        """
        self.pool = pool
        self.loop = get_hub().loop
        self.conns = [self.connection_class(i) for i in range(share)]
        budget = self.budget
        try:
            while True:
                count = share if level is None else 0 if level.paused else math.ceil(level.value)
                if count > len(self.conns):  # the controller set a level above the config's peak
                    self.conns.extend(PacedConnection(i) for i in range(len(self.conns), count))
                self._follow(count)
                if ((budget.stopping or (budget.left == 0 and not self.tickets)) and not self.in_flight
                        and not self.connectors):
                    return
                gevent.sleep(LEVEL_POLL_S)
        except BaseException:
            self._cancel_in_flight()
            raise
        finally:
            self._close_all()

    def _follow(self, count: int) -> None:
        """Open the places below `count`; close those above it, after the reply of a message in flight."""
        before = self.open_below
        self.open_below = count
        for conn in self.conns[before:count]:
            self._want(conn)
        for conn in self.conns[count:before]:
            if conn.sock is not None and not conn.deadline_ns:
                self._close(conn)

    def _cancel_in_flight(self) -> None:
        rec = self.recorder
        for conn in self.conns:
            if conn.deadline_ns:
                conn.deadline_ns = 0
                rec.failure("cancelled", "the run stopped while this message was in flight", None,
                            conn.received, conn.sent)
        self.in_flight = 0
        self.flight.deadline_ns = 0

    def _close_all(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.closed = True
        self.armed_ns = 0  # nothing arms it again
        for conn in self.conns:
            if conn.sock is not None:
                self._close(conn)
        self.heap.clear()
        self.fifo.clear()
        self.want.clear()
        self.flight.close()

    # -- connecting ------------------------------------------------------------------------------

    def _want(self, conn: PacedConnection) -> None:
        """Queue a closed place for a connector, starting one if fewer than `MAX_CONNECTORS` run."""
        if conn.queued or conn.sock is not None:
            return
        conn.queued = True
        self.want.append(conn)
        if self.connectors < MAX_CONNECTORS and self.pool is not None:
            self.connectors += 1
            self.pool.spawn(self._connector)

    def _connector(self) -> None:
        """Connect the places waiting, one after another, then end (a connector holds no memory after)."""
        want, budget, rec = self.want, self.budget, self.recorder
        try:
            while want:
                conn = want.popleft()
                conn.queued = False
                if conn.sock is not None or conn.index >= self.open_below:
                    continue
                if not budget.take():  # a connect takes a unit of the budget, as a virtual user's turn does
                    return
                conn.ticket = True
                self.tickets += 1
                wait_to_connect(conn.retry_at_ns, self.pacer)
                conn.retry_at_ns = 0
                if budget.stopping or conn.index >= self.open_below:
                    self._drop_ticket(conn)
                    continue
                started = perf_counter_ns()
                try:
                    source = (next(self.sources), 0) if self.sources is not None else None
                    sock = self._open(source)
                except gevent.GreenletExit:
                    self._drop_ticket(conn)
                    raise
                except Exception as e:  # noqa: BLE001 - every failure is counted, none escapes
                    self._drop_ticket(conn, spent=True)  # a failed connect counts against a `requests:` total
                    kind, message = self._connect_failure(e)
                    rec.connect_failed(kind, message)
                    conn.retry_at_ns = perf_counter_ns() + self.pause_ns
                    self._want(conn)
                    continue
                now = perf_counter_ns()
                rec.connected(now - started)
                self._attach(conn, sock, now)
        finally:
            self.connectors -= 1

    def _open(self, source: tuple[str, int] | None) -> Any:
        """In a connector: a connected non-blocking socket (what a kind on this driver does after the TCP
        connect, such as a WebSocket upgrade, it does here too); raises what `_connect_failure` names."""
        return connect_socket(self.family, self.remote, self.timeout, source)

    def _connect_failure(self, e: Exception) -> tuple[str, str]:
        """The connect failure kind and message of what `_open` raised."""
        return connect_failure(e, self.timeout)

    def _drop_ticket(self, conn: PacedConnection, spent: bool = False) -> None:
        """Let go of the budget unit a connection took before it connected: given back to the budget (a ramp
        closed the place before its first message, or the load is stopping), or `spent` by a failed connect,
        as a virtual user's failed connect spends its turn."""
        if conn.ticket:
            conn.ticket = False
            self.tickets -= 1
            if not spent:
                self.budget.give_back()
                self._wake_starved()

    def _wake_starved(self) -> None:
        """A unit came back to a spent budget: the first open connection that found it spent takes its turn now
        (else nothing would ever ask for the unit, and the driver would not end by itself)."""
        starved = self.starved
        while starved:
            conn = starved.pop(0)
            if conn.serial and not self.closed:
                now = perf_counter_ns()
                heappush(self.heap, (now, conn.serial, conn))
                if now < self.armed_ns:
                    self._arm(now)
                return

    def _attach(self, conn: PacedConnection, sock: Any, now: int) -> None:
        """A new connection in its place: its first turn at a random phase within the interval."""
        conn.sock = sock
        conn.reader = reader = self.loop.io(sock.fileno(), READ)
        # Started for the connection's life, not per message: each restart costs an epoll_ctl. Bytes
        # that come between messages stop it until the next message (see `_on_readable`).
        reader.start(self._readable, conn)
        self.serial += 1
        conn.serial = self.serial
        conn.answered = False
        conn.late_slot_ns = 0
        if self.closed or self.budget.stopping or conn.index >= self.open_below:  # (closed: a kill raced it)
            self._close(conn)
            return
        slot = now + int(random.random() * self.interval_ns)
        heappush(self.heap, (slot, conn.serial, conn))
        if slot < self.armed_ns:
            self._arm(slot)

    def _close(self, conn: PacedConnection) -> None:
        """Close a connection (its message, if any, already ended) and free its place."""
        self._drop_ticket(conn)
        conn.serial = 0
        conn.late_slot_ns = 0
        conn.deadline_ns = 0
        if drop_watched_socket(conn):
            self.recorder.disconnected()

    # -- the hot path: hub callbacks -------------------------------------------------------------
