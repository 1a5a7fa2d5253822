"""Plain HTTP/1.1 targets driven by hub callbacks: one driver per target per worker, no greenlet per request.

A greenlet per virtual user pays two switches and a generator of Python frames
for every request. Here one `HttpHub` holds all of a worker's connections of a
target as small `HubConnection` records and drives them from the gevent hub:

- each connection keeps one read watcher started for its life (a restart would
  cost an `epoll_ctl`); its callback reads what has come, feeds the connection's
  llhttp parser (httptools; the record is the parser's callback object) and,
  once the response is whole, records it and, in the closed model, writes the
  user's next request at once, all in the same callback;
- a response that is byte for byte the last one of its length parsed whole in
  one read (a server answering the same page again: nginx's only changes with
  its Date, once a second) is not fed to llhttp again when its connection's parser
  stands at a message's start: its status, body length and keep-alive are
  the kept ones (`HubExchange._parsed_whole`): about a third of the
  interpreter's work on a small response was its parse;
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

This module is the driver (the driving greenlets, a closed-model user's turn, the open model's
arrivals); `http_hub_connection` holds a connection's record and `http_hub_exchange` a request's
life on it (connect, write, read, parse, end).
"""

from __future__ import annotations

import math
import sys
from itertools import cycle
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.hub import get_hub

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import Deadlines
from loadtest.engine.protocols.http_fast import Endpoint, HttpSession
from loadtest.engine.protocols.http_hub_connection import _BACKING_OFF, _CONNECTING, _IDLE, _WAITING, HubConnection
from loadtest.engine.protocols.http_hub_exchange import HubExchange
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, HubTimer, spin_until
from loadtest.model.config import DEFAULT_FAILURE_BACKOFF_S, FIRST_BACKOFF_S
from loadtest.model.kinds.http import HttpTarget

if TYPE_CHECKING:
    from gevent.pool import Pool

    from loadtest.core.schedule import ArrivalSchedule
    from loadtest.engine.budget import Budget, Level

LEVEL_POLL_S = 0.1  # the driver follows a staged level, and notices the end of the load, this often
MAX_LATENESS_S = 1.0  # an open-model arrival that cannot start this soon after its time is dropped (as `arrivals`)
ARRIVALS_PER_TURN = 4  # late arrivals sent in one turn of the loop before it reads what came back


class HttpHub(HubExchange):
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
        self._queued: list[HubConnection] = []
        self._write_queued_cb = self._write_queued
        self._repeats: dict[int, tuple[bytes, int, int, bool]] = {}
        self._looking = True
        self._repeat_hits = self._probe_every = self._probe_in = 0

    def __call__(self) -> HttpSession:
        return HttpSession(self.target, self.endpoints, self.recorder, self._urls, None, self.deadlines)

    # -- the driving greenlets -------------------------------------------------------------------

    def drive(self, pool: Pool, share: int, level: Level | None = None) -> None:
        """Closed model: `share` virtual users (those below `level`, if staged or steered; none while it is
        paused), each sending its next request when the last one ended, until the budget says stop (or is
        spent) and nothing is in flight. A user whose connect failed waits before its next turn, as
        `virtual_users.virtual_user` does: FIRST_BACKOFF_S, doubled after each failure in a row up to `backoff`."""
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
        turn = ARRIVALS_PER_TURN
        while not budget.stopping and due < until:
            if due > now or not turn:
                now = perf_counter_ns()
                if due > now or not turn:
                    # Not due yet; or, behind, a turn's share sent: the loop reads the answers that came
                    # meanwhile (their connections turn idle for the next arrivals) before more are sent. One
                    # callback that sent a whole backlog found no connection idle and opened one for each late
                    # arrival, which made it later still (5,000 connections and 240 ms late at 50,000/s).
                    self.due_ns = due
                    timer.arm(due)  # type: ignore[union-attr] # a past time fires at the loop's next turn
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
                turn -= 1
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
