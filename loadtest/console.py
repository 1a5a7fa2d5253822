"""The `loadtest` console script and `python -m loadtest`: Ctrl-C and SIGTERM handled from the first moment.

Importing the command line (typer, rich, pydantic) takes a tenth of a second or more; an interrupt in that
time would otherwise print a KeyboardInterrupt traceback. So the handlers go in first, from this module,
which imports nothing of the package's own.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # cli.EXIT_INTERRUPTED; not imported from there, as importing cli is what takes the time


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while the command line is still being imported: one line, status 130."""
    sys.stderr.write("loadtest: interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


def main() -> None:
    """Install the interrupt handlers, then import and run the command line (which installs its own)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    from .cli import main as cli_main

    cli_main()
