"""The capacity search's step driver: watches each merged second of a run and moves its rate.

Controller side (no gevent, no sockets): it is given every merged second
(`add(frame)`, as an output is) and two ways to act on the run, `set_rate`
(the search's rate in all; the caller splits it over the rated targets) and
`stop`. A step is:

    the second in which the rate changed   left out (old and new rate mixed; the run's first second too)
    `warm` whole seconds                   left out (the warm-up)
    `judged` whole seconds                 merged and judged (`capacity.judge_step`)

and may end early when its judged seconds so far already make a miss certain
(`capacity.certain_miss`). After a missed step the rate drops to half the
highest met one until a whole second meets the latency SLOs again (the
target's queue has drained), so the next step starts clean. The search
(`capacity.CapacitySearch`) picks each rate; when it is over the driver stops
the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from loadtest.core.capacity import (CAP_SHARE, GENERATOR, MET, MISSED, CapacitySearch, StepFigures, StepResult,
                                    certain_miss, judge_step)
from loadtest.execution.resources import worker_role
from loadtest.outputs.base import Output, RunStarted
from loadtest.core.stats import TargetTotals, aggregate
from loadtest.core.thresholds import Threshold, check

# A change posted while the controller hands over second k lands in the second after the last one it has heard of
# (k+1, or later if the controller lags): a second that begins at least this long after the end of that one is clean.
CHANGE_LANDS_S = 0.5
DRAIN_SHARE = 0.5  # after a miss, drain at this share of the highest met rate ...
DRAIN_MOST_STEPS = 3.0  # ... for at most this many steps' length; a target that never recovers ends the search


@dataclass(frozen=True)
class RatedTarget:
    """A target whose rate the search sets: its index among the run's targets and its share of the total."""

    index: int
    name: str
    share: float  # of the search's rate (the shares add up to 1)
    cap: int | None = None  # open model: max_concurrency in all; None: no cap (paced tcp)
    counts_arrivals: bool = True  # its lateness histogram counts the arrivals started (open model)


