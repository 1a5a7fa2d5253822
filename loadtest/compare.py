"""Compare two runs: what got faster, what got slower, and whether anything got worse.

Per target present in both runs, and Aggregated: requests/s, p50, p95, p99,
p99.9, error rate and the generator's CPU per request, from each run folder's
summary.json; for each the change in % and whether it got worse beyond the
tolerance. Higher latency, error rate or CPU is worse; lower requests/s is.
`Comparison.worse` is what CI gates on (the CLI exits 1).

    c = compare_runs(Path("reports/a"), Path("reports/b"), tolerance=0.05)
    print(format_table(c))
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from .html_report import fmt_count, fmt_ms, page, table, td
from .run_folder import AGGREGATED, RunFolder, RunFolderError, load_run, spectra, write_page
from .svg_chart import Series, spectrum_chart, target_colors

DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Metric:
    """A figure compared between runs."""

    key: str
    label: str
    unit: str
    higher_is_worse: bool


METRICS = (
    Metric("requests_per_s", "req/s", "req/s", higher_is_worse=False),
    Metric("p50", "p50", "ms", higher_is_worse=True),
    Metric("p95", "p95", "ms", higher_is_worse=True),
    Metric("p99", "p99", "ms", higher_is_worse=True),
    Metric("p99.9", "p99.9", "ms", higher_is_worse=True),
    Metric("error_rate", "error rate", "%", higher_is_worse=True),
    Metric("cpu_us_per_request", "CPU/request", "µs", higher_is_worse=True),
)


@dataclass(frozen=True)
class Change:
    """One figure in run A and run B, its change in %, and whether it got worse beyond the tolerance."""

    metric: Metric
    a: float | None
    b: float | None
    change_pct: float | None  # None when either is missing, or A is 0 and B is not
    worse: bool


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
        """Whether any figure of any target got worse beyond the tolerance, or a target of A is
        missing from B (a gate must not pass because B stopped testing something)."""
        return bool(self.only_in_a) or any(t.worse for t in self.targets)

    @property
    def worse_count(self) -> int:
        return sum(c.worse for t in self.targets for c in t.changes)


def compare_runs(run_a: Path, run_b: Path, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare run folder B against run folder A. Raises RunFolderError (a ValueError) for a bad folder."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance: must be a fraction of at least 0 (0.05 is 5%), got {tolerance!r}")
    a, b = load_run(Path(run_a)), load_run(Path(run_b))
    figures_a, figures_b = _figures(a), _figures(b)
    names = [n for n in figures_a if n in figures_b]
    if not names:
        raise RunFolderError(f"{run_a} and {run_b} have no target in common, so there is nothing to compare")
    targets = tuple(
        TargetComparison(n, tuple(_change(m, figures_a[n].get(m.key), figures_b[n].get(m.key), tolerance)
                                  for m in METRICS))
        for n in names)
    return Comparison(a, b, tolerance, targets,
                      tuple(n for n in figures_a if n not in figures_b),
                      tuple(n for n in figures_b if n not in figures_a))


def _figures(run: RunFolder) -> dict[str, dict[str, float | None]]:
    """Per target name (Aggregated last): the compared figures of one run."""
    out: dict[str, dict[str, float | None]] = {}
    for t in run.target_summaries():
        latency = t.get("latency_ms") or {}
        error_rate = _number(t.get("error_rate"))
        out[str(t.get("name", ""))] = {
            "requests_per_s": _number(t.get("requests_per_s")),
            **{k: _number(latency.get(k)) for k in ("p50", "p95", "p99", "p99.9")},
            "error_rate": error_rate * 100 if error_rate is not None else None,
            "cpu_us_per_request": None,
        }
    if AGGREGATED in out:
        # Workers serve every target at once, so CPU per request is a figure of the whole run only.
        out[AGGREGATED]["cpu_us_per_request"] = _cpu_per_request(run)
    return out


def _cpu_per_request(run: RunFolder) -> float | None:
    workers = [w for w in run.summary.get("workers") or [] if isinstance(w, dict)]
    seconds = [(_number(w.get("cpu_user_s")) or 0.0) + (_number(w.get("cpu_system_s")) or 0.0) for w in workers
               if w.get("cpu_user_s") is not None or w.get("cpu_system_s") is not None]
    requests = _number((run.summary.get("aggregated") or {}).get("requests"))
    if not seconds or not requests:
        return None
    return sum(seconds) / requests * 1e6


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _change(metric: Metric, a: float | None, b: float | None, tolerance: float) -> Change:
    if a is None or b is None:
        return Change(metric, a, b, None, False)
    pct = (b - a) / a * 100 if a else (0.0 if b == a else None)
    if metric.higher_is_worse:
        worse = b > a * (1 + tolerance) if a else b > 0  # from none to some errors is worse at any tolerance
    else:
        worse = b < a * (1 - tolerance)
    return Change(metric, a, b, pct, worse)


# -- renderers -------------------------------------------------------------


def _value(metric: Metric, v: float | None) -> str:
    if v is None:
        return "—"
    if metric.unit == "ms":
        return fmt_ms(v)
    if metric.unit == "%":
        return f"{v:.3g}%" if v else "0%"
    if metric.unit == "µs":
        return fmt_count(v, 1)
    return fmt_count(v, 1)


def _pct(c: Change) -> str:
    if c.change_pct is None:
        return "new" if c.a == 0 and c.b else "—"
    return f"{c.change_pct:+.1f}%"


def _label(metric: Metric) -> str:
    return metric.label if metric.unit in ("req/s", "%") else f"{metric.label} {metric.unit}"


def _run_line(tag: str, run: RunFolder) -> str:
    s = run.summary
    return f"{tag}  {run.path}  ({run.name}, started {s.get('started', '?')}, {s.get('duration_s', '?')} s)"


def _verdict(c: Comparison) -> str:
    tol = f"{c.tolerance * 100:g}%"
    if not c.worse:
        return f"OK: nothing got worse beyond {tol}"
    parts = []
    if c.worse_count:
        n = c.worse_count
        parts.append(f"{n} figure{'s' if n != 1 else ''} got worse beyond {tol}")
    if c.only_in_a:
        n = len(c.only_in_a)
        parts.append(f"{n} target{'s' if n != 1 else ''} of A missing from B")
    return "WORSE: " + "; ".join(parts)


def format_table(c: Comparison) -> str:
    """The comparison as an aligned text table, for a terminal."""
    lines = [_run_line("A", c.run_a), _run_line("B", c.run_b), ""]
    rows = [("target", "metric", "A", "B", "change", "")]
    for t in c.targets:
        for i, ch in enumerate(t.changes):
            rows.append((t.name if i == 0 else "", _label(ch.metric), _value(ch.metric, ch.a),
                         _value(ch.metric, ch.b), _pct(ch), "worse" if ch.worse else ""))
    widths = [max(len(r[k]) for r in rows) for k in range(6)]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), *(r[k].rjust(widths[k]) for k in (2, 3, 4)), r[5]]
        lines.append("  ".join(cells).rstrip())
    for tag, names in (("A", c.only_in_a), ("B", c.only_in_b)):
        if names:
            lines.append(f"only in {tag}: {', '.join(names)}")
    lines += ["", _verdict(c)]
    return "\n".join(lines) + "\n"


def format_csv(c: Comparison) -> str:
    """One row per target and figure: target,metric,unit,a,b,change_pct,worse."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["target", "metric", "unit", "a", "b", "change_pct", "worse"])
    for t in c.targets:
        for ch in t.changes:
            w.writerow([t.name, ch.metric.key, ch.metric.unit, _csv_number(ch.a), _csv_number(ch.b),
                        _csv_number(ch.change_pct), "true" if ch.worse else "false"])
    return buf.getvalue()


