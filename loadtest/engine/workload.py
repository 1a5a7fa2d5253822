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
import random
import resource
import time
from dataclasses import replace
from typing import Any, Callable

import gevent
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.pool import Pool

from loadtest.engine.budget import Budget, Level
from loadtest.model.link import ParentLink, raise_nofile_limit
from loadtest.engine.kinds import worker_of
from loadtest.model.kinds import kind_of
from loadtest.model.config import DEFAULT_FAILURE_BACKOFF_S, FIRST_BACKOFF_S
from loadtest.model.messages import (CANCEL_WAIT_S, GRACEFUL_STOP_S, ChangeLevel, Command, Done, EndLoad, Failed,
                                     PauseLoad, Ready, ResumeLoad, SnapshotSent, Stopping, WorkerExit, WorkerPlan)
from loadtest.engine.protocols import Deadlines, Session
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, HubTimer, spin_until
from loadtest.core.schedule import ArrivalSchedule, Stage, level_at, stages_duration, zero_until
from loadtest.core.stats import Snapshot
from loadtest.core.recorder import TargetRecorder

SNAPSHOT_INTERVAL_S = 1.0
POLL_S = 0.1  # how often the stop signal and the parent are checked
GRACE_POLL_S = 0.02  # how often the grace period looks for requests still in flight
LEVEL_POLL_S = 0.1  # stages move the level this often
MAX_LATENESS_S = 1.0  # an open-model arrival that cannot start this soon after its time is dropped
START_WAIT_S = 120.0


def virtual_user(make_session: Callable[[], Session], budget: Budget, index: int = 0,
                 level: Level | None = None, think: tuple[float, float] = (0.0, 0.0),
                 backoff: float = DEFAULT_FAILURE_BACKOFF_S, recorder: TargetRecorder | None = None) -> None:
    """Send requests one after another until the budget says stop (closed model).

    With stages, user `index` works only while the level is above it, and
    closes its connection while it waits, as a user who left would; with
    think time it pauses between requests. After an exchange that failed at
    once (a failed connect, a failed flow pass: the session's `back_off`) it
    waits FIRST_BACKOFF_S, twice that after the next failure in a row, and so
    on up to `backoff` seconds (0: never), counted in `recorder`; a success
    starts it over. A person aimed at a struggling server expects no less:
    a failing user must not loop faster than a working one.
    """
    session: Session | None = None
    lo, hi = think
    wait = 0.0
    try:
        while True:
            if level is not None and (index >= level.value or level.paused):
                if budget.stopping or budget.left == 0:
                    break
                if session is not None:
                    session.close()
                    session = None
                gevent.sleep(LEVEL_POLL_S)
                continue
            if not budget.take():
                break
            if session is None:
                session = make_session()
            session.exchange()
            if session.back_off:
                session.back_off = False
                if backoff:
                    wait = min(backoff, wait * 2 if wait else FIRST_BACKOFF_S)
                    if recorder is not None:
                        recorder.backoffs += 1
                        recorder.backoff_s += wait
                    gevent.sleep(wait)
                    continue
            elif wait:
                wait = 0.0
            if hi:
                gevent.sleep(lo if lo == hi else random.uniform(lo, hi))
    finally:
        if session is not None:
            session.close()


def ramp(level: Level, stages: tuple[Stage, ...], start: float, t0: float, scale: Callable[[float], float],
         budget: Budget) -> None:
    """Move a staged target's level along its stages, ten times a second, until the last stage ends
    or the load stops (a spent `requests:` budget stops it too)."""
    end = stages_duration(stages)
    while True:
        if level.held:  # the controller set the level: its value stands from now on
            return
        t = time.monotonic() - t0
        level.value = scale(level_at(stages, start, t))
        if t >= end or budget.stopping or budget.left == 0:
            return
        gevent.sleep(LEVEL_POLL_S)


class Unsent:
    """An open target's arrivals that were started (counted, handed to the pool) but whose greenlet has not run.

    A greenlet killed before it first runs never runs at all, not even a `finally`, so an arrival
    started just before the load stopped would end nowhere. The worker records what is left here as
    cancelled once the pool is killed (`cancel`): every started arrival ends in exactly one place.
    """

    __slots__ = ("recorder", "waiting")

    def __init__(self, recorder: TargetRecorder) -> None:
        self.recorder = recorder
        self.waiting = 0

    def cancel(self) -> int:
        """Record every arrival still waiting as cancelled; return how many."""
        count, self.waiting = self.waiting, 0
        for _ in range(count):
            self.recorder.failure("cancelled", "the run stopped before this request was sent", None)
        return count


