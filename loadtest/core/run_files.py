"""The run folder's contract: file names, CSV headers, row types and the keys of summary.json's parts.

Every writer (reports.py, resources.py's ResourcesWriter, monitor.py) and
every reader (run_folder.py, html_report.py, compare.py, live.py) imports
these names from here, so a writer and a reader cannot disagree on one. (The
Workers table of report.html once read `index` and `max_rss_kib` while the
summary held `worker` and `peak_rss_bytes`: every cell came out empty.)

summary.json's keys are listed here in the order written (SUMMARY_KEYS,
TARGET_SUMMARY_KEYS, LATENCY_SUMMARY_KEYS, WorkerSummary); tests/test_run_files.py
reads a real run's folder and fails when the written keys and these differ.

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

from typing import TypedDict

STATS_NAME = "stats.csv"
HISTORY_NAME = "history.csv"
FAILURES_NAME = "failures.csv"
WORKERS_NAME = "workers.csv"
SUMMARY_NAME = "summary.json"
RESOURCES_NAME = "resources.csv"
HISTOGRAMS_NAME = "histograms.json"
REPORT_NAME = "report.html"
CAPACITY_NAME = "capacity.json"  # a capacity search's answer and steps (loadtest capacity)
CAPACITY_CSV_NAME = "capacity.csv"  # ... one row per step
# Every file a run writes into its folder: what --overwrite removes first, so that no file of an earlier run
# is left to be read as this run's.
CAPACITY_FILES = (CAPACITY_NAME, CAPACITY_CSV_NAME)  # what a capacity search's run writes besides a run's files
RUN_FILES = (SUMMARY_NAME, STATS_NAME, HISTORY_NAME, FAILURES_NAME, RESOURCES_NAME, WORKERS_NAME,
             HISTOGRAMS_NAME, REPORT_NAME, *CAPACITY_FILES)
# What each file holds, in a sentence: the documentation's run-folder reference is generated from these.
FILE_DESCRIPTIONS = {
    SUMMARY_NAME: "The whole run in one object: the config as given and as run, the machine and package versions, "
                  "per-target and aggregated totals, failures by kind, latency percentiles, each worker's share, CPU "
                  "and peak RSS, each server's own count of what it served, thresholds, verdicts and the outcome.",
    STATS_NAME: "One row per target (and per extra row type), then Aggregated; Locust's stats.csv header exactly.",
    HISTORY_NAME: "One row per second per target and Aggregated: that second's rates and percentiles, then totals "
                  "so far; appended and flushed each second, once every worker (on every node) has sent that "
                  "second. Timestamp is that second's own (the load's start plus its number): one per row.",
    FAILURES_NAME: "One row per target and failure kind: a sample message, the count, when first and last seen.",
    RESOURCES_NAME: "One row per second per process (controller, each worker, each embedded server process, each "
                    "watched pid) and a machine row: CPU, RSS, threads, fds, connections, context switches.",
    WORKERS_NAME: "One row per worker: its share of the load, what it did, its CPU and peak RSS, how it ended.",
    HISTOGRAMS_NAME: "Each target's and the aggregate's whole-run latency HdrHistogram, encoded, so any percentile "
                     "can be read later.",
    REPORT_NAME: "One self-contained HTML page (inline SVG, no script, no network): outcome, thresholds, verdicts, "
                 "summary, charts over time, the percentile spectrum, processes and the config.",
    CAPACITY_NAME: "A capacity search's answer (max_rate; limited_by: target, generator or max-rate; the SLOs) and "
                   "every step it held: the rate asked and achieved, p50, p99, error rate, worker CPU, met, why not.",
    CAPACITY_CSV_NAME: "A capacity search's steps, one row each, in capacity.json's step keys.",
}
CAPACITY_KEYS = ("max_rate", "limited_by", "slo", "steps")  # capacity.json, in the order written
# capacity.json's steps[] keys, in order, and capacity.csv's header
CAPACITY_STEP_KEYS = ("rate", "achieved_rate", "p50_ms", "p99_ms", "error_rate", "generator_cpu", "met", "why")

AGGREGATED = "Aggregated"  # the Name of the row that totals every target, in every file

PERCENTILE_COLUMNS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
# stats.csv and history.csv keep Locust's columns with Locust's types and rounding, so that tools written for
# Locust's files read them unchanged: whole milliseconds in the Median and percentile columns, rounded as
# Locust rounds (to 2 significant digits past 100 ms, see locust_ms). The precise figures (ms with microsecond
# precision) follow Locust's columns, one "<percentile> ms" column per percentile; readers take them from
# there (precise_cell), and from the Locust column only in folders written before they existed.
PRECISE_SUFFIX = " ms"
PRECISE_PERCENTILE_COLUMNS = [f"{c}{PRECISE_SUFFIX}" for c in PERCENTILE_COLUMNS]
LOCUST_STATS_HEADER = [  # Locust's stats.csv header (2.x, checked against 2.47), exactly
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    *PERCENTILE_COLUMNS,
]
STATS_HEADER = [*LOCUST_STATS_HEADER, *PRECISE_PERCENTILE_COLUMNS]
LOCUST_HISTORY_HEADER = [  # Locust's stats_history.csv header (2.x, checked against 2.47), exactly
    "Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PERCENTILE_COLUMNS,
    "Total Request Count", "Total Failure Count", "Total Median Response Time", "Total Average Response Time",
    "Total Min Response Time", "Total Max Response Time", "Total Average Content Size",
]
HISTORY_HEADER = [  # Locust's, then ours
    *LOCUST_HISTORY_HEADER,
    "Elapsed", "Interval Requests", "Interval Failures", "Open Connections", "Target Level", "Dropped",
    *PRECISE_PERCENTILE_COLUMNS,
]
# Locust's failures.csv header (2.47; earlier 2.x releases wrote only the first four): Method = the stats.csv
# row's Type, Name = the target, Error = a sample message, First/Last Seen = UTC times of day as Locust writes
# them (LOCUST_TIME_FORMAT, whole seconds); then ours: the failure kind, and when it was first and last seen
# in seconds into the run.
LOCUST_FAILURES_HEADER = ["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"]
FAILURES_HEADER = [*LOCUST_FAILURES_HEADER, "Kind", "First Seen Elapsed", "Last Seen Elapsed"]
LOCUST_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # in UTC


def locust_ms(ms: float) -> int:
    """A time in ms rounded as Locust rounds the response times it keeps (locust.stats.bucket_response_time):
    whole ms below 100 ms, then 2 significant digits (147 -> 150, 3432 -> 3400, 58760 -> 59000)."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


