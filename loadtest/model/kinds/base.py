"""What a target kind is: the one class that knows what is particular to its targets.

The controller, the limits check, the workers and the reports never ask which kind a target is;
they ask its kind (`loadtest.model.kinds.kind_of`) for what they need: its stats row types and extra
rows, its users at peak and how its load runs in a worker, the descriptors a user holds, the
connections it holds to fixed addresses, its shortfall check; and, by name, its worker half
(`loadtest.engine.kinds`: its session factory and driver), which only a worker imports. A new kind is
a module with its config model (a `ConfigModel` that builds the target) and a subclass of
`TargetKind`, listed once in the registry (`loadtest/kinds/__init__.py`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from loadtest.core.schedule import Stage

if TYPE_CHECKING:
    from loadtest.core.stats import RunStats, TargetTotals


@dataclass(frozen=True)
class Load:
    """How a target's load runs: the same shape for every kind, split over the workers by the controller."""

    users: int  # virtual users, connections or requests in flight, in all, at peak: split over the workers
    start: float  # where the stages start: users (arrival None) or arrivals per second (arrival given)
    stages: tuple[Stage, ...] = ()
    think: tuple[float, float] = (0.0, 0.0)  # a user's pause between requests, uniform in [lo, hi]
    arrival: str | None = None  # "constant" | "poisson": arrivals on a schedule (open model); None: users


@dataclass(frozen=True)
class ExtraRow:
    """A stats.csv row beside a target's own, from another of its histograms (CONNECT, LATENESS, ...)."""

    type: str
    histogram: Any
    requests: int
    failures: Counter[str]


@dataclass(frozen=True)
class HeldConnections:
    """Connections a target holds to one address for the whole run (a tcp target's), for the limits check."""

    address: str  # as written in the config: "host:port" or "{server}"
    count: int  # at peak, in all
    sources: tuple[str, ...]  # the source addresses they are spread over; empty: the machine's choice


class TargetKind:
    """One kind of target. Subclasses set `name` and `model` and override what differs from these defaults."""

    name: ClassVar[str]  # the registry's key; a target's `kind` names its kind
    model: ClassVar[type[Any]]  # the config model (a ConfigModel with a `target` property) of its targets
    worker: ClassVar[str]  # its worker half, resolved only in a worker: "loadtest.engine.kinds.http:HttpWorker"

    def row_type(self, target: Any) -> str:
        """The Type column of the target's stats.csv and failures.csv rows."""
        raise NotImplementedError

    def load(self, target: Any) -> Load:
        """How the target's load runs in the workers."""
        raise NotImplementedError

    def row_targets(self, target: Any) -> tuple[Any, ...]:
        """The targets of the run that this target stands for, one per stats row: itself, unless its kind has
        rows of its parts (a flow: one more per step). They follow each other in the config's targets."""
        return (target,)

    def descriptors_per_user(self, target: Any) -> int:
        """Open files one user (or connection) of the target holds at once."""
        return 1

    def held_connections(self, target: Any) -> tuple[HeldConnections, ...]:
        """The connections the target holds to fixed addresses (each needs an ephemeral port)."""
        return ()

    def most_workers(self, target: Any) -> int | None:
        """The most workers the target's load can be split over; None: no limit."""
        return None

    def check_workers(self, target: Any, workers: int) -> str | None:
        """Why the target's load cannot be split over `workers` workers (a sentence), or None."""
        return None

    def extra_rows(self, target: Any, totals: TargetTotals) -> list[ExtraRow]:
        """stats.csv rows beside the target's own. Reports write them grouped by kind, in the registry's order."""
        return []

    def summary(self, target: Any, totals: TargetTotals, stats: RunStats, index: int) -> dict[str, Any]:
        """Keys the target's entry in summary.json has besides the ones every target has."""
        return {}

    def shortfall(self, target: Any, stats: RunStats, index: int) -> str | None:
        """How the run fell short of what the target asked for (a sentence that fails the run), or None."""
        return None
