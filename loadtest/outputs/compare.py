"""Compare two runs: what got faster, what got slower, and whether anything got worse.

Per target present in both runs, and Aggregated: requests/s, p50, p95, p99,
p99.9, error rate and the generator's CPU per request, from each run folder's
summary.json (CPU per request from resources.csv when there, so that the
workers' start-up is not counted as the load's); for each the change in % and
whether it got worse. Higher latency, error rate or CPU is worse; lower
requests/s is.

A figure got worse only when B is worse than A by more than the tolerance
(a share of A) AND by more than the runs' own noise: NOISE_K times
sqrt(sA² + sB²), where sA and sB are the standard deviations of that figure's
per-second values in each run (history.csv; for CPU per request, the
workers' per-second CPU in resources.csv over the requests of that second),
i.e. NOISE_K standard deviations of the difference between one second of A
and one second of B. Two runs of one config differ about as much as their
seconds differ from each other, so a change inside that band is not evidence
of anything; a real slowdown moves every second and stands out of it. A figure without
per-second values (a one-second run, a folder without history.csv) is judged
by the tolerance alone. From no failures to some is worse at any tolerance.
`Comparison.worse` is what CI gates on (the CLI exits 1).

A run folder is read by `load_run`, as `report` reads it: a folder one
refuses, the other refuses too, with the same sentence (a figure missing,
not a number or out of range, a file that is not the run's own, a histogram
bomb) (RunFolderError). The comparison uses summary.json, history.csv and
resources.csv, and histograms.json for the HTML page's spectra.

    c = compare_runs(Path("reports/a"), Path("reports/b"), tolerance=0.05)
    print(compare_views.format_table(c))   # compare_views: the table, CSV, JSON and HTML page
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.core.run_files import (
    AGGREGATED,
    OTHER_HISTOGRAM_TYPES,
    SUMMARY_NAME,
    precise_cell,
)
from loadtest.outputs.run_folder import MAX_FIGURE, RunFolder, RunFolderError, as_float, load_run
from loadtest.outputs.run_folder_checks import summary_figure

DEFAULT_TOLERANCE = 0.05
MAX_TOLERANCE = 100.0  # 10,000%: beyond that a gate can never fail, which is a mistake, not a choice
# How many standard deviations of a second-to-second difference a change must exceed to count. Runs of n
# seconds whose seconds vary by s differ by about s * sqrt(2 / n) by chance; 3 * s * sqrt(2) is past that for
# any n >= 1 (and past the estimate's own error from 2-3 seconds), and still far below what a real slowdown
# does: 20% of a 20 ms delay is 4 ms, while that p50 varies by ~0.1 ms from second to second.
NOISE_K = 3.0
MIN_CPU_RUN_S = 2.0  # a shorter run's CPU per request is mostly its workers' start-up: not compared


@dataclass(frozen=True)
class Metric:
    """A figure compared between runs, and the history.csv column that holds it each second."""

    key: str
    label: str
    unit: str
    higher_is_worse: bool
    column: str = ""  # "" for figures derived otherwise (error rate, CPU per request)


METRICS = (
    Metric("requests_per_s", "req/s", "req/s", higher_is_worse=False, column="Requests/s"),
    Metric("p50", "p50", "ms", higher_is_worse=True, column="50%"),
    Metric("p95", "p95", "ms", higher_is_worse=True, column="95%"),
    Metric("p99", "p99", "ms", higher_is_worse=True, column="99%"),
    Metric("p99.9", "p99.9", "ms", higher_is_worse=True, column="99.9%"),
    Metric("error_rate", "error rate", "%", higher_is_worse=True),
    Metric("cpu_us_per_request", "CPU/request", "µs", higher_is_worse=True),
)
LATENCY_KEYS = ("p50", "p95", "p99", "p99.9")


@dataclass(frozen=True)
class Change:
    """One figure in run A and run B, its change in %, the runs' noise band, and whether it got worse."""

    metric: Metric
    a: float | None
    b: float | None
    change_pct: float | None  # None when either is missing, or A is 0 and B is not
    worse: bool
    noise: float | None = None  # NOISE_K * sqrt(sA² + sB²) of the per-second values, in the figure's unit


@dataclass(frozen=True)
class TargetComparison:
    name: str
    changes: tuple[Change, ...]

    @property
    def worse(self) -> bool:
        return any(c.worse for c in self.changes)


@dataclass(frozen=True)
class Comparison:
    """Run A against run B, target by target."""

    run_a: RunFolder = field(repr=False)
    run_b: RunFolder = field(repr=False)
    tolerance: float
    targets: tuple[TargetComparison, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]

    @property
    def worse(self) -> bool:
        """Whether any figure of any target got worse beyond the tolerance and the noise, or a target of A
        is missing from B (a gate must not pass because B stopped testing something)."""
        return bool(self.only_in_a) or any(t.worse for t in self.targets)

    @property
    def worse_count(self) -> int:
        return sum(c.worse for t in self.targets for c in t.changes)