def precise_cell(row: dict[str, str], column: str) -> str | None:
    """A percentile column's precise figure in a stats.csv or history.csv row: its "<column> ms" cell, or in a
    folder written before those existed, the Locust column itself (then precise)."""
    cell = row.get(f"{column}{PRECISE_SUFFIX}")
    return cell if cell is not None else row.get(column)


RESOURCES_HEADER = [  # resources.csv: one row per process (role) per sample, and one "machine" row
    "timestamp", "elapsed_s", "role", "pid", "status", "cpu_percent", "cpu_user_s", "cpu_system_s",
    "rss_bytes", "threads", "fds", "tcp_connections", "connections_age_s",
    "ctx_switches_voluntary", "ctx_switches_involuntary",
    "cpu_per_core", "memory_used_bytes", "net_lo_bytes_sent", "net_lo_bytes_recv", "net_bytes_sent", "net_bytes_recv",
]
NO_FIGURE = "N/A"  # what Locust writes in a percentile column of a row that has no response times

CONNECT_TYPE = "CONNECT"  # tcp: connection set-up latency
LATENESS_TYPE = "LATENESS"  # open model: how late arrivals started; Failure Count = dropped
UNCORRECTED_TYPE = "UNCORRECTED"  # open model: latency from the actual send, not the scheduled start
FLOW_TYPE = "FLOW"  # a flow's own row: one request is one pass through its steps, whose rows follow it
NOT_AGGREGATED_TYPES = (FLOW_TYPE,)  # rows left out of Aggregated, which adds up requests sent
OPEN_MODEL_TYPES = (LATENESS_TYPE, UNCORRECTED_TYPE)
OTHER_HISTOGRAM_TYPES = (CONNECT_TYPE, *OPEN_MODEL_TYPES)  # rows of a target's histograms other than its latency
ROW_TYPE_MEANINGS = {  # the documentation's row types are generated from these
    CONNECT_TYPE: "a tcp target's connection set-up latency; Request Count = connections tried, Failure Count = "
                  "those that failed",
    LATENESS_TYPE: "an open-model target's lateness: how late each arrival started against its schedule; "
                   "Failure Count = arrivals dropped (not started within 1 s)",
    UNCORRECTED_TYPE: "an open-model target's latency from the actual send instead of the scheduled start",
    FLOW_TYPE: "a flow as a whole: one request is one pass through its steps, its latency the whole journey; "
               "left out of Aggregated",
}
OPEN_MODEL_MEANING = (  # said wherever the open-model rows are shown: the terminal, report.html
    f"{LATENESS_TYPE}: how late each request was sent against its schedule (Failures: arrivals dropped, not "
    f"started within 1 s). {UNCORRECTED_TYPE}: latency from the actual send instead of the scheduled start. "
    f"The corrected latency is the uncorrected one plus that lateness (and a new connection's set-up): "
    f"tens of microseconds when the generator keeps up, more when a worker is short of CPU (saturated, or "
    f"on a busy machine), and up to the 1 s limit when max_concurrency requests are already in flight and "
    f"arrivals wait for one to end.")


