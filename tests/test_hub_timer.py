"""The open model's timer (`HubTimer`): a timerfd watched by the gevent hub, finer than the loop's millisecond.

Run on this (unpatched) process's hub. Arming a timerfd is a system call that programs the machine's
timer, costly in a virtual machine, so a time close after a firing is awaited by polling the loop with the
descriptor left readable, and only a time further off arms it again. Both must call back on time and
never early by more than the owner spins away.
"""

from __future__ import annotations

from time import perf_counter_ns

import gevent
import pytest
from gevent.hub import get_hub

from loadtest.engine.protocols import hub_timer
from loadtest.engine.protocols.hub_timer import ARM_EARLY_NS, CALL_EARLY_NS, POLL_WINDOW_NS, HubTimer

pytestmark = pytest.mark.skipif(not hub_timer._LIBC, reason="no timerfd here (not Linux): the loop's timer stands in")


class CountingTimer(HubTimer):
    """Counts its timerfd settings (the system calls the poll window saves)."""

    sets = 0

    def _set(self, at_ns: int) -> None:
        self.sets += 1
        super()._set(at_ns)


class Chain:
    """Re-arms `gap_ns` after each call until `count` calls: what the open model's driver does."""

    def __init__(self, gap_ns: int, count: int) -> None:
        self.gap_ns, self.count = gap_ns, count
        self.early: list[int] = []  # how early each call came (negative: late), ns
        self.late: list[int] = []
        self.due = 0
        self.timer = CountingTimer(get_hub().loop, self.fire)

    def fire(self) -> None:
        now = perf_counter_ns()
        self.early.append(self.due - now)
        self.late.append(now - self.due)
        if len(self.early) < self.count:
            self.due += self.gap_ns
            self.timer.arm(self.due)

    def run(self) -> None:
        self.due = perf_counter_ns() + 2_000_000
        self.timer.arm(self.due)
        end = perf_counter_ns() + 10_000_000_000
        while len(self.early) < self.count and perf_counter_ns() < end:
            gevent.sleep(0.01)
        self.timer.close()


def test_close_times_are_polled_for_not_armed_and_come_on_time() -> None:
    chain = Chain(gap_ns=POLL_WINDOW_NS // 3, count=2_000)
    chain.run()
    assert len(chain.early) == 2_000
    assert max(chain.early) <= CALL_EARLY_NS  # never earlier than the owner spins away
    # One setting for the first time (and its clearing at close): every later time, within the poll window
    # of a firing, left the descriptor readable instead
    assert chain.timer.sets <= 3
    chain.late.sort()
    # The lowest tenth, which a busy machine's preemptions leave alone: the loop's millisecond timer would
    # put it near 0.1 ms (its lateness is spread over 0-1 ms)
    assert chain.late[len(chain.late) // 10] < 50_000


def test_far_times_arm_the_timerfd_and_come_on_time() -> None:
    chain = Chain(gap_ns=3 * POLL_WINDOW_NS + ARM_EARLY_NS, count=300)
    chain.run()
    assert len(chain.early) == 300
    assert max(chain.early) <= CALL_EARLY_NS
    # Each time beyond the poll window arms it (one reached late, by a busy machine, may be within it)
    assert chain.timer.sets >= 200
    chain.late.sort()
    assert chain.late[len(chain.late) // 10] < 50_000


def test_a_timer_left_unarmed_after_firing_stops_polling() -> None:
    """Not armed again in its callback, it is disarmed: a readable descriptor would keep the loop spinning."""
    calls = []
    timer = HubTimer(get_hub().loop, lambda: calls.append(perf_counter_ns()))
    timer.arm(perf_counter_ns() + 1_000_000)
    gevent.sleep(0.02)
    assert len(calls) == 1
    assert timer._set_ns == 0  # disarmed: not readable
    usage_before = perf_counter_ns()
    gevent.sleep(0.05)  # nothing fires again
    assert len(calls) == 1 and perf_counter_ns() - usage_before >= 50_000_000
    timer.close()
