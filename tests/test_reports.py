"""What a run says when its requests fail: exit status, outcome line, "—" for missing figures, Locust's files.

Real runs against a closed port, a raw server that answers 404 with a known body, and the embedded
plain-http server asked for https; the run folder is read back as Locust's tooling would read it.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

from loadtest.model.config import parse_config
from loadtest.execution.controller import run
from loadtest.core.run_files import FAILURES_HEADER, LOCUST_FAILURES_HEADER, PERCENTILE_COLUMNS, REPORT_NAME

from .conftest import read_request

NOT_FOUND_BODY = b"n" * 153  # Locust's own 404 page size in the issue: Average Content Size must be 153.0


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def not_found(conn: socket.socket) -> None:
    while read_request(conn):
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(NOT_FOUND_BODY), NOT_FOUND_BODY))


def test_a_run_against_a_closed_port_exits_1_and_says_what_happened(tmp_path: Path) -> None:
    config = tmp_path / "closed.yaml"
    config.write_text(f"name: closed\nrequests: 300\nworkers: 1\nfailure_backoff: off\n"  # 300 at once
                      f"targets: [{{name: nobody, url: 'http://127.0.0.1:{closed_port()}/', concurrency: 2}}]\n")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "FAILED: 300 of 300 requests failed: refused"
    table = {line.split()[1] if line.startswith("GET") else line.split()[0]: line.split()
             for line in lines if line.startswith(("GET ", "      Aggregated"))}
    assert table["nobody"][2:4] == ["300", "300"]
    assert table["nobody"][5:] == ["—"] * 4 and table["Aggregated"][4:] == ["—"] * 4  # p50 p95 p99 max
    assert "0.000" not in done.stdout

    run_dir = tmp_path / "run"
    stats = {r["Name"]: r for r in read_csv(run_dir / "stats.csv")}
    for name in ("nobody", "Aggregated"):  # Locust's forms for a row without response times
        row = stats[name]
        assert [row[c] for c in PERCENTILE_COLUMNS] == ["N/A"] * len(PERCENTILE_COLUMNS)
        assert (row["Median Response Time"], row["Average Response Time"], row["Min Response Time"],
                row["Max Response Time"]) == ("0", "0.0", "0", "0")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 1 and summary["outcome"] == "FAILED: 300 of 300 requests failed: refused"
    (default,) = summary["thresholds"]
    assert default["default"] is True and default["passed"] is False and default["measured"] == 300
    assert summary["aggregated"]["latency_ms"] == {}

    html = (run_dir / REPORT_NAME).read_text()
    assert '<span class="badge big fail" id="outcome">FAILED: 300 of 300 requests failed: refused</span>' in html
    assert "PASSED" not in html and "0.000" not in html
    assert "No latency to show: no request got a response" in html
    assert "histograms.json shows the full spectrum" not in html


def test_every_response_a_404_fails_the_run_and_counts_its_bodies(tmp_path: Path, raw_server) -> None:
    server = raw_server(not_found)
    config = parse_config({"name": "missing", "requests": 200, "workers": 1,
                           "targets": [{"name": "gone", "url": f"http://127.0.0.1:{server.port}/x",
                                        "concurrency": 2}]})
    result = run(config, out_dir=tmp_path / "run")
    assert result.exit_status == 1
    stats = {r["Name"]: r for r in read_csv(tmp_path / "run" / "stats.csv")}
    assert stats["gone"]["Failure Count"] == "200"
    assert stats["gone"]["Average Content Size"] == "153.0"  # every response's body, as Locust counts it
    assert stats["gone"]["50%"] != "N/A"  # a 404 is a response: it has a latency

    with open(tmp_path / "run" / "failures.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[:6] == LOCUST_FAILURES_HEADER == ["Method", "Name", "Error", "Occurrences", "First Seen",
                                                     "Last Seen"]
    assert header == FAILURES_HEADER
    assert rows == [["GET", "gone", "HTTP 404", "200", rows[0][4], rows[0][5], "status", rows[0][7], rows[0][8]]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outcome"] == "FAILED: 200 of 200 requests failed: status"


def test_a_configs_thresholds_replace_the_default(tmp_path: Path, raw_server) -> None:
    server = raw_server(not_found)
    config = parse_config({"name": "accepted", "requests": 100, "workers": 1, "thresholds": ["error_rate <= 100%"],
                           "targets": [{"url": f"http://127.0.0.1:{server.port}/", "concurrency": 1}]})
    result = run(config, out_dir=tmp_path / "run")
    assert result.exit_status == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [t["threshold"] for t in summary["thresholds"]] == ["error_rate <= 100%"]
    assert summary["outcome"] == "PASSED (100 of 100 requests failed: status; the thresholds allow it)"
    assert 'class="badge big pass" id="outcome">PASSED (100 of 100' in (tmp_path / "run" / REPORT_NAME).read_text()


def test_https_to_a_plain_http_server_fails_and_a_latency_threshold_cannot_pass_without_latency(
        tmp_path: Path) -> None:
    config = parse_config({
        "name": "tls", "requests": 50, "workers": 1, "failure_backoff": "off",
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "thresholds": ["p99 < 1s"],
        "targets": [{"name": "wrong", "url": "https://{site}/", "concurrency": 1}]})
    result = run(config, out_dir=tmp_path / "run")
    assert result.exit_status == 1  # p99 < 1s on no latency at all: failed, not passed at 0 ms
    (outcome,) = result.thresholds
    assert not outcome.passed and outcome.measured is None
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    kinds = summary["aggregated"]["failures_by_kind"]
    assert sum(kinds.values()) == 50 and summary["aggregated"]["latency_ms"] == {}
    assert summary["outcome"].startswith(f"FAILED: 50 of 50 requests failed: {next(iter(kinds))}")
    assert "threshold 'p99 < 1s' failed (measured — (no latency samples" in summary["outcome"]


def test_requests_cancelled_when_the_run_stops_do_not_fail_it(tmp_path: Path) -> None:
    config = parse_config({
        "name": "slow", "duration": "1s", "workers": 1,
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "targets": [{"name": "stuck", "url": "http://{site}/delay/20000", "timeout": "30s", "concurrency": 2}]})
    result = run(config, out_dir=tmp_path / "run")
    (stuck,) = result.stats.totals
    assert set(stuck.failures) == {"cancelled"} and stuck.failure_count == 2  # in flight past the 2 s grace
    assert result.exit_status == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outcome"] == "PASSED"
    assert summary["thresholds"][0]["measured"] == 0