def _csv_number(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def comparison_dict(c: Comparison) -> dict[str, Any]:
    def run(r: RunFolder) -> dict[str, Any]:
        return {"path": str(r.path), "name": r.name, "started": r.summary.get("started"),
                "duration_s": r.summary.get("duration_s")}

    return {
        "run_a": run(c.run_a), "run_b": run(c.run_b), "tolerance": c.tolerance, "worse": c.worse,
        "targets": [{"name": t.name, "worse": t.worse,
                     "metrics": {ch.metric.key: {"unit": ch.metric.unit, "a": ch.a, "b": ch.b,
                                                 "change_pct": None if ch.change_pct is None
                                                 else round(ch.change_pct, 3),
                                                 "worse": ch.worse} for ch in t.changes}}
                    for t in c.targets],
        "only_in_a": list(c.only_in_a), "only_in_b": list(c.only_in_b),
    }


def format_json(c: Comparison) -> str:
    return json.dumps(comparison_dict(c), indent=2, ensure_ascii=False) + "\n"


def render_compare_html(c: Comparison) -> str:
    """The comparison as a self-contained HTML page, both runs' spectra on one chart."""
    rows, classes = [], []
    for t in c.targets:
        for i, ch in enumerate(t.changes):
            better = ch.change_pct is not None and not ch.worse and abs(ch.change_pct) > c.tolerance * 100 and (
                (ch.change_pct < 0) == ch.metric.higher_is_worse)
            mark = "worse" if ch.worse else ("better" if better else "")
            cls = "bad" if ch.worse else ("good" if better else "")
            rows.append([td(t.name if i == 0 else "", "l name"), td(_label(ch.metric), "l"),
                         td(_value(ch.metric, ch.a)), td(_value(ch.metric, ch.b)), td(_pct(ch), cls), td(mark, cls)])
            classes.append("first" if i == 0 else "")
    names = [t.name for t in c.targets]
    colors = target_colors(names)
    series = []
    for tag, run, dashed in (("A", c.run_a, False), ("B", c.run_b, True)):
        for s in spectra(run):
            if s.name in colors and not (s.name == AGGREGATED and len(names) == 2):
                series.append(Series(f"{tag}: {s.name}", s.points, colors[s.name], dashed=dashed, width=2.0))
    badge = (f'<span class="badge big fail">{escape(_verdict(c))}</span>' if c.worse
             else f'<span class="badge big pass">{escape(_verdict(c))}</span>')
    runs = "".join(f"<dt>{tag}</dt><dd>{escape(_run_line('', r).strip())}</dd>"
                   for tag, r in (("A", c.run_a), ("B", c.run_b)))
    missing = "".join(f'<p class="note">Only in {tag}: {escape(", ".join(n))}</p>'
                      for tag, n in (("A", c.only_in_a), ("B", c.only_in_b)) if n)
    body = (f'<header class="top"><div><h1>{escape(c.run_a.name)} → {escape(c.run_b.name)}</h1>'
            f'<div class="sub">run B compared with run A, tolerance {c.tolerance * 100:g}%</div></div>'
            f'<div>{badge}</div></header>'
            f'<section><h2>Runs</h2><dl>{runs}</dl></section>'
            f'<section><h2>Side by side</h2>'
            + table(["Target", "Metric", "A", "B", "Change", ""], rows, left=2, row_classes=classes)
            + missing + '<p class="note">Higher latency, error rate or CPU per request is worse; lower '
            'requests/s is worse. CPU per request is the generator\'s, over the whole run.</p></section>'
            '<section><h2>Latency by percentile</h2>'
            + spectrum_chart("Latency percentile spectrum: A solid, B dashed", series) + "</section>")
    return page(f"loadtest compare: {c.run_a.name} → {c.run_b.name}", body)


def write_compare_html(c: Comparison, out: Path) -> Path:
    return write_page(Path(out), render_compare_html(c))
