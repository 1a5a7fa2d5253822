"""Faults caused for real: lost workers, interrupted runs, a killed parent, hostile servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.model.config import ConfigError, parse_config
from loadtest.execution.controller import run
from loadtest.execution.interrupts import SAME_INTERRUPT_S
from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints
from loadtest.core.recorder import TargetRecorder

from .conftest import RawServer, read_request
from .test_run import read_csv

LONG_RUN = ("duration: 60s\nworkers: 2\nservers: [{name: s, kind: http}]\n"
            "targets: [{name: home, url: 'http://{s}/', concurrency: 4}]\n")


def launch_run(tmp_path: Path, text: str, session: bool = False) -> subprocess.Popen[str]:
    """`loadtest run` of the config `text` (written to tmp_path/run.yaml), reports in tmp_path/r, output piped.

    `session`: in a process group of its own (its pid is the group's), to signal the whole group.
    """
    config = tmp_path / "run.yaml"
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(tmp_path / "r")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=session)
    assert proc.stdout is not None
    return proc


def start_run(tmp_path: Path, text: str = LONG_RUN, session: bool = False) -> tuple[subprocess.Popen[str], list[int]]:
    """Start `loadtest run` and return it with its worker pids once the load has begun.

    `session`: in a process group of its own (its pid is the group's), to signal the whole group.
    """
    proc = launch_run(tmp_path, text, session)
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        m = re.search(r"workers? started \(pids ([\d, ]+)\)", line)
        if m:
            return proc, [int(p) for p in m.group(1).split(", ")]
        assert time.monotonic() < deadline
    raise AssertionError(f"the run never started: {proc.stderr.read() if proc.stderr else ''}")


def wait_for_seconds(tmp_path: Path, n: int, target: str = "home") -> None:
    deadline = time.monotonic() + 30
    while True:
        history = tmp_path / "r" / "history.csv"
        if history.exists() and len([r for r in read_csv(history) if r["Name"] == target]) >= n:
            return
        assert time.monotonic() < deadline
        time.sleep(0.1)


def assert_all_gone(children: list[psutil.Process], within: float = 5.0) -> None:
    """Every child has exited (a process killed a moment ago may still be tearing down)."""
    deadline = time.monotonic() + within
    while True:
        running = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not running:
            return
        assert time.monotonic() < deadline, running
        time.sleep(0.05)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_lost_worker_is_marked_the_rest_run_on_and_the_run_exits_3(tmp_path: Path, how: str) -> None:
    text = LONG_RUN.replace("60s", "9s")
    proc, workers = start_run(tmp_path, text)
    wait_for_seconds(tmp_path, 2)
    os.kill(workers[0], getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "worker 0" in out and "lost" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    lost, alive = summary["workers"]
    assert lost["ended"] == "lost" and alive["ended"] == "ok"
    assert lost["requests"] > 0  # what it reported before it was lost is kept
    assert summary["aggregated"]["requests"] == lost["requests"] + alive["requests"]
    assert summary["exit_status"] == 3 and summary["problems"]
    history = [r for r in read_csv(tmp_path / "r" / "history.csv") if r["Name"] == "home"]
    assert len(history) >= 8  # the other worker went on to the end
    assert not psutil.pid_exists(workers[0]) or psutil.Process(workers[0]).status() == psutil.STATUS_ZOMBIE


def test_second_ctrl_c_stops_at_once_and_leaves_no_process_behind(tmp_path: Path) -> None:
    proc, workers = start_run(tmp_path)
    wait_for_seconds(tmp_path, 1)
    children = descendants(proc.pid)
    assert len(children) >= 3  # two workers and the server, at least
    os.kill(workers[0], signal.SIGSTOP)  # a worker that cannot answer the first Ctrl-C
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # the first Ctrl-C waits for the stopped worker
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 4.5  # not the 5 s it would wait before calling the worker silent
    assert proc.returncode == 130, err  # what was asked for: stopped by Ctrl-C, not a failed run
    assert "Traceback" not in err
    assert "worker 0" in out and "second interrupt" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["exit_status"] == 130 and summary["problems"] == []
    killed, stopped = summary["workers"]
    assert killed["ended"] == "killed" and "second interrupt" in killed["problem"] and stopped["ended"] == "ok"
    assert killed["requests"] > 0  # what it reported before it was killed is kept
    assert summary["aggregated"]["requests"] == killed["requests"] + stopped["requests"]
    assert_all_gone(children)


def test_ctrl_c_twice_in_quick_succession_never_kills_the_exit(tmp_path: Path) -> None:
    # The first Ctrl-C cancels the 5 s requests at once, so the second often lands while the process is
    # already exiting; it must still end with a documented status, not be killed by SIGINT (-2). (Closer
    # than controller.SAME_INTERRUPT_S, the two would count as one interrupt.)
    slow = LONG_RUN.replace("url: 'http://{s}/'", "url: 'http://{s}/delay/5000', timeout: 20s")
    for _ in range(3):
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        proc, workers = start_run(tmp_path, slow)
        wait_for_seconds(tmp_path, 1)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        time.sleep(SAME_INTERRUPT_S + 0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert json.loads((tmp_path / "r" / "summary.json").read_text())["interrupted"] is True
        assert_all_gone(children)


def test_requests_still_connecting_when_the_run_stops_are_cancelled_not_lost(tmp_path: Path) -> None:
    # A listener that never accepts: with a backlog of 0 one connect completes and the rest hang in
    # SYN-SENT. Every user's request ends as exactly one outcome all the same.
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(0)
        port = hang.getsockname()[1]
        config = parse_config({"name": "hang", "duration": "1s", "workers": 1, "targets": [
            {"name": "hang", "url": f"http://127.0.0.1:{port}/", "concurrency": 4, "timeout": "20s"}]})
        result = run(config, out_dir=tmp_path / "hang")
    (hang_totals,) = result.stats.totals
    assert hang_totals.requests == 4 and dict(hang_totals.failures) == {"cancelled": 4}


def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    proc, workers = start_run(tmp_path)
    wait_for_seconds(tmp_path, 1)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert (tmp_path / "r" / "stats.csv").exists()
    assert_all_gone(children)


def test_a_parent_killed_outright_leaves_its_history_and_no_workers(tmp_path: Path) -> None:
    proc, workers = start_run(tmp_path)
    wait_for_seconds(tmp_path, 3)
    children = descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=10)
    rows = [r for r in read_csv(tmp_path / "r" / "history.csv") if r["Name"] == "home"]
    assert len(rows) >= 3 and all(int(r["Interval Requests"]) > 0 for r in rows)
    assert not (tmp_path / "r" / ".stats.csv.tmp").exists()
    assert_all_gone(children, within=10.0)  # workers and servers notice their parent is gone within a poll


def session(port: int, **fields: object) -> tuple[HttpSession, TargetRecorder]:
    target = parse_config({"duration": "1s", "targets": [
        {"url": f"http://127.0.0.1:{port}/", "concurrency": 1, **fields}]}).targets[0]
    rec = TargetRecorder(0)
    return HttpSession(target, build_endpoints(target, list(target.urls)), rec), rec


def test_a_huge_body_is_counted_and_discarded(raw_server) -> None:
    size = 1024 * 1024 * 1024  # 1 GiB
    chunk = b"x" * (1024 * 1024)

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(chunk)):
            conn.sendall(chunk)

    server: RawServer = raw_server(handle)
    s, rec = session(server.port, timeout="20s")
    before = psutil.Process().memory_info().rss
    s.exchange()
    s.close()
    grown = psutil.Process().memory_info().rss - before
    snap = rec.snapshot()
    assert snap.requests == 1 and not snap.failures and snap.content_bytes == size
    assert grown < 50 * 1024 * 1024  # the body was not kept


def test_a_slow_drip_response_ends_as_a_read_timeout(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.02)

    server = raw_server(handle)
    s, rec = session(server.port, timeout="300ms")
    started = time.monotonic()
    s.exchange()
    s.close()
    assert time.monotonic() - started < 1.0  # the timeout is for the whole response, not each read
    assert dict(rec.snapshot().failures) == {"read_timeout": 1}


def test_a_content_length_longer_than_the_body_then_close(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")

    server = raw_server(handle)
    s, rec = session(server.port, timeout="2s")
    s.exchange()
    s.close()
    assert dict(rec.snapshot().failures) == {"closed": 1}


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "duration", "requests", "workers", "targets", "servers", "url", "urls", "tcp",
                         "concurrency", "rate", "stages", "thresholds", "kind", "listen", "method", "think",
                         "timeout", "expect_status", "headers", "x"]) | st.text(max_size=8),
        children, max_size=6),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_values)
def test_any_yaml_document_loads_or_raises_the_one_config_error(document: object) -> None:
    text = yaml.safe_dump(document)
    try:
        parse_config(yaml.safe_load(text))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
