"""The one-line form: `loadtest run URL -c 50 -d 10s`, as wrk or hey take it, with the same reports."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from typer.testing import CliRunner

from loadtest.cli.app import app
from loadtest.model.config import load_config
from loadtest.model.quick import OneLine, one_line_config

from .conftest import RawServer, read_request


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


class SitesServer:
    """`loadtest serve http` on a free loopback port, one process; `stop()` returns its own count of requests."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest", "serve", "http", "--listen", "127.0.0.1:0",
                                      "--workers", "1"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("serving http on http://127.0.0.1:"), line
        self.url = line.split()[3]  # http://127.0.0.1:PORT
        self.port = int(self.url.rpartition(":")[2])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return int(out.split(" requests served")[0].split()[-1])  # "...: 1234 requests served"


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[SitesServer]:
    server = SitesServer(tmp_path)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.communicate(timeout=20)


def stats_rows(run_dir: Path) -> dict[str, dict[str, str]]:
    with open(run_dir / "stats.csv", newline="") as f:
        return {f"{r['Type']} {r['Name']}": r for r in csv.DictReader(f)}


def test_a_url_runs_one_target_and_its_count_is_the_servers(sites: SitesServer, tmp_path: Path) -> None:
    done = cli("run", f"{sites.url}/", "-c", "4", "-d", "1s", "-w", "1", cwd=tmp_path)
    served = sites.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (tmp_path / "reports").iterdir()  # named from the host and port, as a config's name would be
    assert run_dir.name.startswith(f"127.0.0.1-{sites.port}-")
    rows = stats_rows(run_dir)
    page = rows[f"GET {sites.url}/"]
    assert int(page["Request Count"]) == served > 100
    assert int(page["Failure Count"]) == 0
    assert rows[" Aggregated"]["Request Count"] == page["Request Count"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["targets"][0]["concurrency"] == 4 and summary["duration_s"] >= 1.0


def test_rate_is_the_open_model_and_body_is_posted(sites: SitesServer, tmp_path: Path) -> None:
    done = cli("run", f"{sites.url}/echo", "--rate", "200", "-n", "100", "--body", "hello", "-w", "1",
               "--out", str(tmp_path / "run"), cwd=tmp_path)
    served = sites.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    rows = stats_rows(tmp_path / "run")
    echo = rows[f"POST {sites.url}/echo"]  # --body without -m: a POST, as curl -d
    assert int(echo["Request Count"]) == served == 100 and int(echo["Failure Count"]) == 0
    assert float(echo["Average Content Size"]) == len("hello")  # /echo answered the body it was sent
    assert f"LATENESS {sites.url}/echo" in rows  # the open model's rows, as from a config file


def test_method_headers_body_and_timeout_reach_the_server(raw_server: Callable[..., RawServer],
                                                         tmp_path: Path) -> None:
    heads: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        while head := read_request(conn):
            heads.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(answer)
    done = cli("run", f"http://127.0.0.1:{server.port}/api", "-c", "1", "-n", "5", "-w", "1", "-m", "PUT",
               "-H", "X-Test: yes", "-H", "Content-Type: application/json", "--body", '{"a": 1}',
               "--timeout", "2s", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(heads) == 5
    for head in heads:
        lines = head.decode().split("\r\n")
        assert lines[0] == "PUT /api HTTP/1.1"
        assert "X-Test: yes" in lines and "Content-Type: application/json" in lines
        assert "Content-Length: 8" in lines
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["targets"][0]["timeout"] == "2s"  # the config as given, as from a file


def test_the_one_line_config_is_the_config_a_yaml_file_gives(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8080/echo"
    quick = one_line_config(OneLine(url, concurrency="50", duration="10s", method="POST",
                                    headers=("X-A: 1", "Accept:text/plain"), body="hi", timeout="2s"))
    (tmp_path / "same.yaml").write_text(
        "name: '127.0.0.1:8080'\nduration: 10s\n"
        f"targets: [{{url: '{url}', concurrency: 50, method: POST, headers: {{X-A: '1', Accept: text/plain}},"
        " body: hi, timeout: 2s}]\n")
    assert quick == load_config(tmp_path / "same.yaml")
    default = one_line_config(OneLine(url))
    assert default.duration == 10.0 and default.targets[0].concurrency == 10  # wrk's defaults
    counted = one_line_config(OneLine(url, requests="500"))
    assert counted.requests == 500 and counted.duration is None


def test_bad_one_line_input_is_one_sentence_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("requests: 10\ntargets: [{url: 'http://127.0.0.1:1/'}]\n")
    monkeypatch.chdir(tmp_path)
    url = "http://127.0.0.1:1/"
    for args, message in (
        ([url, "-c", "5", "--rate", "10"], "-c/--concurrency and --rate: give one"),
        ([str(config), "-c", "5"], "-c/--concurrency: applies only to a URL"),
        ([str(config), "-H", "X: 1"], "-H/--header: applies only to a URL"),
        ([url, "-H", "no colon"], "-H/--header: must be 'Name: value', got 'no colon'"),
        ([url, "-H", "X: 1", "-H", "x: 2"], "-H/--header: 'x' is given twice"),
        ([url, "-c", "0"], "-c/--concurrency: must be a positive integer, got 0"),
        ([url, "--rate", "fast"], "--rate: must be a positive number, got 'fast'"),
        ([url, "-m", "FETCH"], "-m/--method: must be one of GET"),
        ([url, "--timeout", "soon"], "--timeout: must be a duration"),
        (["ftp://127.0.0.1/"], "URL: must start with http:// or https://"),
    ):
        done = CliRunner().invoke(app, ["run", *args])  # in-process: the same code, without 10 interpreters
        assert done.exit_code == 2, (args, done.stderr, done.exception)  # a traceback would be exit 1
        assert message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == "", done.stderr
    assert list(tmp_path.iterdir()) == [config]  # no report folder


def test_named_one_line_runs_of_two_urls_compare_and_the_summary_reads_like_the_live_view(
        sites: SitesServer, tmp_path: Path) -> None:
    for route, out in (("/", "fast"), ("/delay/2", "slow")):
        done = cli("run", f"{sites.url}{route}", "--name", "page", "-c", "4", "-d", "1s", "-w", "1",
                   "--out", str(tmp_path / out), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        requests = int(stats_rows(tmp_path / out)["GET page"]["Request Count"])
        row = next(line.split() for line in done.stdout.splitlines() if line.startswith("GET "))
        # the final table's counts and rates with thousands separators, as the live view shows them
        assert row[:3] == ["GET", "page", f"{requests:,}"] and (requests < 1000 or "," in row[2]), row
        assert "," in row[4] or float(row[4]) < 1000, row
    sites.stop()
    compared = cli("compare", str(tmp_path / "fast"), str(tmp_path / "slow"), "--html", str(tmp_path / "c.html"),
                   cwd=tmp_path)
    # Paired by the name: before, two URLs were two targets and "1 target of A missing from B"
    assert compared.returncode == 1 and "missing" not in compared.stdout, compared.stdout + compared.stderr
    assert "page " in compared.stdout and "worse" in compared.stdout
    assert "CPU/request is the whole run's only (Aggregated)" in compared.stdout  # why per-target is "—"
    assert compared.stderr == f"compare page: {tmp_path / 'c.html'}\n"  # where it wrote
    html = (tmp_path / "c.html").read_text()
    started = json.loads((tmp_path / "fast" / "summary.json").read_text())["started"]
    assert f"<h1>fast ({started}) → slow (" in html  # the two runs, not "page → page"


def test_cancelled_requests_are_named_alike_in_the_table_and_the_threshold_line(sites: SitesServer,
                                                                               tmp_path: Path) -> None:
    # two users whose requests outlast the run and its 2 s grace period: both end cancelled
    done = cli("run", f"{sites.url}/delay/8000", "--name", "slow", "-c", "2", "-d", "1s", "-w", "1",
               "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # cancelled requests are not the target's failures
    lines = done.stdout.splitlines()
    row = next(line.split() for line in lines if line.startswith("GET "))
    assert row[2:4] == ["2", "2"]  # Requests, Failures: Locust counts them
    assert "  slow: 2 cancelled (in flight when the run was stopped: counted in Failures, not held against the " \
           "target)" in lines
    # before: "measured 0" beside a table that said 2 failures, with no word on why
    assert "threshold pass: failed == 0  (measured 0; 2 cancelled not counted)" in done.stdout
