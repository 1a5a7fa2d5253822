"""A TCP echo server for load tests: every byte back, unchanged or ASCII upper-cased.

Runs inside a server child process (monkey-patched; see `group.py`). Shaped like
gevent's own examples/echoserver.py: a `StreamServer` and one greenlet per
connection. Bounded: a read takes at most 64 KiB and is sent back in full before
the next read, so a client that does not read stops only itself (TCP flow control
does the rest); a connection cap closes extra connections at once; an idle
timeout closes connections that send nothing.

Try it:  loadtest serve echo   then   nc 127.0.0.1 9000
"""

from __future__ import annotations

import time
from typing import Any

from gevent.server import StreamServer

from loadtest.servers.connections import ConnectionTable, IdleTimeout

DEFAULT_MAX_CONNECTIONS = 50_000
DEFAULT_IDLE_TIMEOUT_S = 300.0
READ_SIZE = 64 * 1024


class EchoServer:
    """The echo server of one process, on a listening socket it is given."""

    def __init__(self, listener: Any, counts: Any, upper: bool = False, max_connections: int = 0,
                 idle_timeout: float = 0.0) -> None:
        self.counts = counts  # [messages (reads echoed), bytes, connections], shared with the parent
        self.upper = upper
        self.table = ConnectionTable(max_connections or DEFAULT_MAX_CONNECTIONS,
                                     idle_timeout or DEFAULT_IDLE_TIMEOUT_S)
        self.stream_server = StreamServer(listener, self._handle)

    def start(self) -> None:
        self.table.start()
        self.stream_server.start()

    def stop(self) -> None:
        self.stream_server.close()
        self.table.stop()

    def _handle(self, sock: Any, address: Any) -> None:
        conn = self.table.open()
        if conn is None:
            sock.close()
            return
        counts = self.counts
        counts[2] += 1
        recv = sock.recv
        sendall = sock.sendall
        upper = self.upper
        monotonic = time.monotonic
        try:
            while True:
                data = recv(READ_SIZE)
                if not data:
                    break
                if upper:
                    data = data.upper()
                sendall(data)
                counts[0] += 1
                counts[1] += len(data)
                conn.mark = monotonic()
        except (OSError, IdleTimeout):
            pass  # the client went away, or sent nothing for too long
        finally:
            self.table.close(conn)
            sock.close()
