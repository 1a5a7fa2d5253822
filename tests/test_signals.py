"""Signals sent as terminals, `timeout`, systemd and CI runners send them, and the run's own servers dying.

Ctrl-C reaches every process of the terminal's foreground group, and `timeout` and systemd send
SIGTERM to the whole group: each test signals a run started in a process group of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .test_faults import LONG_RUN, assert_all_gone, descendants, launch_run, start_run, wait_for_seconds
from .test_run import read_csv

SHORT_RUN = LONG_RUN.replace("60s", "3s").replace("workers: 2", "workers: 1")
OPEN_RUN = ("duration: 30s\nworkers: 2\nservers: [{name: s, kind: http}]\n"
            "targets: [{name: slow, url: 'http://{s}/delay/200', rate: 500, max_concurrency: 400, timeout: 5s}]\n")


def summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r" / "summary.json").read_text())


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_timeout_sends_sigterm_to_the_whole_group_and_the_run_stops_like_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(LONG_RUN)
    # timeout runs the command in a process group of its own and, when its time is up or when it gets
    # SIGTERM itself, sends SIGTERM to the command and then to that whole group: workers and server too.
    # Signalling timeout once the load runs does exactly that, without waiting out a fixed time.
    proc = subprocess.Popen(["timeout", "--preserve-status", "60", sys.executable, "-m", "loadtest", "run",
                             str(config), "--out", str(tmp_path / "r")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_seconds(tmp_path, 1)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = summary_of(tmp_path)
    assert summary["interrupted"] is True and summary["exit_status"] == 130 and summary["problems"] == []
    assert [w["ended"] for w in summary["workers"]] == ["ok", "ok"]  # not "lost": they stopped when told
    home = summary["targets"][0]
    assert home["requests"] > 0
    # The server outlived the workers' last requests: none was refused, every sent one was served.
    assert set(home["failures_by_kind"]) <= {"cancelled"}, home["failures_by_kind"]
    served = summary["servers"][0]["served"]["requests"]
    assert home["requests"] - home["failures_by_kind"].get("cancelled", 0) <= served <= home["requests"]
    assert_all_gone(children)


def test_sigterm_to_the_group_mid_run_leaves_no_process_and_every_arrival_ends_once(tmp_path: Path) -> None:
    """An open model at 500/s against 200 ms answers: ~100 requests are in flight at the stop, and
    arrivals handed to the pool a moment before it have not run yet. Each ends in exactly one place."""
    proc, workers = start_run(tmp_path, OPEN_RUN, session=True)
    wait_for_seconds(tmp_path, 1, "slow")
    children = descendants(proc.pid)
    # As timeout does: to the command, then to its whole group; on a busy machine the two can arrive a
    # few milliseconds apart, and they are still one interrupt, not a second one that kills the workers.
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = summary_of(tmp_path)
    slow = summary["targets"][0]
    assert [w["ended"] for w in summary["workers"]] == ["ok", "ok"]
    assert slow["failures_by_kind"].get("cancelled", 0) > 0  # the stop did catch requests in flight
    # Arrivals started (the lateness histogram's count) = requests ended (successes + failures of every
    # kind, cancelled included), exactly; so do the history's seconds and the workers' shares.
    assert slow["open_model"]["started"] == slow["requests"]
    rows = [r for r in read_csv(tmp_path / "r" / "history.csv") if r["Name"] == "slow"]
    assert sum(int(r["Interval Requests"]) for r in rows) == slow["requests"]
    assert sum(w["requests"] for w in summary["workers"]) == slow["requests"]
    assert_all_gone(children)


def run_until(tmp_path: Path, moment: str) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """Start a run in its own process group and return once it reaches `moment`, with its processes then.

    `moment` is seconds after it installed its interrupt handlers ("0.2"), or after the line saying the server listens
    ("servers+0.2"), which is printed just before the workers are started: their interpreters are then
    starting and importing, where a Ctrl-C used to print a KeyboardInterrupt traceback from each.
    """
    proc = launch_run(tmp_path, LONG_RUN, session=True)
    assert proc.stdout is not None
    if moment.startswith("servers+"):
        line = proc.stdout.readline()
        assert "listening on" in line, line
    else:
        handles_sigterm(proc.pid)
    time.sleep(float(moment.removeprefix("servers+")))
    return proc, descendants(proc.pid)


def handles_sigterm(pid: int) -> None:
    """Wait until `pid` catches SIGTERM: loadtest's handler is installed (Python itself catches only SIGINT).

    Before that the interpreter is still starting (on a machine busy with other work, 0.3 s was not always
    enough), and a Ctrl-C there is Python's own KeyboardInterrupt, not loadtest's to handle.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.001)
    raise AssertionError("the run never installed its SIGTERM handler")


