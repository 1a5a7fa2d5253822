"""report.html: one self-contained page of a run, built from its folder alone.

The page is plain HTML with inline CSS and charts drawn as inline SVG (svg_chart.py):
no script, no font or file from anywhere else, and a Content-Security-Policy
that forbids fetching anything, so it opens offline and from an archive.
Everything that came from a config or a response (target names, URLs, error
messages) is escaped. It is a pure function of the run folder's files, so
`loadtest report RUN_DIR` writes the same bytes again.

    from loadtest.html_report import write_html_report
    write_html_report(Path("reports/sites-20260101-120000"))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import yaml

from .run_files import (
    AGGREGATED,
    CONNECT_TYPE,
    FAILURES_HEADER,
    LATENESS_TYPE,
    OPEN_MODEL_MEANING,
    REPORT_NAME,
    UNCORRECTED_TYPE,
    WorkerSummary,
    open_model_lateness,
)
from .run_folder import (
    RunFolder,
    as_float,
    downsample,
    history_series,
    load_run,
    mean_of,
    spectra,
    write_page,
)
from .run_folder import (
    RunFolderError as RunFolderError,  # re-exported: callers catch it from here
)
from .svg_chart import (
    AGGREGATED_COLOR,
    FAILURE_COLOR,
    PALETTE,
    PERCENTILE_COLORS,
    Series,
    spectrum_chart,
    target_colors,
    time_chart,
)
from .verdicts import MACHINE_SATURATED_PERCENT
from .verdicts import WORKER_SATURATED_PERCENT as SATURATED_CPU_PERCENT

__all__ = ["REPORT_NAME", "RunFolderError", "render_report", "write_html_report"]

MISSING = "—"
SECRET_KEY = re.compile(r"authorization|cookie|token|password|secret|api[-_]?key", re.IGNORECASE)


# -- numbers ---------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    """Milliseconds to about the histogram's 3 significant digits."""
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_count(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


# -- resources -------------------------------------------------------------


def resource_series(run: RunFolder) -> tuple[list[Series], list[Series], list[Series]]:
    """CPU (% of one core) and RSS (MiB) over time, one line per process, and the machine's CPU (% of all
    cores, its own scale), from resources.csv."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in run.resources:
        groups.setdefault((row.get("role", "") or "", row.get("pid", "") or ""), []).append(row)
    roles = [role for role, _ in groups]
    cpu, rss, machine_cpu = [], [], []
    for i, ((role, pid), rows) in enumerate(groups.items()):
        machine = role == "machine"
        label = "machine, all cores" if machine else (role if roles.count(role) == 1 else f"{role} {pid}")
        color = AGGREGATED_COLOR if machine else PALETTE[i % len(PALETTE)]
        cpu_points, rss_points = [], []
        for row in rows:
            t = as_float(row.get("elapsed_s", row.get("elapsed")))
            if t is None:
                continue
            c, r = as_float(row.get("cpu_percent")), as_float(row.get("rss_bytes"))
            if c is not None:
                cpu_points.append((t, c))
            if r is not None and row.get("status") not in ("zombie", "dead"):  # an exited process holds no memory
                rss_points.append((t, r / 2**20))
        if cpu_points:  # the machine's CPU is a share of all cores, another scale than a process's
            (machine_cpu if machine else cpu).append(Series(label, downsample(cpu_points, keep=mean_of), color))
        if rss_points and not machine:  # so is its memory
            rss.append(Series(label, downsample(rss_points), color))
    return cpu, rss, machine_cpu


# -- the page --------------------------------------------------------------

CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f3f4f6;--card:#fff;--ok:#166534;--okbg:#dcfce7;
--bad:#991b1b;--badbg:#fee2e2;--warnbg:#fef3c7;--warn:#92400e}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Liberation Sans",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 24px 40px}
header.top{display:flex;align-items:flex-start;justify-content:space-between;gap:16px;flex-wrap:wrap}
h1{font-size:24px;margin:0 0 4px;word-break:break-word}
h2{font-size:16px;margin:0 0 12px}
h3{font-size:14px;margin:0 0 8px;word-break:break-word}
.sub{color:var(--muted);font-size:13px}
#outcome{white-space:normal;max-width:640px;text-align:left}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;font-weight:700;font-size:12px;letter-spacing:.04em}
.big{font-size:15px;padding:6px 16px}
.pass{background:var(--okbg);color:var(--ok)}.fail{background:var(--badbg);color:var(--bad)}
.neutral{background:#e5e7eb;color:#374151}.warnb{background:var(--warnbg);color:var(--warn)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-top:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.tile .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.tile .v{white-space:nowrap;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.tile .v small{font-size:13px;color:var(--muted);font-weight:500}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 20px;margin-top:16px}
.note{color:var(--muted);font-size:13px;margin:0}
.warn{background:var(--warnbg);color:var(--warn);border-radius:8px;padding:10px 14px;margin-top:14px}
.warn ul{margin:4px 0 0;padding-left:20px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{color:var(--muted);font-weight:600;font-size:12px;background:#f9fafb}
th.l,td.l{text-align:left}
td.name{font-weight:600;white-space:normal;word-break:break-word;max-width:320px}
td.wide{white-space:normal;max-width:none;font-weight:normal}
tr.agg td{font-weight:700;border-top:2px solid #d1d5db;background:#f9fafb}
tr.first td{border-top:2px solid #d1d5db}
td.bad{color:var(--bad);font-weight:650}
td.good{color:var(--ok)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.target{border-top:1px solid var(--line);padding-top:14px;margin-top:14px}
.target:first-of-type{border-top:0;padding-top:0;margin-top:0}
figure{margin:0}
figcaption{font-weight:600;font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px;color:#374151;margin:4px 0 2px}
.legend span{word-break:break-word}
.sw{display:inline-block;width:16px;height:0;vertical-align:middle;margin-right:6px}
.muted{color:var(--muted)}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#eef0f3;stroke-width:1}
svg .frame{fill:none;stroke:#d1d5db;stroke-width:1}
svg .tick{font-size:11px;fill:#6b7280}
svg .axis{font-size:11px;fill:#6b7280}
svg .empty{font-size:13px;fill:#9ca3af}
svg .ref{stroke:#dc2626;stroke-width:1;stroke-dasharray:3 3;opacity:.6}
svg .ref-label{font-size:10px;fill:#dc2626}
pre{background:#f9fafb;border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;font-size:12px;
max-height:480px;margin:0;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0;font-size:13px}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
footer{color:var(--muted);font-size:12px;margin-top:18px;text-align:center}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
"""
# No script at all, and nothing may be fetched: the report opens the same offline, from an archive, anywhere.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
            f'<body><main>{body}<footer>loadtest · built from the run folder\'s files alone; '
            f'every number here is in them</footer></main></body></html>\n')


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int | Sequence[int] = 1,
          row_classes: Sequence[str] = ()) -> str:
    """An HTML table; cells are HTML already (escape before). `left`: the first N columns, or these
    columns, align left (their cells say so themselves)."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)
    head = "".join(f'<th class="{"l" if i in lefts else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _items(summary: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = summary.get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _check_label(c: dict[str, Any]) -> str:
    return str(c.get("threshold") or c.get("expression") or c.get("what") or c.get("kind") or "")


def _badge(passed: Any) -> str:
    """PASS, FAIL, or (a verdict, which is a condition found) WARN."""
    if passed is True:
        return '<span class="badge pass">PASS</span>'
    if passed is False:
        return '<span class="badge fail">FAIL</span>'
    return '<span class="badge warnb">WARN</span>'


def _header(run: RunFolder) -> str:
    s = run.summary
    status = s.get("exit_status")
    failed = [c for c in [*_items(s, "thresholds"), *_items(s, "verdicts")] if c.get("passed") is False]
    outcome = s.get("outcome")
    if isinstance(outcome, str) and outcome:  # the run's own words: "FAILED: 147,722 of 147,722 requests ..."
        cls = "pass" if status == 0 and outcome.startswith("PASSED") else "fail"
        badge = f'<span class="badge big {cls}" id="outcome">{escape(outcome)}</span>'
    elif status == 0 and not failed:
        badge = '<span class="badge big pass" id="outcome">PASSED</span>'
    elif status is None and not failed:
        badge = '<span class="badge big neutral" id="outcome">NO STATUS</span>'
    else:  # a run folder from before summary.json said its outcome
        why = f"{len(failed)} threshold{'s' if len(failed) != 1 else ''} failed" if failed \
            else f"exit status {status}"
        badge = f'<span class="badge big fail" id="outcome">FAILED · {escape(why)}</span>'
    warnings = [v for v in _items(s, "verdicts") if v.get("passed") is None]
    if warnings:
        badge += (f' <span class="badge big warnb">{len(warnings)} verdict{"s" if len(warnings) != 1 else ""}: '
                  f'numbers in doubt</span>')
    machine = s.get("machine") or {}
    as_run = s.get("as_run") or {}
    sub = [f"started {s.get('started', '?')}", f"{as_float(s.get('duration_s')) or 0:.1f} s",
           f"{as_run.get('workers', len(s.get('workers') or []))} workers",
           f"{machine.get('hostname', '?')} ({machine.get('cores', '?')} cores)"]
    if s.get("interrupted"):
        sub.append("interrupted")
    agg = s.get("aggregated") or {}
    lat = agg.get("latency_ms") or {}
    err = as_float(agg.get("error_rate"))
    requests, failures = as_float(agg.get("requests")), as_float(agg.get("failures"))
    all_failed = bool(requests) and failures == requests
    tiles = [("Requests", fmt_count(requests)),
             ("Throughput, all failed" if all_failed else "Throughput",
              f"{fmt_count(as_float(agg.get('requests_per_s')))} <small>req/s</small>"),
             ("Failures", f"{fmt_count(as_float(agg.get('failures')))} <small>{_pct(err)}</small>"),
             ("p50", f"{fmt_ms(as_float(lat.get('p50')))} <small>ms</small>"),
             ("p95", f"{fmt_ms(as_float(lat.get('p95')))} <small>ms</small>"),
             ("p99", f"{fmt_ms(as_float(lat.get('p99')))} <small>ms</small>"),
             ("Max", f"{fmt_ms(as_float(lat.get('max')))} <small>ms</small>")]
    tiles_html = "".join(f'<div class="tile"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in tiles)
    problems = [str(p) for p in s.get("problems") or []]
    if s.get("aborted_by_threshold"):
        problems.insert(0, f"stopped early by threshold {s['aborted_by_threshold']}")
    warn = ""
    if problems:
        warn = '<div class="warn"><b>Problems in this run</b><ul>' + "".join(
            f"<li>{escape(p)}</li>" for p in problems) + "</ul></div>"
    return (f'<header class="top"><div><h1>{escape(run.name)}</h1><div class="sub">{escape(" · ".join(sub))}'
            f'</div></div><div>{badge}</div></header><div class="tiles">{tiles_html}</div>{warn}')


def _pct(rate: float | None) -> str:
    if rate is None:
        return MISSING
    return f"{rate * 100:.3g}%" if rate else "0%"


def _checks_section(run: RunFolder) -> str:
    s = run.summary
    thresholds, verdicts = _items(s, "thresholds"), _items(s, "verdicts")
    parts = ["<section><h2>Thresholds and verdicts</h2>"]
    if thresholds:
        rows = []
        for c in thresholds:
            value = c.get("measured", c.get("value"))
            unit = str(c.get("unit") or "")
            if value is None:
                measured = MISSING
            elif unit == "fraction" and isinstance(value, (int, float)):
                measured = _pct(float(value))
            elif unit == "count" and isinstance(value, (int, float)):
                measured = fmt_count(float(value))
            else:
                measured = _text(value) + (f" {unit}" if unit else "")
            rows.append([f'<td class="l">{_badge(c.get("passed"))}</td>', td(_check_label(c), "l name"),
                         td(_text(c.get("target", "")), "l name"), td(measured),
                         td(_threshold_details(c, value is None), "l wide")])
        parts.append(table(["Result", "Threshold", "Target", "Measured", "Details"], rows, left=(0, 1, 2, 4)))
    else:
        parts.append('<p class="note">This run set no thresholds.</p>')
    parts.append('<h3 style="margin-top:16px">Verdicts on the measurement</h3>')
    if verdicts:
        rows = []
        for c in verdicts:
            rows.append([f'<td class="l">{_badge(c.get("passed"))}</td>', td(_check_label(c), "l name wide"),
                         td(_verdict_details(c), "l wide")])
        parts.append(table(["Result", "Verdict", "When"], rows, left=3))
    elif "verdicts" in s:
        parts.append('<p class="note">No condition found: no worker or machine stayed saturated, and no worker '
                     'fell behind schedule.</p>')
    else:
        parts.append('<p class="note">This run folder has no verdicts.</p>')
    return "".join(parts) + "</section>"


def _threshold_details(c: dict[str, Any], no_samples: bool) -> str:
    """A threshold's other fields, as sentences."""
    said = []
    if c.get("default"):
        said.append("The config set no thresholds, so the run is held to the default: no failed requests "
                    "(cancelled ones aside).")
    if no_samples:
        said.append("No latency to measure: no request got a response.")
    if c.get("abort_on_fail"):
        said.append("Checked each second too; stops the run when it fails.")
    known = {"threshold", "expression", "what", "passed", "measured", "value", "unit", "target", "figure",
             "abort_on_fail", "default"}
    said += [f"{k}: {_text(v)}." for k, v in c.items() if k not in known]  # a field this page does not know yet
    return " ".join(said)


