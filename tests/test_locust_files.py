"""stats.csv, history.csv and failures.csv against files Locust itself wrote.

tests/fixtures/locust-2.47.0/ holds what `locust --headless --csv run -u 2 -r 2 -t 2s` (Locust 2.47.0, its
locustfile beside them) wrote against `loadtest serve http` on loopback: GET / (fast), /status/500 (every
request fails) and /delay/150. A run of this tool against the same routes must write Locust's columns in
Locust's order with Locust's types: whole-ms integers in the median and percentile columns (rounded as
Locust rounds, so /delay/150's percentiles are Locust's very figures), failures' First/Last Seen as UTC
times of day; the precise figures after Locust's columns; and the project's own readers still read them.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from loadtest.core.run_files import (
    LOCUST_TIME_FORMAT,
    PERCENTILE_COLUMNS,
    PRECISE_PERCENTILE_COLUMNS,
    locust_ms,
)
from loadtest.outputs.compare import per_second
from loadtest.outputs.run_folder import load_run
from loadtest.outputs.series import history_series

LOCUST = Path(__file__).resolve().parent / "fixtures" / "locust-2.47.0"
ROWS = {"home": "/", "bad": "bad", "slow": "slow", "Aggregated": "Aggregated"}  # ours -> Locust's Name
INT = re.compile(r"^-?\d+$")
FLOAT = re.compile(r"^-?\d+\.\d+$")


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, [dict(zip(header, r)) for r in rows]


def kind(cell: str) -> str:
    return "int" if INT.match(cell) else "float" if FLOAT.match(cell) else cell if cell in ("N/A", "") else "text"


def loadtest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_files_read_as_the_ones_locust_wrote_and_the_precise_figures_follow(tmp_path: Path) -> None:
    config = tmp_path / "locustlike.yaml"
    config.write_text("""
name: locustlike
duration: 2s
workers: 1
servers: [{name: site, kind: http, listen: "127.0.0.1:0", workers: 1}]
targets:
  - {name: home, url: "http://{site}/", concurrency: 2}
  - {name: bad, url: "http://{site}/status/500", concurrency: 1}
  - {name: slow, url: "http://{site}/delay/150", concurrency: 1}
""")
    before = time.time()
    done = loadtest("run", str(config), "--quiet", "--out", str(tmp_path / "run"), cwd=tmp_path)
    after = time.time()
    assert done.returncode == 1, done.stdout + done.stderr  # bad's 500s fail the run
    run = tmp_path / "run"

    locust_header, locust_rows = read(LOCUST / "stats.csv")
    header, rows = read(run / "stats.csv")
    assert header[:len(locust_header)] == locust_header  # Locust's columns, in Locust's order
    assert header[len(locust_header):] == PRECISE_PERCENTILE_COLUMNS  # then the precise figures
    ours = {r["Name"]: r for r in rows}
    theirs = {r["Name"]: r for r in locust_rows}
    assert list(ours) == list(ROWS)
    for name, locust_name in ROWS.items():
        row, reference = ours[name], theirs[locust_name]
        for column in locust_header:
            if column == "Median Response Time":
                continue  # Locust's is whole ms unless it falls outside min..max (then that exact figure)
            assert kind(row[column]) == kind(reference[column]), (name, column, row[column], reference[column])
        median, low, high = row["Median Response Time"], float(row["Min Response Time"]), \
            float(row["Max Response Time"])
        assert INT.match(median) or float(median) in (low, high), (name, median)
        for column, precise in zip(PERCENTILE_COLUMNS, PRECISE_PERCENTILE_COLUMNS):
            assert FLOAT.match(row[precise]) and len(row[precise].split(".")[1]) == 3
            assert int(row[column]) == locust_ms(float(row[precise]))
        if INT.match(median):
            assert int(median) == int(row["50%"])
    # the same route, rounded as Locust rounds (to 10 ms between 100 and 1,000): Locust wrote 150, and ours is
    # 150 on a quiet machine; beside CPU burners a /delay/150 answer can take past 155 ms, so 160 (or more) too
    for column in ("50%", "66%", "75%", "80%", "90%"):
        assert theirs["slow"][column] == "150"
        assert INT.match(ours["slow"][column]) and int(ours["slow"][column]) % 10 == 0
        assert 150 <= int(ours["slow"][column]) <= 300, ours["slow"][column]
    # Locust's median there is its min (150 < 151.43, kept within min..max): a float where it says so
    assert theirs["slow"]["Median Response Time"] == theirs["slow"]["Min Response Time"]

    locust_header, locust_rows = read(LOCUST / "failures.csv")
    header, rows = read(run / "failures.csv")
    assert header[:len(locust_header)] == locust_header
    (failure,) = rows
    (reference,) = locust_rows
    assert [failure[c] for c in locust_header[:2]] == [reference[c] for c in locust_header[:2]] == ["GET", "bad"]
    assert kind(failure["Occurrences"]) == kind(reference["Occurrences"]) == "int"
    for column in ("First Seen", "Last Seen"):
        datetime.strptime(reference[column], LOCUST_TIME_FORMAT)  # the fixture is Locust's form
        seen = datetime.strptime(failure[column], LOCUST_TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
        assert int(before) <= seen <= after
        assert len(failure[column]) == len(reference[column])
    assert float(failure["First Seen Elapsed"]) <= float(failure["Last Seen Elapsed"]) <= 4.0

    locust_header, locust_rows = read(LOCUST / "stats_history.csv")
    header, rows = read(run / "history.csv")
    assert header[:len(locust_header)] == locust_header
    assert header[-len(PRECISE_PERCENTILE_COLUMNS):] == PRECISE_PERCENTILE_COLUMNS
    assert rows
    for row in rows:
        for column in ("Timestamp", "User Count", "Total Request Count", "Total Failure Count"):
            assert kind(row[column]) == kind(locust_rows[-1][column]) == "int"
        for column in ("Requests/s", "Failures/s"):
            assert kind(row[column]) == "float" and len(row[column].split(".")[1]) == 6  # Locust's "%2f"
        for column in PERCENTILE_COLUMNS:
            assert kind(row[column]) in ("int", "N/A")

    # the project's own readers read the new files: the terminal, report and compare
    summary = json.loads((run / "summary.json").read_text())
    p50 = summary["targets"][2]["latency_ms"]["p50"]
    assert f"{p50:.3f}" == ours["slow"]["50% ms"]
    report = loadtest("report", str(run), cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    html = (run / "report.html").read_text()
    assert "HTTP 500" in html
    compared = loadtest("compare", str(run), str(run), cwd=tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # the per-second figures the report's charts and compare's noise bands read are the precise ones
    folder = load_run(run)
    seconds = per_second(folder)["home"]["p50"]
    assert seconds and all(v == float(r["50% ms"]) for v, r in zip(
        seconds, [r for r in folder.history if r["Name"] == "home" and r["Interval Requests"] != "0"]))
    charted = [v for _, v in history_series(folder)["slow"]["p50"]]
    assert charted == [float(r["50% ms"]) for r in folder.history
                       if r["Name"] == "slow" and r["Interval Requests"] != "0"]  # 150.077, not Locust's 150
