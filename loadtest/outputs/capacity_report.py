"""A capacity search's part of report.html, from its run folder's capacity.json alone (as the rest of the page).

The section draws latency against rate, with the knee (the rate found) and
each latency SLO marked, and lists every step. `capacity_files` writes the
files it reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from loadtest.core.capacity import rate_text
from loadtest.core.run_files import CAPACITY_NAME
from loadtest.outputs.run_folder import RunFolder, as_float
from loadtest.outputs.svg_chart import (FAILURE_COLOR, PERCENTILE_COLORS, Series, chart_svg, figure, linear_scale,
                                       log_scale)

LOG_Y_RATIO = 30.0  # latencies spanning more than this get a log axis (an overloaded step dwarfs the rest)
KNEE_COLOR = "#16a34a"


def read_capacity(run: RunFolder) -> dict[str, Any] | None:
    """capacity.json of a run folder, or None when the run was not a capacity search (or the file is unreadable)."""
    path = run.path / CAPACITY_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and isinstance(document.get("steps"), list) else None


def _slo_limits_ms(slos: Sequence[Any]) -> list[tuple[float, str]]:
    """(limit in ms, label) of each latency SLO written in capacity.json's `slo`."""
    from loadtest.core.capacity import SloError, parse_slo

    out = []
    for text in slos:
        try:
            slo = parse_slo(str(text).split(":", 1)[-1] if ":" in str(text) else str(text))
        except SloError:
            continue
        if slo.is_latency:
            out.append((slo.value / 1e6, f"SLO {text}"))
    return out


def capacity_section(run: RunFolder) -> str:
    """The report's capacity section: the answer, latency against rate, and each step; "" for another run."""
    document = read_capacity(run)
    if document is None:
        return ""
    steps = [s for s in document["steps"] if isinstance(s, dict) and as_float(s.get("rate")) is not None]
    max_rate = as_float(document.get("max_rate")) or 0.0
    limited = str(document.get("limited_by", ""))
    ordered = sorted(steps, key=lambda s: as_float(s.get("rate")) or 0.0)
    series = []
    for key, label in (("p99_ms", "p99"), ("p50_ms", "p50")):
        points = [(as_float(s["rate"]) or 0.0, v) for s in ordered if (v := as_float(s.get(key))) is not None]
        series.append(Series(f"{label} latency", points, PERCENTILE_COLORS[label]))
    refs = _slo_limits_ms(document.get("slo") or [])
    ys = [p[1] for s in series for p in s.points] + [v for v, _ in refs]
    positive = [v for v in ys if v > 0]
    use_log = bool(positive) and max(positive) / min(positive) > LOG_Y_RATIO
    y = log_scale(ys) if use_log else linear_scale(ys)
    if max_rate > 0:
        series.append(Series(f"knee: {rate_text(max_rate)} ({limited}-limited)", [(max_rate, y.lo), (max_rate, y.hi)],
                             KNEE_COLOR, dashed=True))
    # each step that did not meet the SLO: a dot of its own at its p99 (a one-point series is drawn as a dot)
    dots = [Series(f"{s.get('rate')}/s: {s.get('why') or 'not met'}", [(as_float(s["rate"]) or 0.0,
                                                                         as_float(s.get("p99_ms")) or y.lo)],
                   FAILURE_COLOR) for s in ordered if not s.get("met")]
    xs = [p[0] for s in series for p in s.points]
    svg = chart_svg("Latency against rate", [*series, *dots], linear_scale(xs), y, x_title="rate asked, per second",
                    y_title="latency, ms" + (" (log scale)" if use_log else ""), refs=refs)
    chart = figure("Latency against rate", series, svg,
                   extra=["red dots: steps that missed the SLO or that the generator did not deliver"] if dots else [])
    rows = "".join(
        f'<tr><td>{k}</td><td>{escape(_fmt(s.get("rate")))}</td><td>{escape(_fmt(s.get("achieved_rate")))}</td>'
        f'<td>{escape(_fmt(s.get("p50_ms"), 3))}</td><td>{escape(_fmt(s.get("p99_ms"), 3))}</td>'
        f'<td>{escape(_pct(s.get("error_rate")))}</td><td>{escape(_fmt(s.get("generator_cpu"), 0))}</td>'
        f'<td class="{"good" if s.get("met") else "bad"}">{"met" if s.get("met") else "no"}</td>'
        f'<td class="l">{escape(str(s.get("why") or ""))}</td></tr>'
        for k, s in enumerate(steps, 1))
    table = ('<table><thead><tr><th>Step</th><th>Rate/s</th><th>Achieved/s</th><th>p50 ms</th><th>p99 ms</th>'
             '<th>Errors</th><th>Worker CPU %</th><th>Met</th><th class="l">Why not</th></tr></thead>'
             f'<tbody>{rows}</tbody></table>')
    answer = (f"{rate_text(max_rate)} within {' and '.join(str(s) for s in document.get('slo') or [])}, "
              f"limited by the {limited}" if max_rate > 0 else "no rate met the SLO")
    return (f'<section id="capacity"><h2>Capacity</h2><p><strong id="capacity-answer">{escape(answer)}</strong></p>'
            f'{chart}{table}</section>')


def _fmt(value: Any, digits: int = 1) -> str:
    v = as_float(value)
    return "—" if v is None else f"{v:,.{digits}f}"


def _pct(value: Any) -> str:
    v = as_float(value)
    return "—" if v is None else f"{v * 100:.2f}%"
