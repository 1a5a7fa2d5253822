"""What a run produced and how each worker ended: the data the controller hands to reports and the live view.

Its own module so that reports.py, live.py and metrics.py read these types
without importing the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.model.messages import WorkerExit
from loadtest.core.samples import RoleTotals, worker_role
from loadtest.core.stats import Interval, RunStats
from loadtest.core.thresholds import Outcome


class RunError(Exception):
    """The run itself failed: a server could not start, no worker could run."""


@dataclass
class WorkerState:
    """One worker process as the controller follows it through a run."""

    index: int
    child: Any  # its process, pipe and lifeline (loadtest.execution.children.Child)
    pid: int = 0
    ready: bool = False
    done: bool = False
    lost: bool = False
    exit: WorkerExit | None = None
    last_heard: float = 0.0
    stopping: bool = False  # it said the load stopped: it may be quiet while it lets requests end
    killed: bool = False  # stopped at once by a second interrupt, as asked: not a failure
    error: str = ""
    exitcode: int | None = None
    role: str = ""  # its name in the reports: worker-N, or node-N/worker-K on a cluster (loadtest.execution.cluster)

    @property
    def name(self) -> str:
        return self.role or worker_role(self.index)

    @property
    def ended(self) -> str:
        """How it ended, as workers.csv and summary.json say: ok, lost, killed (a second interrupt) or unknown."""
        return "lost" if self.lost else "ok" if self.done else "killed" if self.killed else "unknown"


@dataclass
class RunResult:
    """What a run produced: where the reports are, the merged stats, how it ended."""

    run_dir: Path
    stats: RunStats
    workers: list[WorkerState]
    servers: list[dict[str, Any]]
    started: float  # wall clock
    interrupted: bool
    exit_status: int
    problems: list[str] = field(default_factory=list)
    thresholds: list[Outcome] = field(default_factory=list)
    aborted: str = ""  # the abort_on_fail threshold that stopped the run, if one did
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    worker_resources: list[RoleTotals] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)  # tcp targets that held fewer connections than asked
    nodes: list[dict[str, Any]] = field(default_factory=list)  # a cluster run's nodes (loadtest.execution.cluster)
    stopped: dict[str, Any] | None = None  # a Stop from the control inbox: origin, at_s, reason (loadtest.execution.control)
    level_changes: list[dict[str, Any]] = field(default_factory=list)  # control.LevelChange.as_dict() of each

    @property
    def lost(self) -> list[int]:
        return [w.index for w in self.workers if w.lost]


@dataclass
class Frame:
    """What the live view shows each second."""

    interval: Interval
    stats: RunStats
    worker_cpu: list[float | None]  # % of one core, per worker, at the latest sample
    machine_cpu: float | None  # % over all cores
