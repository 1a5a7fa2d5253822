"""The one owner of child processes: start them patched, do their ready handshake, watch, stop and kill them.

Workers, embedded server processes (and a node's workers) are all started
here, by `ChildGroup.start(entry, args)`:

- **Spawned**, never forked: the parent has threads (the monitor, a Dask
  worker's), and a fork would copy them half-way.
- **Patched first.** A child's first statement leaves Ctrl-C and SIGTERM to
  its parent; its next is `monkey.patch_all()` (the only call in the
  codebase); only then is the entry's module imported. The entry is named by
  a string, ``"package.module:function"``, so the parent never imports it.
- **Signals are the parent's.** A terminal sends Ctrl-C to every process of
  its foreground group, and `timeout`, systemd and CI runners send SIGTERM to
  the whole group. A child that died of it (or raised KeyboardInterrupt
  half-way through its imports) would lose the run's data before the parent
  could stop it in order. So a child starts with both signals blocked and
  ignores them from its first statement: it stops when its parent tells it
  to, or when its parent is gone.
- **One pipe up, one lifeline down.** The child reports on its own pipe (a
  share of one queue would be written under a shared lock, and a child killed
  while holding it would wedge the others). The parent never writes to the
  child's lifeline: it becomes readable (end of file) when the parent closes
  its end to stop the child, or when the parent is gone, killed outright
  included. The child sees both through its `ParentLink`.
- **Commands down.** A third pipe carries the run's control commands
  (`messages.Command`: a level change, pause, resume, end) from the parent to
  the child, which reads them when it looks (`link.command()`). The parent
  writes without blocking: a command is a few hundred bytes, written whole or
  not at all, and a child that has stopped reading (hung, soon lost) is
  skipped rather than allowed to stall the run.
- **Ready handshake.** A child's first message is `messages.Ready` or
  `messages.Failed`; `ChildGroup.ready` waits for every one, for a process
  that ends first, and for its timeout, and names what went wrong.

Parent side:

    group = ChildGroup.start("loadtest.engine.workload:run_worker", [(plan, start, stop) for plan in plans], "loadtest-worker")
    readies = group.ready(timeout=60.0)       # raises ChildFailed, ChildExited or ReadyTimeout
    ... group.children[k].conn.recv() ...     # wait() on conn and sentinel of each child
    group.command(PauseLoad())                # to every child, never blocking
    group.stop(timeout=5.0)                   # lifelines closed, then SIGKILL for what is left

Child side: ``def main(link: ParentLink, *args)``: `link.send(message)`,
`link.gone()` (a non-blocking check), `link.wait_gone()` (blocks the greenlet),
`link.command()` (the next command, or None).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

from loadtest.model.link import ParentLink
from loadtest.model.messages import Command, Failed, Ready, StartMessage

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # the signals a child leaves to its parent
DEFAULT_READY_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0
KILL_TIMEOUT_S = 2.0  # after SIGKILL, how long to wait for the process to be reaped
READY_POLL_S = 0.1  # while waiting for ready, how often to ask whether the caller was interrupted


class NotReady(Exception):
    """A child of a group did not become ready; the group is left running for its caller to stop."""


class ChildFailed(NotReady):
    """A child said it could not start (`messages.Failed`)."""

    def __init__(self, child: Child, error: str) -> None:
        super().__init__(error)
        self.child, self.error = child, error


class ChildExited(NotReady):
    """A child's process ended before it said it was ready."""

    def __init__(self, child: Child, exitcode: int | None) -> None:
        super().__init__(f"{child.name} (pid {child.pid}) exited with status {exitcode} before it was ready")
        self.child, self.exitcode = child, exitcode


