"""Sockets driven straight from the gevent hub: the I/O under every fast session.

gevent's socket class is pure Python around each call; on loopback against
nginx it roughly halved this client's request rate (a one-off comparison with
the same 50 greenlets, not a script kept in benchmarks/). A `Channel` keeps a non-blocking
socket and one read watcher for the connection's life: a read is one
`recv` call, and only when the kernel has nothing does the greenlet park on
the hub. `TlsChannel` offers the same three calls over gevent's SSL socket.

Timeouts are not armed per read: a session's request is aborted by
`RequestTimeout` thrown into its greenlet (see `Deadlines` in this package).
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


class RequestTimeout(Exception):
    """Thrown into a virtual user whose request ran past its deadline."""


class ConnectTimeout(OSError):
    """No connection within the connect timeout."""


class Channel:
    """A connected non-blocking socket whose reads and writes wait on the gevent hub."""

    __slots__ = ("sock", "_hub", "_read", "_write")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._hub = get_hub()
        self._read = self._hub.loop.io(sock.fileno(), READ)
        self._write: Any = None

    @classmethod
    def connect(cls, family: int, sockaddr: tuple, timeout: float,  # type: ignore[type-arg]
                source: tuple[str, int] | None = None) -> Channel:
        """Open a TCP connection (optionally from a source address); raises OSError subclasses."""
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
        return cls(sock)

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

    def recv(self, size: int) -> bytes:
        """Some bytes, waiting for them if need be; b"" when the peer has closed."""
        sock = self.sock
        while True:
            try:
                return sock.recv(size)  # type: ignore[no-any-return]
            except BlockingIOError:
                self._hub.wait(self._read)

    def recv_into(self, buffer: Any) -> int:
        sock = self.sock
        while True:
            try:
                return sock.recv_into(buffer)  # type: ignore[no-any-return]
            except BlockingIOError:
                self._hub.wait(self._read)

    def close(self) -> None:
        self._read.close()
        if self._write is not None:
            self._write.close()
        self.sock.close()


class TlsChannel:
    """The same three calls over gevent's SSL socket (slower; HTTPS only)."""

    __slots__ = ("sock",)

    def __init__(self, plain: Channel, context: Any, server_hostname: str, timeout: float) -> None:
        from gevent import socket as gsocket

        plain._read.close()
        raw = plain.sock
        sock = gsocket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        try:
            sock.settimeout(timeout)
            self.sock = context.wrap_socket(sock, server_hostname=server_hostname)
            self.sock.settimeout(None)
        except BaseException:
            sock.close()
            raise

    def send_all(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)  # type: ignore[no-any-return]

    def recv_into(self, buffer: Any) -> int:
        return self.sock.recv_into(buffer)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


IP_BIND_ADDRESS_NO_PORT = getattr(_stdlib_socket, "IP_BIND_ADDRESS_NO_PORT", 24)
