"""A child process's side of its parent: the pipe it reports on, the lifeline that tells it to stop.

The parent side (`loadtest.execution.children`) starts every child (workers, server processes, a
node's workers) patched and hands its entry a `ParentLink`; the entry is engine or server code, which
imports this module and never the execution layer.
"""

from __future__ import annotations

import resource
import select
from multiprocessing.connection import Connection

from loadtest.model.messages import Command


class ParentLink:
    """A child's side of its parent: the pipe it reports on and the lifeline that tells it to stop."""

    def __init__(self, conn: Connection, lifeline: Connection, commands: Connection | None = None) -> None:
        self._conn, self._lifeline, self._commands = conn, lifeline, commands

    def send(self, message: object) -> None:
        """One message to the parent (a class of `loadtest.model.messages`)."""
        self._conn.send(message)

    def gone(self) -> bool:
        """True once the parent closed the lifeline to stop this child, or is gone itself (a poll, no wait)."""
        return self._lifeline.poll(0)

    def wait_gone(self) -> None:
        """Block this greenlet (not the process) until `gone()` would be true.

        Only ever called in a patched child, where `select.select` is gevent's (looked up at each call)."""
        select.select([self._lifeline], [], [])

    def command(self) -> Command | None:
        """The parent's next command (`messages.Command`) if one is waiting; None if none is, or the pipe closed."""
        if self._commands is None:
            return None
        try:
            if not self._commands.poll(0):
                return None
            message: Command = self._commands.recv()
        except (EOFError, OSError):
            self._commands = None
            return None
        return message

    def close(self) -> None:
        self._conn.close()


def raise_nofile_limit() -> None:
    """Lift this process's soft limit on open files to the hard limit: each connection is a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit: the process still runs, with fewer connections
