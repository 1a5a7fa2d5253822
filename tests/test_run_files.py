"""The run folder's schema (run_files.py), held against a real run read back through every reader.

One short run (two workers, 1 s) against the embedded http and echo servers, with a closed-model http
target, an open-model one and a tcp one, so that every row type is written. Its folder is then read by
run_folder.load_run, compare and report.html, and what they show is checked against the files.
"""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.outputs.compare import compare_runs
from loadtest.outputs.page import fmt_count
from loadtest.core.run_files import (
    AGGREGATED,
    CONNECT_TYPE,
    FAILURES_HEADER,
    HISTORY_HEADER,
    LATENCY_SUMMARY_KEYS,
    LATENESS_TYPE,
    OPEN_MODEL_KEY,
    CONNECTIONS_KEY,
    REPORT_NAME,
    RESOURCES_HEADER,
    RUN_FILES,
    STATS_HEADER,
    STATS_NAME,
    SUMMARY_KEYS,
    SUMMARY_NAME,
    TARGET_SUMMARY_KEYS,
    UNCORRECTED_TYPE,
    WORKERS_HEADER,
    WORKERS_NAME,
    WorkerSummary,
)
from loadtest.outputs.run_folder import load_run

CONFIG = {
    "name": "schema",
    "duration": "1s",
    "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1},
                {"name": "echo", "kind": "echo", "listen": "127.0.0.1:0", "workers": 1}],
    "targets": [{"name": "home", "url": "http://{site}/", "concurrency": 4},
                {"name": "paced", "url": "http://{site}/bytes/100", "rate": 100},
                {"name": "echo", "tcp": "{echo}", "connections": 4, "size": 16, "expect": "echo"}],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("schema")
    config = base / "schema.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = base / "run"
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--workers", "2", "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def html_table(text: str, section: str) -> list[list[str]]:
    """The body rows of the table in report.html's section titled `section`, as the cells' text."""
    found = re.search(rf"<section><h2>{section}</h2>(.*?)</section>", text, re.S)
    assert found, f"report.html has no {section} section"
    body = found.group(1).split("</thead>", 1)[-1]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S) if "<td" in row]


def test_every_file_written_is_named_in_run_files_and_has_its_header(run_dir: Path) -> None:
    written = sorted(p.name for p in run_dir.iterdir())
    assert written == sorted(RUN_FILES), written  # nothing unnamed, nothing named that a run does not write
    assert read_csv(run_dir / STATS_NAME)[0] == STATS_HEADER
    assert read_csv(run_dir / "history.csv")[0] == HISTORY_HEADER
    assert read_csv(run_dir / "failures.csv")[0] == FAILURES_HEADER
    assert read_csv(run_dir / "resources.csv")[0] == RESOURCES_HEADER
    assert read_csv(run_dir / WORKERS_NAME)[0] == WORKERS_HEADER


def test_summary_json_has_the_keys_run_files_names(run_dir: Path) -> None:
    summary = json.loads((run_dir / SUMMARY_NAME).read_text())
    assert list(summary) == list(SUMMARY_KEYS)
    targets = {t["name"]: t for t in summary["targets"]}
    assert list(targets) == ["home", "paced", "echo"]
    for t in [*targets.values(), summary["aggregated"]]:
        assert list(t)[:len(TARGET_SUMMARY_KEYS)] == list(TARGET_SUMMARY_KEYS)
        assert list(t["latency_ms"]) == list(LATENCY_SUMMARY_KEYS), t["name"]
    assert set(targets["paced"]) - set(TARGET_SUMMARY_KEYS) == {OPEN_MODEL_KEY}
    assert set(targets["echo"]) - set(TARGET_SUMMARY_KEYS) == {CONNECTIONS_KEY}
    assert set(targets["home"]) == set(TARGET_SUMMARY_KEYS)
    assert [list(w) for w in summary["workers"]] == [list(WorkerSummary.__annotations__)] * 2


