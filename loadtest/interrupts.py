"""Ctrl-C and SIGTERM before a command has anything to save: one line, exit status 130.

CPython runs a signal handler at any bytecode boundary, and in the import machinery what it raises may be
dropped: `compile()` swallows it (every import whose bytecode is not cached), and a module lock's weakref
callback prints it as "Exception ignored" with a traceback. So during an import the handler only notes
that it ran (and says its line); `check_interrupted`, called once the command's imports are done and
before it starts anything that would have to be stopped, exits then. Elsewhere it exits at once.
Imports nothing of the package's own: the console script installs the handler before anything else loads.
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the shell's status for SIGINT

_seen = False  # an interrupt came while a command had nothing to save


def on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM while a command has nothing to save (importing, loading, reading): one line, 130."""
    global _seen
    if not _seen:
        sys.stderr.write("loadtest: interrupted\n")
    _seen = True
    if not _importing(frame):
        raise SystemExit(EXIT_INTERRUPTED)


def _importing(frame: Any) -> bool:
    """Whether the interrupted code runs inside the import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def check_interrupted() -> None:
    """Exit 130 if an interrupt came whose exit `compile()` swallowed (its line is already written)."""
    if _seen:
        raise SystemExit(EXIT_INTERRUPTED)
