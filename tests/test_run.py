"""End to end: real worker processes against the embedded server on a free port."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.model.config import parse_config
from loadtest.execution.controller import run
from loadtest.outputs.reports import HISTORY_HEADER, STATS_HEADER

ROOT = Path(__file__).resolve().parent.parent
LOCUST_STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
    "99.99%,100%"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def site_config(targets: list[dict[str, object]], **fields: object) -> dict[str, object]:
    return {
        "name": "e2e",
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "targets": targets,
        **fields,
    }


def test_every_request_is_counted_exactly_once(tmp_path: Path) -> None:
    config = parse_config(site_config(
        [{"name": "home", "url": "http://{site}/", "concurrency": 20},
         {"name": "pages", "urls": ["http://{site}/site/1", "http://{site}/site/2", "http://{site}/bytes/300"],
          "concurrency": 10},
         {"name": "missing", "url": "http://{site}/status/404", "concurrency": 2}],
        requests=200_000, workers=2))
    result = run(config, out_dir=tmp_path / "run")
    assert result.run_dir == tmp_path / "run"
    assert result.exit_status == 1  # "missing" answers 404: failed requests fail a run without thresholds
    assert (tmp_path / "run" / "stats.csv").read_text().splitlines()[0].startswith(LOCUST_STATS_HEADER + ",")
    assert STATS_HEADER[:len(LOCUST_STATS_HEADER.split(","))] == LOCUST_STATS_HEADER.split(",")

    stats = {r["Name"]: r for r in read_csv(tmp_path / "run" / "stats.csv")}
    assert list(stats) == ["home", "pages", "missing", "Aggregated"]
    total = int(stats["Aggregated"]["Request Count"])
    assert total == 200_000  # the exact count asked for, over two workers
    assert sum(int(stats[n]["Request Count"]) for n in ("home", "pages", "missing")) == total
    assert stats["missing"]["Failure Count"] == stats["missing"]["Request Count"] != "0"
    assert stats["home"]["Failure Count"] == "0" and stats["Aggregated"]["Type"] == ""
    assert stats["home"]["Type"] == "GET"
    # times are milliseconds with microsecond precision (Locust's percentile columns: whole ms, as Locust's)
    assert all(len(stats["home"][c].split(".")[1]) == 3 for c in ("50% ms", "99% ms", "Average Response Time"))
    assert stats["home"]["99%"].isdigit()

    served = result.servers[0]["served"]["requests"]
    assert served == total  # the server's own count agrees

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [w["requests"] for w in summary["workers"]] == [100_000, 100_000]
    assert sum(w["requests"] for w in summary["workers"]) == total
    assert summary["aggregated"]["requests"] == total
    assert summary["targets"][2]["failures_by_kind"] == {"status": int(stats["missing"]["Request Count"])}
    assert summary["machine"]["cores"] >= 1 and summary["config"]["requests"] == 200_000

    history = read_csv(tmp_path / "run" / "history.csv")
    assert list(history[0]) == HISTORY_HEADER
    per_target = [r for r in history if r["Name"] != "Aggregated"]
    assert sum(int(r["Interval Requests"]) for r in per_target) == total
    last = {r["Name"]: r for r in history}
    for name in ("home", "pages", "missing", "Aggregated"):
        assert last[name]["Total Request Count"] == stats[name]["Request Count"]
        assert last[name]["Total Failure Count"] == stats[name]["Failure Count"]

    failures = read_csv(tmp_path / "run" / "failures.csv")
    assert [(f["Method"], f["Name"], f["Kind"], f["Error"]) for f in failures] == [("GET", "missing", "status",
                                                                                    "HTTP 404")]
    assert int(failures[0]["Occurrences"]) == int(stats["missing"]["Failure Count"])


def test_a_timed_run_stops_by_itself_with_history_each_second(tmp_path: Path) -> None:
    config = parse_config(site_config([{"name": "home", "url": "http://{site}/", "concurrency": 8}],
                                      duration="2s", workers=2))
    result = run(config, out_dir=tmp_path / "timed")
    assert result.exit_status == 0
    assert 1.9 <= result.stats.elapsed <= 4.5
    history = read_csv(tmp_path / "timed" / "history.csv")
    seconds = [r for r in history if r["Name"] == "home"]
    assert len(seconds) >= 2
    assert all(float(r["Requests/s"]) > 0 for r in seconds[:-1])
    assert result.servers[0]["served"]["requests"] == result.stats.totals[0].requests


def test_timeouts_and_refusals_are_counted_by_kind_in_the_workers(tmp_path: Path) -> None:
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    config = parse_config(site_config(
        [{"name": "stall", "url": "http://{site}/delay/3000", "timeout": "300ms", "concurrency": 3},
         {"name": "nobody", "url": f"http://127.0.0.1:{closed_port}/", "concurrency": 1}],
        duration="1s", workers=1))
    result = run(config, out_dir=tmp_path / "faults")
    stall, nobody = result.stats.totals
    assert stall.requests >= 3 and set(stall.failures) == {"read_timeout"}
    assert stall.failure_count == stall.requests
    latency_ms = stall.latency.get_value_at_percentile(50) / 1e6
    assert 280 <= latency_ms <= 600  # the timeout, give or take the deadline scan period
    assert nobody.requests > 0 and set(nobody.failures) == {"refused"}


def test_the_requests_engine(tmp_path: Path) -> None:
    config = parse_config(site_config(
        [{"name": "echo", "url": "http://{site}/echo", "method": "POST", "body": "ping", "engine": "requests",
          "concurrency": 4}], requests=200, workers=1))
    result = run(config, out_dir=tmp_path / "req")
    (echo,) = result.stats.totals
    assert echo.requests == 200 and echo.failure_count == 0
    assert echo.content_bytes == 200 * len("ping")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_sites_config_runs_from_the_command_line(tmp_path: Path) -> None:
    done = cli("run", str(ROOT / "configs" / "sites.yaml"), "--duration", "2s", "--out", str(tmp_path / "sites"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"reports in {tmp_path / 'sites'}" in done.stdout
    assert "Traceback" not in done.stderr
    stats = {r["Name"]: r for r in read_csv(tmp_path / "sites" / "stats.csv")}
    assert set(stats) == {"crawl", "home", "post-json", "slow", "Aggregated"}
    assert all(int(r["Request Count"]) > 0 and r["Failure Count"] == "0" for r in stats.values())
    assert {p.name for p in (tmp_path / "sites").iterdir()} >= {"stats.csv", "history.csv", "failures.csv",
                                                                "summary.json", "histograms.json"}
    from hdrh.histogram import HdrHistogram

    encoded = json.loads((tmp_path / "sites" / "histograms.json").read_text())
    crawl = HdrHistogram.decode(encoded["crawl"]["latency"])
    assert crawl.get_total_count() == int(stats["crawl"]["Request Count"])


def test_quiet_prints_only_the_report_folder(tmp_path: Path) -> None:
    config = tmp_path / "q.yaml"
    config.write_text("name: q\nrequests: 50\nworkers: 1\nservers: [{name: s, kind: http}]\n"
                      "targets: [{url: 'http://{s}/', concurrency: 2}]\n")
    done = cli("run", str(config), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert Path(tmp_path, line).joinpath("stats.csv").exists()
    assert Path(line).parent == Path("reports") and Path(line).name.startswith("q-")


BAD_INPUT = [
    ("missing file", None, [], "no such file"),
    ("invalid yaml", "targets: [\n", [], "is not valid YAML"),
    ("unknown field", "duration: 1s\nspeed: 3\ntargets: [{url: 'http://127.0.0.1:1/'}]\n", [], "unknown field 'speed'"),
    ("wrong type", "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: many}]\n", [],
     "targets[0].concurrency: must be a positive integer, got 'many'"),
    ("malformed url", "duration: 1s\ntargets: [{url: 'http//127.0.0.1'}]\n", [], "targets[0].url"),
    ("bad duration option", "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/'}]\n", ["--duration", "soon"],
     "--duration: must be a duration"),
    ("zero workers option", "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/'}]\n", ["--workers", "0"], "--workers"),
    ("not a mapping", "- just\n- a list\n", [], "config: must be a mapping"),
]


@pytest.mark.parametrize("case, text, options, message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_sentence_exit_2_and_no_report(tmp_path: Path, case: str, text: str | None,
                                                        options: list[str], message: str) -> None:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    done = cli("run", str(path), *options, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert not (tmp_path / "reports").exists()
