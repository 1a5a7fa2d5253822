"""Verdicts: the conditions under which a run's numbers cannot be trusted.

A saturated worker measures itself, not the target; a saturated machine
makes generator and target compete for the same cores; a worker behind the
open-model schedule offered less than the configured rate. `Verdicts` finds
these in resource samples and lateness notes. Pure: samples in, verdicts
out, no clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loadtest.core.samples import MACHINE_ROLE, Sample, worker_role

WORKER_SATURATED_PERCENT = 90.0  # of one core; above it, for ...
MACHINE_SATURATED_PERCENT = 95.0  # averaged over all cores; at or above it, for ...
SATURATED_FOR_S = 3.0  # ... this long or more, is a verdict
DURATION_SLACK_S = 0.05  # sample timing jitter: 2.96 s of samples is "3 s"
BEHIND_GAP_S = 2.0  # lateness notes further apart than this are separate episodes
NO_CONDITION_FOUND = (
    f"No condition found: no worker stayed above {WORKER_SATURATED_PERCENT:g}% CPU for {SATURATED_FOR_S:g} s, "
    f"the machine's CPU stayed below {MACHINE_SATURATED_PERCENT:g}%, and no worker fell behind schedule.")


@dataclass
class _Episode:
    kind: str
    role: str
    start_s: float
    end_s: float
    peak: float
    reported: bool = False
    closed: bool = False

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Verdicts:
    """Conditions found in samples: a saturated worker, a saturated machine, a worker behind schedule.

    Pure: it reads only the samples (and lateness notes) it is given. `new()`
    returns the verdicts that began since its last call, at once, so the live
    view can say them; `summary()` lists every verdict with its full duration.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Episode] = {}
        self._done: list[_Episode] = []
        self._lock = threading.Lock()  # lateness notes come from another thread than the samples

    def add(self, samples: Iterable[Sample]) -> None:
        with self._lock:
            for s in samples:
                if s.role.rpartition("/")[2].startswith("worker-"):  # worker-N, or node-N/worker-K
                    self._streak("worker_saturated", s, s.cpu_percent > WORKER_SATURATED_PERCENT)
                elif s.role == MACHINE_ROLE:
                    self._streak("machine_saturated", s, s.cpu_percent >= MACHINE_SATURATED_PERCENT)

    def note_behind(self, worker: int, elapsed: float, lateness_s: float) -> None:
        """An open-model worker was `lateness_s` behind its schedule at `elapsed` (0 or less: on time)."""
        key = ("behind_schedule", worker_role(worker))
        with self._lock:
            e = self._open.get(key)
            if e is not None and (lateness_s <= 0 or elapsed - e.end_s > BEHIND_GAP_S):
                self._close(key)
                e = None
            if lateness_s <= 0:
                return
            if e is None:
                self._open[key] = _Episode(key[0], key[1], elapsed, elapsed, lateness_s)
            else:
                e.end_s, e.peak = elapsed, max(e.peak, lateness_s)

    def new(self) -> list[dict[str, Any]]:
        """Verdicts that began since the last call, as they stand now."""
        with self._lock:
            fresh = [e for e in [*self._done, *self._open.values()] if not e.reported and _counts(e)]
            for e in fresh:
                e.reported = True
            return [_verdict(e) for e in fresh]

    def summary(self) -> list[dict[str, Any]]:
        """Every verdict, ongoing ones up to their last sample; [] is "no condition found"."""
        with self._lock:
            found = [e for e in [*self._done, *self._open.values()] if _counts(e)]
            return [_verdict(e, final=True) for e in sorted(found, key=lambda e: (e.start_s, e.role))]

    def _streak(self, kind: str, s: Sample, above: bool) -> None:
        key = (kind, s.role)
        e = self._open.get(key)
        if not above:
            if e is not None:
                self._close(key)
            return
        if e is None:
            self._open[key] = _Episode(kind, s.role, max(0.0, s.elapsed_s - s.window_s), s.elapsed_s, s.cpu_percent)
        else:
            e.end_s, e.peak = s.elapsed_s, max(e.peak, s.cpu_percent)

    def _close(self, key: tuple[str, str]) -> None:
        e = self._open.pop(key)
        e.closed = True
        if _counts(e):
            self._done.append(e)


def _counts(e: _Episode) -> bool:
    return e.kind == "behind_schedule" or e.duration_s >= SATURATED_FOR_S - DURATION_SLACK_S


def _verdict(e: _Episode, final: bool = False) -> dict[str, Any]:
    ended = final or e.closed
    if ended:
        when = f"for {e.duration_s:.1f} s from {e.start_s:.1f} s"
    elif e.duration_s >= 0.05:
        when = f"for {e.duration_s:.1f} s so far, since {e.start_s:.1f} s"
    else:  # just begun: "for 0.0 s so far" would say nothing
        when = f"since {e.start_s:.1f} s"
    if e.kind == "worker_saturated":
        what = (f"{e.role} {'was' if ended else 'has been'} above {WORKER_SATURATED_PERCENT:g}% CPU {when} "
                f"(peak {e.peak:.0f}%): the generator was saturated, so its latencies then measure "
                f"the generator, not the target.")
    elif e.kind == "machine_saturated":
        what = (f"The machine's CPU {'was' if ended else 'has been'} at {MACHINE_SATURATED_PERCENT:g}% or more "
                f"over all cores {when} (peak {e.peak:.0f}%): generator and target competed for the same cores.")
    else:
        what = (f"{e.role} {'fell' if ended else 'is falling'} behind the open-model schedule {when} "
                f"(up to {e.peak:.3f} s late): arrivals started late, so the offered rate was below the "
                f"configured one.")
    return {"kind": e.kind, "what": what, "role": e.role, "start_s": round(e.start_s, 3),
            "duration_s": round(e.duration_s, 3), "peak": round(e.peak, 3)}
