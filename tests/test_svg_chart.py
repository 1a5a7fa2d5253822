"""svg_chart.py on its own: scales, tick labels, the SVG drawn for given series, and target colours."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from loadtest.core.run_files import AGGREGATED
from loadtest.outputs.svg_chart import (
    AGGREGATED_COLOR,
    BOTTOM,
    HEIGHT,
    LEFT,
    PALETTE,
    RIGHT,
    TOP,
    WIDTH,
    Series,
    chart_svg,
    fmt_percentile,
    fmt_short,
    linear_scale,
    log_scale,
    spectrum_chart,
    target_colors,
    time_chart,
    time_scale,
)

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"


def parse(svg: str) -> ET.Element:
    """The drawing as XML: a chart that is not well-formed fails here."""
    return ET.fromstring(svg)


def test_axis_labels_are_short() -> None:
    assert [fmt_short(v) for v in (0.25, 999, 1500, 20_000, 3e6, 2.5e9, -1500)] == \
        ["0.25", "999", "1.5k", "20k", "3M", "2.5G", "-1.5k"]
    assert [fmt_percentile(p) for p in (0.0, 90.0, 99.9, 99.9999)] == ["0%", "90%", "99.9%", "99.9999%"]


def test_linear_scale_covers_the_values_with_round_ticks() -> None:
    scale = linear_scale([3.0, 97.0])
    assert scale.lo == 0.0 and scale.hi == 100.0
    assert [v for v, _ in scale.ticks] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert scale.at(0.0) == 0.0 and scale.at(50.0) == 0.5 and scale.at(100.0) == 1.0
    assert linear_scale([10.0], at_least=100.0).hi >= 100.0  # a CPU chart always reaches 100% of a core
    flat = linear_scale([0.0, 0.0])  # no spread at all still gets an axis, not a division by zero
    assert flat.hi > flat.lo and flat.at(0.0) == 0.0


def test_log_scale_spans_whole_decades() -> None:
    scale = log_scale([0.3, 45.0, -1.0, 0.0])  # values at or below 0 have no place on a log axis
    assert (scale.lo, scale.hi, scale.log) == (0.1, 100.0, True)
    assert [label for _, label in scale.ticks] == ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]
    assert math.isclose(scale.at(1.0), 1 / 3) and math.isclose(scale.at(10.0), 2 / 3)
    wide = log_scale([0.001, 5000.0])  # more than three decades: one tick a decade
    assert [label for _, label in wide.ticks] == ["0.001", "0.01", "0.1", "1", "10", "100", "1k", "10k"]


def test_time_scale_ends_at_the_run_and_uses_round_ticks() -> None:
    ten = time_scale([0.5, 10.001], end=10.001)  # a 10 s run: its axis ended at 12.5 s
    assert ten.hi == 10.001 and [label for _, label in ten.ticks] == ["0s", "2s", "4s", "6s", "8s", "10s"]
    assert time_scale([0.5, 9.9]).hi == 10.0  # without an end: the next round tick
    ten_minutes = time_scale([1.0, 600.5], end=600.5)  # ticks were 0:00, 3:15, 6:30, 9:45
    assert [label for _, label in ten_minutes.ticks] == ["0:00", "2:00", "4:00", "6:00", "8:00", "10:00"]


def test_chart_draws_each_series_inside_its_frame_and_escapes_text() -> None:
    x, y = linear_scale([0.0, 10.0]), linear_scale([0.0, 100.0])
    series = [Series(EVIL, [(0.0, 0.0), (5.0, 50.0), (10.0, 100.0)], "#123456", dashed=True),
              Series("one point", [(5.0, 25.0)], "#654321"),
              Series("empty", [], "#000000")]
    svg = chart_svg(EVIL, series, x, y, x_title="elapsed", y_title="ms", refs=[(90.0, "saturated"), (500.0, "off")])
    root = parse(svg)
    assert "<script>" not in svg and root.find(f"{SVG}title").text == EVIL  # escaped, and reads back whole
    (line,) = root.iter(f"{SVG}polyline")
    points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert points[0] == (LEFT, HEIGHT - BOTTOM) and points[-1] == (WIDTH - RIGHT, TOP)  # corners of the frame
    assert line.get("stroke") == "#123456" and line.get("stroke-dasharray") == "6 4"
    (dot,) = root.iter(f"{SVG}circle")  # a single point is a dot, not an invisible line
    assert dot.get("fill") == "#654321"
    assert len(root.findall(f"{SVG}g")) == 2  # the empty series draws nothing
    refs = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "ref-label"]
    assert refs == ["saturated"]  # a mark outside the axis is left out
    assert "no data" not in svg
    nothing = parse(chart_svg("none", [Series("empty", [], "#000000")], x, y, x_title="t", y_title="v"))
    assert [t.text for t in nothing.iter(f"{SVG}text") if t.get("class") == "empty"] == ["no data"]


def test_time_chart_legend_names_every_series() -> None:
    html = time_chart("Requests/s", [Series("home", [(0.0, 1.0), (1.0, 2.0)], PALETTE[0]),
                                     Series(AGGREGATED, [(0.0, 3.0), (1.0, 4.0)], AGGREGATED_COLOR, dashed=True)],
                      "req/s", end=1.0)
    legend = re.search(r'<div class="legend">(.*?)</div>', html).group(1)
    assert re.findall(r"</i>([^<]+)</span>", legend) == ["home", AGGREGATED]
    assert "dashed #374151" in legend


def test_spectrum_chart_switches_to_a_log_axis_for_a_wide_spread() -> None:
    narrow = spectrum_chart("latency", [Series("a", [(0.0, 1.0), (99.0, 2.0), (99.9, 3.0)], PALETTE[0])])
    wide = spectrum_chart("latency", [Series("a", [(0.0, 1.0), (99.0, 2.0), (99.9, 1000.0)], PALETTE[0])])
    assert "(log scale)" not in narrow and "latency, ms (log scale)" in wide
    ticks = re.findall(r'class="tick"[^>]*>([^<]+)</text>', narrow)
    assert ticks[-4:] == ["0%", "90%", "99%", "99.9%"]  # the percentile axis runs to the last point's decade


def test_target_colors_keep_the_aggregate_grey_and_cycle_the_palette() -> None:
    names = [f"t{k}" for k in range(len(PALETTE) + 1)]
    colors = target_colors([names[0], AGGREGATED, *names[1:]])
    assert colors[AGGREGATED] == AGGREGATED_COLOR
    assert [colors[n] for n in names] == [*PALETTE, PALETTE[0]]
