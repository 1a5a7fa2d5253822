"""Sockets driven straight from the gevent hub: the I/O under every fast session.

gevent's socket class is pure Python around each call, which costs CPU on
every read and write. A `Channel` keeps a non-blocking
socket and one read watcher for the connection's life: a read is one
`recv` call, and only when the kernel has nothing does the greenlet park on
the hub; a client whose replies come later than it reads parks first
(`await_reply`) rather than make a `recv` that would find nothing.
`TlsChannel` offers the same calls over gevent's SSL socket.

Timeouts are not armed per read: a session's request is aborted by
`RequestTimeout` thrown into its greenlet (see `Deadlines` in this package).

A peer that never stops sending would otherwise keep a greenlet running for
ever: a read that finds data waiting never parks on the hub, so the worker's
snapshots and its deadline scan would never run. So a channel that has read
`YIELD_AFTER_BYTES` without waiting gives the hub one turn of its loop
(`give_way`) before it reads on, so the hub gets its turn after a bounded
amount of parsing work (`tests/test_hostile_peers.py` holds a worker to its
once-a-second snapshot against endless 1-byte chunks, the costliest shape for
the HTTP parser).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket as _stdlib_socket
from typing import Any

from gevent import Timeout
from gevent.hub import get_hub

READ = 1
WRITE = 2
YIELD_AFTER_BYTES = 256 * 1024  # read without waiting this much, then let the other greenlets run
WAIT_FIRST_REPLIES = 16  # after a read that found nothing, wait before reading this many replies


class RequestTimeout(Exception):
    """Thrown into a virtual user whose request ran past its deadline."""


class ConnectTimeout(OSError):
    """No connection within the connect timeout."""


def give_way() -> None:
    """Wait for one turn of the hub's loop: ready sockets, due timers and ready greenlets all run first.

    `gevent.sleep(0)` is not enough: it lets only other ready greenlets run,
    and the hub runs up to 50 such callbacks (yielders queue themselves again)
    before it polls sockets or fires timers, so a few busy readers could still
    hold off the deadline scan for a quarter of a second. A timer of 0 s fires
    only after the loop's next poll.
    """
    hub = get_hub()
    timer = hub.loop.timer(0.0)
    try:
        hub.wait(timer)
    finally:
        timer.close()


def drop_watched_socket(conn: Any) -> bool:
    """Close a hub-driven connection's read and write watchers and its socket (a record with `reader`,
    `writer` and `sock`, as `HubConnection` and `PacedConnection` are); True if it had a socket."""
    if conn.reader is not None:
        conn.reader.close()
        conn.reader = None
    if conn.writer is not None:
        conn.writer.close()
        conn.writer = None
    sock, conn.sock = conn.sock, None
    if sock is None:
        return False
    sock.close()
    return True


def connect_socket(family: int, sockaddr: tuple, timeout: float,  # type: ignore[type-arg]
                   source: tuple[str, int] | None = None) -> Any:
    """A connected non-blocking TCP socket with TCP_NODELAY (optionally bound to a source address), the
    calling greenlet waiting on the hub for the handshake; raises OSError subclasses."""
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if source is not None:
            # Let the kernel pick the port per destination, so one source address
            # serves ~28,000 connections to each destination rather than in all.
            sock.setsockopt(_socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind(source)
        err = sock.connect_ex(sockaddr)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            hub = get_hub()
            watcher = hub.loop.io(sock.fileno(), WRITE)
            try:
                with Timeout(timeout, ConnectTimeout(errno.ETIMEDOUT, "connect timed out")):
                    hub.wait(watcher)
            finally:
                watcher.close()
            err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


class Channel:
    """A connected non-blocking socket whose reads and writes wait on the gevent hub."""

    __slots__ = ("sock", "_hub", "_read", "_write", "_unwaited", "_wait_first")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._hub = get_hub()
        self._read = self._hub.loop.io(sock.fileno(), READ)
        self._write: Any = None
        self._unwaited = 0  # bytes read since this channel last gave the hub a turn
        self._wait_first = 0  # replies still to wait for before reading (see `await_reply`)

    @classmethod
    def connect(cls, family: int, sockaddr: tuple, timeout: float,  # type: ignore[type-arg]
                source: tuple[str, int] | None = None) -> Channel:
        """Open a TCP connection (optionally from a source address); raises OSError subclasses."""
        return cls(connect_socket(family, sockaddr, timeout, source))

    def send_all(self, data: bytes) -> None:
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._send_rest(memoryview(data)[sent:])

    def _send_rest(self, view: memoryview) -> None:
        if self._write is None:
            self._write = self._hub.loop.io(self.sock.fileno(), WRITE)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self._hub.wait(self._write)

    def await_reply(self) -> None:
        """Called just after a request is written: park first if replies have been arriving late.

        A `recv` that finds nothing costs a system call and a raised
        `BlockingIOError`. When the peer answers more slowly than this worker
        writes (one connection, a paced message, a server on another core),
        the first read of every reply would find nothing, so after one such
        miss the next `WAIT_FIRST_REPLIES` replies are waited for before they
        are read. When replies are usually there already (many busy
        connections), reading at once saves a turn of the hub: the first miss
        is the probe that switches modes. libev's watchers are
        level-triggered, so bytes already waiting wake a parked reader at once.
        """
        if self._wait_first:
            self._wait_first -= 1
            self._hub.wait(self._read)
            self._unwaited = 0

    def recv(self, size: int) -> bytes:
        """Some bytes, waiting for them if need be; b"" when the peer has closed."""
        sock = self.sock
        while True:
            try:
                data: bytes = sock.recv(size)
            except BlockingIOError:
                self._wait_first = WAIT_FIRST_REPLIES
                self._hub.wait(self._read)
                self._unwaited = 0
                continue
            self._unwaited += len(data)
            if self._unwaited >= YIELD_AFTER_BYTES:
                self._give_way()
            return data

    def recv_into(self, buffer: Any) -> int:
        """Read into `buffer`, waiting for bytes if need be; 0 when the peer has closed."""
        sock = self.sock
        while True:
            try:
                got: int = sock.recv_into(buffer)
            except BlockingIOError:
                self._wait_first = WAIT_FIRST_REPLIES
                self._hub.wait(self._read)
                self._unwaited = 0
                continue
            self._unwaited += got
            if self._unwaited >= YIELD_AFTER_BYTES:
                self._give_way()
            return got

    def _give_way(self) -> None:
        self._unwaited = 0
        give_way()

    def close(self) -> None:
        self._read.close()
        if self._write is not None:
            self._write.close()
        self.sock.close()


class TlsChannel:
    """The same three calls over gevent's SSL socket (slower; HTTPS only).

    gevent's SSL socket does not park either while decrypted bytes are
    waiting, so reads yield to the hub after `YIELD_AFTER_BYTES` as a
    `Channel`'s do.
    """

    __slots__ = ("sock", "_unwaited")

    def __init__(self, plain: Channel, context: Any, server_hostname: str, timeout: float) -> None:
        from gevent import socket as gsocket

        plain._read.close()
        raw = plain.sock
        sock = gsocket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        self._unwaited = 0
        try:
            sock.settimeout(timeout)
            self.sock = context.wrap_socket(sock, server_hostname=server_hostname)
            self.sock.settimeout(None)
        except BaseException:
            sock.close()
            raise

    def send_all(self, data: bytes) -> None:
        self.sock.sendall(data)

    def await_reply(self) -> None:
        """Nothing: gevent's SSL socket waits inside its reads (and may hold decrypted bytes already)."""

    def recv(self, size: int) -> bytes:
        """Some decrypted bytes, waiting for them if need be; b"" when the peer has closed."""
        data: bytes = self.sock.recv(size)
        self._count(len(data))
        return data

    def recv_into(self, buffer: Any) -> int:
        """Read decrypted bytes into `buffer`; 0 when the peer has closed."""
        got: int = self.sock.recv_into(buffer)
        self._count(got)
        return got

    def _count(self, size: int) -> None:
        # gevent's SSL socket hides whether it waited, so count every byte: a TLS read costs far
        # more than the occasional extra turn given to the hub
        self._unwaited += size
        if self._unwaited >= YIELD_AFTER_BYTES:
            self._unwaited = 0
            give_way()

    def close(self) -> None:
        self.sock.close()


IP_BIND_ADDRESS_NO_PORT = getattr(_stdlib_socket, "IP_BIND_ADDRESS_NO_PORT", 24)
