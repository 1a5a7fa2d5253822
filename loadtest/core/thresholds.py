"""Pass/fail criteria for CI: `p99 < 50ms`, `home: p95 < 20ms`, `error_rate < 1%`.

A threshold is `[TARGET:] FIGURE OP VALUE`. Without a target it applies to
Aggregated. Figures:

- latency: `p50`, `p90`, `p99.9`, … (any percentile), `avg` (or `mean`),
  `min`, `max`; values take `us`, `ms` (the default) or `s`;
- `error_rate` (a fraction, or a percentage with `%`), `rps` (requests/s);
- counts: `requests`, `failures`, `failed` (failures other than
  `cancelled`, and failed tcp connects), `dropped`, or any failure kind
  (`mismatch`, `refused`, `read_timeout`, …).

A config without thresholds is held to DEFAULT_THRESHOLD, `failed == 0`: a
run in which requests failed (other than those cancelled when the run was
stopped) fails, as Locust's does. It is checked on Aggregated (every request
sent) and on each row that Aggregated leaves out (a flow's own row, which
counts passes): a pass that a script's exception or a `user.check` ended
sent no failed request, and still fails the run. A config's own thresholds
replace it, so `error_rate < 100%` accepts failures.

A latency threshold on a target that has no latency samples (every request
failed before a response) fails: there is no latency to be under the limit.

Parsing and checking are pure: totals in, verdict out.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Sequence

from loadtest.core import exits
from loadtest.core.histograms import any_percentiles_ns
from loadtest.core.stats import FAILURE_KINDS, TargetTotals, mean_ns, min_ns

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_EXPRESSION = re.compile(
    r"^\s*(?:(?P<target>.+?)\s*:\s*)?(?P<figure>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>us|µs|ms|s|%)?\s*$")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$", re.ASCII)
_LATENCY_UNITS = {"us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, None: 1e6}
COUNTS = ("requests", "failures", "failed", "dropped")
CANCELLED = "cancelled"  # the failure kind of requests in flight when the run was stopped: not the target's fault
TOP_KINDS = 3  # failure kinds named in a run's outcome line; the rest are "… more"


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
    measured: float | None  # in the threshold's own unit: ms, a fraction, a count, requests/s; None: no samples
    default: bool = False  # the config set no thresholds; this is DEFAULT_THRESHOLD

    @property
    def measured_text(self) -> str:
        """The measured figure with its unit, or why there is none."""
        if self.measured is None:
            return "— (no latency samples: no request got a response)"
        unit = unit_of(self.threshold)
        if unit == "fraction":
            return f"{self.measured * 100:.2f}%"
        if unit == "ms":
            return f"{self.measured:.3f} ms"
        if unit == "requests/s":
            return f"{self.measured:,.1f} requests/s"
        return f"{self.measured:,.0f}"

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {"threshold": t.text, "target": t.target or "Aggregated", "figure": t.figure, "passed": self.passed,
                "measured": round(self.measured, 6) if self.measured is not None else None, "unit": unit_of(t),
                "abort_on_fail": t.abort_on_fail, "default": self.default}


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
            if value > 100:
                raise ThresholdError(f"error_rate is at most 100%, so this threshold could never fail, got {text!r}")
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


def measure(t: Threshold, totals: TargetTotals, elapsed: float) -> float | None:
    """The figure a threshold looks at, in its own unit (ms for latencies); None for a latency without samples."""
    hist = totals.latency
    count = hist.get_total_count()
    if t.is_latency and not count:
        return None
    pm = _PERCENTILE.match(t.figure)
    if pm:
        p = float(pm.group(1))
        return any_percentiles_ns(hist, [p])[0] / 1e6
    if t.figure in ("avg", "mean"):
        return mean_ns(hist) / 1e6
    if t.figure == "min":
        return min_ns(hist) / 1e6
    if t.figure == "max":
        return hist.get_max_value() / 1e6
    if t.figure == "error_rate":
        return totals.failure_count / totals.requests if totals.requests else 0.0
    if t.figure == "rps":
        return totals.requests / elapsed if elapsed > 0 else 0.0
    if t.figure == "requests":
        return float(totals.requests)
    if t.figure == "failures":
        return float(totals.failure_count)
    if t.figure == "failed":
        return float(failed_count(totals.failures) + failed_count(totals.connect_failures))
    if t.figure == "dropped":
        return float(totals.dropped)
    return float(totals.failures.get(t.figure, 0) + totals.connect_failures.get(t.figure, 0))


def check(t: Threshold, totals: TargetTotals, elapsed: float, final: bool = True) -> Outcome:
    """Whether the totals meet `t`. A latency without samples fails the final check; while the run
    lasts (`final` False, the abort_on_fail checks) it passes, since responses may yet come."""
    measured = measure(t, totals, elapsed)
    if measured is None:
        return Outcome(t, not final, None)
    limit = t.value / 1e6 if t.is_latency else t.value
    return Outcome(t, _OPS[t.op](measured, limit), measured)


DEFAULT_THRESHOLD = Threshold("failed == 0", None, "failed", "==", 0.0)


def check_all(thresholds: Sequence[Threshold], totals_for: Callable[[str | None], TargetTotals],
              elapsed: float, unaggregated: Sequence[str] = ()) -> list[Outcome]:
    """The final check of a run: the config's thresholds, or DEFAULT_THRESHOLD when it set none, on
    Aggregated and on each of the `unaggregated` rows (the rows Aggregated leaves out: flows' own rows)."""
    if thresholds:
        return [check(t, totals_for(t.target), elapsed) for t in thresholds]
    defaults = [DEFAULT_THRESHOLD, *(default_for(name) for name in unaggregated)]
    return [Outcome(o.threshold, o.passed, o.measured, default=True)
            for o in (check(t, totals_for(t.target), elapsed) for t in defaults)]


def default_for(target: str) -> Threshold:
    """DEFAULT_THRESHOLD on one row: `shop: failed == 0`."""
    return Threshold(f"{target}: {DEFAULT_THRESHOLD.text}", target, DEFAULT_THRESHOLD.figure, DEFAULT_THRESHOLD.op,
                     DEFAULT_THRESHOLD.value)


def failed_count(by_kind: Mapping[str, int]) -> int:
    """Failures other than cancelled ones (requests the run itself stopped)."""
    return sum(n for kind, n in by_kind.items() if kind != CANCELLED)


def failures_text(requests: int, by_kind: Mapping[str, int], connect_failures: Mapping[str, int] | None = None,
                  what: str = "requests") -> str:
    """What failed, in one phrase: "147,722 of 147,722 requests failed: refused"; "" if nothing did.

    Cancelled requests are left out: the run stopped them, the target did not fail them. `what` names
    what was counted: "passes of shop" for a flow's own row.
    """
    parts = []
    failed = failed_count(by_kind)
    if failed:
        parts.append(f"{failed:,} of {requests:,} {what} failed: {_kinds(by_kind)}")
    connects = failed_count(connect_failures or {})
    if connects:
        parts.append(f"{connects:,} connect{'s' if connects != 1 else ''} failed: {_kinds(connect_failures or {})}")
    return "; ".join(parts)


def _kinds(by_kind: Mapping[str, int]) -> str:
    ranked = sorted(((n, k) for k, n in by_kind.items() if k != CANCELLED and n), key=lambda nk: (-nk[0], nk[1]))
    if len(ranked) == 1:
        return ranked[0][1]
    named = ", ".join(f"{n:,} {k}" for n, k in ranked[:TOP_KINDS])
    return named + (f" and {len(ranked) - TOP_KINDS} more kinds" if len(ranked) > TOP_KINDS else "")


def outcome_line(exit_status: int | None, failures: str, failed_thresholds: Iterable[str],
                 reasons: Iterable[str] = ()) -> str:
    """A run's result in one line, as the badge and the summary say it.

    `failures` is failures_text() of the whole run; `failed_thresholds` the thresholds that failed
    (the default's failure is said by `failures`); `reasons` other causes (a lost worker, a shortfall).
    """
    said = [r for r in [*failed_thresholds, *reasons] if r]
    if exit_status == exits.OK:
        return "PASSED" + (f" ({failures}; the thresholds allow it)" if failures else "")
    if exit_status == exits.INTERRUPTED:
        return "INTERRUPTED" + (f": {failures}" if failures else "")
    detail = "; ".join([failures, *said] if failures else said)
    return "FAILED" + (f": {detail}" if detail else (f" (exit status {exit_status})" if exit_status else ""))
