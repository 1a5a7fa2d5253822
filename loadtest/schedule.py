"""Load levels over time: stages (ramps) and arrival gaps. Pure: no clock, no I/O.

A target's level is its concurrency (closed model) or its rate (open model).
`stages` ramp it linearly from the previous value, as k6's `stages` do: the
first stage starts from the target's own `concurrency` or `rate` (0 if it has
none), and after the last stage the level holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


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


def peak_level_until(stages: tuple[Stage, ...], start: float, t: float) -> float:
    """The highest level the stages reach in the first `t` seconds (the ramps are straight lines)."""
    peak, elapsed = start, 0.0
    for stage in stages:
        if elapsed >= t:
            break
        elapsed += stage.duration
        peak = max(peak, level_at(stages, start, min(t, elapsed)))
    return peak


def worker_share(total: float, workers: int, index: int) -> int:
    """This worker's whole part of a level (virtual users), split as evenly as whole numbers allow."""
    whole = int(round(total))
    return whole // workers + (1 if index < whole % workers else 0)


class Arrivals:
    """Gaps between arrivals in nanoseconds: constant, or exponential (Poisson arrivals)."""

    def __init__(self, kind: str, seed: int | None = None) -> None:
        self.poisson = kind == "poisson"
        self._random = random.Random(seed)

    def gap_ns(self, rate: float) -> float:
        if self.poisson:
            return self._random.expovariate(rate) * 1e9
        return 1e9 / rate
