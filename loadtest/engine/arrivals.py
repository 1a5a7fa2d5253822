"""The open model in a worker: arrivals started on a schedule, whatever their latency.

`arrivals` is one greenlet per open target that starts each arrival at its planned time on a parked
runner greenlet, and `Unsent` counts the arrivals handed over but not yet running, so the worker can
record them as cancelled when the load stops (`loadtest.engine.workload.run_worker`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.pool import Pool

from loadtest.core.recorder import TargetRecorder
from loadtest.core.schedule import ArrivalSchedule
from loadtest.engine.budget import LEVEL_POLL_S, Budget, Level
from loadtest.engine.protocols import Session
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, HubTimer, spin_until

MAX_LATENESS_S = 1.0  # an open-model arrival that cannot start this soon after its time is dropped


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


class Runners:
    """The greenlets that send an open target's arrivals, and the sessions they send them on.

    A greenlet per arrival cost a spawn, a start and a death per request; instead a runner that has sent
    its request parks and is handed the next arrival (no greenlet is made while one waits). Connections
    are reused: a finished request hands its session back to `idle`. Every session made is appended to
    `sessions`, which the worker closes at the end; an arrival started but not yet running waits in
    `unsent`. `slot_free` is set whenever a request ends.
    """

    __slots__ = ("make_session", "recorder", "pool", "sessions", "unsent", "idle", "waiting", "slot_free", "hub",
                 "ended")

    def __init__(self, make_session: Callable[[], Session], recorder: TargetRecorder, pool: Pool,
                 sessions: list[Session], unsent: Unsent) -> None:
        self.make_session = make_session
        self.recorder = recorder
        self.pool = pool
        self.sessions = sessions
        self.unsent = unsent
        self.idle: list[Session] = []
        self.waiting: list[Any] = []  # parked runners
        self.slot_free = Event()
        self.hub = get_hub()
        self.ended = False  # no more arrivals: runners end instead of parking

    def start(self, due_ns: int, late: int) -> None:
        """Send the arrival due at `due_ns`, started `late` ns after it, on an idle session (or a new one)."""
        idle = self.idle
        if idle:
            session = idle.pop()
        else:
            session = self.make_session()
            self.sessions.append(session)
        recorder = self.recorder
        recorder.users += 1
        recorder.lateness.record(late)
        self.unsent.waiting += 1  # handed over: counted as cancelled if its runner is killed before it runs
        waiting = self.waiting
        if waiting:
            self.hub.loop.run_callback(waiting.pop().switch, (session, due_ns))
        else:
            self.pool.spawn(self.run, session, due_ns)

    def run(self, session: Session, due_ns: int) -> None:
        """A runner: send this arrival, then park for the next one until the arrivals end."""
        me = getcurrent()
        unsent, recorder, idle, slot_free, waiting = self.unsent, self.recorder, self.idle, self.slot_free, self.waiting
        switch = self.hub.switch
        while True:
            unsent.waiting -= 1  # from here the request records its own end, a cancel included
            try:
                session.exchange(due_ns)
            finally:
                recorder.users -= 1
                idle.append(session)
                slot_free.set()
            if self.ended:
                return
            waiting.append(me)
            job = switch()  # the next (session, due) from `start`, or None when arrivals end
            if job is None:
                return
            session, due_ns = job

    def end(self) -> None:
        """No more arrivals: parked runners end now, so the pool can finish."""
        self.ended = True
        waiting = self.waiting
        while waiting:
            self.hub.loop.run_callback(waiting.pop().switch, None)


def arrivals(make_session: Callable[[], Session], budget: Budget, recorder: TargetRecorder, pool: Pool,
             schedule: ArrivalSchedule, first_ns: int, cap: int, sessions: list[Session], unsent: Unsent,
             level: Level | None = None, phase: float | None = None) -> None:
    """Start requests on a schedule whatever their latency (open model), on `Runners`.

    Each arrival's latency counts from its planned time, so a stalled server shows in the percentiles
    (coordinated omission corrected, as in wrk2). With `cap` requests in flight an arrival waits for one to
    end and starts late; one that cannot start within `MAX_LATENESS_S` of its time is dropped and counted,
    and how late each one started is recorded. Arrivals are due from `first_ns` until `schedule.until_ns`
    (the run's end, a `perf_counter_ns` time). Given `level` (a steered run), it follows the controller's
    commands (`_follow`), sleeping at most `LEVEL_POLL_S` at a time to see one soon; a schedule with nothing
    more due then waits for one until the run's end.
    """
    max_late_ns = int(MAX_LATENESS_S * 1e9)
    runners = Runners(make_session, recorder, pool, sessions, unsent)
    slot_free = runners.slot_free
    until_ns, hub = schedule.until_ns, runners.hub
    due: float = first_ns
    spent, seen = False, 0
    timer = HubTimer(hub.loop, getcurrent().switch)  # a timerfd: a loop timer rounds to the ms (see `HubTimer`)
    poll_ns = int(LEVEL_POLL_S * 1e9)
    try:
        while not budget.stopping:
            if level is not None:
                if level.version != seen:  # a command: due times from now on follow it
                    seen = level.version
                    due = _follow(level, schedule, due, until_ns, phase)
                if level.paused:
                    gevent.sleep(LEVEL_POLL_S)
                    continue
            if due >= until_ns:
                if _over(level, budget, until_ns):
                    break
                continue
            now = time.perf_counter_ns()
            if due > now:
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
                runners.start(due, late)  # type: ignore[arg-type]
            due = schedule.next_due(int(due))
        _last_stretch(budget, until_ns)
    finally:
        timer.close()
        runners.end()
        if not spent:
            _drop_missed(recorder, schedule, due, budget)


def _follow(level: Level, schedule: ArrivalSchedule, due: float, until_ns: float, phase: float | None) -> float:
    """The next arrival's due time after a command of the controller (a steered run).

    After a level change the next arrival comes at the new rate (at `phase` of a gap, for constant
    arrivals); while paused, or held at 0, nothing is due, so no arrival of the pause is sent or counted
    as dropped.
    """
    schedule.changing = True
    if level.paused or (level.held and level.value <= 0):
        return until_ns
    return min(due, schedule.next_due(time.perf_counter_ns(), phase))


def _over(level: Level | None, budget: Budget, until_ns: float) -> bool:
    """Nothing more is due: True if the arrivals are over, else (a steered run: a command may make something
    due again) after a sleep of `LEVEL_POLL_S`."""
    if level is None or budget.left == 0 or time.perf_counter_ns() >= until_ns:
        return True
    gevent.sleep(LEVEL_POLL_S)
    return False


def _last_stretch(budget: Budget, until_ns: float) -> None:
    """The schedule has nothing more before the end (a last stage at rate 0, say): the run still lasts its
    duration, unless the other targets spend the `requests:` total first."""
    now = time.perf_counter_ns()
    while not budget.stopping and budget.left != 0 and now < until_ns < float("inf"):
        gevent.sleep(min(LEVEL_POLL_S, (until_ns - now) / 1e9))
        now = time.perf_counter_ns()


def _drop_missed(recorder: TargetRecorder, schedule: ArrivalSchedule, due: float, budget: Budget) -> None:
    """The load stopped (or the arrivals' greenlet was killed with it): arrivals already due from `due`
    on that never started were dropped too."""
    end = min(time.perf_counter_ns(), schedule.until_ns, budget.end_ns)  # an end from the controller is the run's end
    while due < end:
        recorder.dropped += 1
        due = schedule.next_due(int(due))
