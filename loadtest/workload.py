"""Inside a worker: one gevent pool of virtual users, one snapshot a second.

Imported only after the worker has patched the standard library. The main
greenlet is the clock: it ships every target's interval to the controller
once a second, watches for the stop signal and the deadline, and at the end
lets in-flight requests finish (up to a grace period) before cancelling the
rest, so every request started ends as exactly one success or failure.
"""

from __future__ import annotations

import os
import resource
import time
from itertools import cycle
from typing import Any, Callable

import gevent
from gevent.pool import Pool

from .config import HttpTarget, TcpTarget, resolve
from .protocols import Deadlines, Session
from .stats import Snapshot, TargetRecorder
from .worker import WorkerExit, WorkerPlan

SNAPSHOT_INTERVAL_S = 1.0
POLL_S = 0.1  # how often the stop signal and the parent are checked
DEADLINE_SCAN_S = 0.1  # request timeouts are exact to this
GRACEFUL_STOP_S = 2.0  # in-flight requests may finish this long after the deadline
CANCEL_WAIT_S = 5.0
START_WAIT_S = 120.0


class Budget:
    """The requests this worker may still start: a count, or unlimited, until stopped."""

    __slots__ = ("left", "stopping")

    def __init__(self, total: int | None) -> None:
        self.left = -1 if total is None else total
        self.stopping = False

    def take(self) -> bool:
        if self.stopping or self.left == 0:
            return False
        if self.left > 0:
            self.left -= 1
        return True


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def session_factory(target: HttpTarget | TcpTarget, plan: WorkerPlan, recorder: TargetRecorder,
                    deadlines: Deadlines) -> Callable[[], Session]:
    """A function that makes one virtual user's session; resolves addresses once."""
    if isinstance(target, TcpTarget):
        from .protocols.tcp import tcp_session_factory

        return tcp_session_factory(target, resolve(target.address, plan.addresses), recorder, plan.workers,
                                   deadlines)
    urls = [resolve(u, plan.addresses) for u in target.urls]
    if target.engine == "requests":
        from .protocols.http_requests import RequestsSession

        shared_urls = cycle(urls)
        return lambda: RequestsSession(target, urls, recorder, shared_urls)
    from .protocols.http_fast import HttpSession, build_endpoints, tls_context

    endpoints = build_endpoints(target, urls)
    shared_endpoints = cycle(endpoints)  # every user visits the next URL, as a crawler does
    tls = tls_context(target) if any(ep.origin[0] == "https" for ep in endpoints) else None
    return lambda: HttpSession(target, endpoints, recorder, shared_endpoints, tls, deadlines)


def virtual_user(make_session: Callable[[], Session], budget: Budget) -> None:
    """Send requests back to back until the budget says stop (closed model)."""
    session = make_session()
    try:
        while budget.take():
            session.exchange()
    finally:
        session.close()


def scan_deadlines(deadlines: Deadlines) -> None:
    """Expire requests past their timeout, a few times a second, until killed."""
    while True:
        gevent.sleep(DEADLINE_SCAN_S)
        deadlines.expire_late(time.perf_counter_ns())


def run_worker(plan: WorkerPlan, conn: Any, start: Any, stop: Any) -> None:
    """Run this worker's share of the load and report to the controller over `conn`."""
    raise_nofile_limit()
    parent = os.getppid()
    targets = plan.config.targets
    recorders = [TargetRecorder(i) for i in range(len(targets))]
    deadlines = Deadlines()
    try:
        factories = [session_factory(t, plan, recorders[i], deadlines) for i, t in enumerate(targets)]
    except OSError as e:
        conn.send(("error", plan.index, f"worker {plan.index} cannot resolve a target: {e}"))
        return
    conn.send(("ready", plan.index, os.getpid()))
    waited = 0.0
    while not start.wait(POLL_S):
        waited += POLL_S
        if stop.is_set() or os.getppid() != parent or waited > START_WAIT_S:
            return

    t0 = time.monotonic()
    budget = Budget(plan.requests)
    pool = Pool()
    for i, make in enumerate(factories):
        for _ in range(plan.shares[i]):
            pool.spawn(virtual_user, make, budget)
    scan = gevent.spawn(scan_deadlines, deadlines)

    deadline = t0 + plan.duration if plan.duration else float("inf")
    seq = 0
    interval_start = 0.0
    next_tick = t0 + SNAPSHOT_INTERVAL_S
    grace = GRACEFUL_STOP_S
    while True:
        now = time.monotonic()
        finished = pool.join(timeout=max(0.0, min(POLL_S, next_tick - now, deadline - now)))
        now = time.monotonic()
        if stop.is_set() or os.getppid() != parent:
            grace = 0.0  # stopped from outside: cancel what is in flight now
            break
        if finished or now >= deadline:
            break
        if now >= next_tick:
            end = now - t0
            conn.send(("snapshot", Snapshot(plan.index, seq, interval_start, end,
                                            tuple(r.snapshot() for r in recorders))))
            seq += 1
            interval_start = end
            next_tick += SNAPSHOT_INTERVAL_S
            if next_tick < now:  # a saturated worker skips ticks instead of bunching them
                next_tick = now + SNAPSHOT_INTERVAL_S

    budget.stopping = True
    if grace:
        pool.join(timeout=grace)
    before = sum(r.failures["cancelled"] for r in recorders)
    pool.kill(block=True, timeout=CANCEL_WAIT_S)  # what is still in flight records itself as cancelled
    cancelled = sum(r.failures["cancelled"] for r in recorders) - before
    scan.kill()
    end = time.monotonic() - t0
    conn.send(("snapshot", Snapshot(plan.index, seq, interval_start, end,
                                    tuple(r.snapshot() for r in recorders), final=True)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("done", WorkerExit(plan.index, os.getpid(), usage.ru_utime, usage.ru_stime,
                                  usage.ru_maxrss, cancelled)))
    gevent.sleep(0)
