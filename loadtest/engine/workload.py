"""Inside a worker: one gevent pool of virtual users, one snapshot a second.

Imported only after the worker has patched the standard library. The main
greenlet is the clock: it ships every target's interval to the controller
once a second, watches for the stop signal and the deadline, and at the end
lets in-flight requests finish (up to a grace period) before cancelling the
rest, so every request started ends as exactly one success or failure.

A steered run (one with a control inbox, `loadtest.execution.control`) also reads the
controller's commands (`messages.Command`) each time it looks at the clock: a
level change replaces a target's stages from then on (closed: virtual users
or connections, more of them spawned if needed; open: arrivals per second),
a pause starts no request or arrival until the resume (closed-model users
and connections close theirs and wait, as users who left; an open target's
arrivals due during the pause are not sent and not counted as dropped), and
an end stops the load as the run's duration would.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import replace
from typing import Any, Callable

import gevent
from gevent.pool import Pool

from loadtest.engine.arrivals import Unsent, arrivals
from loadtest.engine.budget import Budget, Level
from loadtest.engine.virtual_users import ramp, virtual_user
from loadtest.model.link import ParentLink, raise_nofile_limit
from loadtest.engine.kinds import worker_of
from loadtest.model.kinds import kind_of
from loadtest.model.messages import (CANCEL_WAIT_S, GRACEFUL_STOP_S, ChangeLevel, Command, Done, EndLoad, Failed,
                                     PauseLoad, Ready, ResumeLoad, SnapshotSent, Stopping, WorkerExit, WorkerPlan)
from loadtest.engine.protocols import Deadlines, Session
from loadtest.core.schedule import ArrivalSchedule, level_at, zero_until
from loadtest.core.stats import Snapshot
from loadtest.core.recorder import TargetRecorder

SNAPSHOT_INTERVAL_S = 1.0
POLL_S = 0.1  # how often the stop signal and the parent are checked
GRACE_POLL_S = 0.02  # how often the grace period looks for requests still in flight
START_WAIT_S = 120.0


def start_target(pool: Pool, target: Any, make: Callable[[], Session], plan: WorkerPlan,
                 share: int, budget: Budget, recorder: TargetRecorder, t0: float,
                 sessions: list[Session], unsent: list[Unsent]) -> Level | None:
    """Spawn one target's load into the worker's pool; return its level if it ramps, paces or is steered.

    An open target appends its `Unsent` arrivals to `unsent`. In a steered run every target with load has
    a level, which the controller's commands move (`apply_command`)."""
    load = kind_of(target).load(target)
    steered = plan.steered and load.users > 0  # a flow's step rows have no load of their own
    if load.arrival is not None:  # arrivals on a schedule (open model), `load.start` per second
        return _start_open(pool, target, make, plan, share, budget, recorder, t0, sessions, unsent, steered)
    drive = worker_of(kind_of(target)).driver(target, make)
    if drive is not None:  # one greenlet runs all this worker's users of the target
        level = (Level(plan.share(load.start), reported=bool(load.stages) or steered)
                 if load.stages or steered else None)
        if load.stages and level is not None:
            pool.spawn(ramp, level, load.stages, load.start, t0, plan.share, budget)
        else:
            recorder.users = share
        if share or level is not None:  # a worker whose share is no users has nothing to drive (and must end)
            pool.spawn(drive, pool, share, level)
        return level
    if not load.stages and not steered:
        recorder.users = share
        for _ in range(share):
            pool.spawn(virtual_user, make, budget, think=load.think, backoff=plan.config.failure_backoff,
                       recorder=recorder)
        return None
    level = Level(plan.share(load.start), reported=bool(load.stages) or steered, spawned=share)
    if load.stages:
        pool.spawn(ramp, level, load.stages, load.start, t0, plan.share, budget)
    for index in range(share):
        pool.spawn(virtual_user, make, budget, index, level, load.think, plan.config.failure_backoff, recorder)

    def grow(users: int) -> None:
        """Spawn users up to `users`: a level change may ask for more than the config's peak."""
        for index in range(level.spawned, users):
            pool.spawn(virtual_user, make, budget, index, level, load.think, plan.config.failure_backoff, recorder)
        level.spawned = max(level.spawned, users)

    level.grow = grow
    return level


