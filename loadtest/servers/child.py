"""The life of one server process: listen on the shared port, serve, stop cleanly when the parent says.

Imported only inside a server process, after `monkey.patch_all()`: the
server group starts `main` through `loadtest.execution.children.ChildGroup`. The parent
learns how start-up went from one message, `messages.Ready` or
`messages.Failed`. It stops the process by closing its lifeline; a parent
that dies closes it too. Signals do not stop it: Ctrl-C and SIGTERM sent to
the whole process group are the parent's to act on (see `loadtest.execution.children`).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import gevent
from gevent.event import Event

from loadtest.model.link import ParentLink, raise_nofile_limit
from loadtest.model.config import ServerSpec
from loadtest.model.messages import Failed, Ready
from loadtest.servers.counts import COUNT_SLOTS

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that shares the port with the group's other processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux: one call, not one per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def describe_os_error(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        reason = "address already in use"
    return reason[:1].lower() + reason[1:]


def _build_server(spec: ServerSpec, listener: socket.socket, counts: Any) -> Any:
    if spec.kind == "http":
        from loadtest.servers.http import HttpServer

        return HttpServer(listener, counts, spec.max_connections, spec.idle_timeout, spec.max_buffered)
    if spec.ws:
        from loadtest.servers.ws_echo import WsEchoServer

        return WsEchoServer(listener, counts, spec.upper, spec.max_connections, spec.idle_timeout, spec.max_buffered)
    from loadtest.servers.echo import EchoServer

    return EchoServer(listener, counts, spec.upper, spec.max_connections, spec.idle_timeout, spec.max_buffered)


def main(link: ParentLink, spec: ServerSpec, index: int, port: int, counts: Any) -> None:
    """A server process's entry: serve `spec` on `port`, counting into slot `index` of the shared `counts`."""
    view = memoryview(counts).cast("B").cast("q")[index * COUNT_SLOTS:(index + 1) * COUNT_SLOTS]
    try:
        run(spec, port, view, link)
    except Exception as error:  # noqa: BLE001 -- any failure becomes one sentence; the parent raises ServerError
        link.send(Failed(f"failed: {type(error).__name__}: {error}"))


def run(spec: ServerSpec, port: int, counts: Any, link: ParentLink) -> None:
    """Serve `spec` on `port` until the parent closes the lifeline (or is gone, which closes it)."""
    raise_nofile_limit()
    address = f"[{spec.host}]:{port}" if ":" in spec.host else f"{spec.host}:{port}"
    try:
        listener = listen(spec.host, port)
    except OSError as error:
        link.send(Failed(f"cannot listen on {address}: {describe_os_error(error)}"))
        return
    server = _build_server(spec, listener, counts)
    stopping = Event()

    def watch_lifeline() -> None:
        link.wait_gone()
        stopping.set()

    watcher = gevent.spawn(watch_lifeline)
    server.start()
    link.send(Ready(os.getpid()))
    stopping.wait()
    watcher.kill(block=False)
    server.stop()
    link.close()
