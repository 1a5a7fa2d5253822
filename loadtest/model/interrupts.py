"""Ctrl-C and SIGTERM before a command has anything to save: one line, exit status 130.

CPython runs a signal handler at any bytecode boundary, and in the import machinery what it raises may be
dropped: `compile()` swallows it (every import whose bytecode is not cached), and a module lock's weakref
callback prints it as "Exception ignored" with a traceback. So when it interrupts the import machinery's
own code the handler only notes that it ran (and says its line); `check_interrupted`, called once the
command's imports are done and before it starts anything that would have to be stopped (and as the
command line returns), exits then. Anywhere else, a module's own top-level code included, it exits at once.
Imports nothing of the package's own but the exit table (`loadtest.core.exits`, a few constants): the console
script installs the handler before anything else loads.
"""

from __future__ import annotations

import sys
from typing import Any

from loadtest.core import exits

EXIT_INTERRUPTED = exits.INTERRUPTED

_seen = False  # an interrupt came while a command had nothing to save


def on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM while a command has nothing to save (importing, loading, reading): one line, 130."""
    global _seen
    if not _seen:
        sys.stderr.write("loadtest: interrupted\n")
    _seen = True
    if not _importing(frame):
        raise SystemExit(EXIT_INTERRUPTED)


def noted() -> bool:
    """Whether an interrupt came (its exit may be on its way, or have been swallowed)."""
    return _seen


def _importing(frame: Any) -> bool:
    """Whether the interrupted code is the import machinery's own (where what the handler raises may be
    dropped), not the code of a module being imported, which runs as any other code does."""
    return frame is not None and frame.f_code.co_filename.startswith("<frozen importlib")


def check_interrupted() -> None:
    """Exit 130 if an interrupt came whose exit `compile()` swallowed (its line is already written)."""
    if _seen:
        raise SystemExit(EXIT_INTERRUPTED)
