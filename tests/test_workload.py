"""workload.py's load loops driven in-process with a fake Session: no sockets, no waiting on a clock.

The fake does what the Session protocol promises (records its outcome, records `cancelled` when killed
in flight) and counts what the loops asked of it, so these tests pin how many requests a user starts,
when it opens and closes its connection, how it pauses, and how it stops. gevent.sleep is replaced
where think time or a parked user would wait, so the tests run in milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent.event import Event
from gevent.pool import Pool

from loadtest.engine import workload
from loadtest.core.schedule import ArrivalSchedule
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.arrivals import Unsent, arrivals
from loadtest.engine.budget import LEVEL_POLL_S, Budget, Level
from loadtest.engine.virtual_users import virtual_user

REAL_SLEEP = gevent.sleep  # the fake session yields with this, whatever the `sleeps` fixture puts in gevent.sleep
JOIN_S = 5.0  # a loop that does not end by itself within this is a failure, not a slow machine


class FakeSession:
    """One virtual user's session: each exchange is a success, or `cancelled` when killed in flight."""

    back_off = False

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.exchanges: list[int] = []
        self.closed = 0

    def exchange(self, scheduled_ns: int = 0) -> None:
        self.exchanges.append(scheduled_ns)
        self.log.in_flight += 1
        try:
            if self.log.hold is not None:
                self.log.hold.wait()
            else:
                REAL_SLEEP(0)  # a real exchange yields to the hub; others may run meanwhile
            self.log.recorder.requests += 1
        except gevent.GreenletExit:
            self.log.recorder.failure("cancelled", "cancelled in flight", None)
            raise
        finally:
            self.log.in_flight -= 1
        if self.log.after_exchange is not None:
            self.log.after_exchange(self)

    def close(self) -> None:
        self.closed += 1


