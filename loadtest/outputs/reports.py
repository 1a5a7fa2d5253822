"""Report files: stats.csv, history.csv, failures.csv, summary.json.

stats.csv, history.csv and failures.csv lead with Locust's columns, in Locust's
order, with Locust's types and rounding (whole ms in the median and percentile
columns), so tools written for Locust's files read them unchanged; the precise
figures (ms with microsecond precision) follow in columns of their own (see
run_files).
history.csv is appended and flushed each second; the other files are written
once at the end, atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from loadtest.model.config import RunConfig
from loadtest.core.histograms import latency_summary, mean_ns, min_ns, percentiles_ns
from loadtest.model.kinds import KINDS, kind_of
from loadtest.core.run_files import (
    AGGREGATED,
    CONNECT_TYPE,
    FAILURES_HEADER,
    FAILURES_NAME,
    HISTOGRAMS_NAME,
    HISTORY_HEADER,
    LOCUST_TIME_FORMAT,
    NO_FIGURE,
    PERCENTILE_COLUMNS,
    STATS_HEADER,
    STATS_NAME,
    SUMMARY_NAME,
    WORKERS_HEADER,
    WORKERS_NAME,
    WorkerSummary,
    locust_ms,
)
from loadtest.core.stats import Interval, TargetTotals, aggregate
from loadtest.core.thresholds import failures_text, outcome_line

from loadtest.outputs.base import Output

if TYPE_CHECKING:
    from loadtest.model.run_result import RunResult

LOCUST_NO_LATENCY = {  # what Locust writes in these columns for a row without response times
    "Median Response Time": "0", "Average Response Time": "0.0", "Min Response Time": "0", "Max Response Time": "0",
}


def ms(ns: float) -> str:
    """Nanoseconds as milliseconds with microsecond precision."""
    return f"{ns / 1e6:.3f}"


def content_size(t: TargetTotals) -> str:
    """Average Content Size: body bytes of every response, failed ones too, over every request, as Locust
    counts it (and "0" for a row without requests, as Locust writes it)."""
    return f"{t.content_bytes / t.requests:.1f}" if t.requests else "0"


def latency_cells(hist: Any) -> tuple[list[str], list[str]]:
    """Locust's latency cells -- median, average, min and max, then the percentile columns -- and the precise
    percentiles that follow Locust's columns. Locust's median and percentiles are whole ms, rounded as it
    rounds (locust_ms); its median is then kept within min and max, which are exact. A histogram without
    samples gets what Locust writes for a row without response times: 0s, and N/A for the percentiles."""
    if not hist.get_total_count():
        return [*LOCUST_NO_LATENCY.values(), *[NO_FIGURE] * len(PERCENTILE_COLUMNS)], [NO_FIGURE] * len(
            PERCENTILE_COLUMNS)
    pcts = percentiles_ns(hist)
    low, high = min_ns(hist), hist.get_max_value()
    median: float = locust_ms(pcts[0] / 1e6)
    if median > high / 1e6 or median < low / 1e6:  # as Locust does: then the exact max or min, in ms
        median_cell = ms(high if median > high / 1e6 else low)
    else:
        median_cell = str(median)
    locust = [median_cell, ms(mean_ns(hist)), ms(low), ms(high), *(str(locust_ms(v / 1e6)) for v in pcts)]
    return locust, [ms(v) for v in pcts]


def stats_row(t: TargetTotals, elapsed: float, row_type: str | None = None) -> list[str]:
    """One stats.csv row for a target's (or the aggregate's) request latencies."""
    failures = t.failure_count
    seconds = elapsed if elapsed > 0 else 1.0
    latency, precise = latency_cells(t.latency)
    return [
        t.type if row_type is None else row_type, t.name, str(t.requests), str(failures), *latency[:4],
        content_size(t), f"{t.requests / seconds:.3f}", f"{failures / seconds:.3f}", *latency[4:], *precise,
    ]


def histogram_row(t: TargetTotals, row_type: str, hist: Any, requests: int, failures: Counter[str],
                  elapsed: float) -> list[str]:
    """A stats.csv row for one of a target's other histograms (connect, lateness, uncorrected)."""
    as_requests = TargetTotals(name=t.name, type=row_type, latency=hist, failures=failures)
    as_requests.requests = requests
    return stats_row(as_requests, elapsed)


def stats_rows(config: RunConfig, totals: list[TargetTotals], elapsed: float) -> list[list[str]]:
    """Every target's row; then the rows of its other histograms that its kind adds (CONNECT for tcp, LATENESS
    and UNCORRECTED for the open model), grouped by kind in the registry's order; then Aggregated."""
    rows = [stats_row(t, elapsed) for t in totals]
    for kind in KINDS:
        for t, target in zip(totals, config.targets):
            if kind_of(target) is kind:
                rows.extend(histogram_row(t, extra.type, extra.histogram, extra.requests, extra.failures, elapsed)
                            for extra in kind.extra_rows(target, t))
    rows.append(stats_row(aggregate(totals), elapsed, row_type=""))
    return rows