def arrivals(make_session: Callable[[], Session], budget: Budget, recorder: TargetRecorder, pool: Pool,
             schedule: ArrivalSchedule, first_ns: int, cap: int, sessions: list[Session], unsent: Unsent,
             level: Level | None = None, phase: float | None = None) -> None:
    """Start requests on a schedule whatever their latency (open model).

    Each arrival is due at a planned time and its latency is measured from
    that time, so a stalled server shows in the percentiles (coordinated
    omission corrected, as in wrk2). When `cap` requests are already in
    flight, arrivals wait for one to end and start late; an arrival that
    cannot start within `MAX_LATENESS_S` of its time is dropped and counted.
    How late each arrival started is recorded too (its count is the arrivals
    started); one started but not yet running waits in `unsent`. Connections
    are reused: a finished request hands its session back. Every session made
    is appended to `sessions`, which the worker closes at the end. The first
    arrival is due at `first_ns`, the last before `schedule.until_ns` (the
    run's end, as a `perf_counter_ns` time).

    Given `level` (a steered run), it follows the controller's commands: after a level change the next
    arrival comes at the new rate (at `phase` of a gap, for constant arrivals); while paused nothing is
    due, so no arrival of the pause is sent or counted as dropped; it sleeps at most `LEVEL_POLL_S` at a
    time, to see a command soon; and a schedule with nothing more due waits for one until the run's end.
    """
    idle: list[Session] = []
    max_late_ns = int(MAX_LATENESS_S * 1e9)
    slot_free = Event()
    until_ns = schedule.until_ns
    # A greenlet per arrival cost a spawn, a start and a death per request; instead a runner that
    # has sent its request parks and is handed the next arrival (no greenlet is made while one waits).
    waiting: list[Any] = []  # parked runners
    hub = get_hub()
    ended = [False]  # no more arrivals: runners end instead of parking

    def runner(session: Session, due_ns: int) -> None:
        me = getcurrent()
        while True:
            unsent.waiting -= 1  # from here the request records its own end, a cancel included
            try:
                session.exchange(due_ns)
            finally:
                recorder.users -= 1
                idle.append(session)
                slot_free.set()
            if ended[0]:
                return
            waiting.append(me)
            job = hub.switch()  # the next (session, due) from `start`, or None when arrivals end
            if job is None:
                return
            session, due_ns = job

    def start(session: Session, due_ns: int) -> None:
        unsent.waiting += 1  # handed over: counted as cancelled if its runner is killed before it runs
        if waiting:
            hub.loop.run_callback(waiting.pop().switch, (session, due_ns))
        else:
            pool.spawn(runner, session, due_ns)

    due: float = first_ns
    spent = False
    # Waits for the next arrival on a timerfd, not a loop timer: those round to the millisecond, and every
    # send would leave up to ~1 ms late (see `HubTimer`).
    timer = HubTimer(hub.loop, getcurrent().switch)
    seen = 0
    poll_ns = int(LEVEL_POLL_S * 1e9)
    try:
        while not budget.stopping:
            if level is not None:
                if level.version != seen:  # a command: due times from now on follow it
                    seen = level.version
                    schedule.changing = True
                    if level.paused or (level.held and level.value <= 0):
                        due = until_ns  # nothing is due: a paused arrival is never sent nor dropped
                    else:
                        due = min(due, schedule.next_due(time.perf_counter_ns(), phase))
                if level.paused:
                    gevent.sleep(LEVEL_POLL_S)
                    continue
            if due >= until_ns:
                if level is None or budget.left == 0 or time.perf_counter_ns() >= until_ns:
                    break
                gevent.sleep(LEVEL_POLL_S)  # a command may make something due again
                continue
            now = time.perf_counter_ns()
            if due > now:
                # on a timerfd, not a loop timer: those round to the millisecond (see `HubTimer`)
                timer.arm(int(due) if level is None else int(min(due, now + poll_ns)))
                hub.switch()  # the timer switches back
                if due - time.perf_counter_ns() <= 2 * ARM_EARLY_NS:  # it fires a wake-up's length early
                    spin_until(int(due))
                continue
            late = now - due
            if late > max_late_ns:
                recorder.dropped += 1
            elif recorder.users >= cap:
                slot_free.clear()
                slot_free.wait((max_late_ns - late) / 1e9)
                continue
            elif not budget.take():
                spent = True  # a `requests:` total reached: nothing more is due
                return
            else:
                if idle:
                    session = idle.pop()
                else:
                    session = make_session()
                    sessions.append(session)
                recorder.users += 1
                recorder.lateness.record(late)
                start(session, due)
            due = schedule.next_due(int(due))
        # The schedule has nothing more before the end (a last stage at rate 0, say): the run still
        # lasts its duration, unless the other targets spend the `requests:` total first.
        now = time.perf_counter_ns()
        while not budget.stopping and budget.left != 0 and now < until_ns < float("inf"):
            gevent.sleep(min(LEVEL_POLL_S, (until_ns - now) / 1e9))
            now = time.perf_counter_ns()
    finally:
        timer.close()
        ended[0] = True
        while waiting:  # parked runners end now, so the pool can finish
            hub.loop.run_callback(waiting.pop().switch, None)
        # The load stopped (or this greenlet was killed with it): arrivals already due that never
        # started were dropped too.
        end = min(time.perf_counter_ns(), until_ns, budget.end_ns)  # an end from the controller is the run's end
        while not spent and due < end:
            recorder.dropped += 1
            due = schedule.next_due(int(due))


