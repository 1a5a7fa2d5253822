"""Protocol clients: one small interface, one module per protocol.

A virtual user owns one `Session` for its target. `exchange()` performs one
request (or one TCP message round trip) and records its outcome in the
target's recorder itself: a success, or a failure of one kind. It never
raises for anything the network or the server did; a `GreenletExit` while a
request is in flight records it as `cancelled` and is re-raised so the user
stops.

Their sockets are `channel.Channel`s: non-blocking sockets driven straight
from the gevent hub, which works in a patched worker and, for tests, in a
plain process too. Request timeouts are `RequestTimer`s, enforced for a whole
worker by one `Deadlines` scan (and by a fast session itself when a read
wakes it after its deadline).
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any, Protocol

from gevent import Timeout, getcurrent, sleep
from gevent.hub import get_hub

from loadtest.engine.protocols.channel import RequestTimeout


NO_DEADLINE_NS = 1 << 62  # in flight, but never expired by the scan (again)
SCAN_PERIOD_S = 0.1  # the deadline scan runs at least this often
SCAN_GAP_S = 0.02  # and, when deadlines fall due sooner, at most this often (each scan visits every session)


class Session(Protocol):
    """One virtual user's connection(s) to one target.

    `back_off` is set by an exchange that failed at once without the server's pace holding the user back (a
    refused connect, a flow pass that failed): a closed-model user then waits a growing, bounded back-off
    before its next request, and clears it (virtual_users.virtual_user). A class attribute, False, on every session.
    """

    back_off: bool

    def exchange(self, scheduled_ns: int = 0) -> None:
        """Send one request and read its response; record the outcome.

        `scheduled_ns` (a `perf_counter_ns` time) is when the request was meant
        to start; latency is measured from it when it is given (open model).
        """

    def close(self) -> None:
        """Close every connection this session holds."""


class Deadlines:
    """Request timeouts for many sessions, enforced by one scan.

    A gevent timeout arms and cancels a timer on every blocking read, a cost
    paid by every request. Instead each session's
    `RequestTimer` notes when its request must end, and one greenlet of the
    worker (`scan`) expires the requests past their deadline. It wakes just
    after the earliest deadline ahead (`SCAN_GAP_S` after the last scan at
    the soonest, `SCAN_PERIOD_S` at the latest), so a timeout of 100 ms or
    more fires at most `SCAN_GAP_S` late while the worker has CPU to run it.
    """

    def __init__(self) -> None:
        self.timers: set[RequestTimer] = set()

    def in_flight(self) -> bool:
        """True while any session has a request in flight."""
        return any(t.deadline_ns for t in self.timers)

    def expire_late(self, now_ns: int) -> int:
        """Expire every request past its deadline; return the earliest deadline still ahead."""
        nearest = NO_DEADLINE_NS
        for t in self.timers:  # expiring only queues a hub callback, so the set does not change here
            deadline = t.deadline_ns
            if deadline:
                if deadline <= now_ns:
                    t.expire()
                elif deadline < nearest:
                    nearest = deadline
        return nearest

    def scan(self) -> None:
        """Expire requests past their timeout until killed: the body of one greenlet per worker."""
        gap_ns, period_ns = int(SCAN_GAP_S * 1e9), int(SCAN_PERIOD_S * 1e9)
        while True:
            now = perf_counter_ns()
            nearest = self.expire_late(now)
            sleep(min(period_ns, max(gap_ns, nearest - now)) / 1e9)


class RequestTimer:
    """When a session's request in flight must end, and how it is aborted if it does not.

    Expiring throws `RequestTimeout` into the session's greenlet from a hub
    callback, and only if that same request is still in flight. Without a
    `Deadlines` scan (a session used on its own), each request arms a gevent
    timeout instead.
    """

    __slots__ = ("deadline_ns", "_deadlines", "_seq", "_greenlet", "_hub", "_fallback")

    def __init__(self, deadlines: Deadlines | None) -> None:
        self.deadline_ns = 0
        self._deadlines = deadlines
        self._seq = 0
        self._greenlet: Any = None
        self._hub: Any = None
        self._fallback: Any = None
        if deadlines is not None:
            deadlines.timers.add(self)

    def start(self, deadline_ns: int) -> None:
        self._seq += 1
        self.deadline_ns = deadline_ns
        self._greenlet = getcurrent()  # the open model hands a session to a new greenlet per request
        if self._hub is None:
            self._hub = get_hub()
        if self._deadlines is None:
            seconds = max(0.0, (deadline_ns - perf_counter_ns()) / 1e9)
            self._fallback = Timeout.start_new(seconds, RequestTimeout)

    def stop(self) -> None:
        self.deadline_ns = 0
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None

    def expire(self) -> None:
        """Abort the request in flight from the hub, once: the next scans leave it alone."""
        self._hub.loop.run_callback(self._expire_now, self._seq)
        self.deadline_ns = NO_DEADLINE_NS  # still in flight, but never queued twice

    def _expire_now(self, seq: int) -> None:
        g = self._greenlet
        if seq == self._seq and self.deadline_ns and g is not None and not g.dead:
            g.throw(RequestTimeout())

    def close(self) -> None:
        self.stop()
        if self._deadlines is not None:
            self._deadlines.timers.discard(self)