class HistoryWriter:
    """history.csv, one row per second per target and Aggregated, flushed as it goes.

    Its "Total" columns are the sums of the rows written so far, so the last
    second's totals equal stats.csv's. Each second adds each target's merged
    second once, and Aggregated's merged second once, to the running totals:
    never a worker's snapshot, and never all the targets' totals again.
    """

    def __init__(self, path: Path, config: RunConfig) -> None:
        self.path = path
        self.config = config
        self.totals = [TargetTotals(name=t.name, type=kind_of(t).row_type(t)) for t in config.targets]
        self.aggregated = TargetTotals(name=AGGREGATED, type="")  # the sum of every second's Aggregated row
        self._file = open(path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(HISTORY_HEADER)
        self._file.flush()

    def write(self, interval: Interval, started: float) -> None:
        length = max(interval.end - interval.start, 1e-9)
        # The stamp is the second's own number (the second it ends in), not when its last snapshot ended: a
        # tick held up on a busy machine ends late, and two seconds' rows then shared one stamp
        stamp = str(int(started + interval.seq + 1))
        for total, part in zip(self.totals, interval.targets):
            total.merge(part)
            total.open_connections, total.users, total.level = part.open_connections, part.users, part.level
        second = aggregate(interval.targets)
        self.aggregated.merge(second)  # what aggregate(self.totals) would be, in one add instead of one per target
        rows = list(zip(self.totals, interval.targets))
        rows.append((self.aggregated, second))
        for total, part in rows:
            self._csv.writerow(self._row(stamp, interval, length, total, part))
        self._file.flush()

    def _row(self, stamp: str, interval: Interval, length: float, total: TargetTotals,
             part: TargetTotals) -> list[str]:
        agg = total.name == AGGREGATED
        second, precise = latency_cells(part.latency)
        return [
            stamp, str(part.users), "" if agg else total.type, total.name,
            f"{part.requests / length:.6f}", f"{part.failure_count / length:.6f}", *second[4:],
            str(total.requests), str(total.failure_count), *latency_cells(total.latency)[0][:4], content_size(total),
            f"{interval.end:.3f}", str(part.requests), str(part.failure_count), str(part.open_connections),
            f"{part.level:g}" if part.level >= 0 else "", str(part.dropped), *precise,
        ]

    def close(self) -> None:
        self._file.close()


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def csv_text(header: list[str], rows: Iterable[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def target_summary(t: TargetTotals, elapsed: float) -> dict[str, Any]:
    """A target's (or the aggregate's) entry in summary.json: the keys every target has."""
    seconds = elapsed if elapsed > 0 else 1.0
    out: dict[str, Any] = {
        "name": t.name,
        "type": t.type,
        "requests": t.requests,
        "failures": t.failure_count,
        "failures_by_kind": dict(sorted(t.failures.items())),
        "requests_per_s": round(t.requests / seconds, 3),
        "error_rate": round(t.failure_count / t.requests, 6) if t.requests else None,
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "content_bytes": t.content_bytes,
        "latency_ms": latency_summary(t.latency),
        # closed model: the waits of virtual users after a failed connect or flow pass (failure_backoff:)
        "backoffs": {"waits": t.backoffs, "seconds": round(t.backoff_s, 3)},
    }
    return out


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("gevent", "greenlet", "httptools", "hdrhistogram", "psutil", "requests", "PyYAML"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": versions,
    }


def write_reports(result: RunResult, config: RunConfig) -> None:
    """stats.csv, failures.csv and summary.json of a finished run."""
    stats = result.stats
    run_dir = result.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    elapsed = stats.elapsed
    write_atomic(run_dir / STATS_NAME, csv_text(STATS_HEADER, stats_rows(config, stats.totals, elapsed)))
    write_atomic(run_dir / FAILURES_NAME, csv_text(FAILURES_HEADER, failure_rows(result, config)))

    workers = worker_rows(result)
    write_atomic(run_dir / WORKERS_NAME, csv_text(WORKERS_HEADER, [[str(v) if v is not None else "" for v in w.values()]
                                                                   for w in workers]))
    targets = [{**target_summary(t, elapsed), **kind_of(c).summary(c, t, stats, i)}
               for i, (t, c) in enumerate(zip(stats.totals, config.targets))]
    summary = {
        "name": config.name,
        "started": datetime.fromtimestamp(result.started).isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 3),
        "exit_status": result.exit_status,
        "outcome": run_outcome(result),
        "interrupted": result.interrupted,
        "problems": result.problems,
        "thresholds": [o.as_dict() for o in result.thresholds],
        "verdicts": result.verdicts,
        "shortfalls": result.shortfalls,
        "aborted_by_threshold": result.aborted or None,
        "stopped": result.stopped,  # stopped from the control inbox (the web API): origin, at_s, reason
        "level_changes": result.level_changes,  # each: at_s, target, unit, old, new, origin
        "config": _jsonable(dict(config.source)),
        "as_run": {"workers": len(result.workers), "duration_s": config.duration, "requests": config.requests,
                   "failure_backoff_s": config.failure_backoff},
        "machine": machine(),
        "servers": result.servers,
        "workers": workers,
        "nodes": result.nodes,  # a cluster run's nodes: host, clock offset, workers, how each ended
        "targets": targets,
        "aggregated": target_summary(stats.aggregated(), elapsed),
    }
    write_atomic(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    write_atomic(run_dir / HISTOGRAMS_NAME, json.dumps(histograms(stats.totals), indent=1) + "\n")
    from loadtest.outputs.html_report import write_html_report

    try:
        write_html_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the CSV reports stand without the page; say why it is missing
        result.problems.append(f"report.html could not be written: {type(e).__name__}: {e}")


def run_outcome(result: RunResult) -> str:
    """The run's result in one line: "PASSED", or "FAILED: 147,722 of 147,722 requests failed: refused"."""
    agg = result.stats.aggregated()
    failed = [f"threshold {o.threshold.text!r} failed (measured {o.measured_text})"
              for o in result.thresholds if not o.passed and not o.default]
    aborted = [f"stopped early: {result.aborted}"] if result.aborted and not failed else []
    reasons = [*aborted, *result.shortfalls, *result.problems]
    said = [failures_text(agg.requests, agg.failures, agg.connect_failures)]
    for o in result.thresholds:  # the default on a flow's own row: passes a script's exception ended, say
        if o.default and not o.passed and o.threshold.target is not None:
            row = result.stats.totals[result.stats.names.index(o.threshold.target)]
            said.append(failures_text(row.requests, row.failures, what=f"passes of {row.name}"))
    line = outcome_line(result.exit_status, "; ".join(s for s in said if s), failed, reasons)
    return line + (f"; {stopped_text(result.stopped)}" if result.stopped else "")


def stopped_text(stopped: dict[str, Any]) -> str:
    """How a Stop command ended the run: "stopped from the API at 3.2 s" (summary.json's `stopped`)."""
    origin = stopped.get("origin") or "api"
    who = "from the API" if origin == "api" else f"by {origin}"
    reason = f" ({stopped['reason']})" if stopped.get("reason") else ""
    return f"stopped {who} at {float(stopped.get('at_s') or 0):.1f} s{reason}"


def failure_rows(result: RunResult, config: RunConfig) -> list[list[str]]:
    """failures.csv: Locust's Method, Name, Error, Occurrences, First Seen, Last Seen (UTC times of day, as
    Locust writes them), then Kind and when it was first and last seen in seconds into the run.

    Method is the Type of the stats.csv row the failure counts in: the target's method (or TCP), and
    CONNECT for a tcp connection that failed to open (kind `connect:<kind>`).
    """
    types = {t.name: kind_of(t).row_type(t) for t in config.targets}

    def utc(elapsed: float) -> str:
        return datetime.fromtimestamp(int(result.started + elapsed), timezone.utc).strftime(LOCUST_TIME_FORMAT)

    return [[CONNECT_TYPE if r.kind.startswith("connect:") else types.get(r.target, ""), r.target, r.message,
             str(r.occurrences), utc(r.first_seen), utc(r.last_seen), r.kind, f"{r.first_seen:.3f}",
             f"{r.last_seen:.3f}"]
            for r in result.stats.failures()]


def worker_rows(result: RunResult) -> list[WorkerSummary]:
    """Each worker's share and what it cost: CPU from the operating system's accounting (resources.csv)."""
    stats = result.stats
    rows: list[WorkerSummary] = []
    for w in result.workers:
        e = w.exit
        r = result.worker_resources[w.index] if w.index < len(result.worker_resources) else None
        user = r.cpu_user_s if r is not None and r.pids else (e.cpu_user if e else None)
        system = r.cpu_system_s if r is not None and r.pids else (e.cpu_system if e else None)
        rows.append(WorkerSummary({
            "worker": w.index, "role": w.name, "pid": w.pid, "share": f"1/{len(result.workers)}",
            "requests": stats.worker_requests[w.index], "failures": stats.worker_failures[w.index],
            "bytes": stats.worker_bytes[w.index],
            "cpu_user_s": round(user, 3) if user is not None else None,
            "cpu_system_s": round(system, 3) if system is not None else None,
            "peak_rss_bytes": r.peak_rss_bytes if r is not None and r.peak_rss_bytes else
            (e.max_rss_kib * 1024 if e else None),
            "peak_connections": r.peak_connections if r is not None else None,
            "cancelled": e.cancelled if e else None,
            "ended": w.ended,
            "exit_code": w.exitcode, "problem": w.error or None,
        }))
    return rows


def histograms(totals: list[TargetTotals]) -> dict[str, dict[str, str]]:
    """Each target's whole-run latency HdrHistograms, encoded (base64), for later tools."""
    out = {}
    for t in [*totals, aggregate(totals)]:
        entry = {}
        if t.latency.get_total_count():
            entry["latency"] = t.latency.encode().decode("ascii")
        if t.connect_latency.get_total_count():
            entry["connect_latency"] = t.connect_latency.encode().decode("ascii")
        out[t.name] = entry
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ReportsOutput(Output):
    """stats.csv, failures.csv, workers.csv, summary.json, histograms.json and report.html, once the run ends."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def stop(self, result: RunResult | None) -> None:
        if result is not None:
            write_reports(result, self.config)