def start_target(pool: Pool, target: Any, make: Callable[[], Session], plan: WorkerPlan,
                 share: int, budget: Budget, recorder: TargetRecorder, t0: float,
                 sessions: list[Session], unsent: list[Unsent]) -> Level | None:
    """Spawn one target's load into the worker's pool; return its level if it ramps, paces or is steered.

    An open target appends its `Unsent` arrivals to `unsent`. In a steered run every target with load has
    a level, which the controller's commands move (`apply_command`)."""
    k, workers = plan.index, plan.workers
    load = kind_of(target).load(target)
    steered = plan.steered and load.users > 0  # a flow's step rows have no load of their own
    if load.arrival is not None:  # arrivals on a schedule (open model), `load.start` per second
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
    waited = 0.0
    while not start.wait(POLL_S):
        waited += POLL_S
        if stop.is_set() or link.gone() or (waited > START_WAIT_S and not plan.wait_for_start):
            return

    t0 = time.monotonic()
    pool = Pool()
    open_sessions: list[Session] = []
    unsent: list[Unsent] = []
    levels = [start_target(pool, t, factories[i], plan, plan.shares[i], budget, recorders[i], t0, open_sessions,
                           unsent)
              for i, t in enumerate(targets)]
    scan = gevent.spawn(deadlines.scan)

    def snapshot(final_at: float | None = None) -> Snapshot:
        """This interval of every target; the final one ends when the load stopped, at `final_at`."""
        for recorder, level, target in zip(recorders, levels, targets):
            if level is not None:
                if level.reported:
                    recorder.level = level.value
                if kind_of(target).load(target).arrival is None:  # users, not arrivals: the level is users
                    recorder.users = 0 if level.paused else min(int(level.value), level.spawned)
        final = final_at is not None
        end = (final_at if final_at is not None else time.monotonic()) - t0
        # Number each interval by the second it ends in, so workers that skip a tick stay aligned. The
        # final one of a timed run is the run's last second, whether this worker stopped a little before
        # the deadline (its open-model schedule ended) or a little after it.
        last = min(end, plan.duration) if plan.duration else end
        number = max(seq + 1, math.ceil(last / SNAPSHOT_INTERVAL_S) - 1 if final else
                     int(end / SNAPSHOT_INTERVAL_S) - 1)
        return Snapshot(plan.index, number, interval_start, end, tuple(r.snapshot() for r in recorders), final)

    deadline = t0 + plan.duration if plan.duration else float("inf")
    seq = -1
    interval_start = 0.0
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
            snap = snapshot()
            link.send(SnapshotSent(snap))
            seq = snap.seq
            interval_start = snap.end
            next_tick += SNAPSHOT_INTERVAL_S
            if next_tick < now:  # a saturated worker skips ticks instead of bunching them
                next_tick = now + SNAPSHOT_INTERVAL_S

    stopped_at = time.monotonic()
    held = [r.open_connections for r in recorders]  # connections held when the load stopped
    link.send(Stopping(plan.index))  # the controller allows for the grace period and the cancelling
    budget.stopping = True
    # Requests in flight may finish within the grace period; greenlets with nothing in flight (think
    # time, a paced connection waiting for its turn, a parked user, a ramp) are not waited for.
    grace_end = stopped_at + grace
    while grace and not pool.join(timeout=GRACE_POLL_S):
        if not deadlines.in_flight() or time.monotonic() >= grace_end:
            break
    before = sum(r.failures["cancelled"] for r in recorders)
    pool.kill(block=True, timeout=CANCEL_WAIT_S)  # what is still in flight records itself as cancelled
    for waiting in unsent:  # arrivals killed before their greenlet ran record nothing themselves
        waiting.cancel()
    cancelled = sum(r.failures["cancelled"] for r in recorders) - before
    for session in open_sessions:
        session.close()
    scan.kill()
    final = snapshot(final_at=stopped_at)
    link.send(SnapshotSent(replace(final, targets=tuple(replace(ts, held=h) for ts, h in zip(final.targets, held)))))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    link.send(Done(WorkerExit(plan.index, os.getpid(), usage.ru_utime, usage.ru_stime,
                              usage.ru_maxrss, cancelled, spent=spent)))
    gevent.sleep(0)