def _verdict_details(c: dict[str, Any]) -> str:
    """When a verdict's condition held and how far, as a sentence ("what" says the rest)."""
    start, duration, peak = as_float(c.get("start_s")), as_float(c.get("duration_s")), as_float(c.get("peak"))
    said = []
    if c.get("role"):
        said.append(str(c["role"]))
    if start is not None and duration is not None:
        said.append(f"from {start:.1f} s to {start + duration:.1f} s ({duration:.1f} s)")
    if peak is not None:
        said.append(f"at worst {peak:.3f} s late" if c.get("kind") == "behind_schedule" else f"peak {peak:.0f}% CPU")
    known = {"what", "passed", "expression", "kind", "role", "start_s", "duration_s", "peak"}
    said += [f"{k}: {_text(v)}" for k, v in c.items() if k not in known]
    return ", ".join(said)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _summary_section(run: RunFolder) -> str:
    rows, classes = [], []
    for t in run.target_summaries():
        lat = t.get("latency_ms") or {}
        err = as_float(t.get("error_rate"))
        name = str(t.get("name", ""))
        rows.append(_summary_row(str(t.get("type", "")), name, t, lat, err))
        classes.append("agg" if name == AGGREGATED else "")
        conn = t.get("connections")
        if isinstance(conn, dict):
            opened, failed = as_float(conn.get("opened")) or 0, as_float(conn.get("failed")) or 0
            c = {"requests": opened + failed, "failures": failed,
                 "requests_per_s": None}
            rows.append(_summary_row(CONNECT_TYPE, name, c, conn.get("connect_latency_ms") or {},
                                     failed / (opened + failed) if opened + failed else None))
            classes.append("")
        open_model = t.get("open_model")
        if isinstance(open_model, dict):
            rows += _open_model_rows(name, t, open_model)
            classes += ["open", "open"]
    headers = ["Type", "Name", "Requests", "Failures", "Error rate", "Req/s", "Mean ms", "p50 ms", "p95 ms",
               "p99 ms", "p99.9 ms", "Max ms"]
    note = ""
    if "open" in classes:
        lines = [OPEN_MODEL_MEANING] + [_lateness_line(t) for t in run.target_summaries()
                                        if isinstance(t.get("open_model"), dict)]
        note = f'<p class="note" id="open-model-note">{"<br>".join(escape(x) for x in lines if x)}</p>'
    return '<section><h2>Summary</h2>' + table(headers, rows, left=2, row_classes=classes) + note + \
        _failures(run) + "</section>"


