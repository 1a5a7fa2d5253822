"""A group of server processes for one `ServerSpec`, sharing one port with SO_REUSEPORT.

The processes are started, handshaken, watched and stopped by
`loadtest.execution.children.ChildGroup` (spawned, patched first, then the server code
imported: the caller is never patched). Counts live in shared
memory, one slot per process, written by the process as it serves: `served()`
reads them at any time, `stop()` after the processes have ended.

A server process ignores Ctrl-C and SIGTERM (see `loadtest.execution.children`): they
reach the whole process group, and during a run the servers must outlive the
workers' last requests. It stops when the group closes its end of the
process's lifeline pipe; a parent that dies, however it dies, closes it too.

    group = ServerGroup.start(spec)      # returns once every process listens
    ...                                  # load group.address
    counts = group.stop()                # {"requests": n} or {"messages", "bytes", "connections"}

http "requests" counts every request answered, error answers (400, 408, 413, 431)
included, as the answer is queued: a client that leaves before its answer is
sent (say during /delay/MS) is still counted, as the run counts its request. echo "messages" counts reads echoed: the server cannot see message
boundaries, so a message that arrives in pieces counts more than once; "bytes"
and "connections" are exact. The WebSocket echo (`ws`) counts whole messages,
payload bytes, and "closes", the close frames with code 1000 it received.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import signal
import socket
import sys
import threading
from typing import Any, Callable, Self, TextIO

from loadtest.core import exits
from loadtest.execution.children import KILL_TIMEOUT_S, ChildExited, ChildFailed, ChildGroup, ReadyTimeout
from loadtest.model.config import ServerSpec
from loadtest.servers.counts import COUNT_NAMES, COUNT_SLOTS

DEFAULT_START_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0
FOREGROUND_POLL_S = 0.5
SERVER_ENTRY = "loadtest.servers.child:main"  # a server process's entry, imported only in the process



class ServerError(Exception):
    """An embedded server could not start, or died: one sentence naming the server."""


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket on host:port, to hold the port while the group starts.

    For port 0 this is how the group learns a free port. For a given port, a plain
    bind first checks that no one else holds it: SO_REUSEPORT alone would share
    the port with another of our own servers without a word.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
    except BaseException:
        holder.close()
        raise
    return holder


def _os_reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use"
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


class ServerGroup:
    """The running processes of one embedded server, all listening on `host:port`."""

    def __init__(self, spec: ServerSpec, port: int, children: ChildGroup, counts: Any, where: str) -> None:
        self.spec = spec
        self.host = spec.host
        self.port = port
        self.pids: list[int] = [c.pid for c in children.children]
        self._children = children
        self._counts = counts
        self._where = where
        self._final: dict[str, int] | None = None

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``) that clients connect to."""
        return _format_address(self.host, self.port)

    @classmethod
    def start(cls, spec: ServerSpec, timeout: float = DEFAULT_START_TIMEOUT_S, where: str = "",
              interrupted: Callable[[], bool] | None = None) -> ServerGroup:
        """Start `spec.workers` processes; return once every one listens.

        `where` names the server in errors (e.g. "servers[0]"); by default its name.
        Raises ServerError, with every process already stopped, if any cannot listen,
        and KeyboardInterrupt, likewise, as soon as `interrupted()` is true while it waits.
        """
        label = f"{where or 'server ' + repr(spec.name)} ({spec.kind})"
        try:
            holder = _reserve_port(spec.host, spec.port)
        except OSError as error:
            address = _format_address(spec.host, spec.port)
            raise ServerError(f"{label}: cannot listen on {address}: {_os_reason(error)}") from None
        except (OverflowError, ValueError, TypeError) as error:
            raise ServerError(f"{label}: cannot listen on {spec.host!r}:{spec.port}: {error}") from None
        children: ChildGroup | None = None
        try:
            port = holder.getsockname()[1]
            counts = mp.get_context("spawn").RawArray("q", spec.workers * COUNT_SLOTS)
            children = ChildGroup.start(SERVER_ENTRY, [(spec, index, port, counts) for index in range(spec.workers)],
                                        f"loadtest-server-{spec.name}", interrupted)
            try:
                children.ready(timeout, interrupted)
            except ChildFailed as error:
                raise ServerError(f"{label}: {error.error}") from None
            except ChildExited as error:
                raise ServerError(f"{label}: process {error.child.pid} exited with status "
                                  f"{error.exitcode} before it listened") from None
            except ReadyTimeout as error:
                raise ServerError(f"{label}: {error.waiting} of {error.total} processes "
                                  f"did not listen within {timeout:g} s") from None
            return cls(spec, port, children, counts, label)
        except BaseException:
            if children is not None:
                children.stop(KILL_TIMEOUT_S)
            raise
        finally:
            holder.close()

    def served(self) -> dict[str, int]:
        """The counts served so far, summed over the processes."""
        if self._final is not None:
            return dict(self._final)
        return self._read_counts()

    def _read_counts(self) -> dict[str, int]:
        values = list(self._counts)
        names = COUNT_NAMES[self.spec.kind]
        return {name: sum(values[slot::COUNT_SLOTS]) for slot, name in enumerate(names)}

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> dict[str, int]:
        """Stop every process (lifeline closed, then SIGKILL after `timeout`); return the counts served."""
        if self._final is None:
            self._children.stop(timeout)
            self._final = self._read_counts()
        return dict(self._final)

    def exited(self) -> list[int]:
        """The pids of the processes that have ended."""
        return [pid for pid, _ in self.ended()]

    def ended(self) -> list[tuple[int, int | None]]:
        """(pid, exit code) of each process that has ended; a negative code is the signal that killed it."""
        return self._children.ended()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _describe(group: ServerGroup) -> str:
    scheme = "http://" if group.spec.kind == "http" else "ws://" if group.spec.ws else ""
    return f"{group.spec.kind} on {scheme}{group.address}"


def _describe_counts(kind: str, counts: dict[str, int]) -> str:
    if kind == "http":
        return f"{counts['requests']} requests served"
    closes = f", {counts['closes']} normal closes" if counts.get("closes") else ""
    return f"{counts['connections']} connections, {counts['messages']} messages, {counts['bytes']} bytes echoed{closes}"


def serve_foreground(spec: ServerSpec, out: TextIO = sys.stdout) -> int:
    """Run `spec` until SIGINT or SIGTERM (for ``loadtest serve``); return the exit status.

    Raises ServerError when the server cannot start. Returns 1 if a process died while serving.
    """
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        group = ServerGroup.start(spec)
        try:
            processes = "process" if spec.workers == 1 else "processes"
            upper = ", upper-casing" if spec.upper else ""
            print(f"serving {_describe(group)} ({spec.workers} {processes}{upper})", file=out, flush=True)
            status = exits.OK
            while not stop_requested.wait(FOREGROUND_POLL_S):
                if group.exited():
                    print(f"error: {group._where}: process {group.exited()[0]} exited while serving",
                          file=out, flush=True)
                    status = exits.FAILED
                    break
        finally:
            counts = group.stop()
        print(f"stopped {_describe(group)}: {_describe_counts(spec.kind, counts)}", file=out, flush=True)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