def _start_open(pool: Pool, target: Any, make: Callable[[], Session], plan: WorkerPlan, share: int, budget: Budget,
                recorder: TargetRecorder, t0: float, sessions: list[Session], unsent: list[Unsent],
                steered: bool) -> Level:
    """`start_target` for an open target: its arrivals' schedule, run by the kind's arrival driver (one
    greenlet for all this worker's arrivals of the target) or, steered or without one, by `arrivals`."""
    k, workers = plan.index, plan.workers
    load = kind_of(target).load(target)
    level = Level(plan.rate_share(load.start))
    now_ns = time.perf_counter_ns()
    start_ns = now_ns - int((time.monotonic() - t0) * 1e9)  # t0 on the perf_counter clock
    until_ns = start_ns + plan.duration * 1e9 if plan.duration else float("inf")
    stages, rate = load.stages, load.start
    if stages:
        pool.spawn(ramp, level, stages, rate, t0, plan.rate_share, budget)

    def rate_at(t: int) -> float:
        return level.value if level.held else plan.rate_share(level_at(stages, rate, (t - start_ns) / 1e9))

    def quiet_until(t: int) -> float:
        return float("inf") if level.held else start_ns + zero_until(stages, rate, (t - start_ns) / 1e9) * 1e9

    schedule = ArrivalSchedule(load.arrival, k * 7919 + recorder.target,  # seeds differ per worker and target
                               rate_at, bool(stages), until_ns, quiet_until)
    # constant arrivals: worker k starts k/workers of a gap in, so the workers' arrivals interleave
    # instead of landing together
    phase = k / workers if load.arrival == "constant" else None
    first = schedule.next_due(start_ns, phase)
    drive_arrivals = worker_of(kind_of(target)).arrival_driver(target, make)
    if drive_arrivals is not None and not steered:  # one greenlet runs all this worker's arrivals of the target
        pool.spawn(drive_arrivals, pool, share, schedule, first)
        return level
    waiting = Unsent(recorder)
    unsent.append(waiting)
    pool.spawn(arrivals, make, budget, recorder, pool, schedule, first, share, sessions, waiting,
               level if steered else None, phase)
    return level


def apply_command(command: Command, plan: WorkerPlan, levels: list[Level | None], budget: Budget) -> bool:
    """Carry out one of the controller's commands in this worker; True if it ends the load (`EndLoad`)."""
    if isinstance(command, EndLoad):
        budget.end_ns = time.perf_counter_ns()  # as a deadline would: arrivals due after it were never due
        return True
    if isinstance(command, ChangeLevel):
        level = levels[command.target] if 0 <= command.target < len(levels) else None
        if level is None:
            return False
        target = plan.config.targets[command.target]
        if kind_of(target).load(target).arrival is not None:
            level.value = plan.rate_share(command.level)
        else:
            level.value = plan.share(command.level)
            if level.grow is not None:
                level.grow(int(level.value))
        level.held = level.reported = True
        level.version += 1
    elif isinstance(command, (PauseLoad, ResumeLoad)):
        for level in levels:
            if level is not None:
                level.paused = isinstance(command, PauseLoad)
                level.version += 1
    return False


def run_worker(link: ParentLink, plan: WorkerPlan, start: Any, stop: Any) -> None:
    """A worker process's entry (``"loadtest.engine.workload:run_worker"``, started patched by `children.ChildGroup`):
    run this worker's share of the load and report to the controller over `link`.

    Ctrl-C and SIGTERM are ignored here; the controller stops the workers in order through `stop`
    (in-flight requests end as cancelled and are reported), and a worker whose controller is gone
    (its lifeline closed) stops by itself.
    """
    raise_nofile_limit()
    targets = plan.config.targets
    recorders = [TargetRecorder(i) for i in range(len(targets))]
    deadlines = Deadlines()
    budget = Budget(plan.requests)
    try:
        factories = [worker_of(kind_of(t)).rows_session_factory(t, plan, recorders[i:], deadlines, budget)
                     for i, t in enumerate(targets)]
    except OSError as e:
        link.send(Failed(f"worker {plan.index} cannot resolve a target: {e}"))
        return
    link.send(Ready(os.getpid()))
    if not _started(link, plan, start, stop):
        return
    t0 = time.monotonic()
    pool = Pool()
    open_sessions: list[Session] = []
    unsent: list[Unsent] = []
    levels = [start_target(pool, t, factories[i], plan, plan.shares[i], budget, recorders[i], t0, open_sessions,
                           unsent)
              for i, t in enumerate(targets)]
    scan = gevent.spawn(deadlines.scan)
    intervals = Intervals(plan, recorders, levels, t0)
    grace, spent, stopped_at = _clock(link, plan, stop, pool, budget, levels, intervals)
    held = [r.open_connections for r in recorders]  # connections held when the load stopped
    link.send(Stopping(plan.index))  # the controller allows for the grace period and the cancelling
    budget.stopping = True
    cancelled = _stop(pool, deadlines, recorders, unsent, stopped_at + grace if grace else 0.0)
    for session in open_sessions:
        session.close()
    scan.kill()
    final = intervals.snapshot(final_at=stopped_at)
    link.send(SnapshotSent(replace(final, targets=tuple(replace(ts, held=h) for ts, h in zip(final.targets, held)))))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    link.send(Done(WorkerExit(plan.index, os.getpid(), usage.ru_utime, usage.ru_stime,
                              usage.ru_maxrss, cancelled, spent=spent)))
    gevent.sleep(0)


