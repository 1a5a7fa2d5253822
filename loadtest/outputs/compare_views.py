"""A comparison of two runs as people and tools read it: the terminal's table, CSV, JSON and the HTML page."""

from __future__ import annotations

import csv
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from loadtest.outputs.compare import MIN_CPU_RUN_S, NOISE_K, Change, Comparison, Metric
from loadtest.outputs.page import fmt_count, fmt_ms, page, table, td
from loadtest.core.run_files import (
    AGGREGATED,
)
from loadtest.outputs.run_folder import RunFolder, write_page
from loadtest.outputs.series import spectra
from loadtest.outputs.svg_chart import Series, spectrum_chart, target_colors


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


def _noise(c: Change) -> str:
    """The noise band as a share of A: how far B had to move before the change counted."""
    if c.noise is None or c.a is None:
        return "—"
    return f"±{c.noise / c.a * 100:.1f}%" if c.a else f"±{c.noise:.3g}"


def _run_line(tag: str, run: RunFolder) -> str:
    s = run.summary
    return f"{tag}  {run.path}  ({run.name}, started {s.get('started', '?')}, {s.get('duration_s', '?')} s)"


def _verdict(c: Comparison) -> str:
    tol = f"{c.tolerance * 100:g}%"
    if not c.worse:
        return f"OK: nothing got worse beyond {tol} and the runs' own noise"
    parts = []
    if c.worse_count:
        n = c.worse_count
        parts.append(f"{n} figure{'s' if n != 1 else ''} got worse beyond {tol} and the runs' own noise")
    if c.only_in_a:
        n = len(c.only_in_a)
        parts.append(f"{n} target{'s' if n != 1 else ''} of A missing from B")
    return "WORSE: " + "; ".join(parts)


def format_table(c: Comparison) -> str:
    """The comparison as an aligned text table, for a terminal."""
    lines = [_run_line("A", c.run_a), _run_line("B", c.run_b), ""]
    rows = [("target", "metric", "A", "B", "change", "noise", "")]
    for t in c.targets:
        for i, ch in enumerate(t.changes):
            rows.append((t.name if i == 0 else "", _label(ch.metric), _value(ch.metric, ch.a),
                         _value(ch.metric, ch.b), _pct(ch), _noise(ch), "worse" if ch.worse else ""))
    widths = [max(len(r[k]) for r in rows) for k in range(7)]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), *(r[k].rjust(widths[k]) for k in (2, 3, 4, 5)), r[6]]
        lines.append("  ".join(cells).rstrip())
    for tag, names in (("A", c.only_in_a), ("B", c.only_in_b)):
        if names:
            lines.append(f"only in {tag}: {', '.join(names)}")
    if len(c.targets) > 1:
        lines.append(CPU_PER_TARGET_NOTE)
    if any(ch.metric.key == "cpu_us_per_request" and (ch.a is None or ch.b is None)
           for t in c.targets for ch in t.changes):
        lines.append(SHORT_RUN_CPU_NOTE)
    lines += ["", _verdict(c)]
    return "\n".join(lines) + "\n"


# Said wherever per-target CPU/request shows "—", so that the dash is not read as a figure that failed to load
CPU_PER_TARGET_NOTE = ("CPU/request is the whole run's only (Aggregated): each worker serves every target at once, "
                       "so its CPU has no share per target.")


SHORT_RUN_CPU_NOTE = (f"CPU/request is compared for runs of {MIN_CPU_RUN_S:g} s or more: a shorter run's CPU is "
                      "mostly its workers' start-up.")


def _title(run: RunFolder) -> str:
    """A run as a page title names it: its folder and when it started (two runs of one config differ there)."""
    return f"{run.path.name} ({run.summary.get('started', '?')})"


def format_csv(c: Comparison) -> str:
    """One row per target and figure: target,metric,unit,a,b,change_pct,worse,noise (noise: the band B had
    to pass, in the figure's unit; empty when the runs have no per-second figures)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["target", "metric", "unit", "a", "b", "change_pct", "worse", "noise"])
    for t in c.targets:
        for ch in t.changes:
            w.writerow([t.name, ch.metric.key, ch.metric.unit, _csv_number(ch.a), _csv_number(ch.b),
                        _csv_number(ch.change_pct), "true" if ch.worse else "false", _csv_number(ch.noise)])
    return buf.getvalue()


def _csv_number(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def comparison_dict(c: Comparison) -> dict[str, Any]:
    def run(r: RunFolder) -> dict[str, Any]:
        return {"path": str(r.path), "name": r.name, "started": r.summary.get("started"),
                "duration_s": r.summary.get("duration_s")}

    return {
        "run_a": run(c.run_a), "run_b": run(c.run_b), "tolerance": c.tolerance, "noise_k": NOISE_K,
        "worse": c.worse,
        "targets": [{"name": t.name, "worse": t.worse,
                     "metrics": {ch.metric.key: {"unit": ch.metric.unit, "a": ch.a, "b": ch.b,
                                                 "change_pct": None if ch.change_pct is None
                                                 else round(ch.change_pct, 3),
                                                 "noise": ch.noise, "worse": ch.worse}
                                 for ch in t.changes}}
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
                (ch.change_pct < 0) == ch.metric.higher_is_worse) and (
                ch.noise is None or ch.a is None or ch.b is None or abs(ch.b - ch.a) > ch.noise)
            mark = "worse" if ch.worse else ("better" if better else "")
            cls = "bad" if ch.worse else ("good" if better else "")
            rows.append([td(t.name if i == 0 else "", "l name"), td(_label(ch.metric), "l"),
                         td(_value(ch.metric, ch.a)), td(_value(ch.metric, ch.b)), td(_pct(ch), cls), td(_noise(ch)),
                         td(mark, cls)])
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
    body = (f'<header class="top"><div><h1>{escape(_title(c.run_a))} → {escape(_title(c.run_b))}</h1>'
            f'<div class="sub">run B compared with run A, tolerance {c.tolerance * 100:g}%</div></div>'
            f'<div>{badge}</div></header>'
            f'<section><h2>Runs</h2><dl>{runs}</dl></section>'
            f'<section><h2>Side by side</h2>'
            + table(["Target", "Metric", "A", "B", "Change", "Noise", ""], rows, left=2, row_classes=classes)
            + missing + '<p class="note">Higher latency, error rate or CPU per request is worse; lower '
            'requests/s is worse. CPU per request is the generator\'s workers\', while the load ran, and the whole '
            'run\'s only (Aggregated): each worker serves every target at once. A change counts '
            f'as worse only beyond the tolerance and beyond the noise: {NOISE_K:g} standard deviations of the '
            'difference between a second of A and a second of B (from each run\'s per-second figures).</p></section>'
            '<section><h2>Latency by percentile</h2>'
            + spectrum_chart("Latency percentile spectrum: A solid, B dashed", series) + "</section>")
    return page(f"loadtest compare: {_title(c.run_a)} → {_title(c.run_b)}", body)


def write_compare_html(c: Comparison, out: Path) -> Path:
    return write_page(Path(out), render_compare_html(c))
