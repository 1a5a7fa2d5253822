"""Load levels over time: stages (ramps) and arrival gaps. Pure: no clock, no I/O.

A target's level is its concurrency (closed model) or its rate (open model).
`stages` ramp it linearly from the previous value, as k6's `stages` do: the
first stage starts from the target's own `concurrency` or `rate` (0 if it has
none), and after the last stage the level holds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

RATE_STEP_NS = 10_000_000  # a changing rate is followed in steps this long


@dataclass(frozen=True)
class Stage:
    """Reach `target` linearly over `duration` seconds."""

    duration: float
    target: float


def level_at(stages: tuple[Stage, ...], start: float, t: float) -> float:
    """The level `t` seconds into the run."""
    previous = start
    for stage in stages:
        if t < stage.duration:
            return previous + (stage.target - previous) * (t / stage.duration)
        t -= stage.duration
        previous = stage.target
    return previous


def stages_duration(stages: tuple[Stage, ...]) -> float:
    return sum(s.duration for s in stages)


def peak_level(stages: tuple[Stage, ...], start: float) -> float:
    return max([start, *(s.target for s in stages)])


def sustained_level_until(stages: tuple[Stage, ...], start: float, t: float, hold: float) -> float:
    """The highest level the stages stay at or above for `hold` seconds in a row, from a moment in the first
    `t` seconds: a plateau's level, but less than the tip of a ramp that turns at once (up then straight
    down), which no load that follows the level ten times a second can be held to exactly.

    The ramps are straight lines, so the lowest level in a window is at its ends or at a stage boundary
    inside it, and the best window starts within `hold` before a boundary; those starts are tried on a fine
    grid (the answer is low by at most a 1/64 of what the level moves in `hold`)."""
    if not stages:
        return start
    t = max(t, 0.0)
    bounds = [0.0]
    for stage in stages:
        bounds.append(bounds[-1] + stage.duration)

    def lowest(w: float) -> float:
        low = min(level_at(stages, start, w), level_at(stages, start, w + hold))
        for b in bounds:
            if w < b < w + hold:
                low = min(low, level_at(stages, start, b))
        return low

    starts = {0.0, t}
    for b in bounds:
        starts.update(b - hold * i / 64 for i in range(65))
    return max(lowest(w) for w in starts if 0.0 <= w <= t)


def worker_share(total: float, workers: int, index: int) -> int:
    """This worker's whole part of a level (virtual users), split as evenly as whole numbers allow."""
    whole = int(round(total))
    return whole // workers + (1 if index < whole % workers else 0)


class Arrivals:
    """Gaps between arrivals, in arrivals' worth of rate: constant, or exponential (Poisson arrivals)."""

    def __init__(self, kind: str, seed: int | None = None) -> None:
        self.poisson = kind == "poisson"
        self._random = random.Random(seed)

    def unit(self) -> float:
        """The next gap in arrivals: 1 (constant), or exponential with mean 1 (Poisson)."""
        return self._random.expovariate(1.0) if self.poisson else 1.0


class ArrivalSchedule:
    """When each arrival is due, in `perf_counter_ns` time, for a rate that may change as it goes.

    `rate_at(t)` is the arrivals per second at time `t` (ns). A constant rate gives gaps of
    1/rate, kept exact over many arrivals (due times are kept unrounded between calls). A changing
    one is followed in `RATE_STEP_NS` steps: the next arrival comes once the rate, summed over
    time, makes up one more arrival. A rate that climbs from 1/s is not stuck waiting out the
    second-long gap it started with, and a stage at 0 has no arrivals: `quiet_until(t)` says
    how long a rate of 0 at `t` lasts, so the schedule jumps over it instead of stepping.
    """

    def __init__(self, kind: str, seed: int | None, rate_at: Callable[[int], float], changing: bool,
                 until_ns: float, quiet_until: Callable[[int], float] | None = None) -> None:
        self.gaps = Arrivals(kind, seed)
        self.rate_at = rate_at
        self.changing = changing
        self.until_ns = until_ns
        self.quiet_until = quiet_until
        self._exact: float | None = None  # the last due time, unrounded

    def next_due(self, after_ns: int, need: float | None = None) -> int:
        """The arrival after the one due at `after_ns`; `until_ns` or later when there is none.

        `need` is how many arrivals' worth of rate must pass first (default: the next gap, 1 for
        constant arrivals); a fraction of one sets a phase, and 0 means at once.
        """
        if need is None:
            need = self.gaps.unit()
        t = after_ns
        if not self.changing:
            return self._land(t, need / self.rate_at(t) * 1e9, need)
        while t < self.until_ns:
            rate = self.rate_at(t)
            if rate > 0:
                gap = need / rate * 1e9
                if gap <= RATE_STEP_NS:
                    return self._land(t, gap, need)
                need -= rate * RATE_STEP_NS / 1e9
                t += RATE_STEP_NS
            else:
                quiet = min(self.quiet_until(t) if self.quiet_until is not None else t, self.until_ns)
                if quiet == float("inf"):  # quiet for ever: nothing more is due
                    return quiet  # type: ignore[return-value]
                t = max(t + RATE_STEP_NS, int(quiet))
        return t

    def _land(self, t: int, gap_ns: float, need: float) -> int:
        """`t` plus a gap, on an exact (float) timeline so that the gaps' fractions of a nanosecond
        do not add up to drift; time always moves on."""
        base = self._exact if self._exact is not None and round(self._exact) == t else float(t)
        exact = base + gap_ns
        due = round(exact)
        if need and due <= t:
            due = t + 1
            exact = float(due)
        self._exact = exact
        return due


def zero_until(stages: tuple[Stage, ...], start: float, t: float) -> float:
    """The end (s) of the stretch at level 0 that `t` is in: `t` itself unless the level is held at 0
    there (a stage from 0 to 0, or after a last stage that ended at 0, which lasts for ever)."""
    previous, begin = start, 0.0
    for stage in stages:
        end = begin + stage.duration
        if t < end:
            if previous != 0 or stage.target != 0:
                return t
            t = end  # held at 0 to the end of this stage; the next may hold it longer
        previous, begin = stage.target, end
    return float("inf") if previous == 0 else t
