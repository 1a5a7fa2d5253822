"""An HTTP server of exactly known capacity: one FIFO queue served at a fixed rate.

Every request joins one queue in the order it arrives and is answered
1/capacity seconds after the one before it (or after its own arrival, if the
queue was empty): a single server with a fixed service time. Below its
capacity a request waits about one service time; above it the queue, and so
the latency, grows without bound. The service is kept on a virtual clock
(each answer's time is set when its request arrives), so the capacity holds
exactly however fast the process itself runs, as long as it keeps up with
the I/O. It exists to test `loadtest capacity` against a known answer.

    python -m loadtest.servers.fixed_rate --capacity 1000 --listen 127.0.0.1:0

prints `listening on HOST:PORT`, serves until SIGTERM or SIGINT (or, with --stdin, until stdin closes),
then prints `served N` (every request answered) and exits. Keep-alive HTTP/1.1;
a request's body is read by its Content-Length and ignored; every answer is
`200 ok`.
"""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections import deque

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
BACKLOG = 4096
READ_BYTES = 65536
HEAD_END = b"\r\n\r\n"
MOST_HEAD_BYTES = 65536


class _Connection:
    __slots__ = ("sock", "buffer", "out", "answers", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.out = b""
        self.answers: deque[float] = deque()  # this connection's requests waiting, by answer time (FIFO)
        self.closed = False


class FixedRateServer:
    """A single-threaded server answering one request each 1/`capacity` seconds, first come first served."""

    def __init__(self, capacity: float, host: str = "127.0.0.1", port: int = 0) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.service_s = 1.0 / capacity
        self.listener = socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)
        self.listener.setblocking(False)
        self.address = "%s:%d" % self.listener.getsockname()[:2]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.free_at = 0.0  # the virtual clock: when the server finishes the last request queued
        self.due: list[tuple[float, int, _Connection]] = []  # (answer time, order, connection): one per request
        self.order = 0
        self.served = 0
        self.stopped = False

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, say: the client sees its connect fail
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, _Connection(sock))

    def _read(self, conn: _Connection, now: float) -> None:
        try:
            data = conn.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        while True:
            end = conn.buffer.find(HEAD_END)
            if end < 0:
                if len(conn.buffer) > MOST_HEAD_BYTES:
                    self._close(conn)
                return
            length = _content_length(conn.buffer[:end])
            whole = end + len(HEAD_END) + length
            if len(conn.buffer) < whole:
                return
            conn.buffer = conn.buffer[whole:]
            self.free_at = max(self.free_at, now) + self.service_s
            heapq.heappush(self.due, (self.free_at, self.order, conn))
            self.order += 1

    def _answer(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, _, conn = heapq.heappop(self.due)
            if conn.closed:
                continue
            conn.out += RESPONSE
            self.served += 1
            self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self.selector.modify(conn.sock, events, conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def serve(self, watch_stdin: bool = False) -> int:
        """Serve until `stop()` (a signal handler calls it) or stdin closes; returns the requests answered."""
        if watch_stdin:
            self.selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
        while not self.stopped:
            now = time.monotonic()
            timeout = max(0.0, self.due[0][0] - now) if self.due else 0.5
            for key, events in self.selector.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):
                        self.stopped = True
                else:
                    conn = key.data
                    if events & selectors.EVENT_WRITE and conn.out:
                        self._flush(conn)
                    if events & selectors.EVENT_READ and not conn.closed:
                        self._read(conn, time.monotonic())
            self._answer(time.monotonic())
        self.listener.close()
        return self.served

    def stop(self, *_: object) -> None:
        self.stopped = True


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.servers.fixed_rate", description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=float, required=True, help="requests answered per second, at most")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--stdin", action="store_true", help="also stop when stdin closes (a parent that died)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = FixedRateServer(args.capacity, host or "127.0.0.1", int(port))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, server.stop)
    print(f"listening on {server.address}", flush=True)
    served = server.serve(watch_stdin=args.stdin)
    print(f"served {served}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
