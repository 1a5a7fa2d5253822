"""SVG line charts for the report pages, drawn as inline SVG text.

A chart is a pure function of its series: the same points give the same bytes.
There is a chart over elapsed time and a latency percentile spectrum on a log
"1/(1-p)" axis; every label is escaped. No script and no external file: the
SVG goes straight into a self-contained page.

    from loadtest.outputs.svg_chart import Series, time_chart
    time_chart("Requests/s", [Series("requests/s", [(0.0, 10.0), (1.0, 12.0)], "#2563eb")], "per second")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape

from loadtest.core.run_files import AGGREGATED
from loadtest.outputs.series import SPECTRUM_DECADES, Point, spectrum_x, x_to_percentile

MINUTE_STEPS = (15, 30, 60, 120, 300, 600, 900, 1800, 3600)  # seconds between ticks on a long run's time axis
END_SLACK = 0.02  # a run's end a hair past a round length (10.02 s) keeps that length's ticks (0, 2, … 10 s)
END_TICK_GAP = 0.4  # of a tick step: an axis end closer than this to the last round tick gets no label
LOG_Y_RATIO = 30.0  # a spectrum spanning more than this from its lowest to highest value gets a log axis
AGGREGATED_COLOR = "#374151"
FAILURE_COLOR = "#dc2626"
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
           "#65a30d", "#7c3aed", "#0d9488", "#b45309")
PERCENTILE_COLORS = {"p50": "#2563eb", "p95": "#f59e0b", "p99": "#dc2626"}

WIDTH, HEIGHT = 640, 230
WIDE = (1200, 380)
LEFT, RIGHT, TOP, BOTTOM = 58, 18, 12, 38


@dataclass(frozen=True)
class Series:
    """One line of a chart."""

    label: str
    points: Sequence[Point]
    color: str
    dashed: bool = False
    fill: bool = False
    width: float = 1.8


# -- axis labels -----------------------------------------------------------


def fmt_short(v: float) -> str:
    """An axis label: 1.5k, 20k, 3M, 0.25."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:.4g}"


def fmt_seconds(v: float, span: float) -> str:
    if span <= 120:
        return f"{v:g}s"
    return f"{int(v) // 60}:{int(v) % 60:02d}"


def fmt_percentile(p: float) -> str:
    return f"{p:.6f}".rstrip("0").rstrip(".") + "%"


# -- charts ----------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps data values to 0..1 along an axis, with its labelled ticks."""

    lo: float
    hi: float
    ticks: tuple[tuple[float, str], ...]
    log: bool = False

    def at(self, v: float) -> float:
        if self.log:
            v, lo, hi = math.log10(max(v, self.lo)), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return 0.0 if hi == lo else (v - lo) / (hi - lo)


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / count if span > 0 else 1.0
    mag = math.pow(10.0, math.floor(math.log10(raw)))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_scale(values: Iterable[float], fmt: Callable[[float], str] = fmt_short, floor: float = 0.0,
                 at_least: float = 0.0) -> Scale:
    vs = list(values)
    hi = max([*vs, at_least, floor])
    lo = min([*vs, floor])
    if hi <= lo:
        hi = lo + 1.0
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    n = round((hi - lo) / step)
    return Scale(lo, hi, tuple((lo + k * step, fmt(lo + k * step)) for k in range(n + 1)))


def log_scale(values: Iterable[float], fmt: Callable[[float], str] = fmt_short) -> Scale:
    vs = [v for v in values if v > 0] or [1.0]
    lo, hi = 10 ** math.floor(math.log10(min(vs))), 10 ** math.ceil(math.log10(max(vs)))
    if hi <= lo:
        hi = lo * 10
    decades = round(math.log10(hi / lo))
    mults = (1, 2, 5) if decades <= 3 else (1,)
    ticks = []
    for d in range(decades + 1):
        for m in mults:
            v = lo * 10 ** d * m
            if v <= hi * 1.0001:
                ticks.append((v, fmt(v)))
    return Scale(lo, hi, tuple(ticks), log=True)


def time_scale(values: Iterable[float], end: float | None = None) -> Scale:
    """Elapsed seconds from 0 to `end` (the run's duration) or the last point, whichever is later, with
    round ticks inside it; without `end`, to the next round tick after the last point."""
    vs = list(values)
    hi = max([*vs, end or 0.0, 1.0 if end is None else 1e-3])
    span = hi / (1.0 + END_SLACK) if end is not None else hi
    step = _nice_step(span)
    if hi > 120:  # quarters and halves of a minute, whole minutes, or round numbers of them
        step = next((s for s in MINUTE_STEPS if s >= span / 5), math.ceil(span / 5 / 3600) * 3600)
    if end is None:
        hi = math.ceil(hi / step) * step
    count = math.floor(hi / step + 1e-9)
    ticks = [(k * step, fmt_seconds(k * step, hi)) for k in range(count + 1)]
    if hi - count * step > step * END_TICK_GAP:  # the end gets its own label when it is not crowded
        ticks.append((hi, fmt_seconds(round(hi, 1), hi)))
    return Scale(0.0, hi, tuple(ticks))


def spectrum_scale(last_x: float) -> Scale:
    decades = max(1, min(SPECTRUM_DECADES, math.ceil(last_x - 1e-9)))
    return Scale(0.0, float(decades), tuple((float(d), fmt_percentile(x_to_percentile(d))) for d in range(decades + 1)))


