"""A worker process's entry point and the plan it is given.

The controller starts each worker with the multiprocessing ``spawn`` context
and `main` as its target. Its first statement leaves Ctrl-C and SIGTERM to
the controller (`spawn.ignore_interrupts`), its next patches the standard
library for gevent; only then is the load code (which imports sockets) imported.
Nothing at the top of this module imports gevent or opens a socket, so the
parent, which imports this module to name the target, is never patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .config import RunConfig

GRACEFUL_STOP_S = 2.0  # in-flight requests may finish this long after the deadline
CANCEL_WAIT_S = 5.0  # then what is still in flight is cancelled, within this long


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of a run."""

    index: int
    workers: int
    config: RunConfig
    addresses: Mapping[str, str]  # server name -> "host:port" as started
    shares: tuple[int, ...]  # per target: virtual users (http) or connections (tcp) of this worker
    requests: int | None  # this worker's share of the total request count, if the run has one
    duration: float | None  # seconds


@dataclass(frozen=True)
class WorkerExit:
    """How a worker ended, as it reports itself."""

    index: int
    pid: int
    cpu_user: float
    cpu_system: float
    max_rss_kib: int
    cancelled: int
    error: str = ""
    spent: bool = False  # this worker's share of the `requests:` total was used up


def main(plan: WorkerPlan, conn: Any, start: Any, stop: Any) -> None:
    """Worker process entry: leave signals to the controller, patch, then run this worker's share of the load.

    Ctrl-C and SIGTERM reach the whole process group; the controller stops the
    workers in order through `stop` (in-flight requests end as cancelled and
    are reported), and a worker whose controller is gone stops by itself.
    """
    from .spawn import ignore_interrupts

    ignore_interrupts()  # before the heavy imports: a Ctrl-C during them is no traceback

    from gevent import monkey

    monkey.patch_all()

    from .workload import run_worker

    try:
        run_worker(plan, conn, start, stop)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the controller is gone (killed outright): there is no one left to report to
