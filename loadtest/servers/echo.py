"""A TCP echo server for load tests: every byte back, unchanged or ASCII upper-cased.

Runs inside a server process (monkey-patched; see `group.py`). A gevent
`StreamServer` accepts, as in gevent's examples/echoserver.py, but each
connection is then served by event-loop callbacks rather than a greenlet of its
own: a read callback echoes what arrived, with no greenlet switch and no stack
to keep per connection. That is what lets one process echo tens of thousands
of 1 KiB messages a second and hold tens of thousands of idle connections in a
few hundred bytes each.

Bounded: a read takes at most 64 KiB, and while any of it is still unsent the
connection stops reading, so a client that does not read stalls only itself
(TCP flow control does the rest). What a process holds unsent in all is
capped too (`max_buffered`, 256 MiB by default): an unsent echo that would
pass it makes room by closing the connections that have gone longest without
taking any of theirs (said once on stderr), so 20,000 clients that send and
never read cannot make a process hold 20,000 × 64 KiB, and clients that read
their echoes, slowly or not, are not held back by them. A connection cap closes extra connections at
once (by default it fits the open-file limit; see connections.py); an idle
timeout closes connections that send nothing.

Try it:  loadtest serve echo   then   nc 127.0.0.1 9000
"""

from __future__ import annotations

import time
from typing import Any

from loadtest.servers.connections import CallbackServer, fitting_cap

DEFAULT_MAX_CONNECTIONS = 50_000  # lowered to fit the open-file limit (see connections.py)
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024  # unsent bytes one process holds for its clients in all
READ_SIZE = 64 * 1024
_READ, _WRITE = 1, 2  # event loop watcher events


class EchoConnection:
    """One client connection, driven by a read watcher (and a write watcher while a reply is unsent)."""

    __slots__ = ("mark", "reader", "server", "sock", "unsent", "writer")

    def __init__(self, server: EchoServer, sock: Any, loop: Any) -> None:
        self.server = server
        self.sock = sock
        self.reader = loop.io(sock.fileno(), _READ)
        self.writer: Any = None
        self.unsent: memoryview | None = None
        self.mark = time.monotonic()
        self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.expire()
            return
        if not data:
            self.expire()
            return
        server = self.server
        if server.upper:
            data = data.upper()
        counts = server.counts
        counts[0] += 1
        counts[1] += len(data)
        self.mark = time.monotonic()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.expire()
            return
        if sent < len(data):  # the client reads slower than it sends: stop reading until this is out
            self._hold(data, sent)

    def _hold(self, data: bytes, sent: int) -> None:
        """Keep what a send left of `data`, within the server's cap, and read nothing until it is out."""
        server = self.server
        left = len(data) - sent
        if server.buffered + left > server.max_buffered and not server.make_room(left):
            self.expire()
            return
        server.buffered += left
        server.stalled[self] = None
        self.unsent = memoryview(data)[sent:]
        self.reader.stop()
        if self.writer is None:
            self.writer = server.loop.io(self.sock.fileno(), _WRITE)
        self.writer.start(self.on_writable)

    def on_writable(self) -> None:
        unsent = self.unsent
        assert unsent is not None
        try:
            sent = self.sock.send(unsent)
        except BlockingIOError:
            return
        except OSError:
            self.expire()
            return
        self.mark = time.monotonic()
        server = self.server
        server.buffered -= sent
        del server.stalled[self]
        if sent < len(unsent):
            self.unsent = unsent[sent:]
            server.stalled[self] = None  # it took some: the last to be closed for room now
            return
        self.unsent = None
        self.writer.stop()
        self.reader.start(self.on_readable)

    def expire(self) -> None:
        """Close the connection (end of stream, error, idle timeout, server stop)."""
        if self.unsent is not None:  # what it held is freed with it
            self.server.buffered -= len(self.unsent)
            self.server.stalled.pop(self, None)
            self.unsent = None
        self.reader.stop()
        self.reader.close()
        if self.writer is not None:
            self.writer.stop()
            self.writer.close()
        self.sock.close()
        self.server.table.discard(self)


class EchoServer(CallbackServer):
    """The echo server of one process, on a listening socket it is given."""

    kind = "echo"

    def __init__(self, listener: Any, counts: Any, upper: bool = False, max_connections: int = 0,
                 idle_timeout: float = 0.0, max_buffered: int = 0) -> None:
        self.counts = counts  # [messages (reads echoed), bytes, connections], shared with the parent
        self.upper = upper
        self.max_buffered = max_buffered or DEFAULT_MAX_BUFFERED
        self.buffered = 0  # bytes read and not yet sent back, all connections together
        # the connections holding unsent bytes, the one that has gone longest without taking any first
        self.stalled: dict[EchoConnection, None] = {}
        super().__init__(listener, max_connections or fitting_cap(DEFAULT_MAX_CONNECTIONS),
                         idle_timeout or DEFAULT_IDLE_TIMEOUT_S)

    def make_room(self, wanted: int) -> bool:
        """Close the connections that have gone longest without taking any of their unsent echo until `wanted`
        more bytes fit under the cap; False if they do not even then."""
        stalled = self.stalled
        if stalled:
            self._say_once("buffered", (
                f"its clients' unsent echoes reached {self.max_buffered // 2**20} MiB, its cap: the connections "
                f"that have gone longest without reading their echoes are closed to make room (the cap is "
                f"max_buffered)."))
        while stalled and self.buffered + wanted > self.max_buffered:
            next(iter(stalled)).expire()
        return self.buffered + wanted <= self.max_buffered

    def serve(self, sock: Any) -> None:
        self.counts[2] += 1
        self.table.add(EchoConnection(self, sock, self.loop))
