"""The control inbox driven from inside the controller's process (loadtest.execution.control), as a capacity
search or a notebook drives it: `controller.run(config, inbox=inbox)`, commands posted from `on_interval`.

Real workers, real servers on loopback; what the workers did is read from history.csv and summary.json.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from loadtest.execution.control import Inbox, Pause, Resume, SetLevel, Stop
from loadtest.execution.controller import run
from loadtest.model.config import parse_config
from loadtest.model.run_result import Frame, RunResult


def steered_run(tmp_path: Path, config: dict[str, Any], at: dict[int, list[Any]], workers: int = 2) -> RunResult:
    """Run `config`, posting the commands of `at[n]` once the n-th merged second is in (from on_interval)."""
    parsed = parse_config({"name": "steered", "workers": workers,
                           "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1},
                                       {"name": "echo", "kind": "echo", "listen": "127.0.0.1:0", "workers": 1}],
                           **config})
    inbox = Inbox(parsed)
    seconds = [0]

    def on_interval(frame: Frame) -> None:
        seconds[0] += 1
        for command in at.get(seconds[0], []):
            inbox.post(command)

    return run(parsed, out_dir=tmp_path / "r", inbox=inbox, on_interval=on_interval)


def history(result: RunResult, name: str) -> list[dict[str, str]]:
    with open(result.run_dir / "history.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["Name"] == name]


def column(rows: list[dict[str, str]], key: str, cast: Callable[[str], float] = float) -> list[float]:
    return [cast(r[key]) if r[key] else float("nan") for r in rows]


def test_a_level_replaces_the_stages_and_a_rate_of_0_then_up_again_is_followed(tmp_path: Path) -> None:
    result = steered_run(tmp_path, {"duration": "7s", "targets": [
        {"name": "ramp", "url": "http://{site}/delay/10", "concurrency": 2,
         "stages": [{"duration": "7s", "target": 12}]},
        {"name": "open", "url": "http://{site}/", "rate": 100, "stages": [{"duration": "7s", "target": 400}]},
    ]}, at={1: [SetLevel("ramp", users=3, origin="test"), SetLevel("open", rate=0, origin="test")],
            4: [SetLevel("open", rate=60, origin="test")]})
    assert result.exit_status == 0, result.problems
    ramp, open_ = history(result, "ramp"), history(result, "open")
    # From the second after the change, the stages no longer move the level: 3 users, not a ramp to 12.
    assert column(ramp, "User Count")[2:] == [3] * len(ramp[2:])
    assert column(ramp, "Target Level")[-1] == 3
    requests = column(open_, "Interval Requests")
    assert requests[2] == 0 and requests[3] == 0  # rate 0: nothing sent, nothing dropped
    assert 40 <= requests[-2] <= 80  # then 60/s, not the stages' 300+/s
    assert sum(column(open_, "Dropped")) == 0
    changes = [(c["target"], c["unit"], c["new"], c["origin"]) for c in result.level_changes]
    assert changes == [("ramp", "users", 3.0, "test"), ("open", "rate", 0.0, "test"), ("open", "rate", 60.0, "test")]
    assert 1.0 <= result.level_changes[0]["at_s"] < 2.0 and result.level_changes[0]["old"] > 2  # the stage's level


def test_paced_tcp_connections_follow_a_level_above_the_configs_and_a_pause(tmp_path: Path) -> None:
    result = steered_run(tmp_path, {"duration": "7s", "targets": [
        {"name": "tcp", "tcp": "{echo}", "connections": 2, "rate": 40, "size": 16, "expect": "echo"},
    ]}, at={1: [SetLevel("tcp", users=6)], 3: [Pause()], 5: [Resume()]})
    assert result.exit_status == 0, result.problems
    rows = history(result, "tcp")
    users = column(rows, "User Count")
    assert users[0] == 2 and users[2] == 6  # 6 connections held, above the config's 2 (and its peak)
    sent = column(rows, "Interval Requests")
    assert 100 <= sent[2] <= 140  # each connection paced at 40/2 = 20/s: 6 of them, 120/s
    assert 0 in sent[3:5]  # paused: connections closed, nothing sent
    assert sent[-2] > 60  # resumed
    assert result.servers[1]["served"]["messages"] == result.stats.aggregated().requests


def test_stop_from_the_inbox_ends_the_run_as_its_duration_would(tmp_path: Path) -> None:
    result = steered_run(tmp_path, {"duration": "30s", "targets": [
        {"name": "slow", "url": "http://{site}/delay/300", "concurrency": 4},
    ]}, at={2: [Stop(origin="capacity", reason="enough")]}, workers=1)
    assert result.exit_status == 0 and not result.interrupted
    assert result.stopped == {"origin": "capacity", "at_s": result.stopped["at_s"], "reason": "enough"}
    assert result.stats.aggregated().failure_count == 0  # the 300 ms requests in flight finished, none cancelled
    assert result.stats.elapsed < 5