class CapacityDriver(Output):
    """Holds each step's rate, judges it from the merged seconds, and asks the search for the next: an output of
    the run it steers (`start` as the load starts, `add` each merged second)."""

    def __init__(self, slos: Sequence[Threshold], rows: Sequence[tuple[str, str]], rated: Sequence[RatedTarget],
                 search: CapacitySearch, warm: int, judged: int, set_rate: Callable[[float], None],
                 stop: Callable[[], None], on_step: Callable[[int, StepResult], None] = lambda n, step: None,
                 on_event: Callable[[str], None] = lambda text: None,
                 asked: Callable[[float], float] = lambda rate: rate) -> None:
        """`asked(rate)` is what the levels at the search's `rate` really ask (whole tcp connections)."""
        self.slos, self.rated, self.search = list(slos), list(rated), search
        self.rows = list(rows)  # each target's (name, row type): a flow's own row is left out of Aggregated
        self.names = [name for name, _ in self.rows]
        self.warm, self.judged = warm, judged
        self.set_rate, self.end_run, self.on_step, self.on_event = set_rate, stop, on_step, on_event
        self.asked = asked
        self.steps: list[StepResult] = []
        self.over = False
        self.stopped_why = ""  # why the search ended before the search itself said so (a target that never drained)
        self._draining = False
        self._changed_at = 0.0  # run-relative seconds of the last change of rate
        self._clean = 0  # whole seconds since that change
        self._rate = search.next_rate() or 0.0
        self._drain_rate = 0.0
        self._window: list[TargetTotals] = []
        self._seconds = 0.0
        self._arrivals = 0  # open targets' arrivals started in the judged seconds
        self._messages = 0  # paced targets' messages ended in them
        self._cpu: dict[str, list[float]] = {}
        self._cap = False

    def start(self, run: RunStarted | None = None) -> None:
        """The run starts at the first step's rate (its config says so); its first second (connections opening,
        workers starting) is left out as a change's would be."""
        self._begin(self._rate, 0.0, post=False)

    def _begin(self, rate: float, at: float, post: bool = True, draining: bool = False) -> None:
        if post:
            self.set_rate(rate)
        self._changed_at, self._clean, self._draining = at + CHANGE_LANDS_S, 0, draining
        if not draining:
            self._rate = rate
            self._window = [TargetTotals(name=n, type=t) for n, t in self.rows]
            self._seconds, self._arrivals, self._messages, self._cpu, self._cap = 0.0, 0, 0, {}, False

    def add(self, frame: Any) -> None:
        """One merged second of the run (a `run_result.Frame`)."""
        if self.over:
            return
        interval = frame.interval
        if interval.start < self._changed_at:
            return  # began before the change landed: old and new rate mixed
        self._clean += 1
        elapsed = max(frame.stats.elapsed, interval.end)  # the end of the latest second heard of
        if self._draining:
            self._drain(interval, elapsed)
            return
        if self._clean <= self.warm:
            return
        self._take(interval, frame.worker_cpu)
        so_far = self._figures()
        early = "" if self._clean - self.warm >= self.judged else certain_miss(
            self.slos, so_far, self.names, float(self.judged))
        if early or self._clean - self.warm >= self.judged:
            self._end_step(so_far, early, elapsed)

    def _take(self, interval: Any, cpu: Sequence[float | None]) -> None:
        for total, part in zip(self._window, interval.targets):
            total.merge(part)
        self._seconds += max(0.0, interval.end - interval.start)
        for t in self.rated:
            part = interval.targets[t.index]
            if t.counts_arrivals:
                self._arrivals += part.lateness.get_total_count()
            else:
                self._messages += part.requests
            if t.cap is not None and part.users >= CAP_SHARE * t.cap:
                self._cap = True
        for k, value in enumerate(cpu):
            if value is not None:
                self._cpu.setdefault(worker_role(k), []).append(value)

    def _figures(self) -> StepFigures:
        opened = [t for t in self.rated if t.counts_arrivals]
        return StepFigures(
            rate=self.asked(self._rate), seconds=self._seconds, targets=self._window,
            aggregated=aggregate(self._window),
            arrivals=self._arrivals if opened else None, open_rate=self._rate * sum(t.share for t in opened),
            delivered=self._arrivals + self._messages,
            cpu={k: sum(v) / len(v) for k, v in self._cpu.items() if v}, cap_reached=self._cap)

    def _end_step(self, figures: StepFigures, early: str, elapsed: float) -> None:
        result = judge_step(self.slos, figures, self.names, self.search.phase)
        if early and result.outcome == MET:  # the seconds judged so far pass; the whole step could not have
            result = replace(result, met=False, outcome=MISSED, why=f"{early} (ended early)")
        elif early and result.outcome == MISSED:
            result = replace(result, why=f"{result.why} (ended early: {early})")
        self.steps.append(result)
        self.on_step(len(self.steps), result)
        self.search.record(result.outcome)
        following = self.search.next_rate()
        if following is None:
            self._finish()
        elif result.outcome == MISSED and self.search.lo:
            self._drain_rate = self.search.lo * DRAIN_SHARE
            self._begin(self._drain_rate, elapsed, draining=True)
        else:
            self._begin(following, elapsed)

    def _drain(self, interval: Any, elapsed: float) -> None:
        """A second at the drain rate: once one meets the latency SLOs the next step begins."""
        totals = aggregate(interval.targets)
        calm = totals.latency.get_total_count() > 0 and all(
            check(s, totals if s.target is None else interval.targets[self.names.index(s.target)], 1.0).passed
            for s in self.slos if s.is_latency)
        if calm:
            following = self.search.next_rate()
            assert following is not None
            self._begin(following, elapsed)
            return
        if self._clean >= DRAIN_MOST_STEPS * (1 + self.warm + self.judged):
            self.stopped_why = (f"the target did not recover within {self._clean} s at "
                                f"{self._drain_rate:,.1f}/s after a missed step")
            self.on_event(f"capacity: {self.stopped_why}; the search ends here")
            self._finish()

    def _finish(self) -> None:
        self.over = True
        self.end_run()


__all__ = ["CapacityDriver", "RatedTarget", "GENERATOR", "MET", "MISSED"]
