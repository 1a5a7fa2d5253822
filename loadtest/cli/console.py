"""The `loadtest` console script and `python -m loadtest`: Ctrl-C and SIGTERM handled from the first moment.

Importing the command line (typer, rich, pydantic) takes a tenth of a second or more; an interrupt in that
time would otherwise print a KeyboardInterrupt traceback. So the handlers (`interrupts.on_interrupt`) go in
first, and only then is the command line imported.
"""

from __future__ import annotations

import signal

from loadtest.model.interrupts import check_interrupted, on_interrupt


def main() -> None:
    """Install the interrupt handlers, then import and run the command line (which keeps them)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_interrupt)
    from loadtest.cli.app import main as cli_main

    check_interrupted()
    cli_main()