def open_model_lateness(name: str, p50_ms: float, p99_ms: float, corrected_p50_ms: float | None,
                        uncorrected_p50_ms: float | None) -> str:
    """The line beside `OPEN_MODEL_MEANING` for one open-model target: how late its sends left, and the two p50s."""
    both = ""
    if corrected_p50_ms is not None and uncorrected_p50_ms is not None:
        both = f"; p50 {corrected_p50_ms:.3f} ms corrected, {uncorrected_p50_ms:.3f} ms uncorrected"
    return f"{name}: sends left {p50_ms:.3f} ms late at p50 and {p99_ms:.3f} ms at p99{both}."


# summary.json: its top-level keys, a target's (and "aggregated"'s) keys, and a latency figure's keys (ms).
SUMMARY_KEYS = ("name", "started", "duration_s", "exit_status", "outcome", "interrupted", "problems",
                "thresholds", "verdicts", "shortfalls", "aborted_by_threshold", "stopped", "level_changes", "config",
                "as_run", "machine", "servers", "workers", "nodes", "targets", "aggregated")
TARGET_SUMMARY_KEYS = ("name", "type", "requests", "failures", "failures_by_kind", "requests_per_s", "error_rate",
                       "bytes_in", "bytes_out", "content_bytes", "latency_ms", "backoffs")
CONNECTIONS_KEY = "connections"  # a tcp target's extra part: opened, failed, … connect_latency_ms
OPEN_MODEL_KEY = "open_model"  # an open-model target's extra part: rate, started, dropped, lateness_ms, …
SUMMARY_PERCENTILE_KEYS = tuple(f"p{c[:-1]}" for c in PERCENTILE_COLUMNS)  # p50 … p99.99, p100
LATENCY_SUMMARY_KEYS = (*SUMMARY_PERCENTILE_KEYS, "mean", "min", "max")


class WorkerSummary(TypedDict):
    """One worker in summary.json's "workers" list (and, in this order, a row of workers.csv)."""

    worker: int  # its index, 0 … workers-1
    role: str  # worker-N, or node-N/worker-K on a cluster: its role in resources.csv
    pid: int
    share: str
    requests: int
    failures: int
    bytes: int
    cpu_user_s: float | None
    cpu_system_s: float | None
    peak_rss_bytes: int | None
    peak_connections: int | None
    cancelled: int | None
    ended: str  # ok, lost or unknown
    exit_code: int | None
    problem: str | None


WORKERS_HEADER = ["Worker", "Role", "PID", "Share", "Requests", "Failures", "Bytes", "CPU User s", "CPU System s",
                  "Peak RSS Bytes", "Peak Connections", "Cancelled", "Ended", "Exit Code", "Problem"]
assert len(WORKERS_HEADER) == len(WorkerSummary.__annotations__)  # one column per key, in order