class ReadyTimeout(NotReady):
    """Some children said nothing within the timeout."""

    def __init__(self, waiting: int, total: int, timeout: float) -> None:
        super().__init__(f"{waiting} of {total} processes were not ready within {timeout:g} s")
        self.waiting, self.total, self.timeout = waiting, total, timeout


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Keep a spawned process from re-running the caller's main script before its entry.

    `spawn` re-imports a main *script* (not a ``-m`` module; the ``loadtest``
    console script is one) in the child before the entry function runs, so the
    script's imports would come before `monkey.patch_all()`. Without
    ``__main__.__file__`` for the moment of `Process.start()`, the child skips
    that step; no entry needs anything from the main module.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main.__spec__, "name", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Block Ctrl-C and SIGTERM in the calling thread for the duration; they stay pending, not lost.

    A process started meanwhile inherits the blocked mask through fork and exec,
    so a group-wide signal that reaches it while its interpreter starts and
    unpickles its arguments (the slow part of a spawn) waits for its entry,
    which discards it (`_ignore_interrupts`). In this process a signal that came
    meanwhile is delivered as soon as the block is lifted.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_interrupts() -> None:
    """A child's first statement: leave Ctrl-C and SIGTERM to the parent.

    Ignored, then unblocked: a signal that reached the child while it started
    (held pending by `_interrupts_held`) is discarded, never raised.
    """
    for signum in INTERRUPTS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)


def _child_main(entry: str, conn: Connection, lifeline: Connection, commands: Connection,
                args: tuple[Any, ...]) -> None:
    """Every child's process entry: leave signals to the parent, patch, then import and run `entry`."""
    _ignore_interrupts()  # before the heavy imports: a Ctrl-C during them is no traceback
    # Named, not imported, like every child entry: the parent process imports no gevent (import-linter holds it).
    importlib.import_module("gevent.monkey").patch_all()
    module, _, name = entry.partition(":")
    function = getattr(importlib.import_module(module), name)
    try:
        function(ParentLink(conn, lifeline, commands), *args)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone (killed outright): there is no one left to report to


