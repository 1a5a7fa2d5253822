"""HTTP targets in a worker: the fast engine's driver on hub callbacks, its sessions, or the requests engine's."""

from __future__ import annotations

from itertools import cycle
from typing import Callable

from loadtest.core.recorder import TargetRecorder
from loadtest.engine.kinds import ArrivalDriver, Driver, KindWorker
from loadtest.engine.protocols import Deadlines, Session
from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints, tls_context
from loadtest.engine.protocols.http_hub import HttpHub, hub_eligible
from loadtest.engine.protocols.http_requests import RequestsSession
from loadtest.engine.budget import Budget
from loadtest.model.fields import resolve
from loadtest.model.kinds.http import HttpTarget
from loadtest.model.messages import WorkerPlan


class HttpWorker(KindWorker):
    """Closed and open HTTP targets alike: a session per virtual user (or per request in flight)."""

    def session_factory(self, target: HttpTarget, plan: WorkerPlan, recorder: TargetRecorder, deadlines: Deadlines,
                        budget: Budget) -> Callable[[], Session]:
        target_urls = [resolve(u, plan.addresses) for u in target.urls]
        if target.engine == "requests":
            shared_urls = cycle(target_urls)
            return lambda: RequestsSession(target, target_urls, recorder, shared_urls, deadlines)
        endpoints = build_endpoints(target, target_urls)
        if hub_eligible(target, endpoints):  # one driver on hub callbacks for the worker's users (see `driver`)
            return HttpHub(target, endpoints, recorder, budget, deadlines, plan.config.failure_backoff)
        shared_endpoints = cycle(endpoints)  # every user visits the next URL, as a crawler does
        tls = tls_context(target) if any(ep.origin[0] == "https" for ep in endpoints) else None
        return lambda: HttpSession(target, endpoints, recorder, shared_endpoints, tls, deadlines)

    def driver(self, target: HttpTarget, make: Callable[[], Session]) -> Driver | None:
        """Plain http:// targets of one origin on the fast engine without think time run on hub callbacks
        (`HttpHub`); HTTPS, several origins, think time and the requests engine keep a greenlet per user."""
        return make.drive if isinstance(make, HttpHub) and target.model == "closed" else None

    def arrival_driver(self, target: HttpTarget, make: Callable[[], Session]) -> ArrivalDriver | None:
        return make.arrive if isinstance(make, HttpHub) and target.model == "open" else None


__all__ = ["HttpWorker"]