def _lateness_line(t: dict[str, Any]) -> str:
    """An open-model target's lateness and p50s, from summary.json, as the terminal says them; "" without them."""
    open_model = t["open_model"]
    late = open_model.get("lateness_ms") or {}
    p50, p99 = as_float(late.get("p50")), as_float(late.get("p99"))
    if p50 is None or p99 is None:
        return ""
    corrected = as_float((t.get("latency_ms") or {}).get("p50"))
    uncorrected = as_float((open_model.get("uncorrected_latency_ms") or {}).get("p50"))
    return open_model_lateness(str(t.get("name", "")), p50, p99, corrected, uncorrected)


def _open_model_rows(name: str, t: dict[str, Any], open_model: dict[str, Any]) -> list[list[str]]:
    """An open-model target's LATENESS row (arrivals started and dropped, how late they started) and its
    UNCORRECTED row (its requests, latency from the actual send), as stats.csv has them."""
    started, dropped = as_float(open_model.get("started")) or 0.0, as_float(open_model.get("dropped")) or 0.0
    arrivals = started + dropped
    lateness = {"requests": arrivals, "failures": dropped, "requests_per_s": None}
    uncorrected = {"requests": t.get("requests"), "failures": t.get("failures"), "requests_per_s": None}
    return [_summary_row(LATENESS_TYPE, name, lateness, open_model.get("lateness_ms") or {},
                         dropped / arrivals if arrivals else None),
            _summary_row(UNCORRECTED_TYPE, name, uncorrected, open_model.get("uncorrected_latency_ms") or {},
                         as_float(t.get("error_rate")))]