def parse_tolerance(text: str, where: str = "tolerance") -> float:
    """A tolerance as typed, in percent ("5", "5%", "2.5 %"), as a fraction (0.05). A bare number is percent,
    always: "0.05" is 0.05%, not 5% (a gate written that way fails more, never less, than meant)."""
    number = text.strip().removesuffix("%").strip()
    try:
        pct = float(number)
    except ValueError:
        pct = math.nan
    if not (math.isfinite(pct) and 0 <= pct <= MAX_TOLERANCE * 100) or number.lower() in ("nan", "inf"):
        raise ValueError(f"{where}: must be a percentage from 0 to {MAX_TOLERANCE * 100:,.0f}, such as 5 or 5%, "
                         f"got {text!r}")
    return pct / 100


def compare_runs(run_a: Path, run_b: Path, tolerance: float = DEFAULT_TOLERANCE, *,
                 histograms: bool = False) -> Comparison:
    """Compare run folder B against run folder A; `tolerance` is a fraction (0.05 is 5%).

    `histograms` also reads histograms.json, for the HTML page's spectra. Raises RunFolderError (a
    ValueError) for a folder that is not a run or holds damaged figures, ValueError for a bad tolerance.
    """
    if not 0 <= tolerance <= MAX_TOLERANCE:
        raise ValueError(f"tolerance: must be from 0 to {MAX_TOLERANCE * 100:,.0f}%, got {tolerance * 100:g}%"
                         if math.isfinite(tolerance) else f"tolerance: must be a finite number, got {tolerance}")
    # Every file report reads, whether or not this comparison needs it: a folder report refuses, compare refuses
    # too, with the same sentence (`histograms` is kept for callers; the page's spectra use them when there).
    a, b = load_run(Path(run_a)), load_run(Path(run_b))
    figures_a, figures_b = _figures(a), _figures(b)
    names = [n for n in figures_a if n in figures_b]
    if not names:
        raise RunFolderError(f"{run_a} and {run_b} have no target in common, so there is nothing to compare")
    seconds_a, seconds_b = per_second(a), per_second(b)
    for figures, seconds in ((figures_a, seconds_a), (figures_b, seconds_b)):
        load_cpu = seconds.get(AGGREGATED, {}).get("cpu_total")
        if AGGREGATED in figures and load_cpu:  # the CPU of the load itself, without the workers' start-up
            figures[AGGREGATED]["cpu_us_per_request"] = load_cpu[0]
    targets = tuple(
        TargetComparison(n, tuple(
            _change(m, figures_a[n][m.key], figures_b[n][m.key], tolerance,
                    noise_band(seconds_a.get(n, {}).get(m.key, []), seconds_b.get(n, {}).get(m.key, [])))
            for m in METRICS))
        for n in names)
    return Comparison(a, b, tolerance, targets,
                      tuple(n for n in figures_a if n not in figures_b),
                      tuple(n for n in figures_b if n not in figures_a))


def _figures(run: RunFolder) -> dict[str, dict[str, float | None]]:
    """Per target name (Aggregated last): the compared figures of one run, each checked (RunFolderError)."""
    where = run.path / SUMMARY_NAME
    out: dict[str, dict[str, float | None]] = {}
    parts = [(f"targets[{i}]", t) for i, t in enumerate(run.summary["targets"])]
    if run.summary.get("aggregated") is not None:
        parts.append(("aggregated", run.summary["aggregated"]))
    for at, t in parts:
        latency = t.get("latency_ms")
        # An empty latency_ms is a target none of whose requests got an answer; its error rate says so.
        # One that has figures must have every compared one.
        has_latency = bool(latency)
        error_rate = _figure(where, t, "error_rate", at, high=1.0) if t.get("error_rate") is not None else None
        name = AGGREGATED if at == "aggregated" else str(t.get("name", ""))
        out[name] = {
            "requests_per_s": _figure(where, t, "requests_per_s", at),
            **{k: _figure(where, latency, k, f"{at}.latency_ms") if has_latency else None for k in LATENCY_KEYS},
            "error_rate": error_rate * 100 if error_rate is not None else None,
            "cpu_us_per_request": None,
        }
    if AGGREGATED in out:
        # Workers serve every target at once, so CPU per request is a figure of the whole run only.
        out[AGGREGATED]["cpu_us_per_request"] = _cpu_per_request(run, where)
    return out


def _figure(where: Path, part: dict[str, Any], key: str, at: str, high: float = MAX_FIGURE) -> float:
    """A compared figure: present, a number, finite and from 0 to `high`, or RunFolderError naming it (as
    load_run checks it, for report and compare alike)."""
    return summary_figure(where, part, key, at, high)


