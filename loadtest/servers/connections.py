"""The live connections of one server process: a cap, an idle timeout kept by one sweeper, and accepting.

Used inside a server process only (gevent, monkey-patched). A connection is any
object with a `mark` (the `time.monotonic()` of its last progress) and an
`expire()` that ends it. A single sweeper greenlet expires the connections whose
mark is older than the timeout: one sweeper for all connections costs far less
than a timer per read, and adds no memory per connection.

Descriptors: each connection is an open file, so a server's default connection
cap is lowered to fit the process's open-file limit (`fitting_cap`). Past the
cap, new connections are accepted and closed at once. If the process runs out
of descriptors all the same (an explicit cap above the limit, or the system's
table full), accepting pauses and retries every `ACCEPT_RETRY_S` while existing
connections are served; each of these two events is said once per process on
stderr, in one sentence, never as a traceback.
"""

from __future__ import annotations

import _socket
import errno
import os
import resource
import sys
import time
from typing import Any, Protocol

import gevent
from gevent import Greenlet
from gevent.server import StreamServer

MIN_SWEEP_INTERVAL_S = 0.05
MAX_SWEEP_INTERVAL_S = 1.0
STOP_POLL_S = 0.01
FD_SPARE = 16  # descriptors left free beyond those open when the server starts (accept, the parent's pipe, logs)
ACCEPT_RETRY_S = 0.1  # out of descriptors: how often to try accepting again
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def open_file_limit() -> int | None:
    """This process's soft limit on open files, or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a handful
        return FD_SPARE


def fitting_cap(wanted: int) -> int:
    """`wanted` connections, or fewer: as many as the open-file limit leaves after what is open now and a margin."""
    limit = open_file_limit()
    if limit is None:
        return wanted
    return max(1, min(wanted, limit - _open_descriptors() - FD_SPARE))


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
            self._expire_idle(time.monotonic() - self.idle_timeout)

    def _expire_idle(self, cutoff: float) -> None:
        # A method of its own so that no sleeping frame keeps the last expired connection alive.
        for conn in [c for c in self.live if c.mark < cutoff]:
            conn.mark = float("inf")  # expired once; it may take a moment to finish
            conn.expire()


class Acceptor(StreamServer):  # type: ignore[misc]
    """gevent's `StreamServer`, except that running out of descriptors pauses accepting instead of printing tracebacks.

    gevent logs a traceback for every failed accept (EMFILE, ENFILE) and retries
    with a growing delay; this one calls `on_exhausted(error)` and retries every
    `ACCEPT_RETRY_S`, so it accepts again soon after descriptors free up.
    """

    def __init__(self, listener: Any, handle: Any, on_exhausted: Any) -> None:
        # spawn=None: the accept callback sets the connection up and returns; nothing blocks.
        super().__init__(listener, handle, spawn=None)
        self._on_exhausted = on_exhausted
        self._retry: Any = None

    def do_read(self) -> Any:
        try:
            return super().do_read()
        except OSError as error:
            if error.errno not in _OUT_OF_DESCRIPTORS:
                raise
            self._on_exhausted(error)
        self.stop_accepting()
        if self._retry is None:
            self._retry = self.loop.timer(ACCEPT_RETRY_S)
        self._retry.start(self._accept_again)
        return None

    def _accept_again(self) -> None:
        if self.started and not self.closed:
            self.start_accepting()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.close()
            self._retry = None
        super().close()


class CallbackServer:
    """One process's server whose accepted connections are served by event-loop callbacks.

    Subclasses set up each accepted socket in `serve`; the table caps the
    connections and expires idle ones. `kind` names the server in what it says on stderr.
    """

    kind = "server"

    def __init__(self, listener: Any, max_connections: int, idle_timeout: float) -> None:
        self.table = ConnectionTable(max_connections, idle_timeout)
        self.loop = gevent.get_hub().loop
        self.stream_server = Acceptor(listener, self._adopt, self._out_of_descriptors)
        self._said: set[str] = set()

    def _say_once(self, event: str, sentence: str) -> None:
        """Write `sentence` on stderr, the first time `event` happens in this process."""
        if event not in self._said:
            self._said.add(event)
            print(f"{self.kind} server process {os.getpid()}: {sentence}", file=sys.stderr, flush=True)

    def _out_of_descriptors(self, error: OSError) -> None:
        if error.errno == errno.EMFILE:
            what = f"this process's open-file limit ({open_file_limit()}) is reached"
            remedy = "raise it with ulimit -n, or lower max_connections"
        else:
            what, remedy = "the system's open-file table is full", "raise fs.file-max or close other programs' files"
        self._say_once("descriptors", (
            f"cannot accept more connections: {what} with {len(self.table.live)} connections open; "
            f"new connections wait until some close ({remedy})."))

    def _adopt(self, sock: Any, address: Any) -> None:
        if self.table.full():
            self._say_once("cap", (
                f"{self.table.max_connections} connections are open, its cap, so new ones are closed at once "
                f"until some end (the cap is max_connections, by default what the open-file limit allows)."))
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