def _summary_row(kind: str, name: str, t: dict[str, Any], lat: dict[str, Any], err: float | None) -> list[str]:
    failures = as_float(t.get("failures"))
    return [td(kind, "l"), td(name, "l name"), td(fmt_count(as_float(t.get("requests")))),
            td(fmt_count(failures), "bad" if failures else ""), td(_pct(err), "bad" if err else ""),
            td(fmt_count(as_float(t.get("requests_per_s")), 1)),
            *(td(fmt_ms(as_float(lat.get(k)))) for k in ("mean", "p50", "p95", "p99", "p99.9", "max"))]


def _failures(run: RunFolder) -> str:
    if not run.failures:
        return ""
    method, name, error, occurrences, kind, first, last = FAILURES_HEADER
    rows = [[td(f.get(name) or f.get("Target", ""), "l name"), td(f.get(method, ""), "l"), td(f.get(kind, ""), "l"),
             td(f.get(error) or f.get("Message", ""), "l wide"), td(fmt_count(as_float(f.get(occurrences)))),
             td(f.get(first, "")), td(f.get(last, ""))]
            for f in run.failures]  # "Target" and "Message": failures.csv before it led with Locust's columns
    return ('<h3 style="margin-top:18px">Failures by kind</h3>'
            + table(["Target", "Method", "Kind", "Error", "Count", "First seen s", "Last seen s"], rows, left=4))


