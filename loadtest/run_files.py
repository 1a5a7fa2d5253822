"""The run folder's contract: file names, CSV headers, row types and the keys of summary.json's parts.

reports.py writes these and html_report.py reads them; both import them from
here, so a writer and a reader cannot disagree on a name. (The Workers table
of report.html once read `index` and `max_rss_kib` while the summary held
`worker` and `peak_rss_bytes`: every cell came out empty.)
"""

from __future__ import annotations

from typing import TypedDict

STATS_NAME = "stats.csv"
HISTORY_NAME = "history.csv"
FAILURES_NAME = "failures.csv"
WORKERS_NAME = "workers.csv"
SUMMARY_NAME = "summary.json"
HISTOGRAMS_NAME = "histograms.json"
REPORT_NAME = "report.html"

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
NO_FIGURE = "N/A"  # what Locust writes in a percentile column of a row that has no response times

CONNECT_TYPE = "CONNECT"  # tcp: connection set-up latency
LATENESS_TYPE = "LATENESS"  # open model: how late arrivals started; Failure Count = dropped
UNCORRECTED_TYPE = "UNCORRECTED"  # open model: latency from the actual send, not the scheduled start
FLOW_TYPE = "FLOW"  # a flow's own row: one request is one pass through its steps, whose rows follow it
NOT_AGGREGATED_TYPES = (FLOW_TYPE,)  # rows left out of Aggregated, which adds up requests sent
OPEN_MODEL_TYPES = (LATENESS_TYPE, UNCORRECTED_TYPE)
OPEN_MODEL_MEANING = (  # said wherever the open-model rows are shown: the terminal, report.html
    f"{LATENESS_TYPE}: how late each arrival started against its schedule (Failures: arrivals dropped, not "
    f"started within 1 s). {UNCORRECTED_TYPE}: latency from the actual send instead of the scheduled start; "
    f"it equals the corrected row whenever sends leave on time, and is lower only when arrivals start late, "
    f"which happens when max_concurrency requests are already in flight.")


class WorkerSummary(TypedDict):
    """One worker in summary.json's "workers" list (and, in this order, a row of workers.csv)."""

    worker: int  # its index, 0 … workers-1
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


WORKERS_HEADER = ["Worker", "PID", "Share", "Requests", "Failures", "Bytes", "CPU User s", "CPU System s",
                  "Peak RSS Bytes", "Peak Connections", "Cancelled", "Ended", "Exit Code", "Problem"]
assert len(WORKERS_HEADER) == len(WorkerSummary.__annotations__)  # one column per key, in order
