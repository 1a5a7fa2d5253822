"""The exit statuses of every command: one table that the code, the command line's help and the docs read."""

from __future__ import annotations

from dataclasses import dataclass

OK = 0
FAILED = 1  # a threshold (or the default check) failed, a tcp target held too few; compare: B is worse
BAD_INPUT = 2
RUN_FAILED = 3
INTERRUPTED = 130  # Ctrl-C or SIGTERM: the shell's status for SIGINT


@dataclass(frozen=True)
class ExitStatus:
    code: int
    name: str
    meaning: str


TABLE: tuple[ExitStatus, ...] = (
    ExitStatus(OK, "ok", "the run completed and every threshold passed"),
    ExitStatus(FAILED, "failed", "a threshold failed (with none in the config: a request failed), or a tcp target "
                                 "held too few connections"),
    ExitStatus(BAD_INPUT, "bad input", "bad input (config file or options); nothing ran"),
    ExitStatus(RUN_FAILED, "run failed", "the run itself failed (a worker was lost, a server could not start or died)"),
    ExitStatus(INTERRUPTED, "interrupted", "stopped by Ctrl-C or SIGTERM (once the load started, reports are still "
                                           "written)"),
)


def run_status(problems: bool, interrupted: bool, failed: bool) -> int:
    """A finished run's status: its own failure first, then an interrupt, then its verdict."""
    return RUN_FAILED if problems else (INTERRUPTED if interrupted else (FAILED if failed else OK))


def help_text() -> str:
    """The table as one paragraph, for a command's --help."""
    return "Exit status: " + ";\n".join(f"{s.code} {s.meaning}" for s in TABLE) + "."
