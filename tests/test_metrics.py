"""Live Prometheus metrics: scraped during a real run, the final scrape equals stats.csv."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from loadtest.cli.app import app
from loadtest.model.config import ConfigError, parse_config
from loadtest.core.stats import counts_at_or_below, new_histogram

from .test_one_line import SitesServer

RUN_LIMIT_S = 60.0


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[SitesServer]:
    server = SitesServer(tmp_path)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.communicate(timeout=20)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, read with prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_scrape_during_the_run_is_live_and_the_last_equals_stats_csv(sites: SitesServer, tmp_path: Path) -> None:
    url = f"{sites.url}/"
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", url, "-c", "4", "-d", "2s", "-w", "1",
                             "--metrics", "127.0.0.1:0", "--out", str(tmp_path / "run"), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # said before the load starts
    assert line.startswith("metrics on http://127.0.0.1:"), line
    endpoint = line.split()[2]
    scrapes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    deadline = time.monotonic() + RUN_LIMIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            answer = requests.get(endpoint, timeout=5)
        except requests.ConnectionError:  # the run stopped serving between poll() and the scrape
            break
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
        scrapes.append(samples(answer.text))
        time.sleep(0.1)
    out, err = proc.communicate(timeout=RUN_LIMIT_S)
    assert proc.returncode == 0, err
    served = sites.stop()

    key = (("target", url),)
    counts = [s[("loadtest_requests_total", key)] for s in scrapes]
    assert counts == sorted(counts)  # a counter
    assert any(0 < c < counts[-1] for c in counts)  # seen while the load ran, not only at the end
    assert any(("loadtest_worker_cpu_percent", (("worker", "0"),)) in s for s in scrapes)
    last = scrapes[-1]
    assert last[("loadtest_run_finished", ())] == 1  # the run waited for this scrape before it stopped serving
    with open(tmp_path / "run" / "stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == url)
    assert last[("loadtest_requests_total", key)] == int(row["Request Count"]) == served > 100
    assert not [k for k in last if k[0] == "loadtest_failures_total"]  # no failure of any kind
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in last.items()
                     if name == "loadtest_latency_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][0] == float("inf")
    assert 0 < buckets[-1][1] <= int(row["Request Count"])
    assert last[("loadtest_latency_seconds_count", key)] == buckets[-1][1]
    p50 = last[("loadtest_interval_latency_seconds", (("quantile", "0.5"), ("target", url)))]
    top = last[("loadtest_interval_latency_seconds", (("quantile", "1"), ("target", url)))]
    assert 0 < p50 <= top
    assert "metrics: no scrape read the final figures" not in err


def test_metrics_refuses_an_address_it_cannot_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        for args, message in (
            (["--metrics", f"127.0.0.1:{port}"], f"--metrics: cannot listen on 127.0.0.1:{port}"),
            (["--metrics", "prometheus.local:9464"], "--metrics: host must be an IP address or localhost"),
            (["--metrics", "127.0.0.1:70000"], "--metrics: port must be between 0 and 65535"),
            (["--metrics", "0", "--metrics-linger", "soon"], "--metrics-linger: must be a duration"),
            (["--metrics-linger", "5s"], "--metrics-linger: applies only with --metrics"),
        ):
            done = CliRunner().invoke(app, ["run", "http://127.0.0.1:1/", "-n", "1", *args])  # in-process
            assert done.exit_code == 2 and message in done.stderr, (args, done.stderr, done.exception)
    finally:
        taken.close()
    assert list(tmp_path.iterdir()) == []  # no run, no report folder


def test_metrics_in_the_config_binds_loopback_unless_told() -> None:
    base = {"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", "concurrency": 1}]}
    assert parse_config({**base, "metrics": 9464}).metrics == ("127.0.0.1", 9464)
    assert parse_config({**base, "metrics": ":0"}).metrics == ("127.0.0.1", 0)
    assert parse_config({**base, "metrics": "0.0.0.0:9464"}).metrics == ("0.0.0.0", 9464)
    assert parse_config(base).metrics is None
    with pytest.raises(ConfigError, match=r"^metrics: must be HOST:PORT, got \[1\]$"):
        parse_config({**base, "metrics": [1]})


def test_histogram_buckets_count_the_merged_histogram_cumulatively() -> None:
    hist = new_histogram()
    for value_ns, count in ((50_000, 3), (900_000, 5), (2_000_000, 7), (40_000_000_000, 1)):
        hist.record_value(value_ns, count)
    bounds = [10_000, 100_000, 1_000_000, 2_500_000, 10_000_000_000, 60_000_000_000]
    assert counts_at_or_below(hist, bounds) == [0, 3, 8, 15, 15, 16]
    assert counts_at_or_below(new_histogram(), bounds) == [0] * len(bounds)