def _cpu_per_request(run: RunFolder, where: Path) -> float | None:
    """The workers' CPU per request, start-up included; None for a run shorter than MIN_CPU_RUN_S, whose CPU
    is mostly its workers' start-up and says nothing of what a request costs."""
    length = as_float(run.summary.get("duration_s"))
    if length is not None and length < MIN_CPU_RUN_S:
        return None
    workers = [(i, w) for i, w in enumerate(run.summary.get("workers") or []) if isinstance(w, dict)]
    seconds = [sum(_figure(where, w, k, f"workers[{i}]") for k in ("cpu_user_s", "cpu_system_s")
                   if w.get(k) is not None)
               for i, w in workers if w.get("cpu_user_s") is not None or w.get("cpu_system_s") is not None]
    requests = _figure(where, run.summary["aggregated"], "requests", "aggregated")
    if not seconds or not requests:
        return None
    return sum(seconds) / requests * 1e6


# -- the runs' own noise ------------------------------------------------------


def per_second(run: RunFolder) -> dict[str, dict[str, list[float]]]:
    """Per target name, per metric key: that figure in each second of the run (from history.csv, and
    resources.csv for CPU per request). A second without requests has no latency or error rate; a value
    that is not a finite, sane number is left out, as the charts leave it out. Aggregated's "cpu_total"
    holds one value: the workers' CPU over the requests of every second that has both (the load's CPU per
    request, which the summary's worker totals overstate by the workers' start-up)."""
    out: dict[str, dict[str, list[float]]] = {}
    rates: dict[int, float] = {}  # Aggregated requests/s by whole second, for CPU per request
    for row in run.history:
        if row.get("Type") in OTHER_HISTOGRAM_TYPES or as_float(row.get("Elapsed")) is None:
            continue
        name = row.get("Name", "")
        series = out.setdefault(name, {m.key: [] for m in METRICS})
        requests = as_float(row.get("Interval Requests")) or 0.0
        for m in METRICS:
            v = as_float(precise_cell(row, m.column)) if m.column else None
            if v is not None and (m.key == "requests_per_s" or requests > 0):
                series[m.key].append(v)
        failures = as_float(row.get("Interval Failures"))
        if requests > 0 and failures is not None:
            series["error_rate"].append(failures / requests * 100)
        rate = as_float(row.get("Requests/s"))
        if name == AGGREGATED and rate:
            rates[round(as_float(row.get("Elapsed")) or 0.0)] = rate
    samples: dict[tuple[int, str], float] = {}  # (whole second, worker role:pid): its CPU seconds per second
    for row in run.resources:
        elapsed, percent = as_float(row.get("elapsed_s")), as_float(row.get("cpu_percent"))
        # A worker's last sample, as it exits, covers a sliver of a second: it would count that second twice.
        # A load worker's role: worker-K on this machine, node-N/worker-K on a cluster node.
        if str(row.get("role", "")).rsplit("/", 1)[-1].startswith("worker") \
                and row.get("status") not in ("zombie", "dead") \
                and elapsed is not None and percent is not None:
            samples[(round(elapsed), f'{row.get("role", "")}:{row.get("pid", "")}')] = percent / 100
    cpu: dict[int, float] = {}
    for (second, _), cores in samples.items():
        cpu[second] = cpu.get(second, 0.0) + cores
    both = [s for s in sorted(cpu) if rates.get(s)]
    if AGGREGATED in out and both:
        out[AGGREGATED]["cpu_us_per_request"] = [cpu[s] / rates[s] * 1e6 for s in both]
        out[AGGREGATED]["cpu_total"] = [sum(cpu[s] for s in both) / sum(rates[s] for s in both) * 1e6]
    return out


def noise_band(seconds_a: list[float], seconds_b: list[float]) -> float | None:
    """NOISE_K times sqrt(sA² + sB²), sA and sB the standard deviations of each run's per-second values: how
    far one second of B strays from one second of A by chance. A run with fewer than two seconds adds
    nothing; None if neither has two."""
    variances = [statistics.variance(v) for v in (seconds_a, seconds_b) if len(v) >= 2]
    if not variances:
        return None
    return NOISE_K * math.sqrt(sum(variances))


def _change(metric: Metric, a: float | None, b: float | None, tolerance: float, noise: float | None) -> Change:
    if a is None or b is None:
        return Change(metric, a, b, None, False, noise)
    pct = (b - a) / a * 100 if a else (0.0 if b == a else None)
    worse_by = b - a if metric.higher_is_worse else a - b
    if metric.higher_is_worse and not a:
        worse = b > 0  # from none to some failures is worse at any tolerance and any noise
    else:
        worse = worse_by > tolerance * a and (noise is None or worse_by > noise)
    return Change(metric, a, b, pct, worse, noise)