def chart_svg(label: str, series: Sequence[Series], x: Scale, y: Scale, *, x_title: str, y_title: str,
              x_of: Callable[[float], float] = lambda v: v, refs: Sequence[tuple[float, str]] = (),
              marks: Sequence[tuple[float, str]] = (), size: tuple[int, int] = (WIDTH, HEIGHT)) -> str:
    """An SVG line chart; `x_of` maps a point's x before scaling (the spectrum's log axis). `refs` are
    horizontal lines at a y (a threshold), `marks` vertical ones at an x (a level change), each labelled.

    `size` is the drawing's own coordinate space: a wide chart gets a wide one,
    so its text stays the same size on the page.
    """
    width, height = size
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(v: float) -> float:
        return LEFT + x.at(x_of(v)) * pw

    def py(v: float) -> float:
        return TOP + (1.0 - y.at(v)) * ph

    parts = [(f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
              f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>')]
    for v, text in y.ticks:
        yy = py(v)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{yy + 3.5:.1f}" text-anchor="end">{escape(text)}</text>')
    for v, text in x.ticks:
        xx = LEFT + x.at(v) * pw
        anchor = "end" if v == x.hi and v > x.lo else "middle"  # the last label stays inside the frame
        parts.append(f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
                     f'<text class="tick" x="{xx:.1f}" y="{TOP + ph + 15}" text-anchor="{anchor}">{escape(text)}</text>')
    for v, text in refs:
        if y.lo <= v <= y.hi:
            yy = py(v)
            parts.append(f'<line class="ref" x1="{LEFT}" x2="{width - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                         f'<text class="ref-label" x="{LEFT + 4}" y="{yy + 11:.1f}">'
                         f'{escape(text)}</text>')
    for v, text in marks:
        if x.lo <= x_of(v) <= x.hi:
            xx = px(v)
            parts.append(f'<line class="mark" x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + ph}">'
                         f'<title>{escape(text)}</title></line>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>')
    lines = [_series_svg(s, [(px(a), py(b)) for a, b in s.points], py(max(y.lo, 0.0)) if not y.log else TOP + ph)
             for s in series if s.points]
    parts.extend(lines)
    drawn = len(lines)
    if not drawn:
        parts.append(f'<text class="empty" x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle">no data</text>')
    parts.append(f'<text class="axis" x="{LEFT + pw / 2}" y="{height - 4}" text-anchor="middle">{escape(x_title)}</text>'
                 f'<text class="axis" transform="translate(13 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f'{escape(y_title)}</text></svg>')
    return "".join(parts)


def _series_svg(s: Series, pts: list[tuple[float, float]], base: float) -> str:
    """One series drawn at its points (already scaled): a dot alone, or a line with its area down to `base`."""
    coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
    dash = ' stroke-dasharray="6 4"' if s.dashed else ""
    parts = [f'<g class="series"><title>{escape(s.label)}</title>']
    if s.fill and len(pts) > 1:
        area = f"{pts[0][0]:.1f},{base:.1f} {coords} {pts[-1][0]:.1f},{base:.1f}"
        parts.append(f'<polygon points="{area}" fill="{s.color}" fill-opacity="0.10" stroke="none"/>')
    if len(pts) == 1:
        parts.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" fill="{s.color}"/>')
    else:
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="{s.width}" '
                     f'stroke-linejoin="round" stroke-linecap="round"{dash}/>')
    parts.append("</g>")
    return "".join(parts)


def legend(series: Sequence[Series], extra: Sequence[str] = ()) -> str:
    items = []
    for s in series:
        style = f"border-top:3px {'dashed' if s.dashed else 'solid'} {s.color}"
        items.append(f'<span><i class="sw" style="{style}"></i>{escape(s.label)}</span>')
    items += [f'<span class="muted">{escape(e)}</span>' for e in extra]
    return f'<div class="legend">{"".join(items)}</div>'


def figure(caption: str, series: Sequence[Series], svg: str, extra: Sequence[str] = ()) -> str:
    return f'<figure class="chart-box"><figcaption>{escape(caption)}</figcaption>{legend(series, extra)}{svg}</figure>'


def time_chart(caption: str, series: Sequence[Series], y_title: str, *, refs: Sequence[tuple[float, str]] = (),
               extra: Sequence[str] = (), at_least: float = 0.0, end: float | None = None,
               marks: Sequence[tuple[float, str]] = ()) -> str:
    """A chart over elapsed seconds; its axis ends at `end` (the run's duration) if given."""
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    svg = chart_svg(caption, series, time_scale(xs, end), linear_scale(ys, at_least=at_least),
                    x_title="elapsed", y_title=y_title, refs=refs, marks=marks)
    return figure(caption, series, svg, extra)


def spectrum_chart(caption: str, series: Sequence[Series]) -> str:
    """Latency against percentile on a log "1/(1-p)" axis, as HdrHistogram plots draw it."""
    last_x = max([spectrum_x(p[0]) for s in series for p in s.points] or [1.0])
    ys = [p[1] for s in series for p in s.points]
    positive = [v for v in ys if v > 0]
    use_log = bool(positive) and max(positive) / min(positive) > LOG_Y_RATIO
    y = log_scale(ys, fmt_short) if use_log else linear_scale(ys)
    title = "latency, ms" + (" (log scale)" if use_log else "")
    svg = chart_svg(caption, series, spectrum_scale(last_x), y, x_title="percentile", y_title=title,
                    x_of=spectrum_x, size=WIDE)
    return figure(caption, series, svg)


def target_colors(names: Iterable[str]) -> dict[str, str]:
    colors, k = {}, 0
    for name in names:
        if name == AGGREGATED:
            colors[name] = AGGREGATED_COLOR
        else:
            colors[name] = PALETTE[k % len(PALETTE)]
            k += 1
    return colors