def _started(link: ParentLink, plan: WorkerPlan, start: Any, stop: Any) -> bool:
    """Wait for the controller's start; False if stopped first, the controller is gone, or (unless the plan
    waits for a start) `START_WAIT_S` passed."""
    waited = 0.0
    while not start.wait(POLL_S):
        waited += POLL_S
        if stop.is_set() or link.gone() or (waited > START_WAIT_S and not plan.wait_for_start):
            return False
    return True


class Intervals:
    """This worker's snapshots, one an interval: each numbered by the second it ends in, from where the
    last one sent ended."""

    def __init__(self, plan: WorkerPlan, recorders: list[TargetRecorder], levels: list[Level | None],
                 t0: float) -> None:
        self.plan = plan
        self.recorders = recorders
        self.levels = levels
        self.t0 = t0
        self.seq = -1
        self.interval_start = 0.0

    def snapshot(self, final_at: float | None = None) -> Snapshot:
        """This interval of every target; the final one ends when the load stopped, at `final_at`."""
        plan, recorders = self.plan, self.recorders
        for recorder, level, target in zip(recorders, self.levels, plan.config.targets):
            if level is not None:
                if level.reported:
                    recorder.level = level.value
                if kind_of(target).load(target).arrival is None:  # users, not arrivals: the level is users
                    recorder.users = 0 if level.paused else min(int(level.value), level.spawned)
        final = final_at is not None
        end = (final_at if final_at is not None else time.monotonic()) - self.t0
        # Number each interval by the second it ends in, so workers that skip a tick stay aligned. The
        # final one of a timed run is the run's last second, whether this worker stopped a little before
        # the deadline (its open-model schedule ended) or a little after it.
        last = min(end, plan.duration) if plan.duration else end
        number = max(self.seq + 1, math.ceil(last / SNAPSHOT_INTERVAL_S) - 1 if final else
                     int(end / SNAPSHOT_INTERVAL_S) - 1)
        return Snapshot(plan.index, number, self.interval_start, end, tuple(r.snapshot() for r in recorders), final)

    def send(self, link: ParentLink) -> None:
        """Send this interval's snapshot; the next one starts where it ended."""
        snap = self.snapshot()
        link.send(SnapshotSent(snap))
        self.seq = snap.seq
        self.interval_start = snap.end


def _clock(link: ParentLink, plan: WorkerPlan, stop: Any, pool: Pool, budget: Budget, levels: list[Level | None],
           intervals: Intervals) -> tuple[float, bool, float]:
    """The worker's main greenlet while the load runs: ship an interval a second, carry out the controller's
    commands, and watch for the stop signal and the deadline. Return (the grace period in-flight requests
    get, whether this worker's `requests:` share is spent, when the load stopped)."""
    t0 = intervals.t0
    deadline = t0 + plan.duration if plan.duration else float("inf")
    next_tick = t0 + SNAPSHOT_INTERVAL_S
    grace = GRACEFUL_STOP_S
    spent = False
    ended = False  # the controller ended the load (EndLoad), as the duration would
    while True:
        now = time.monotonic()
        finished = pool.join(timeout=max(0.0, min(POLL_S, next_tick - now, deadline - now)))
        now = time.monotonic()
        if stop.is_set() or link.gone():
            grace = 0.0  # stopped from outside: cancel what is in flight now
            break
        while plan.steered and (command := link.command()) is not None:
            ended = apply_command(command, plan, levels, budget) or ended
        if finished or now >= deadline or ended:
            spent = budget.left == 0  # this worker's share of the `requests:` total is used up
            break
        if now >= next_tick:
            intervals.send(link)
            next_tick += SNAPSHOT_INTERVAL_S
            if next_tick < now:  # a saturated worker skips ticks instead of bunching them
                next_tick = now + SNAPSHOT_INTERVAL_S
    return grace, spent, time.monotonic()


def _stop(pool: Pool, deadlines: Deadlines, recorders: list[TargetRecorder], unsent: list[Unsent],
          grace_end: float) -> int:
    """End the load: requests in flight may finish until `grace_end` (0: none), then what is left is
    cancelled. Return how many requests were cancelled."""
    # Greenlets with nothing in flight (think time, a paced connection waiting for its turn, a parked
    # user, a ramp) are not waited for.
    while grace_end and not pool.join(timeout=GRACE_POLL_S):
        if not deadlines.in_flight() or time.monotonic() >= grace_end:
            break
    before = sum(r.failures["cancelled"] for r in recorders)
    pool.kill(block=True, timeout=CANCEL_WAIT_S)  # what is still in flight records itself as cancelled
    for waiting in unsent:  # arrivals killed before their greenlet ran record nothing themselves
        waiting.cancel()
    return sum(r.failures["cancelled"] for r in recorders) - before
