"""What a run folder's charts plot: history.csv's per-second series and the latency spectra.

Read from a loaded run (`run_folder.load_run`), downsampled to what a page can draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.core.histograms import any_percentiles_ns
from loadtest.core.run_files import HISTOGRAMS_NAME, OTHER_HISTOGRAM_TYPES, SUMMARY_PERCENTILE_KEYS, precise_cell
from loadtest.outputs.run_folder import RunFolder, as_float
from loadtest.outputs.run_folder_checks import check_histogram

MAX_POINTS = 600  # per series: a 10-minute run at one row a second keeps every second
SPECTRUM_STEPS_PER_DECADE = 24
SPECTRUM_DECADES = 6  # up to the 99.9999th percentile
SUMMARY_PERCENTILES = SUMMARY_PERCENTILE_KEYS[:-1]  # p50 … p99.99; p100 is the maximum, read as "max"

Point = tuple[float, float]


def downsample(points: Sequence[Point], limit: int = MAX_POINTS, keep: Callable[[list[float]], float] = max
               ) -> list[Point]:
    """At most `limit` points: consecutive runs merged, x by mean, y by `keep` (max keeps spikes)."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / limit)
    out = []
    for i in range(0, len(points), size):
        chunk = points[i:i + size]
        out.append((sum(p[0] for p in chunk) / len(chunk), keep([p[1] for p in chunk])))
    return out


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values)


def history_series(run: RunFolder) -> dict[str, dict[str, list[Point]]]:
    """Per target name: its req/s, failures/s, per-second percentiles and level against elapsed seconds."""
    out: dict[str, dict[str, list[Point]]] = {}
    for row in run.history:
        name, elapsed = row.get("Name", ""), as_float(row.get("Elapsed"))
        if elapsed is None or row.get("Type") in OTHER_HISTOGRAM_TYPES:
            continue
        series = out.setdefault(name, {"rps": [], "fps": [], "p50": [], "p95": [], "p99": [], "level": []})
        for key, column in (("rps", "Requests/s"), ("fps", "Failures/s"), ("level", "Target Level")):
            v = as_float(row.get(column))
            if v is not None:
                series[key].append((elapsed, v))
        if (as_float(row.get("Interval Requests")) or 0) > 0:  # an empty second has no latency
            for key, column in (("p50", "50%"), ("p95", "95%"), ("p99", "99%")):
                v = as_float(precise_cell(row, column))  # the precise figure, not Locust's whole ms
                if v is not None:
                    series[key].append((elapsed, v))
    for series in out.values():
        for key in series:
            series[key] = downsample(series[key], keep=mean_of if key in ("rps", "fps", "level") else max)
    return out


@dataclass(frozen=True)
class Spectrum:
    """A latency percentile spectrum: (percentile, ms) points, from p0 to the largest value."""

    name: str
    points: tuple[Point, ...]
    exact: bool  # walked from a full histogram, not only the summary's fixed percentiles


def spectrum_x(p: float) -> float:
    """A percentile's place on the spectrum's axis: log10(1 / (1 - p))."""
    return math.log10(1.0 / max(1.0 - p / 100.0, 10.0 ** -SPECTRUM_DECADES))


def x_to_percentile(x: float) -> float:
    return 100.0 * (1.0 - math.pow(10.0, -x))


def spectra(run: RunFolder) -> list[Spectrum]:
    """Each target's spectrum (and Aggregated's): from histograms.json if there, else the summary."""
    out = []
    for t in run.target_summaries():
        name = str(t.get("name", ""))
        encoded = run.histograms.get(name)
        spectrum = _walk(name, encoded) if encoded else None
        if spectrum is None:
            spectrum = _from_summary(name, t)
        if spectrum.points:
            out.append(spectrum)
    return out


def _walk(name: str, encoded: str) -> Spectrum | None:
    check_histogram(encoded, f"{HISTOGRAMS_NAME}: {name!r}")  # load_run checked it already; this keeps _walk safe alone
    try:
        hist = HdrHistogram.decode(encoded.encode("ascii"))
    except Exception:  # noqa: BLE001 - a damaged histogram falls back to the summary's percentiles
        return None
    count = hist.get_total_count()
    if not count:
        return None
    last_x = min(math.log10(count), SPECTRUM_DECADES)
    points = [(0.0, hist.get_min_value() / 1e6)]
    steps = int(last_x * SPECTRUM_STEPS_PER_DECADE)
    ps = [x_to_percentile(k / SPECTRUM_STEPS_PER_DECADE) for k in range(1, steps + 1)]
    points += [(p, v / 1e6) for p, v in zip(ps, any_percentiles_ns(hist, ps))]
    points.append((x_to_percentile(last_x), hist.get_max_value() / 1e6))
    return Spectrum(name, tuple(points), exact=True)


def _from_summary(name: str, target: dict[str, Any]) -> Spectrum:
    latency = target.get("latency_ms") or {}
    count = as_float(target.get("requests")) or 0.0
    last_x = min(math.log10(count), SPECTRUM_DECADES) if count >= 1 else 0.0
    points: list[Point] = []
    low = as_float(latency.get("min"))
    if low is not None:
        points.append((0.0, low))
    for key in SUMMARY_PERCENTILES:
        p, v = float(key[1:]), as_float(latency.get(key))
        if v is not None and spectrum_x(p) < last_x:
            points.append((p, v))
    high = as_float(latency.get("max", latency.get("p100")))
    if high is not None:
        points.append((x_to_percentile(last_x), high))
    return Spectrum(name, tuple(points), exact=False)
