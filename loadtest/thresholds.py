"""Pass/fail criteria for CI: `p99 < 50ms`, `home: p95 < 20ms`, `error_rate < 1%`.

A threshold is `[TARGET:] FIGURE OP VALUE`. Without a target it applies to
Aggregated. Figures:

- latency: `p50`, `p90`, `p99.9`, … (any percentile), `avg` (or `mean`),
  `min`, `max`; values take `us`, `ms` (the default) or `s`;
- `error_rate` (a fraction, or a percentage with `%`), `rps` (requests/s);
- counts: `requests`, `failures`, `dropped`, or any failure kind
  (`mismatch`, `refused`, `read_timeout`, …).

Parsing and checking are pure: totals in, verdict out.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .stats import FAILURE_KINDS, TargetTotals, mean_ns, min_ns

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_EXPRESSION = re.compile(
    r"^\s*(?:(?P<target>.+?)\s*:\s*)?(?P<figure>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>us|µs|ms|s|%)?\s*$")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
_LATENCY_UNITS = {"us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, None: 1e6}
COUNTS = ("requests", "failures", "dropped")


@dataclass(frozen=True)
class Threshold:
    """One criterion, validated; `value` is in ns for latencies, a fraction for error_rate."""

    text: str
    target: str | None
    figure: str
    op: str
    value: float
    abort_on_fail: bool = False

    @property
    def is_latency(self) -> bool:
        return self.figure in ("avg", "mean", "min", "max") or bool(_PERCENTILE.match(self.figure))


@dataclass(frozen=True)
class Outcome:
    threshold: Threshold
    passed: bool
    measured: float  # in the threshold's own unit: ms, a fraction, a count, requests/s

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {"threshold": t.text, "target": t.target or "Aggregated", "figure": t.figure, "passed": self.passed,
                "measured": round(self.measured, 6), "unit": unit_of(t), "abort_on_fail": t.abort_on_fail}


def unit_of(t: Threshold) -> str:
    if t.is_latency:
        return "ms"
    return {"error_rate": "fraction", "rps": "requests/s"}.get(t.figure, "count")


class ThresholdError(ValueError):
    """A threshold that cannot be understood; the config loader words it for the user."""


def parse_threshold(text: str, targets: Sequence[str], abort_on_fail: bool = False) -> Threshold:
    m = _EXPRESSION.match(text)
    if not m:
        raise ThresholdError(f"must look like 'p99 < 50ms' or 'home: error_rate < 1%', got {text!r}")
    target, figure, op, unit = m.group("target"), m.group("figure"), m.group("op"), m.group("unit")
    value = float(m.group("value"))
    if target is not None and target not in targets:
        raise ThresholdError(f"names target {target!r}, but no target has that name ({', '.join(targets)})")
    pm = _PERCENTILE.match(figure)
    if pm:
        if not 0 < float(pm.group(1)) <= 100:
            raise ThresholdError(f"percentile {figure!r} must be between p0 and p100")
    if pm or figure in ("avg", "mean", "min", "max"):
        if unit == "%":
            raise ThresholdError(f"{figure} is a latency; give it in us, ms or s, got {text!r}")
        value *= _LATENCY_UNITS[unit]
    elif figure == "error_rate":
        if unit not in ("%", None):
            raise ThresholdError(f"error_rate is a fraction or a percentage, got {text!r}")
        if unit == "%":
            value /= 100.0
        elif value > 1:
            raise ThresholdError(f"error_rate without % must be a fraction between 0 and 1, got {text!r}")
    elif figure == "rps" or figure in COUNTS or figure in FAILURE_KINDS:
        if unit is not None:
            raise ThresholdError(f"{figure} takes a plain number, got {text!r}")
    else:
        known = ", ".join(["avg", "mean", "min", "max", "error_rate", "rps", *COUNTS, *FAILURE_KINDS])
        raise ThresholdError(f"has no figure {figure!r} (known: any percentile pN such as p50, p95 or p99.9, "
                             f"{known})")
    return Threshold(text.strip(), target, figure, op, value, abort_on_fail)


def measure(t: Threshold, totals: TargetTotals, elapsed: float) -> float:
    """The figure a threshold looks at, in its own unit (ms for latencies)."""
    hist = totals.latency
    count = hist.get_total_count()
    pm = _PERCENTILE.match(t.figure)
    if pm:
        p = float(pm.group(1))
        ns = 0 if not count else (hist.get_max_value() if p >= 100 else hist.get_value_at_percentile(p))
        return ns / 1e6
    if t.figure in ("avg", "mean"):
        return mean_ns(hist) / 1e6
    if t.figure == "min":
        return min_ns(hist) / 1e6
    if t.figure == "max":
        return (hist.get_max_value() if count else 0) / 1e6
    if t.figure == "error_rate":
        return totals.failure_count / totals.requests if totals.requests else 0.0
    if t.figure == "rps":
        return totals.requests / elapsed if elapsed > 0 else 0.0
    if t.figure == "requests":
        return float(totals.requests)
    if t.figure == "failures":
        return float(totals.failure_count)
    if t.figure == "dropped":
        return float(totals.dropped)
    return float(totals.failures.get(t.figure, 0) + totals.connect_failures.get(t.figure, 0))


def check(t: Threshold, totals: TargetTotals, elapsed: float) -> Outcome:
    measured = measure(t, totals, elapsed)
    limit = t.value / 1e6 if t.is_latency else t.value
    return Outcome(t, _OPS[t.op](measured, limit), measured)
