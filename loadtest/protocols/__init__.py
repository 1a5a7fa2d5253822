"""Protocol clients: one small interface, one module per protocol.

A virtual user owns one `Session` for its target. `exchange()` performs one
request (or one TCP message round trip) and records its outcome in the
target's recorder itself: a success, or a failure of one kind. It never
raises for anything the network or the server did; a `GreenletExit` while a
request is in flight records it as `cancelled` and is re-raised so the user
stops.

These modules use whatever `socket` is when they are imported: in a worker,
that is gevent's, because the worker patches before importing them.
"""

from __future__ import annotations

from typing import Protocol


class Session(Protocol):
    """One virtual user's connection(s) to one target."""

    def exchange(self, scheduled_ns: int = 0) -> None:
        """Send one request and read its response; record the outcome.

        `scheduled_ns` (a `perf_counter_ns` time) is when the request was meant
        to start; latency is measured from it when it is given (open model).
        """

    def close(self) -> None:
        """Close every connection this session holds."""


class Expirable(Protocol):
    deadline_ns: int  # perf_counter_ns time the request in flight must end by; 0 when idle

    def expire(self) -> None:
        """Abort the request in flight: it ends as a timeout failure."""


class Deadlines:
    """Request timeouts for many sessions, enforced by one periodic scan.

    A gevent socket timeout arms and cancels a timer on every blocking read,
    which costs about a third of a fast request's CPU. Instead each session
    notes when its request must end, and one greenlet of the worker calls
    `expire_late` a few times a second: timeouts are exact to that period.
    """

    def __init__(self) -> None:
        self.sessions: set[Expirable] = set()

    def add(self, session: Expirable) -> None:
        self.sessions.add(session)

    def discard(self, session: Expirable) -> None:
        self.sessions.discard(session)

    def expire_late(self, now_ns: int) -> int:
        late = [s for s in self.sessions if 0 < s.deadline_ns <= now_ns]
        for s in late:
            s.expire()
        return len(late)
