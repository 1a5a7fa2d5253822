"""The live connections of one server process: a cap, and an idle timeout kept by one sweeper.

Used inside a server child process only (gevent, monkey-patched). Each connection's
handler greenlet registers itself with `open()` and marks progress by setting
`Connection.mark` to `time.monotonic()`; a single sweeper greenlet kills the
handlers whose mark is older than the timeout. One sweeper for all connections
costs far less than a timer per socket wait, and holds no memory per connection
beyond a small slotted object.
"""

from __future__ import annotations

import time

import gevent
from gevent import Greenlet

MIN_SWEEP_INTERVAL_S = 0.05
MAX_SWEEP_INTERVAL_S = 1.0


class IdleTimeout(Exception):
    """Thrown into a connection's handler when it made no progress within the idle timeout."""


class Connection:
    """One live connection: its handler greenlet and when it last made progress."""

    __slots__ = ("greenlet", "mark")

    def __init__(self, greenlet: Greenlet, mark: float) -> None:
        self.greenlet = greenlet
        self.mark = mark


class ConnectionTable:
    """The live connections of one server process, capped, with an idle timeout."""

    def __init__(self, max_connections: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.live: set[Connection] = set()
        self.opened = 0
        self._sweeper: Greenlet | None = None

    def open(self) -> Connection | None:
        """Register the current greenlet's connection, or None when the cap is reached."""
        if len(self.live) >= self.max_connections:
            return None
        conn = Connection(gevent.getcurrent(), time.monotonic())
        self.live.add(conn)
        self.opened += 1
        return conn

    def close(self, conn: Connection) -> None:
        self.live.discard(conn)

    def start(self) -> None:
        self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop sweeping and end every live connection's handler."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        greenlets = [conn.greenlet for conn in self.live]
        gevent.killall(greenlets, block=True, timeout=timeout)

    def _sweep_forever(self) -> None:
        interval = min(MAX_SWEEP_INTERVAL_S, max(MIN_SWEEP_INTERVAL_S, self.idle_timeout / 4))
        while True:
            gevent.sleep(interval)
            cutoff = time.monotonic() - self.idle_timeout
            for conn in [c for c in self.live if c.mark < cutoff]:
                conn.mark = float("inf")  # killed once; its handler may still be finishing
                conn.greenlet.kill(IdleTimeout, block=False)
