"""Opening a WebSocket connection of `WsDriver` (`ws`), in a connector greenlet: TLS and the upgrade's waits.

The socket is non-blocking; each wait (a TLS handshake's read or write, the upgrade request's send,
the response head's read) parks the connector greenlet on a watcher of the hub. A failed upgrade
raises `UpgradeFailed` (its failure kind and message), one that runs past the target's timeout
`UpgradeTimeout`.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from gevent.hub import get_hub

from loadtest.engine.protocols.channel import READ, WRITE

_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class UpgradeTimeout(Exception):
    """The upgrade did not finish within the target's timeout."""


class UpgradeFailed(Exception):
    """The upgrade did not succeed: `kind` and `message` are the connect failure's."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message



def _tls_handshake(raw: Any, context: ssl.SSLContext, hostname: str) -> Any:
    """A non-blocking TLS socket over a connected raw socket, its handshake waited for on the hub."""
    sock = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.setblocking(False)
    try:
        tls = context.wrap_socket(sock, server_hostname=hostname or None, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    while True:
        try:
            tls.do_handshake()
            return tls
        except ssl.SSLWantReadError:
            _wait(tls, READ)
        except ssl.SSLWantWriteError:
            _wait(tls, WRITE)
        except BaseException:
            tls.close()
            raise


def _wait(sock: Any, events: int) -> None:
    hub = get_hub()
    watcher = hub.loop.io(sock.fileno(), events)
    try:
        hub.wait(watcher)
    finally:
        watcher.close()


def _send_waiting(sock: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except _WOULD_BLOCK:
            _wait(sock, WRITE)


def _recv_waiting(sock: Any, size: int) -> bytes:
    while True:
        try:
            data: bytes = sock.recv(size)
            return data
        except ssl.SSLWantWriteError:
            _wait(sock, WRITE)
        except _WOULD_BLOCK:
            _wait(sock, READ)