@pytest.mark.parametrize("moment", ["0.05", "0.3", "servers+0.05", "servers+0.2"])
def test_ctrl_c_to_the_group_during_start_up_exits_130_without_a_traceback(tmp_path: Path, moment: str) -> None:
    proc, children = run_until(tmp_path, moment)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # from the moment loadtest handles it (its first import), a Ctrl-C is one line and 130, never a traceback
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if moment.startswith("servers+"):
        assert children  # the server, and workers being started
        assert "interrupted" in err
    assert_all_gone(children)


# Interrupts itself at the moment the console script starts importing the command line (typer, rich, pydantic:
# most of a run's start-up), then lets the import go on slowly: deterministic where a sleep would be luck.
INTERRUPTED_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys, time

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "loadtest.cli.app":
            os.kill(os.getpid(), signal.SIG{sig})
            time.sleep(0.2)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["loadtest", "run", "nothing.yaml"]
from loadtest.cli.console import main
main()
"""


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_the_console_script_handles_an_interrupt_while_it_imports(tmp_path: Path, sig: str) -> None:
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_IMPORTING.format(sig=sig)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert done.stderr == "loadtest: interrupted\n"  # one line: no traceback, and the run never started


# CPython runs a signal handler inside compile() too and drops what it raises: an interrupt that lands
# while a module compiles (PYTHONDONTWRITEBYTECODE, or a first run) prints its line and is lost. This
# stands in for that, deterministically: the handler's SystemExit is swallowed, then the command goes on.
SWALLOWED_INTERRUPT = """
import os, signal, sys
from loadtest.model import interrupts
signal.signal(signal.SIGINT, interrupts.on_interrupt)
try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):
        pass  # the handler runs at a bytecode boundary here
except SystemExit:
    pass  # as compile() does
sys.argv = ["loadtest", "run", "run.yaml", "--out", "out"]
from loadtest.cli.app import main
main()
"""


def test_an_interrupt_whose_exit_was_swallowed_still_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("duration: 2s\nworkers: 1\nservers: [{name: s, kind: http}]\n"
                                       "targets: [{url: 'http://{s}/', concurrency: 1}]\n")
    done = subprocess.run([sys.executable, "-c", SWALLOWED_INTERRUPT], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert done.stderr == "loadtest: interrupted\n" and done.stdout == ""
    assert not (tmp_path / "out").exists()  # no server, no worker, no report folder


def test_ctrl_c_while_a_flow_script_imports_stops_at_once(tmp_path: Path) -> None:
    # The script's top level runs under the import machinery: an interrupt there is the script's code
    # interrupted, not the machinery's, and must end the command at once (it waited for the import before).
    (tmp_path / "flows.py").write_text("import time\ntime.sleep(20)\n\ndef shop(user):\n    user.get('/')\n")
    (tmp_path / "run.yaml").write_text("duration: 2s\nservers: [{name: s, kind: http}]\n"
                                       "targets: [{name: shop, url: 'http://{s}/', script: flows.py:shop, concurrency: 1}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", "run.yaml", "--out", "r"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    handles_sigterm(proc.pid)
    time.sleep(1.5)  # the command line is imported; the script sleeps at its top level
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - sent < 5  # not at the end of the script's 20 s
    assert err == "loadtest: interrupted\n", err


def sampled_pid(tmp_path: Path, role: str) -> int:
    """The pid of `role` as resources.csv names it, once the sampler has written a row for it."""
    deadline = time.monotonic() + 30
    while True:
        resources = tmp_path / "r" / "resources.csv"
        rows = read_csv(resources) if resources.exists() else []
        # a row still being written lacks its last columns: only whole rows name a whole pid
        pids = {int(r["pid"]) for r in rows if r["role"] == role and None not in r.values()}
        if pids:
            (pid,) = pids
            return pid
        assert time.monotonic() < deadline, f"no {role} row in resources.csv"
        time.sleep(0.05)


def test_a_server_of_the_run_killed_mid_run_fails_the_run(tmp_path: Path) -> None:
    proc, workers = start_run(tmp_path, SHORT_RUN)
    wait_for_seconds(tmp_path, 1)
    server_pid = sampled_pid(tmp_path, "server-s-0")
    os.kill(server_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, err)
    said = f"server s (http) process {server_pid} exited during the run (killed by signal 9)"
    assert said in err  # on screen at once, on stderr
    summary = summary_of(tmp_path)
    assert summary["exit_status"] == 3 and any(said in p for p in summary["problems"]), summary["problems"]
    assert summary["targets"][0]["failures_by_kind"].get("refused", 0) > 0  # the load went on against the dead port
    assert [w["ended"] for w in summary["workers"]] == ["ok"]


def test_serve_stops_on_sigterm_to_its_group_and_reports_its_count(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "serve", "http", "--listen", "127.0.0.1:0",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving http on http://127.0.0.1:"), line
    children = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.startswith("stopped http on") and out.rstrip().endswith("0 requests served")
    assert_all_gone(children)
