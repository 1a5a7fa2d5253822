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
