"""The `loadtest` console script and `python -m loadtest`: Ctrl-C and SIGTERM handled from the first moment.

Importing the command line (typer, rich, pydantic) takes a tenth of a second or more; an interrupt in that
time would otherwise print a KeyboardInterrupt traceback. So the handlers go in first, from this module,
which imports nothing of the package's own.

CPython runs a signal handler at any bytecode boundary, inside `compile()` too, and `compile()` drops
what the handler raises: an interrupt that lands while a module's source is being compiled (every import,
where bytecode is not cached) prints its line and is then lost. So the handler also notes that it ran,
and `check_interrupted` stops the command before it starts anything that would have to be stopped.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the shell's status for SIGINT; the command line takes it from here

_seen = False  # an interrupt came while a command had nothing to save


def on_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while a command has nothing to save (importing, loading, reading): one line, 130."""
    global _seen
    if not _seen:
        sys.stderr.write("loadtest: interrupted\n")
    _seen = True
    raise SystemExit(EXIT_INTERRUPTED)


def check_interrupted() -> None:
    """Exit 130 if an interrupt came whose exit `compile()` swallowed (its line is already written)."""
    if _seen:
        raise SystemExit(EXIT_INTERRUPTED)


def main() -> None:
    """Install the interrupt handlers, then import and run the command line (which keeps them)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_interrupt)
    from .cli import main as cli_main

    check_interrupted()
    cli_main()
