"""WebSocket targets in a worker: one `WsDriver` for all the worker's connections, back to back or paced."""

from __future__ import annotations

from typing import Callable

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.budget import Budget
from loadtest.engine.kinds import Driver, KindWorker
from loadtest.engine.protocols import Deadlines, Session
from loadtest.engine.protocols.ws import WsDriver
from loadtest.model.fields import resolve
from loadtest.model.kinds.ws import WsTarget
from loadtest.model.messages import WorkerPlan


class WsWorker(KindWorker):
    """A ws target's connections all run on its `WsDriver` (one greenlet and hub callbacks; see `driver`)."""

    def session_factory(self, target: WsTarget, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        return WsDriver(target, resolve(target.url, plan.addresses), recorder, budget, plan.workers, deadlines)

    def driver(self, target: WsTarget, make: Callable[[], Session]) -> Driver | None:
        assert isinstance(make, WsDriver)
        return make.drive
