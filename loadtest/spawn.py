"""Starting child processes that must patch gevent before anything else runs.

Workers and server processes are started with the ``spawn`` context: the
parent has threads, and a fork would copy them half-way.

Ctrl-C and SIGTERM are the parent's alone. A terminal sends Ctrl-C to every
process of its foreground group, and `timeout`, systemd and CI runners send
SIGTERM to the whole group, children included. A child that died of it (or
raised KeyboardInterrupt half-way through its imports) would lose the run's
data before the parent could stop the load in order. So a child starts with
both signals blocked (`start_child`) and ignores them from the first
statement of its entry (`ignore_interrupts`): it stops when its parent tells
it to, or when its parent is gone.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import Any

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # the signals a child leaves to its parent


@contextmanager
def main_script_hidden() -> Iterator[None]:
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
def interrupts_held() -> Iterator[None]:
    """Block Ctrl-C and SIGTERM in the calling thread for the duration; they stay pending, not lost.

    A process started meanwhile inherits the blocked mask through fork and exec,
    so a group-wide signal that reaches it while its interpreter starts and
    unpickles its arguments (the slow part of a spawn) waits for its entry,
    which discards it (`ignore_interrupts`). In this process a signal that came
    meanwhile is delivered as soon as the block is lifted.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_child(process: Any) -> None:
    """`process.start()` for a child whose entry begins with `ignore_interrupts()`."""
    # The first spawn also starts multiprocessing's resource tracker, which unblocks both signals in this
    # thread once it has started its own process (multiprocessing/resource_tracker.py): the child spawned
    # next would then start unprotected. Start the tracker first, outside the block.
    resource_tracker.ensure_running()
    with main_script_hidden(), interrupts_held():
        process.start()


def ignore_interrupts() -> None:
    """The first statement of a child's entry: leave Ctrl-C and SIGTERM to the parent.

    Ignored, then unblocked: a signal that reached the child while it started
    (held pending by `start_child`) is discarded, never raised.
    """
    for signum in INTERRUPTS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
