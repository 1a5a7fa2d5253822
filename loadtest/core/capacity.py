"""Capacity search, the pure part: SLOs, the judgement of one step, and the search over rates.

`loadtest capacity` holds open-model rates in steps and finds the highest one a
target sustains within an SLO. This module decides, from figures it is given;
it has no clock, no sockets and no processes (the step driver,
`loadtest.execution.capacity_driver`, feeds it each step's merged histograms).

- An SLO is a threshold (`loadtest.core.thresholds`) that bounds a latency
  percentile or `max` (us, ms or s) or the error rate (`errors<1%`) from above.
- `judge_step` says whether a step met every SLO, missed one, or could not be
  judged because the generator itself did not deliver the load: a worker's
  CPU saturated, arrivals dropped or started short of the asked rate while
  the target had room (requests in flight below max_concurrency), or a miss
  that late sends made while the target's own latency (from the actual sends)
  met the SLO. A generator-limited step is never taken for an SLO miss.
- `CapacitySearch` brackets the knee by multiplying the rate from `start`
  (doubling), bisects between the highest met and the lowest missed rate
  until they are within `precision`, then holds the found rate once more to
  confirm it. A missed step is held again before it is believed, a
  generator-limited one up to twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass, field, replace

from loadtest.core import exits
from loadtest.core.stats import TargetTotals, counts_at_or_below, percentiles_ns
from loadtest.core.thresholds import Threshold, ThresholdError, check, failed_count, parse_threshold
from loadtest.core.verdicts import WORKER_SATURATED_PERCENT

DEFAULT_START = 100.0  # arrivals per second of the first step (below ~100/s a p99 rests on one or two requests)
DEFAULT_STEP_S = 10.0  # how long each step holds its rate, warm-up included
DEFAULT_WARMUP_S = 2.0  # the start of each step left out of its judgement
DEFAULT_PRECISION = 0.05  # bisect until the missed rate is within 5% above the met one
GROWTH = 2.0  # the bracket multiplies the rate by this each met step
MAX_STEPS = 40  # a search never holds more steps than this (a bound on its time)
MAX_CONFIRMS = 3  # a found rate that fails its confirmation is searched again below, this many times at most
GENERATOR_RETRIES = 2  # a generator-limited step is held again this many times before the search believes it
LATE_SHARE = 0.5  # arrivals late by more than this share of a latency SLO (at its percentile) fail the delivery
LATE_MOST_S = 0.1  # ... or by more than this (the run's own "behind schedule" line, monitor.BEHIND_LATENESS_S)
SHORT_DELIVERY = 0.05  # arrivals started more than 5% below the asked rate fail the delivery ...
SHORT_SLACK = 5  # ... and by more than this many arrivals (a few late ones land in the next second)
CAP_SHARE = 0.9  # requests in flight at this share of max_concurrency: the target is holding them, not the generator
EARLY_SLACK = 1.25  # an early miss assumes the step could still end with this many times the requests it has so far

LIMITED_TARGET, LIMITED_GENERATOR, LIMITED_MAX_RATE = "target", "generator", "max-rate"
MET, MISSED, GENERATOR = "met", "missed", "generator"

_ERRORS = re.compile(r"^(\s*(?:.+?\s*:\s*)?)errors(\s*(?:<=|>=|==|!=|<|>))", re.S)
_SLO_FIGURES = "p50, p90, p95, p99, p99.9 (any percentile), max, or errors"


class SloError(ValueError):
    """An SLO that cannot be understood: one sentence naming what was wrong."""


def parse_slo(text: str, targets: Sequence[str] = ()) -> Threshold:
    """One `--slo`: `p99<50ms`, `p99.9 <= 0.2s`, `max<1s`, `errors<1%`, optionally `TARGET: ...`.

    The thresholds' syntax, limited to what an SLO is: an upper bound on a latency percentile or max
    (ms by default, or us or s) or on the error rate (`errors`, in %, or `error_rate`)."""
    written = text.strip()
    errors = _ERRORS.match(text)
    if errors:
        if not text.rstrip().endswith("%"):
            raise SloError(f"--slo {text!r}: give errors in %, such as 'errors<1%'")
        text = _ERRORS.sub(r"\1error_rate\2", text, count=1)
    try:
        slo = parse_threshold(text, targets)
    except ThresholdError as e:
        raise SloError(f"--slo {text!r}: {_slo_words(str(e))}") from None
    if not (slo.is_latency or slo.figure == "error_rate") or slo.figure in ("avg", "mean", "min"):
        raise SloError(f"--slo {text!r}: an SLO bounds {_SLO_FIGURES}, not {slo.figure}")
    if slo.op not in ("<", "<="):
        raise SloError(f"--slo {text!r}: an SLO is an upper bound; use < or <=, not {slo.op}")
    return replace(slo, text=written)


def _slo_words(message: str) -> str:
    if message.startswith("must look like"):
        return "must look like 'p99<50ms' or 'errors<1%'"
    if message.startswith("has no figure"):
        return message.split(" (known:")[0] + f" (an SLO bounds {_SLO_FIGURES})"
    return message


def percentile_of(slo: Threshold) -> float:
    """The percentile a latency SLO bounds (100 for max)."""
    return 100.0 if slo.figure == "max" else float(slo.figure[1:])


# -- one step --------------------------------------------------------------


@dataclass(frozen=True)
class StepFigures:
    """What one step measured over its judged seconds, merged over every worker."""

    rate: float  # asked, in all (arrivals, journeys or messages per second)
    seconds: float  # judged seconds (the warm-up left out)
    targets: Sequence[TargetTotals]  # each target's totals over those seconds
    aggregated: TargetTotals
    arrivals: int | None  # open targets' arrivals started over those seconds (None: no open target, paced tcp only)
    cpu: Mapping[str, float] = field(default_factory=dict)  # each worker's mean CPU % of one core
    cap_reached: bool = False  # an open target held max_concurrency's worth of requests in flight: the target's doing
    open_rate: float | None = None  # of `rate`, what the open targets ask (None: all of it)
    delivered: int | None = None  # arrivals started and paced messages ended (None: `arrivals`)

    @property
    def achieved_rate(self) -> float:
        """What was delivered per second, in `rate`'s units: arrivals (requests or journeys) started, and paced
        messages ended; requests ended when the targets count neither."""
        count = self.delivered if self.delivered is not None else self.arrivals
        count = count if count is not None else self.aggregated.requests
        return count / self.seconds if self.seconds > 0 else 0.0

    @property
    def arrival_rate(self) -> float:
        return self.arrivals / self.seconds if self.arrivals is not None and self.seconds > 0 else 0.0

    @property
    def generator_cpu(self) -> float | None:
        return max(self.cpu.values()) if self.cpu else None


@dataclass(frozen=True)
class StepResult:
    """A step as capacity.json lists it."""

    rate: float
    achieved_rate: float
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float
    generator_cpu: float | None
    met: bool
    why: str
    outcome: str = MISSED  # met | missed | generator (what the search does with it)
    phase: str = ""  # bracket | bisect | confirm: how the search chose the rate

    def as_dict(self) -> dict[str, object]:
        return {"rate": round(self.rate, 3), "achieved_rate": round(self.achieved_rate, 3),
                "p50_ms": _round(self.p50_ms), "p99_ms": _round(self.p99_ms),
                "error_rate": round(self.error_rate, 6), "generator_cpu": _round(self.generator_cpu, 1),
                "met": self.met, "why": self.why}


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def totals_for(slo: Threshold, figures: StepFigures, names: Sequence[str]) -> TargetTotals:
    return figures.aggregated if slo.target is None else figures.targets[list(names).index(slo.target)]


def delivery_failure(figures: StepFigures) -> str:
    """Why the generator did not deliver the step's load (a phrase), or "" if it did.

    A saturated worker CPU always counts (its latencies measure the generator). Dropped arrivals and
    a short achieved rate count unless requests in flight reached the targets' max_concurrency (the
    target held them). Late arrivals are judged apart (`late_miss`)."""
    cpu = figures.generator_cpu
    if cpu is not None and cpu > WORKER_SATURATED_PERCENT:
        worker = max(figures.cpu, key=lambda k: figures.cpu[k])
        return f"{worker} at {cpu:.0f}% CPU (above {WORKER_SATURATED_PERCENT:g}%)"
    if figures.cap_reached:
        return ""
    dropped = sum(t.dropped for t in figures.targets)
    if dropped:
        return f"{dropped:,} arrival{'s' if dropped != 1 else ''} dropped (could not start within 1 s of their time)"
    asked = figures.open_rate if figures.open_rate is not None else figures.rate
    short = asked * figures.seconds - (figures.arrivals or 0)
    if figures.arrivals is not None and short > max(SHORT_DELIVERY * asked * figures.seconds, SHORT_SLACK):
        return f"arrivals started at {figures.arrival_rate:,.1f}/s of {asked:,.1f}/s asked"
    return ""


def _at(hist: Any, slo: Threshold) -> int:
    p = percentile_of(slo)
    return int(hist.get_max_value() if p >= 100 else percentiles_ns(hist, (p,))[0])


_UPPER = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def late_miss(missed: Sequence[Threshold], figures: StepFigures, names: Sequence[str]) -> str:
    """A miss the generator's late sends made (a phrase), or "".

    That is: every missed SLO bounds a latency, arrivals started late by a large share of it (at its
    percentile), and the latency from the actual sends (uncorrected: the target's own time) met it. The
    latency counts from each arrival's intended start, so it carries the lateness: a step that met its
    SLO anyway met it, and one whose target was slow on its own missed it."""
    if not missed or not all(s.is_latency for s in missed) or figures.cap_reached:
        return ""
    for slo in missed:
        totals = totals_for(slo, figures, names)
        late, own = totals.lateness, totals.uncorrected
        if not late.get_total_count() or not own.get_total_count():
            return ""
        if (_at(late, slo) <= min(slo.value * LATE_SHARE, LATE_MOST_S * 1e9)
                or not _UPPER[slo.op](_at(own, slo), slo.value)):
            return ""
    slo = missed[0]
    totals = totals_for(slo, figures, names)
    return (f"arrivals started late ({slo.figure} {_at(totals.lateness, slo) / 1e6:,.1f} ms); from the actual "
            f"sends the target's {slo.figure} was {_at(totals.uncorrected, slo) / 1e6:,.1f} ms")


def judge_step(slos: Sequence[Threshold], figures: StepFigures, names: Sequence[str], phase: str = "") -> StepResult:
    """Met, missed, or generator-limited: every SLO, then whether the generator delivered the load (a step it
    did not deliver is generator-limited, whatever the SLOs said)."""
    agg = figures.aggregated
    hist = agg.latency
    p50, p99 = (percentiles_ns(hist, (50.0, 99.0)) if hist.get_total_count() else (None, None))
    errors = failed_count(agg.failures) / agg.requests if agg.requests else 0.0
    missed = [o for o in (check(s, totals_for(s, figures, names), figures.seconds) for s in slos) if not o.passed]
    outcome = MISSED if missed else MET
    why = "; ".join(f"{o.threshold.text} (measured {o.measured_text})" for o in missed)
    if not missed and not agg.requests:
        outcome, why = MISSED, "no request ended in the judged seconds"
    failure = delivery_failure(figures) or late_miss([o.threshold for o in missed], figures, names)
    if failure:
        outcome, why = GENERATOR, f"generator: {failure}"
    return StepResult(figures.rate, figures.achieved_rate, p50 / 1e6 if p50 is not None else None,
                      p99 / 1e6 if p99 is not None else None, errors, figures.generator_cpu, outcome == MET, why,
                      outcome, phase)


def certain_miss(slos: Sequence[Threshold], so_far: StepFigures, names: Sequence[str], planned_s: float) -> str:
    """An SLO the step cannot meet any more, however its remaining seconds go (a phrase), or "".

    A percentile bound is lost once more requests are above it than its share of the most the step
    could end with (the requests so far, per second, over the planned seconds, times EARLY_SLACK);
    `max` once one is; the error rate likewise. Ending a hopeless step early keeps an overloaded
    target's queue short, so the next step starts clean sooner."""
    if so_far.seconds <= 0:
        return ""
    for slo in slos:
        totals = totals_for(slo, so_far, names)
        most = totals.requests / so_far.seconds * planned_s * EARLY_SLACK
        if slo.is_latency:
            hist = totals.latency
            count = hist.get_total_count()
            limit = int(slo.value) - (1 if slo.op == "<" else 0)
            above = count - counts_at_or_below(hist, [max(limit, 0)])[0] if count else 0
            allowed = 0.0 if slo.figure == "max" else most * (100.0 - percentile_of(slo)) / 100.0
            if above > allowed:
                return f"{slo.text}: {above:,} requests above it already"
        else:
            failed = failed_count(totals.failures)
            if failed > most * slo.value:
                return f"{slo.text}: {failed:,} requests failed already"
    return ""


# -- the search ------------------------------------------------------------


@dataclass
class SearchResult:
    max_rate: float  # the highest rate that met every SLO (0.0: none did)
    limited_by: str  # target | generator | max-rate
    confirmed: bool


class CapacitySearch:
    """Which rate to hold next, from the outcomes of the steps so far.

    `next_rate()` is the next step's rate (None when the search is over), `record(outcome)` that step's
    outcome (met, missed or generator), `result()` the answer.

    One bad step is not believed at once: a missed step is held again (a stall of a second on a busy
    machine breaks any p99, and a search that believed it would answer far too low), and counts as
    missed only if it misses again; a generator-limited step is held again up to GENERATOR_RETRIES times
    (a generator that cannot deliver a rate fails it every time; a passing stall does not). `phase` says
    which hold a step is: bracket, bisect, confirm, or again."""

    def __init__(self, start: float, max_rate: float | None = None, precision: float = DEFAULT_PRECISION,
                 growth: float = GROWTH, max_steps: int = MAX_STEPS) -> None:
        if start <= 0 or (max_rate is not None and max_rate < start) or precision <= 0 or growth <= 1:
            raise ValueError("start > 0, max_rate >= start, precision > 0 and growth > 1")
        self.start, self.max_rate, self.precision, self.growth = start, max_rate, precision, growth
        self.max_steps = max_steps
        self.lo: float | None = None  # highest met
        self.hi: float | None = None  # lowest missed
        self.limited_by = LIMITED_TARGET
        self.confirmed = False
        self.steps: list[tuple[float, str, str]] = []  # (rate, phase, outcome)
        self._next: float | None = start
        self._confirms = 0
        self._stage = "bracket"  # bracket, bisect or confirm; `phase` is "again" while a step is held again
        self._again = ""  # the outcome a step is being held again for: missed or generator
        self._generator_tries = 0

    @property
    def phase(self) -> str:
        return "again" if self._again else self._stage

    @phase.setter
    def phase(self, value: str) -> None:
        self._stage = value

    @property
    def done(self) -> bool:
        return self._next is None

    def next_rate(self) -> float | None:
        return self._next

    def record(self, outcome: str) -> None:
        rate = self._next
        if rate is None:
            raise RuntimeError("the search is over")
        self.steps.append((rate, self.phase, outcome))
        if len(self.steps) >= self.max_steps:
            self._next = None
            return
        if outcome == GENERATOR:
            self._generator_tries += 1
            if self._generator_tries > GENERATOR_RETRIES:
                self.limited_by, self._next = LIMITED_GENERATOR, None
            self._again = GENERATOR
            return
        self._generator_tries = 0
        if outcome == MISSED and self._again != MISSED:
            self._again = MISSED  # held again before it is believed
            return
        self._again = ""
        if self._stage == "confirm":
            self._after_confirm(rate, outcome == MET)
        elif outcome == MET:
            self.lo = rate
            self._after_met(rate)
        else:
            self.hi = rate if self.hi is None else min(self.hi, rate)
            self._narrow()

    def _after_met(self, rate: float) -> None:
        if self._stage == "bracket" and self.hi is None:
            if self.max_rate is not None and rate >= self.max_rate:
                self._confirm(LIMITED_MAX_RATE)
            else:
                self._next = rate * self.growth if self.max_rate is None else min(rate * self.growth, self.max_rate)
            return
        self._narrow()

    def _narrow(self) -> None:
        """Bisect between lo and hi, or confirm lo once they are within the precision."""
        if self.lo is None:  # even the lowest rate missed
            self._next = None
            return
        assert self.hi is not None
        if self.hi <= self.lo * (1 + self.precision):
            self._confirm(LIMITED_TARGET)
        else:
            self.phase = "bisect"
            self._next = (self.lo + self.hi) / 2

    def _confirm(self, limited_by: str) -> None:
        self.phase, self.limited_by = "confirm", limited_by
        self._next = self.lo

    def _after_confirm(self, rate: float, met: bool) -> None:
        self._confirms += 1
        if met:
            self.confirmed, self._next = True, None
            return
        # Held once more and missed: the rate is not sustained. Search below it, from the highest
        # rate that met below it (if none did, nothing is known to hold).
        self.limited_by = LIMITED_TARGET
        self.hi = rate
        below = [r for r, _, o in self.steps if o == MET and r < rate]
        self.lo = max(below) if below else None
        if self.lo is None or self._confirms >= MAX_CONFIRMS:
            self._next = None
            return
        self._narrow()

    def result(self) -> SearchResult:
        return SearchResult(self.lo or 0.0, self.limited_by, self.confirmed)


# -- what the answer says --------------------------------------------------


def rate_text(rate: float) -> str:
    """A rate as the terminal and the verdict say it: 1,000/s, 12.5/s."""
    if rate >= 100 or rate == int(rate):
        return f"{rate:,.0f}/s"
    return f"{rate:,.3g}/s"


def verdict_sentence(result: SearchResult, slo_texts: Sequence[str], steps: Sequence[StepResult],
                     unit: str = "requests") -> str:
    """The answer in one sentence."""
    slo = " and ".join(slo_texts)
    met_at = rate_text(result.max_rate)
    missed = [s for s in steps if s.outcome == MISSED and s.rate > result.max_rate]
    generator = [s for s in steps if s.outcome == GENERATOR]
    if result.limited_by == LIMITED_GENERATOR:
        what = generator[-1] if generator else None
        at = f" at {rate_text(what.rate)} ({what.why.removeprefix('generator: ')})" if what else ""
        if result.max_rate <= 0:
            return (f"No capacity found: the generator could not deliver even the first step{at}, so the target "
                    f"was never judged.")
        return (f"At least {met_at} ({unit}) within {slo}: the generator, not the target, limited the search{at}, "
                f"so this is a lower bound.")
    if result.max_rate <= 0:
        first = steps[0] if steps else None
        at = rate_text(first.rate) if first else "--start"
        return (f"No capacity found: even the first step, {at}, missed {first.why if first and first.why else slo}; "
                f"a lower --start may find one.")
    if result.limited_by == LIMITED_MAX_RATE:
        return (f"{met_at} ({unit}), the --max-rate, held within {slo}: the target's limit is at or above it.")
    lowest_miss = min(missed, key=lambda s: s.rate) if missed else None
    beyond = f"; {rate_text(lowest_miss.rate)} missed {lowest_miss.why}" if lowest_miss else ""
    unconfirmed = "" if result.confirmed else " (not confirmed by a second hold)"
    return f"Capacity: {met_at} ({unit}) within {slo}{unconfirmed}, limited by the target{beyond}."


def exit_status(result: SearchResult) -> int:
    """OK: a capacity was found (a generator-limited lower bound included); FAILED: none was."""
    return exits.OK if result.max_rate > 0 else exits.FAILED


def step_seconds(step_s: float, warmup_s: float) -> tuple[int, int]:
    """A step's warm-up and judged seconds, in whole snapshot intervals. A step of N seconds is the second in which
    the rate changed (old and new mixed, always left out), then the warm-up's whole seconds, then the judged ones
    (at least one)."""
    total = max(2, int(round(step_s)))
    warm = min(max(0, int(math.ceil(warmup_s - 1e-9))), total - 2)
    return warm, total - 1 - warm
