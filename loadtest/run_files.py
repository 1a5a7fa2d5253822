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
# Every file a run writes into its folder: what --overwrite removes first, so that no file of an earlier run
# is left to be read as this run's.
RUN_FILES = (SUMMARY_NAME, STATS_NAME, HISTORY_NAME, FAILURES_NAME, RESOURCES_NAME, WORKERS_NAME,
             HISTOGRAMS_NAME, REPORT_NAME)

AGGREGATED = "Aggregated"  # the Name of the row that totals every target, in every file

PERCENTILE_COLUMNS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
STATS_HEADER = [  # Locust's stats.csv header, exactly
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    *PERCENTILE_COLUMNS,
]
HISTORY_HEADER = [  # Locust's stats_history.csv header, then ours
    "Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PERCENTILE_COLUMNS,
    "Total Request Count", "Total Failure Count", "Total Median Response Time", "Total Average Response Time",
    "Total Min Response Time", "Total Max Response Time", "Total Average Content Size",
    "Elapsed", "Interval Requests", "Interval Failures", "Open Connections", "Target Level", "Dropped",
]
# Locust's failures.csv header first (Method = the stats.csv row's Type, Name = the target, Error = a sample
# message), then ours: the failure kind and when it was first and last seen, in seconds into the run.
LOCUST_FAILURES_HEADER = ["Method", "Name", "Error", "Occurrences"]
FAILURES_HEADER = [*LOCUST_FAILURES_HEADER, "Kind", "First Seen", "Last Seen"]
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
                "thresholds", "verdicts", "shortfalls", "aborted_by_threshold", "config", "as_run", "machine",
                "servers", "workers", "nodes", "targets", "aggregated")
TARGET_SUMMARY_KEYS = ("name", "type", "requests", "failures", "failures_by_kind", "requests_per_s", "error_rate",
                       "bytes_in", "bytes_out", "content_bytes", "latency_ms")
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