def _over_time_section(run: RunFolder) -> str:
    history = history_series(run)
    if not history:
        return '<section><h2>Over time</h2><p class="note">history.csv is missing or empty.</p></section>'
    names = [str(t.get("name")) for t in run.target_summaries() if str(t.get("name")) in history]
    names += [n for n in history if n not in names]
    if AGGREGATED in names:  # the whole run first, then each target
        names.remove(AGGREGATED)
        if not run.single_target:
            names.insert(0, AGGREGATED)
    blocks = []
    end = _run_end(run)
    for name in names:
        h = history[name]
        rate = [Series("requests/s", h["rps"], "#2563eb", fill=True)]
        extra: list[str] = []
        if any(v for _, v in h["fps"]):
            rate.append(Series("failures/s", h["fps"], FAILURE_COLOR, fill=True))
        else:
            extra.append("no failures")
        lat = [Series(k, h[k], PERCENTILE_COLORS[k]) for k in ("p99", "p95", "p50")]
        title = "All targets" if name == AGGREGATED else name
        blocks.append(f'<div class="target"><h3>{escape(title)}</h3><div class="grid2">'
                      + time_chart("Requests/s and failures/s", rate, "per second", extra=extra, end=end)
                      + time_chart("Latency p50 / p95 / p99, each second", lat, "ms", end=end,
                                   extra=[] if any(x.points for x in lat) else ["no responses, so no latency"])
                      + "</div></div>")
    return "<section><h2>Over time</h2>" + "".join(blocks) + "</section>"


