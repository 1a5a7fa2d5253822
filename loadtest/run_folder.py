"""A run folder, as read: its summary, CSV files and whole-run histograms.

A run writes summary.json, history.csv, failures.csv, resources.csv and
histograms.json into one folder; this module reads them back for the report
and for comparing runs. Only summary.json is required: a missing or damaged
optional file reads as empty. From the rows it derives the numbers the charts
plot (each target's per-second series and its latency percentile spectrum) and
draws nothing itself.

    from loadtest.run_folder import load_run
    run = load_run(Path("reports/sites-20260101-120000"))
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

HISTOGRAMS_NAME = "histograms.json"
MAX_FIGURE = 1e15  # larger numbers in a run's files are damage, not measurements
MAX_POINTS = 600  # per series: a 10-minute run at one row a second keeps every second
SPECTRUM_STEPS_PER_DECADE = 24
SPECTRUM_DECADES = 6  # up to the 99.9999th percentile
AGGREGATED = "Aggregated"
OTHER_HISTOGRAM_TYPES = ("CONNECT", "LATENESS", "UNCORRECTED")  # rows of a target's other histograms
SUMMARY_PERCENTILES = ("p50", "p66", "p75", "p80", "p90", "p95", "p98", "p99", "p99.9", "p99.99")

Point = tuple[float, float]


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; its message is one sentence."""


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, as read."""

    path: Path
    summary: dict[str, Any]
    history: list[dict[str, str]]
    failures: list[dict[str, str]]
    resources: list[dict[str, str]]
    histograms: dict[str, str]  # target name: its whole-run latency HdrHistogram, encoded

    @property
    def name(self) -> str:
        return str(self.summary.get("name", self.path.name))

    def target_summaries(self) -> list[dict[str, Any]]:
        """Each target's summary, then the aggregate's (named Aggregated)."""
        targets = [t for t in self.summary.get("targets", []) if isinstance(t, dict)]
        agg = self.summary.get("aggregated")
        if isinstance(agg, dict):
            targets.append({**agg, "name": AGGREGATED, "type": ""})
        return targets

    @property
    def single_target(self) -> bool:
        """One target only: its Aggregated figures repeat it, and charts leave them out."""
        return len(self.summary.get("targets") or []) == 1


def load_run(path: Path) -> RunFolder:
    """Read a run folder: summary.json is required, every other file optional."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: is not a folder")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise RunFolderError(f"{path}: is not a run folder (it has no summary.json)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{summary_path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{summary_path}: is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise RunFolderError(f"{summary_path}: is nested too deeply to be a loadtest summary") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("targets"), list):
        raise RunFolderError(f"{summary_path}: is not a loadtest summary (it has no list of targets)")
    _check_shape(summary, summary_path)
    histograms: dict[str, str] = {}
    hist_path = path / HISTOGRAMS_NAME
    if hist_path.is_file():
        try:
            raw = json.loads(hist_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raw = {}  # the spectrum falls back to the summary's percentiles
        if isinstance(raw, dict):  # {name: {"latency": encoded, ...}}, or {name: encoded}
            for k, v in raw.items():
                encoded = v.get("latency") if isinstance(v, dict) else v
                if isinstance(encoded, str):
                    histograms[str(k)] = encoded
    return RunFolder(path, summary, _read_csv(path / "history.csv"), _read_csv(path / "failures.csv"),
                     _read_csv(path / "resources.csv"), histograms)


# The summary's fields that hold mappings, at the top and in each target: a damaged file that has
# something else there is refused whole rather than half drawn.
_MAPPINGS = ("aggregated", "machine", "config", "as_run", "latency_ms", "failures_by_kind", "connections",
             "open_model")
_LISTS = ("problems", "thresholds", "verdicts", "shortfalls", "servers", "workers")


def _check_shape(summary: dict[str, Any], where: Path) -> None:
    parts = [summary, *summary["targets"]]
    if not all(isinstance(p, dict) for p in parts):
        raise RunFolderError(f"{where}: is damaged (a target is not a mapping of fields)")
    for part in parts:
        for key in _MAPPINGS:
            if key in part and part[key] is not None and not isinstance(part[key], dict):
                raise RunFolderError(f"{where}: is damaged ({key} is not a mapping of fields)")
    for key in _LISTS:
        if key in summary and summary[key] is not None and not isinstance(summary[key], list):
            raise RunFolderError(f"{where}: is damaged ({key} is not a list)")


def write_page(path: Path, text: str) -> Path:
    """Write an HTML page whole or not at all; a path that cannot take it is a RunFolderError."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{path}: is a folder; give the path of the HTML file to write")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise RunFolderError(f"{path}: cannot be written ({e.strerror or e})") from None
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and abs(f) <= MAX_FIGURE else None


# -- series ----------------------------------------------------------------


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
    """Per target name: its req/s, failures/s and per-second percentiles against elapsed seconds."""
    out: dict[str, dict[str, list[Point]]] = {}
    for row in run.history:
        name, elapsed = row.get("Name", ""), as_float(row.get("Elapsed"))
        if elapsed is None or row.get("Type") in OTHER_HISTOGRAM_TYPES:
            continue
        series = out.setdefault(name, {"rps": [], "fps": [], "p50": [], "p95": [], "p99": []})
        for key, column in (("rps", "Requests/s"), ("fps", "Failures/s")):
            v = as_float(row.get(column))
            if v is not None:
                series[key].append((elapsed, v))
        if (as_float(row.get("Interval Requests")) or 0) > 0:  # an empty second has no latency
            for key, column in (("p50", "50%"), ("p95", "95%"), ("p99", "99%")):
                v = as_float(row.get(column))
                if v is not None:
                    series[key].append((elapsed, v))
    for series in out.values():
        for key in series:
            series[key] = downsample(series[key], keep=mean_of if key in ("rps", "fps") else max)
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
    for k in range(1, steps + 1):
        p = x_to_percentile(k / SPECTRUM_STEPS_PER_DECADE)
        points.append((p, hist.get_value_at_percentile(p) / 1e6))
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

