"""report.html: one self-contained page of a run, built from its folder alone.

The page is plain HTML with inline CSS and charts drawn as inline SVG (svg_chart.py):
no script, no font or file from anywhere else, and a Content-Security-Policy
that forbids fetching anything, so it opens offline and from an archive.
Everything that came from a config or a response (target names, URLs, error
messages) is escaped. It is a pure function of the run folder's files, so
`loadtest report RUN_DIR` writes the same bytes again.

    from loadtest.outputs.html_report import write_html_report
    write_html_report(Path("reports/sites-20260101-120000"))
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

import yaml

from loadtest.core import exits
from loadtest.core.run_files import (
    AGGREGATED,
    CONNECT_TYPE,
    FAILURES_HEADER,
    LATENESS_TYPE,
    OPEN_MODEL_MEANING,
    REPORT_NAME,
    UNCORRECTED_TYPE,
    open_model_lateness,
)
from loadtest.outputs.capacity_report import capacity_section
from loadtest.outputs.run_folder import RunFolder, as_float, load_run, write_page
from loadtest.outputs.series import history_series, spectra
from loadtest.outputs.run_folder import (
    RunFolderError as RunFolderError,  # re-exported: callers catch it from here
)
from loadtest.outputs.report_processes import _nodes_section, _resources_section, _workers_section, run_end
from loadtest.outputs.page import MISSING, fmt_count, fmt_ms, page, table, td, text_of
from loadtest.outputs.svg_chart import (
    FAILURE_COLOR,
    PERCENTILE_COLORS,
    Series,
    spectrum_chart,
    target_colors,
    time_chart,
)

__all__ = ["REPORT_NAME", "RunFolderError", "render_report", "write_html_report"]

SECRET_KEY = re.compile(r"authorization|cookie|token|password|secret|api[-_]?key", re.IGNORECASE)


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
        cls = "pass" if status == exits.OK and outcome.startswith("PASSED") else "fail"
        badge = f'<span class="badge big {cls}" id="outcome">{escape(outcome)}</span>'
    elif status == exits.OK and not failed:
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
                measured = text_of(value) + (f" {unit}" if unit else "")
            rows.append([f'<td class="l">{_badge(c.get("passed"))}</td>', td(_check_label(c), "l name"),
                         td(text_of(c.get("target", "")), "l name"), td(measured),
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
        counted = "requests" if c.get("target") in (None, AGGREGATED) else "passes of this flow"
        said.append(f"The config set no thresholds, so the run is held to the default: no failed {counted} "
                    "(cancelled ones aside).")
    if no_samples:
        said.append("No latency to measure: no request got a response.")
    if c.get("abort_on_fail"):
        said.append("Checked each second too; stops the run when it fails.")
    known = {"threshold", "expression", "what", "passed", "measured", "value", "unit", "target", "figure",
             "abort_on_fail", "default"}
    said += [f"{k}: {text_of(v)}." for k, v in c.items() if k not in known]  # a field this page does not know yet
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
    said += [f"{k}: {text_of(v)}" for k, v in c.items() if k not in known]
    return ", ".join(said)


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
    method, name, error, occurrences, _, _, kind, first, last = FAILURES_HEADER
    # "Target" and "Message": failures.csv before it led with Locust's columns; "First Seen" in seconds:
    # before it wrote Locust's times of day there and the seconds into the run in columns of their own
    rows = [[td(f.get(name) or f.get("Target", ""), "l name"), td(f.get(method, ""), "l"), td(f.get(kind, ""), "l"),
             td(f.get(error) or f.get("Message", ""), "l wide"), td(fmt_count(as_float(f.get(occurrences)))),
             td(f.get(first) or f.get("First Seen", "")), td(f.get(last) or f.get("Last Seen", ""))]
            for f in run.failures]
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
    end = run_end(run)
    changes = [c for c in run.summary.get("level_changes") or [] if isinstance(c, dict)]
    for name in names:
        h = history[name]
        # Each level change (loadtest run --web, the control inbox) is a dashed line at its time.
        marks = [(float(c.get("at_s") or 0.0), f"{c.get('target')}: {c.get('unit')} {text_of(c.get('old'))} -> "
                  f"{text_of(c.get('new'))} ({c.get('origin')})") for c in changes
                 if name in (AGGREGATED, c.get("target"))]
        rate = [Series("requests/s", h["rps"], "#2563eb", fill=True)]
        extra: list[str] = []
        if any(v for _, v in h["fps"]):
            rate.append(Series("failures/s", h["fps"], FAILURE_COLOR, fill=True))
        else:
            extra.append("no failures")
        lat = [Series(k, h[k], PERCENTILE_COLORS[k]) for k in ("p99", "p95", "p50")]
        title = "All targets" if name == AGGREGATED else name
        blocks.append(f'<div class="target"><h3>{escape(title)}</h3><div class="grid2">'
                      + time_chart("Requests/s and failures/s", rate, "per second", extra=extra, end=end,
                                   marks=marks)
                      + time_chart("Latency p50 / p95 / p99, each second", lat, "ms", end=end, marks=marks,
                                   extra=[] if any(x.points for x in lat) else ["no responses, so no latency"])
                      + _level_chart(name, h, marks, end)
                      + "</div></div>")
    return "<section><h2>Over time</h2>" + "".join(blocks) + "</section>"


def _level_chart(name: str, h: dict[str, list[Any]], marks: list[tuple[float, str]], end: float | None) -> str:
    """A target's level each second (history.csv's Target Level: its users or rate), with its changes marked;
    nothing for a target whose level never was reported (neither staged, open nor steered)."""
    if name == AGGREGATED or not h.get("level"):
        return ""
    changed = ["dashed lines: level changes"] if marks else []
    return time_chart("Level each second (users or rate)", [Series("level", h["level"], "#7c3aed")], "level",
                      end=end, marks=marks, extra=changed)


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
    items = [(k, text_of(v)) for k, v in machine.items() if k != "packages"]
    packages = machine.get("packages")
    if isinstance(packages, dict):
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v)))
    as_run = s.get("as_run")
    if isinstance(as_run, dict):
        items += [(f"as run: {k}", text_of(v)) for k, v in as_run.items() if v is not None]
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
    body = "".join([_header(run), capacity_section(run), _checks_section(run), _summary_section(run),
                    _over_time_section(run), _spectrum_section(run), _resources_section(run), _nodes_section(run),
                    _workers_section(run), _setup_section(run)])
    return page(f"loadtest report: {run.name}", body)


def write_html_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's report.html (or `out`) from its folder's files; returns where it went."""
    run = load_run(Path(run_dir))
    target = Path(out) if out is not None else run.path / REPORT_NAME
    return write_page(target, render_report(run))