def _spectrum_section(run: RunFolder) -> str:
    found = [s for s in spectra(run) if not (run.single_target and s.name == AGGREGATED)]
    colors = target_colors(s.name for s in found)
    series = [Series("All targets" if s.name == AGGREGATED else s.name, s.points, colors[s.name],
                     dashed=s.name == AGGREGATED, width=2.0) for s in found]
    exact = all(s.exact for s in found)
    if not found:
        return ('<section><h2>Latency by percentile</h2><p class="note" id="no-latency">No latency to show: no '
                'request got a response (each one failed before it, for example refused or a TLS error).</p>'
                '</section>')
    if exact:
        note = "Walked from each target's full HdrHistogram (histograms.json)."
    else:
        note = ("From the fixed percentiles in summary.json: this run folder has no histograms.json, "
                "which would give the full spectrum.")
    return ('<section><h2>Latency by percentile</h2>'
            + spectrum_chart("Latency percentile spectrum", series)
            + f'<p class="note">{escape(note)}</p></section>')


def _resources_section(run: RunFolder) -> str:
    if not run.resources:
        return ('<section><h2>Resources</h2><p class="note">This run folder has no resources.csv, '
                'so there is no CPU or memory over time.</p></section>')
    cpu, rss, machine = resource_series(run)
    end = _run_end(run)
    refs = [(SATURATED_CPU_PERCENT, f"{SATURATED_CPU_PERCENT:g}% of a core: saturated")]
    cores = (run.summary.get("machine") or {}).get("cores")
    whole = f"all {cores} cores" if isinstance(cores, int) else "all cores"
    machine_chart = time_chart(f"Machine CPU, {whole}", machine, f"% of {whole}", at_least=100.0, end=end,
                               refs=[(MACHINE_SATURATED_PERCENT, f"{MACHINE_SATURATED_PERCENT:g}%: saturated")]
                               ) if machine else ""
    return ('<section><h2>Resources</h2><div class="grid2">'
            + time_chart("CPU per process", cpu, "% of one core", refs=refs, at_least=100.0, end=end)
            + time_chart("Resident memory per process", rss, "MiB", end=end) + machine_chart + "</div></section>")


def _run_end(run: RunFolder) -> float | None:
    """Where the time axis ends: the run's duration (the charts' axis ends there, not at a round number)."""
    return as_float(run.summary.get("duration_s"))


