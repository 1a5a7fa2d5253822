"""Flow targets in a worker: a virtual user's passes through the steps, and a step row's (no users)."""

from __future__ import annotations

import ssl
from typing import Any, Callable, Sequence

from gevent import ssl as gevent_ssl

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.flows.target import flow_factory
from loadtest.engine.kinds import KindWorker
from loadtest.engine.protocols import Deadlines, Session
from loadtest.engine.budget import Budget
from loadtest.model.kinds.flow import FlowStepRow, FlowTarget
from loadtest.model.messages import WorkerPlan


def _tls(verify: bool) -> Callable[[], Any]:
    holder: list[Any] = []

    def context() -> Any:
        if not holder:
            ctx = gevent_ssl.create_default_context()
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            holder.append(ctx)
        return holder[0]
    return context


class FlowWorker(KindWorker):
    """A flow's users record into the flow's row and into each step's row after it."""

    def session_factory(self, target: FlowTarget, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        return self.rows_session_factory(target, plan, [recorder], deadlines, budget)

    def rows_session_factory(self, target: FlowTarget, plan: WorkerPlan, recorders: Sequence[TargetRecorder],
                             deadlines: Deadlines, budget: Budget) -> Callable[[], Session]:
        rows = len(target.rows)
        return flow_factory(target.name, target.spec, list(recorders[:rows]), plan.index, plan.workers,
                            plan.addresses, deadlines, budget, _tls(target.spec.verify_tls))


class FlowStepWorker(KindWorker):
    """A step's row: no users of its own."""

    def session_factory(self, target: FlowStepRow, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        def no_users() -> Session:
            raise RuntimeError(f"{target.name} is a step of flow {target.flow}; it has no users of its own")
        return no_users
