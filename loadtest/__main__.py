"""`python -m loadtest`: the command line of `loadtest.cli`."""

import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while the command line is still being imported: one line, status 130."""
    sys.stderr.write("loadtest: interrupted\n")
    raise SystemExit(130)  # cli.EXIT_INTERRUPTED; importing cli is what takes the time


for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _interrupted)

from .cli import main  # noqa: E402 -- after the handlers, so an interrupt during the import is no traceback

main()
