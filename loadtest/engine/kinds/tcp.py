"""TCP targets in a worker: a session per connection, or one paced driver for all of them."""

from __future__ import annotations

from typing import Callable

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.kinds import Driver, KindWorker
from loadtest.engine.protocols import Deadlines, Session
from loadtest.engine.protocols.tcp import WRITE_ALONGSIDE_BYTES, tcp_session_factory
from loadtest.engine.protocols.tcp_paced import PacedTcp
from loadtest.engine.budget import Budget
from loadtest.model.fields import resolve
from loadtest.model.kinds.tcp import TcpTarget
from loadtest.model.messages import WorkerPlan


class TcpWorker(KindWorker):
    """Paced targets (`rate:`) with messages up to `WRITE_ALONGSIDE_BYTES` get a `PacedTcp`, which drives all
    the worker's connections from one greenlet (see `driver`); the others a session per connection."""

    def session_factory(self, target: TcpTarget, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        address = resolve(target.address, plan.addresses)
        if target.rate > 0 and len(target.message) <= WRITE_ALONGSIDE_BYTES:
            return PacedTcp(target, address, recorder, budget, plan.workers, deadlines)
        return tcp_session_factory(target, address, recorder, plan.workers, deadlines, stop=budget)

    def driver(self, target: TcpTarget, make: Callable[[], Session]) -> Driver | None:
        return make.drive if isinstance(make, PacedTcp) else None
