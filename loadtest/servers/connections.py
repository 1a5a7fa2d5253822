"""The live connections of one server process: a cap, and an idle timeout kept by one sweeper.

Used inside a server process only (gevent, monkey-patched). A connection is any
object with a `mark` (the `time.monotonic()` of its last progress) and an
`expire()` that ends it. A single sweeper greenlet expires the connections whose
mark is older than the timeout: one sweeper for all connections costs far less
than a timer per read, and adds no memory per connection.
"""

from __future__ import annotations

import _socket
import time
from typing import Any, Protocol

import gevent
from gevent import Greenlet
from gevent.server import StreamServer

MIN_SWEEP_INTERVAL_S = 0.05
MAX_SWEEP_INTERVAL_S = 1.0
STOP_POLL_S = 0.01


class IdleTimeout(Exception):
    """Thrown into a connection's handler when it made no progress within the idle timeout."""


class Connection(Protocol):
    mark: float

    def expire(self) -> None: ...


class ConnectionTable:
    """The live connections of one server process, capped, with an idle timeout."""

    def __init__(self, max_connections: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.live: set[Connection] = set()
        self._sweeper: Greenlet | None = None

    def full(self) -> bool:
        return len(self.live) >= self.max_connections

    def add(self, conn: Connection) -> None:
        self.live.add(conn)

    def discard(self, conn: Connection) -> None:
        self.live.discard(conn)

    def start(self) -> None:
        self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop sweeping, expire every live connection and wait (at most `timeout`) until they are gone."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for conn in list(self.live):
            conn.expire()
        deadline = time.monotonic() + timeout
        while self.live and time.monotonic() < deadline:
            gevent.sleep(STOP_POLL_S)

    def _sweep_forever(self) -> None:
        interval = min(MAX_SWEEP_INTERVAL_S, max(MIN_SWEEP_INTERVAL_S, self.idle_timeout / 4))
        while True:
            gevent.sleep(interval)
            cutoff = time.monotonic() - self.idle_timeout
            for conn in [c for c in self.live if c.mark < cutoff]:
                conn.mark = float("inf")  # expired once; it may take a moment to finish
                conn.expire()


class CallbackServer:
    """One process's server whose accepted connections are served by event-loop callbacks.

    Subclasses set up each accepted socket in `serve`; the table caps the
    connections and expires idle ones.
    """

    def __init__(self, listener: Any, max_connections: int, idle_timeout: float) -> None:
        self.table = ConnectionTable(max_connections, idle_timeout)
        self.loop = gevent.get_hub().loop
        # spawn=None: the accept callback sets the connection up and returns; nothing blocks.
        self.stream_server = StreamServer(listener, self._adopt, spawn=None)

    def _adopt(self, sock: Any, address: Any) -> None:
        if self.table.full():
            sock.close()
            return
        # Take the descriptor from the gevent socket (StreamServer closes that object when we return).
        raw = _socket.socket(fileno=sock.detach())
        raw.setblocking(False)
        self.serve(raw)

    def serve(self, sock: Any) -> None:
        """Set up one accepted non-blocking socket and add it to the table."""
        raise NotImplementedError

    def start(self) -> None:
        self.table.start()
        self.stream_server.start()

    def stop(self) -> None:
        self.stream_server.close()
        self.table.stop()

