"""How each target kind runs inside a worker: the worker's half of a kind.

A kind (`loadtest.model.kinds`) is one class that the controller, the limits check and the reports
ask for what is particular to its targets; its `worker` names, as a string, the class here that
makes its sessions and drivers. The worker resolves that name (`worker_of`), so the controller's
side of a kind never imports gevent or a protocol.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from gevent.pool import Pool

    from loadtest.core.schedule import ArrivalSchedule
    from loadtest.core.recorder import TargetRecorder
    from loadtest.engine.protocols import Deadlines, Session
    from loadtest.engine.budget import Budget, Level
    from loadtest.model.kinds.base import TargetKind
    from loadtest.model.messages import WorkerPlan

# A driver runs all of one worker's users of a target from one greenlet (with hub callbacks): given the
# worker's pool, its share of the users and its staged level (None: not staged), it returns when the load ends.
Driver = Callable[["Pool", int, "Level | None"], None]
# An arrival driver runs all of one worker's arrivals of an open-model target the same way: given the pool, its
# share of the requests in flight at most, the arrival schedule and the first arrival's time (perf_counter_ns),
# it returns when the schedule (and the run's duration) is over and nothing is in flight.
ArrivalDriver = Callable[["Pool", int, "ArrivalSchedule", int], None]


class KindWorker:
    """A kind's worker half. Subclasses override `session_factory` (and `driver`, `rows_session_factory`)."""

    def session_factory(self, target: Any, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        """A function that makes one virtual user's session; resolves addresses once."""
        raise NotImplementedError

    def rows_session_factory(self, target: Any, plan: WorkerPlan, recorders: Sequence[TargetRecorder],
                             deadlines: Deadlines, budget: Budget) -> Callable[[], Session]:
        """`session_factory` given the worker's recorders from the target's own on (those of its kind's
        `row_targets` come first): what a kind with rows of its parts overrides."""
        return self.session_factory(target, plan, recorders[0], deadlines, budget)

    def driver(self, target: Any, make: Callable[[], Session]) -> Driver | None:
        """The driver that runs all the worker's users of the target at once, given the session factory
        `session_factory` made; None (the default): a greenlet per virtual user."""
        return None

    def arrival_driver(self, target: Any, make: Callable[[], Session]) -> ArrivalDriver | None:
        """The driver that runs all the worker's arrivals of an open-model target at once (a run not steered
        from outside), given the session factory `session_factory` made; None (the default): `arrivals`,
        a greenlet per request in flight."""
        return None


@cache
def _load(name: str) -> KindWorker:
    module, _, attribute = name.partition(":")
    worker: KindWorker = getattr(importlib.import_module(module), attribute)()
    return worker


def worker_of(kind: TargetKind) -> KindWorker:
    """The worker half of a kind, from the name its `worker` gives (``"package.module:Class"``)."""
    return _load(kind.worker)
