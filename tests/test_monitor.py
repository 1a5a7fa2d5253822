"""A run watches its own processes: resources.csv, workers.csv, verdicts, plain output off a terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.model.config import parse_config
from loadtest.execution.controller import run
from loadtest.outputs.reports import WORKERS_HEADER
from loadtest.execution.monitor import RunMonitor
from loadtest.core.run_files import RESOURCES_HEADER, RESOURCES_NAME

from .test_run import read_csv, site_config


def test_every_process_is_sampled_and_worker_cpu_matches_the_os(tmp_path: Path) -> None:
    config = parse_config(site_config([{"name": "home", "url": "http://{site}/", "concurrency": 10}],
                                      duration="3s", workers=2))
    result = run(config, out_dir=tmp_path / "r", sample_interval=0.5)
    resources = read_csv(tmp_path / "r" / "resources.csv")
    assert list(resources[0]) == RESOURCES_HEADER
    roles = {r["role"] for r in resources}
    assert {"controller", "machine", "worker-0", "worker-1", "server-site-0"} <= roles
    assert len([r for r in resources if r["role"] == "worker-0"]) >= 5  # every half second
    workers = read_csv(tmp_path / "r" / "workers.csv")
    assert list(workers[0]) == WORKERS_HEADER
    assert [w["Ended"] for w in workers] == ["ok", "ok"]
    assert sum(int(w["Requests"]) for w in workers) == result.stats.totals[0].requests
    for w, e in zip(workers, (s.exit for s in result.workers)):
        assert e is not None
        sampled = float(w["CPU User s"]) + float(w["CPU System s"])
        own = e.cpu_user + e.cpu_system  # the worker's own getrusage, just before it exits
        # The OS's figure is read after the worker exits, its own getrusage just before: what runs in
        # between (the interpreter's shutdown) takes longer on a machine busy with other work.
        assert sampled > 0.1 and abs(sampled - own) <= max(0.05 * own, 0.1), (sampled, own)
        assert int(w["Peak RSS Bytes"]) > 10_000_000 and int(w["Peak Connections"]) >= 5
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    cost = summary["servers"][0]["cost"]
    assert cost["cpu_seconds_per_1000"] > 0 and cost["peak_connections"] >= 10
    assert isinstance(summary["verdicts"], list)


def test_a_saturated_worker_gets_a_verdict(tmp_path: Path) -> None:
    """One worker with many users against a fast route: it runs flat out and the run says so."""
    # 7 s: 3 s of saturation in a row must fit even if a neighbour on a shared machine breaks one streak
    config = parse_config(site_config([{"name": "home", "url": "http://{site}/", "concurrency": 200}],
                                      duration="7s", workers=1))
    result = run(config, out_dir=tmp_path / "hot", sample_interval=0.5)
    kinds = {v["kind"] for v in result.verdicts}
    assert kinds & {"worker_saturated", "machine_saturated"}, result.verdicts
    summary = json.loads((tmp_path / "hot" / "summary.json").read_text())
    verdict = summary["verdicts"][0]
    assert verdict["duration_s"] >= 2.9 and verdict["what"].endswith(".")


def test_off_a_terminal_the_live_view_is_one_plain_line_a_second(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("duration: 3s\nworkers: 1\nservers: [{name: s, kind: http}]\n"
                      "targets: [{url: 'http://{s}/', concurrency: 2}]\n")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seconds = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(seconds) >= 3 and all("req/s" in line and "cpu" in line for line in seconds)
    assert "\x1b[" not in done.stdout  # no terminal escapes in a log


def test_watch_pid_samples_a_process_the_run_did_not_start(tmp_path: Path) -> None:
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        config = parse_config(site_config([{"url": "http://{site}/", "concurrency": 1}], requests=50, workers=1,
                                          monitor=[outsider.pid]))
        run(config, out_dir=tmp_path / "w")
    finally:
        outsider.kill()
        outsider.wait()
    roles = {r["role"] for r in read_csv(tmp_path / "w" / "resources.csv")}
    assert f"watch-{outsider.pid}" in roles


def test_on_a_terminal_the_live_view_is_a_progress_bar_and_a_table(tmp_path: Path) -> None:
    import os
    import pty

    config = tmp_path / "c.yaml"
    config.write_text("duration: 2s\nworkers: 1\nservers: [{name: s, kind: http}]\n"
                      "targets: [{name: home, url: 'http://{s}/', concurrency: 2}]\n")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(tmp_path / "r")],
                            cwd=tmp_path, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the run ended
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = output.decode("utf-8", "replace")
    assert "\x1b[" in text  # drawn, not printed line by line
    assert "workers CPU" in text and "p99 ms" in text and "home" in text
    assert "reports in" in text and "Traceback" not in text


def test_a_resources_csv_that_cannot_be_written_is_a_problem_said_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / RESOURCES_NAME).symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    monitor = RunMonitor(tmp_path, interval=0.1)
    monitor.start()
    monitor.stop()  # takes one final sample: its write fails
    monitor.stop()  # a failed run stops its monitor twice: said once, not raised
    problems = monitor.problems()
    assert problems == [f"{RESOURCES_NAME} could not be written (No space left on device): its rows stop there"]
    assert capsys.readouterr().err == f"problem: {problems[0]}\n"


def test_a_monitor_with_resources_csv_written_has_no_problems(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monitor = RunMonitor(tmp_path, interval=0.1)
    monitor.start()
    monitor.say_new_verdicts()
    monitor.stop()
    assert monitor.problems() == [] and capsys.readouterr().err == ""
    rows = read_csv(tmp_path / RESOURCES_NAME)
    assert {r["role"] for r in rows} == {"controller", "machine"}