class Child:
    """One started child process: its process, the pipe it reports on, our end of its lifeline."""

    def __init__(self, index: int, process: Any, conn: Connection, lifeline: Connection,
                 commands: Connection | None = None) -> None:
        self.index = index
        self.process = process
        self.conn = conn  # read its messages here
        self._lifeline = lifeline  # we only ever close it: that tells the child to stop
        self._commands = commands  # we only ever write commands to it, without blocking
        self.pid: int = process.pid

    @property
    def name(self) -> str:
        return str(self.process.name)

    @property
    def sentinel(self) -> int:
        """Ready for `multiprocessing.connection.wait` once the process has ended."""
        return int(self.process.sentinel)

    @property
    def exitcode(self) -> int | None:
        """None while it runs; a negative code is the signal that killed it."""
        return self.process.exitcode  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def join(self, timeout: float) -> None:
        self.process.join(max(0.0, timeout))

    def ask_to_stop(self) -> None:
        """Close our end of the lifeline: the child sees `link.gone()` and ends by itself."""
        self._lifeline.close()

    def command(self, message: Command) -> bool:
        """Send a command down its control pipe without blocking; False if it could not take it (its pipe is
        full because it stopped reading, or closed because it ended)."""
        if self._commands is None:
            return False
        try:
            self._commands.send(message)
        except (BlockingIOError, OSError, ValueError):
            return False
        return True

    def kill(self) -> None:
        """SIGKILL, not waited for."""
        if self.process.exitcode is None:
            self.process.kill()

    def stop(self, grace: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Ask it to stop, give it `grace` seconds to end, then kill it."""
        self.ask_to_stop()
        self.join(grace)
        if self.alive():
            self.kill()
            self.join(KILL_TIMEOUT_S)

    def close(self) -> None:
        """Release our ends of its pipes (after it has ended)."""
        self._lifeline.close()
        self.conn.close()
        if self._commands is not None:
            self._commands.close()


def _start_process(process: Any) -> None:
    """`process.start()` for a child whose entry begins with `_ignore_interrupts()`."""
    # The first spawn also starts multiprocessing's resource tracker, which unblocks both signals in this
    # thread once it has started its own process (multiprocessing/resource_tracker.py): the child spawned
    # next would then start unprotected. Start the tracker first, outside the block.
    resource_tracker.ensure_running()
    with _main_script_hidden(), _interrupts_held():
        process.start()


class ChildGroup:
    """Children started together from one entry: `start`, `ready`, `ended`, `stop`, `kill`."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @classmethod
    def start(cls, entry: str, args: Sequence[tuple[Any, ...]], name: str,
              interrupted: Callable[[], bool] | None = None) -> ChildGroup:
        """Start one child per tuple of `args`, each running ``entry(link, *args[k])`` patched, named ``{name}-{k}``.

        Returns at once (see `ready`). Raises KeyboardInterrupt, with every child started so far
        stopped, as soon as `interrupted()` is true between two starts.
        """
        context = multiprocessing.get_context("spawn")
        group = cls([])
        try:
            for index, child_args in enumerate(args):
                if interrupted is not None and interrupted():
                    raise KeyboardInterrupt
                reader, writer = context.Pipe(duplex=False)
                child_end, lifeline = context.Pipe(duplex=False)  # the child reads, we only ever close
                command_end, commands = context.Pipe(duplex=False)  # the child reads, we write
                process = context.Process(target=_child_main,
                                          args=(entry, writer, child_end, command_end, child_args),
                                          name=f"{name}-{index}", daemon=True)
                try:
                    _start_process(process)
                finally:
                    writer.close()
                    child_end.close()
                    command_end.close()
                # A command is far smaller than PIPE_BUF, so a non-blocking write puts it whole or not at all.
                os.set_blocking(commands.fileno(), False)
                group.children.append(Child(index, process, reader, lifeline, commands))
        except BaseException:
            group.stop(KILL_TIMEOUT_S)
            raise
        return group

    def ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S,
              interrupted: Callable[[], bool] | None = None) -> list[Ready]:
        """Wait for every child's `Ready`, in child order.

        Raises ChildFailed (it sent `Failed`), ChildExited (it ended first), ReadyTimeout, or
        KeyboardInterrupt as soon as `interrupted()` is true; the children are left for the caller to stop.
        """
        deadline = time.monotonic() + timeout
        readies: dict[Child, Ready] = {}
        while len(readies) < len(self.children):
            if interrupted is not None and interrupted():
                raise KeyboardInterrupt
            remaining = deadline - time.monotonic()
            waiting = [c for c in self.children if c not in readies]
            if remaining <= 0:
                raise ReadyTimeout(len(waiting), len(self.children), timeout)
            handles: dict[Any, Child] = {}
            for child in waiting:
                handles[child.conn] = child
                handles[child.sentinel] = child
            for handle in wait(list(handles), min(remaining, READY_POLL_S)):
                child = handles[handle]
                if child in readies:
                    continue
                message = _first_message(child)
                if isinstance(message, Failed):
                    raise ChildFailed(child, message.error)
                if isinstance(message, Ready):
                    readies[child] = message
                elif handle is child.conn or not child.alive():  # its pipe closed, or its process ended, silent
                    child.join(KILL_TIMEOUT_S)
                    raise ChildExited(child, child.exitcode)
        return [readies[c] for c in self.children]

    def command(self, message: Command) -> None:
        """Send a command to every child still running, never blocking (see `Child.command`)."""
        for child in self.children:
            if child.alive():
                child.command(message)

    def ended(self) -> list[tuple[int, int | None]]:
        """(pid, exit code) of each child that has ended; a negative code is the signal that killed it."""
        return [(c.pid, c.exitcode) for c in self.children if not c.alive()]

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.alive()]

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Close every lifeline (each child ends by itself), then kill what is left after `timeout`."""
        for child in self.children:
            child.ask_to_stop()
        deadline = time.monotonic() + timeout
        for child in self.children:
            child.join(deadline - time.monotonic())
        self.kill()
        for child in self.children:
            child.close()

    def kill(self) -> None:
        """SIGKILL every child still running, and reap it."""
        for child in self.children:
            if child.alive():
                child.kill()
                child.join(KILL_TIMEOUT_S)


def _first_message(child: Child) -> StartMessage | None:
    """The child's start-up message if one is waiting; None if its pipe is closed or empty."""
    try:
        if not child.conn.poll():
            return None
        message = child.conn.recv()
    except (EOFError, OSError):
        return None
    if isinstance(message, (Ready, Failed)):
        return message
    return Failed(f"{child.name} sent {type(message).__name__} before it was ready")
