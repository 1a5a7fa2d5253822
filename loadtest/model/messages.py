"""What the processes of a run say to each other: the worker plan and the typed messages on the pipes.

The controller gives each worker a `WorkerPlan`. Every child (worker or
server process) then reports on its own pipe to its parent, one message at
a time, each an instance of a class below; a reader tells them apart by type,
never by position:

    child start-up (any child)  Ready(pid) | Failed(error)   the ready handshake (`children.ChildGroup.ready`)
    a worker, once a second     SnapshotSent(snapshot)      merged by the controller
    a worker, when it stops     Stopping(index), then a final SnapshotSent, then Done(exit)
    a cluster node              each worker's messages unchanged, and WorkerEnded(exitcode), NodeSamples(rows)

A run steered from its control inbox (`loadtest.execution.control`) also sends every worker, down its
control pipe (and through each cluster node), one of a small set of commands (`Command`):

    ChangeLevel(target, level)  the target's level in all, from now on instead of its stages
    PauseLoad() | ResumeLoad()  stop starting requests and arrivals; start them again
    EndLoad()                   end the load now, as the run's duration would (in-flight requests may finish)

Nothing here imports gevent or opens a socket: the parent imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from loadtest.model.config import RunConfig
from loadtest.core.schedule import worker_share
from loadtest.core.stats import Snapshot

GRACEFUL_STOP_S = 2.0  # a worker's in-flight requests may finish this long after the deadline
CANCEL_WAIT_S = 5.0  # then what is still in flight is cancelled, within this long

WORKER_ENTRY = "loadtest.engine.workload:run_worker"  # a worker's entry, imported only in the worker (patched)


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
    steered: bool = False  # the run has a control inbox: levels may change and the load may pause
    wait_for_start: bool = False  # the start may be held (--wait): no time limit on waiting for it

    def share(self, total: float) -> int:
        """This worker's whole part of `total` users (a staged level as it moves), as the plan split the peak."""
        return worker_share(total, self.workers, self.index)

    def rate_share(self, total: float) -> float:
        """This worker's part of `total` arrivals (or messages) per second."""
        return total / self.workers


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


@dataclass(frozen=True)
class Ready:
    """A child has started and can do its work (a worker resolved its targets, a server listens)."""

    pid: int


@dataclass(frozen=True)
class Failed:
    """A child could not start: one sentence naming what went wrong, as the parent reports it."""

    error: str


@dataclass(frozen=True)
class SnapshotSent:
    """A worker's counts for one interval (the final one ends when its load stopped)."""

    snapshot: Snapshot


@dataclass(frozen=True)
class Stopping:
    """A worker's load has stopped: it may be quiet while in-flight requests end or are cancelled."""

    index: int


@dataclass(frozen=True)
class Done:
    """A worker's last message: it sent its final snapshot and is about to exit."""

    exit: WorkerExit


@dataclass(frozen=True)
class WorkerEnded:
    """A cluster node says one of its workers' processes is gone (loadtest.execution.nodes to loadtest.execution.cluster)."""

    exitcode: int | None  # a negative code is the signal that killed it


@dataclass(frozen=True)
class NodeSamples:
    """A cluster node on another machine: its own resources.csv rows (resources.Sample), sampled there."""

    samples: tuple[Any, ...]


@dataclass(frozen=True)
class ChangeLevel:
    """Controller to workers: target `target` (its index in the config's targets) runs at `level` in all,
    virtual users or connections (closed) or arrivals per second (open), from now on instead of its stages;
    each worker takes its own share."""

    target: int
    level: float


@dataclass(frozen=True)
class PauseLoad:
    """Controller to workers: start no more requests or arrivals until `ResumeLoad`."""


@dataclass(frozen=True)
class ResumeLoad:
    """Controller to workers: start requests and arrivals again."""


@dataclass(frozen=True)
class EndLoad:
    """Controller to workers: end the load now, as the run's duration would (in-flight requests may finish)."""


Command = Union[ChangeLevel, PauseLoad, ResumeLoad, EndLoad]
StartMessage = Union[Ready, Failed]
WorkerMessage = Union[Ready, Failed, SnapshotSent, Stopping, Done]