def test_stats_rows_read_back_equal_stats_csv(run_dir: Path) -> None:
    _, stats = read_csv(run_dir / STATS_NAME)
    types = [(r["Type"], r["Name"]) for r in stats]
    assert types == [("GET", "home"), ("GET", "paced"), ("TCP", "echo"), (CONNECT_TYPE, "echo"),
                     (LATENESS_TYPE, "paced"), (UNCORRECTED_TYPE, "paced"), ("", AGGREGATED)], types
    assert all(int(r["Request Count"]) > 0 for r in stats)

    run = load_run(run_dir)
    summaries = {t["name"]: t for t in run.target_summaries()}
    main_rows = [r for r in stats if r["Type"] not in (CONNECT_TYPE, LATENESS_TYPE, UNCORRECTED_TYPE)]
    assert list(summaries) == [r["Name"] for r in main_rows]
    for r in main_rows:
        t = summaries[r["Name"]]
        assert (t["requests"], t["failures"]) == (int(r["Request Count"]), int(r["Failure Count"])), r["Name"]
        assert f"{t['requests_per_s']:.3f}" == r["Requests/s"]
        assert f"{t['latency_ms']['p50']:.3f}" == r["50% ms"] and f"{t['latency_ms']['max']:.3f}" == r["100% ms"]
    # the last second of history.csv carries the run's totals, as stats.csv has them
    last = {r["Name"]: r for r in run.history}
    for r in main_rows:
        assert last[r["Name"]]["Total Request Count"] == r["Request Count"], r["Name"]

    shown = html_table((run_dir / REPORT_NAME).read_text(encoding="utf-8"), "Summary")
    assert sorted((c[0], c[1], c[2], c[3]) for c in shown) == sorted(
        (r["Type"], r["Name"], fmt_count(float(r["Request Count"])), fmt_count(float(r["Failure Count"])))
        for r in stats)


def test_html_workers_table_shows_each_workers_index_pid_requests_and_peak_rss(run_dir: Path) -> None:
    _, workers_csv = read_csv(run_dir / WORKERS_NAME)
    workers = json.loads((run_dir / SUMMARY_NAME).read_text())["workers"]
    assert len(workers) == len(workers_csv) == 2
    shown = html_table((run_dir / REPORT_NAME).read_text(encoding="utf-8"), "Workers")
    assert len(shown) == 2
    for cells, w, row in zip(shown, workers, workers_csv):
        index, pid, requests, rss_mib = cells[0], cells[1], cells[2], cells[6]
        assert index == str(w["worker"]) == row["Worker"]
        assert pid == str(w["pid"]) == row["PID"] and w["pid"] > 0
        assert requests == fmt_count(w["requests"]) and str(w["requests"]) == row["Requests"]
        assert w["requests"] > 0
        assert w["peak_rss_bytes"] and str(w["peak_rss_bytes"]) == row["Peak RSS Bytes"]
        assert rss_mib == f"{w['peak_rss_bytes'] / 2**20:,.1f}"
    assert {c[0] for c in shown} == {"0", "1"}


def test_compare_reads_every_target_of_the_folder(run_dir: Path) -> None:
    _, stats = read_csv(run_dir / STATS_NAME)
    c = compare_runs(run_dir, run_dir)
    names = [t.name for t in c.targets]
    assert names == ["home", "paced", "echo", AGGREGATED]
    assert not c.worse and not c.only_in_a and not c.only_in_b
    by_name = {r["Name"]: r for r in stats if r["Type"] not in (CONNECT_TYPE, LATENESS_TYPE, UNCORRECTED_TYPE)}
    for t in c.targets:
        rate = next(ch for ch in t.changes if ch.metric.key == "requests_per_s")
        assert rate.a == rate.b == pytest.approx(float(by_name[t.name]["Requests/s"]), abs=1e-3), t.name
        p99 = next(ch for ch in t.changes if ch.metric.key == "p99")
        assert p99.a == pytest.approx(float(by_name[t.name]["99% ms"]), abs=1e-3), t.name
