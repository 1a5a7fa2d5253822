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
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from loadtest.engine.protocols.channel import READ, WRITE

MAX_HEAD_BYTES = 16 * 1024  # of the upgrade response
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class UpgradeTimeout(Exception):
    """The upgrade did not finish within the target's timeout."""


class UpgradeFailed(Exception):
    """The upgrade did not succeed: `kind` and `message` are the connect failure's."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message



def upgrade(sock: Any, host: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    """Send the upgrade request and read the response's head; return the bytes that came after it."""
    handshake = H11Handshake(ConnectionType.CLIENT)
    _send_waiting(sock, handshake.send(Request(host=host, target=path, extra_headers=headers)))
    head = b""
    while True:
        data = _recv_waiting(sock, 4096)
        if not data:
            raise UpgradeFailed("closed", "the server closed the connection during the upgrade")
        head += data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(head) > MAX_HEAD_BYTES:
            raise UpgradeFailed("protocol", f"the upgrade response's head passed {MAX_HEAD_BYTES} bytes")
    head, leftover = head[:end + 4], head[end + 4:]
    try:
        handshake.receive_data(head)
        for event in handshake.events():
            if isinstance(event, AcceptConnection):
                return leftover
            if isinstance(event, RejectConnection):
                raise UpgradeFailed(f"rejected_{event.status_code}",
                                    f"the server answered the upgrade with HTTP {event.status_code}")
    except (RemoteProtocolError, LocalProtocolError) as e:
        raise UpgradeFailed("protocol", f"the upgrade response is not a valid acceptance: {e}") from None
    raise UpgradeFailed("protocol", "the upgrade response is not a valid acceptance")


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