def _workers_section(run: RunFolder) -> str:
    workers: list[WorkerSummary] = [w for w in run.summary.get("workers") or [] if isinstance(w, dict)]
    if not workers:
        return ""
    rows = []
    for w in workers:
        rss = as_float(w.get("peak_rss_bytes"))
        rows.append([td(_text(w.get("worker")), "l"), td(_text(w.get("pid")), "l"),
                     td(fmt_count(as_float(w.get("requests")))), td(fmt_count(as_float(w.get("failures")))),
                     td(fmt_count(as_float(w.get("cpu_user_s")), 2)), td(fmt_count(as_float(w.get("cpu_system_s")), 2)),
                     td(fmt_count(rss / 2**20 if rss is not None else None, 1)),
                     td(_text(w.get("ended")), "l"), td(_text(w.get("problem")), "l name")])
    return ('<section><h2>Workers</h2>' + table(
        ["Worker", "PID", "Requests", "Failures", "CPU user s", "CPU system s", "Peak RSS MiB", "Ended", "Problem"],
        rows, left=(0, 1, 7, 8)) + "</section>")


def _nodes_section(run: RunFolder) -> str:
    """A cluster run's nodes: host, clock offset, how each ended, and its workers' requests and CPU seconds."""
    nodes = [n for n in run.summary.get("nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return ""
    workers = {w.get("worker"): w for w in run.summary.get("workers") or [] if isinstance(w, dict)}
    rows = []
    for n in nodes:
        own = [workers[k] for k in n.get("workers") or [] if k in workers]
        cpu = [c for w in own for c in (as_float(w.get("cpu_user_s")), as_float(w.get("cpu_system_s")))
               if c is not None]
        rows.append([td(_text(n.get("name")), "l"), td(_text(n.get("host")), "l"),
                     td(fmt_count(as_float(n.get("clock_offset_ms")), 1)), td(fmt_count(len(own))),
                     td(fmt_count(sum(as_float(w.get("requests")) or 0 for w in own))),
                     td(fmt_count(sum(cpu) if cpu else None, 2)),
                     td(_text(n.get("ended")), "l"), td(_text(n.get("problem")), "l name")])
    return ('<section><h2>Nodes</h2>' + table(
        ["Node", "Host", "Clock offset ms", "Workers", "Requests", "CPU s", "Ended", "Problem"],
        rows, left=(0, 1, 6, 7)) + "</section>")


def redact(value: Any) -> Any:
    """The config with secret-looking header and field values hidden: a report gets pasted into tickets."""
    if isinstance(value, dict):
        return {k: ("(hidden)" if SECRET_KEY.search(str(k)) and isinstance(v, str) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _setup_section(run: RunFolder) -> str:
    s = run.summary
    config = yaml.safe_dump(redact(s.get("config", {})), sort_keys=False, allow_unicode=True, width=100)
    machine = s.get("machine") or {}
    items = [(k, _text(v)) for k, v in machine.items() if k != "packages"]
    packages = machine.get("packages")
    if isinstance(packages, dict):
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v)))
    as_run = s.get("as_run")
    if isinstance(as_run, dict):
        items += [(f"as run: {k}", _text(v)) for k, v in as_run.items() if v is not None]
    for server in s.get("servers") or []:
        if isinstance(server, dict):
            served = (server.get("served") or {}).get("requests")
            items.append((f"server {server.get('name', '')}",
                          f"{server.get('kind', '')} on {server.get('address', '')}, {server.get('workers', '')} "
                          f"worker(s)" + (f", served {served:,} requests" if isinstance(served, int) else "")))
    dl = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(v)}</dd>" for k, v in items)
    return (f'<section><div class="grid2"><div><h2>Config</h2><pre>{escape(config)}</pre></div>'
            f'<div><h2>Machine</h2><dl>{dl}</dl></div></div></section>')


def render_report(run: RunFolder) -> str:
    """The report page of a run, as HTML text."""
    body = "".join([_header(run), _checks_section(run), _summary_section(run), _over_time_section(run),
                    _spectrum_section(run), _resources_section(run), _nodes_section(run), _workers_section(run),
                    _setup_section(run)])
    return page(f"loadtest report: {run.name}", body)


def write_html_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's report.html (or `out`) from its folder's files; returns where it went."""
    run = load_run(Path(run_dir))
    target = Path(out) if out is not None else run.path / REPORT_NAME
    return write_page(target, render_report(run))