class FakeLog:
    """Every session made, and what the sessions share (a recorder; an event that holds exchanges)."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.recorder = TargetRecorder(0)
        self.hold: Event | None = None
        self.in_flight = 0
        self.after_exchange: Callable[[FakeSession], None] | None = None

    def make(self) -> FakeSession:
        session = FakeSession(self)
        self.sessions.append(session)
        return session

    @property
    def exchanges(self) -> int:
        return sum(len(s.exchanges) for s in self.sessions)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """gevent.sleep as workload.py calls it: each asked duration recorded, none waited (only a yield)."""
    asked: list[float] = []

    def sleep(seconds: float = 0) -> None:
        asked.append(seconds)
        REAL_SLEEP(0)

    monkeypatch.setattr(workload.gevent, "sleep", sleep)
    yield asked


def test_budget_counts_down_and_stops() -> None:
    budget = Budget(2)
    assert [budget.take(), budget.take(), budget.take()] == [True, True, False]
    unlimited = Budget(None)
    assert all(unlimited.take() for _ in range(1000))
    unlimited.stopping = True
    assert not unlimited.take()


def test_closed_model_users_share_the_requests_budget_exactly() -> None:
    log, budget, pool = FakeLog(), Budget(10), Pool()
    for _ in range(3):
        pool.spawn(virtual_user, log.make, budget)
    assert pool.join(timeout=JOIN_S), "the users did not stop when the budget was spent"
    assert log.exchanges == 10 and log.recorder.requests == 10 and budget.left == 0
    assert len(log.sessions) == 3  # one session per user, kept for all its requests
    assert [s.closed for s in log.sessions] == [1, 1, 1]  # and closed once when the user ends


def test_think_time_pauses_after_each_request(sleeps: list[float]) -> None:
    log = FakeLog()
    virtual_user(log.make, Budget(3), think=(0.25, 0.25))
    assert log.exchanges == 3 and sleeps == [0.25, 0.25, 0.25]

    sleeps.clear()
    random.seed(11)
    virtual_user(log.make, Budget(20), think=(0.1, 0.3))
    assert len(sleeps) == 20 and all(0.1 <= s <= 0.3 for s in sleeps) and len(set(sleeps)) > 1

    sleeps.clear()
    virtual_user(log.make, Budget(5))
    assert sleeps == []  # no think time: no pause at all between requests


def test_a_user_backs_off_after_failures_in_a_row_up_to_the_bound_and_starts_over(sleeps: list[float]) -> None:
    log = FakeLog()
    outcomes = iter([False] * 9 + [True] + [False] * 2 + [True])  # True: the exchange succeeded

    def failing(session: FakeSession) -> None:
        session.back_off = not next(outcomes)

    log.after_exchange = failing
    virtual_user(log.make, Budget(13), backoff=0.1, recorder=log.recorder)
    # 10 ms, doubled after each failure in a row, never past the 0.1 s bound; a success starts it over
    assert sleeps == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.02])
    assert log.recorder.backoffs == 11 and log.recorder.backoff_s == pytest.approx(sum(sleeps))
    assert not log.sessions[0].back_off  # cleared by the user

    sleeps.clear()
    log.after_exchange = lambda session: setattr(session, "back_off", True)
    virtual_user(log.make, Budget(5), backoff=0.0)
    assert sleeps == []  # failure_backoff: off


def test_a_user_killed_in_flight_records_cancelled_and_closes_its_session() -> None:
    log, budget = FakeLog(), Budget(None)
    log.hold = Event()  # exchanges never finish by themselves
    user = gevent.spawn(virtual_user, log.make, budget)
    gevent.sleep(0)
    assert log.in_flight == 1
    user.kill(block=True, timeout=JOIN_S)
    assert user.dead
    assert log.recorder.failures["cancelled"] == 1 and log.recorder.requests == 1  # one request, ended cancelled
    assert log.exchanges == 1 and log.sessions[0].closed == 1 and log.in_flight == 0


def test_a_stopping_budget_lets_the_request_in_flight_finish_and_starts_no_other() -> None:
    log, budget = FakeLog(), Budget(None)
    log.hold = Event()
    user = gevent.spawn(virtual_user, log.make, budget)
    gevent.sleep(0)
    budget.stopping = True
    log.hold.set()
    user.join(timeout=JOIN_S)
    assert user.dead and log.exchanges == 1 and log.recorder.requests == 1
    assert log.recorder.failures["cancelled"] == 0 and log.sessions[0].closed == 1


def test_a_staged_user_above_the_level_parks_without_a_connection(sleeps: list[float]) -> None:
    log, level = FakeLog(), Level(1.0)

    def leave_after_two(session: FakeSession) -> None:
        if len(session.exchanges) == 2:
            level.value = 0.0  # the stage drops below this user: it must leave and close its connection

    def parked(seconds: float = 0) -> None:
        sleeps.append(seconds)
        assert all(s.closed == 1 for s in log.sessions), "a parked user still holds its connection"
        level.value = 1.0  # and come back with a new one

    log.after_exchange = leave_after_two
    workload.gevent.sleep = parked  # restored by the `sleeps` fixture
    virtual_user(log.make, Budget(4), index=0, level=level)
    assert sleeps == [LEVEL_POLL_S]
    assert log.exchanges == 4 and [len(s.exchanges) for s in log.sessions] == [2, 2]
    assert [s.closed for s in log.sessions] == [1, 1]


def test_a_staged_user_parked_when_the_budget_is_spent_ends() -> None:
    log = FakeLog()
    virtual_user(log.make, Budget(0), index=3, level=Level(2.0))  # never above the level, nothing left to do
    assert log.sessions == []


def test_open_model_starts_each_arrival_once_within_the_budget_and_reuses_sessions() -> None:
    log, budget, pool = FakeLog(), Budget(50), Pool()
    schedule = ArrivalSchedule("constant", 1, lambda t: 1e6, False, until_ns=float("inf"))
    first = time.perf_counter_ns()  # due now, the next ones 1 µs apart: none waits on the clock
    sessions: list[FakeSession] = []
    unsent = Unsent(log.recorder)
    pool.spawn(arrivals, log.make, budget, log.recorder, pool, schedule, first, 2, sessions, unsent)
    assert pool.join(timeout=JOIN_S), "arrivals did not stop when the budget was spent"
    assert unsent.waiting == 0  # every arrival handed to the pool ran
    assert log.exchanges == 50 and log.recorder.requests == 50 and budget.left == 0
    assert all(s.exchanges and all(due >= first for due in s.exchanges) for s in log.sessions)
    assert 1 <= len(sessions) <= 2 and sessions == log.sessions  # at most `cap` in flight: two sessions
    assert log.recorder.users == 0  # every arrival that started has ended
    assert log.recorder.lateness.count == 50 and log.recorder.dropped == 0
