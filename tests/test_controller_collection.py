"""collection.Collection, the run's main loop, driven directly by real child processes, started by
`children.ChildGroup` as workers are, that speak the worker's messages (SnapshotSent, Stopping, Done)
without loading anything.

What it must do: merge every snapshot into the run's stats and history.csv, end when every worker is
done or lost, keep the counts of a worker that died without finishing (and name how it ended), and on
a first interrupt ask the workers to stop and say so.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from loadtest.execution.children import ChildGroup
from loadtest.model.link import ParentLink
from loadtest.model.config import parse_config
from loadtest.execution.control import Inbox, Steering
from loadtest.execution.collection import Collection, ServerWatch
from loadtest.execution.interrupts import Interrupts
from loadtest.outputs.base import Outputs
from loadtest.model.kinds import kind_of
from loadtest.model.messages import Done, SnapshotSent, Stopping, WorkerExit
from loadtest.execution.monitor import RunMonitor
from loadtest.outputs.base import RunStarted
from loadtest.outputs.history import HistoryOutput
from loadtest.core.run_files import AGGREGATED, HISTORY_NAME
from loadtest.model.run_result import WorkerState
from loadtest.core.stats import RunStats, Snapshot
from loadtest.core.recorder import TargetRecorder

from .test_run import read_csv

REQUESTS_PER_SECOND = 7  # each fake worker's requests in each of its snapshots
CONFIG = {"name": "collect", "duration": "2s", "targets": [{"name": "home", "url": "http://127.0.0.1:9/", "concurrency": 1}]}


def fake_worker(link: ParentLink, index: int, stop: Any, seconds: int, how: str) -> None:
    """A worker process as the controller sees it: `seconds` snapshots, then
    - "done": a final snapshot and its exit report;
    - "die": exit 3 without either;
    - "until_stopped": snapshots each 0.1 s until `stop` is set, then the final ones."""
    recorder = TargetRecorder(0)

    def snapshot(seq: int, final: bool = False) -> None:
        for _ in range(REQUESTS_PER_SECOND):
            recorder.success(1_000_000 + index, 100, 50, 100)
        link.send(SnapshotSent(Snapshot(index, seq, float(seq), seq + 1.0, (recorder.snapshot(),), final)))

    seq = 0
    for seq in range(seconds):
        snapshot(seq)
    if how == "die":
        os._exit(3)
    if how == "until_stopped":
        deadline = time.monotonic() + 10.0  # bounded: the test fails, it does not hang
        while not stop.wait(0.1) and time.monotonic() < deadline:
            pass
    link.send(Stopping(index))
    snapshot(seq + 1, final=True)
    link.send(Done(WorkerExit(index, os.getpid(), 0.0, 0.0, 0, 0)))
    link.close()


def collect(tmp_path: Path, hows: list[str], interrupts: int = 0) -> tuple[bool, list[WorkerState], RunStats,
                                                                              list[str]]:
    """Start one fake worker per entry of `hows` and run Collection over them until it returns."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    config = parse_config(CONFIG)
    stats = RunStats([(t.name, kind_of(t).row_type(t)) for t in config.targets], len(hows))
    children = ChildGroup.start("tests.test_controller_collection:fake_worker",
                                [(k, stop, 2, how) for k, how in enumerate(hows)], "fake-worker")
    states = [WorkerState(c.index, c, pid=c.pid, ready=True) for c in children.children]
    history = Outputs([HistoryOutput()])
    history.start(RunStarted(config, tmp_path, time.time(), len(hows)))
    monitor = RunMonitor(tmp_path)
    events: list[str] = []
    inbox = Inbox(config)
    flag = Interrupts()
    flag.count = interrupts
    flag.start_running(inbox)  # the interrupts that came before the load go to the inbox as it starts
    steering = Steering(config, inbox, lambda command: None, events.append)
    try:
        interrupted = Collection(states, stats, stop, history, events.append, lambda: None,
                                  monitor, flag, ServerWatch([], events.append), steering).collect()
    finally:
        history.stop(None)
        monitor.stop()
        children.stop(5)
    return interrupted, states, stats, events


def test_every_snapshot_is_merged_and_history_totals_match(tmp_path: Path) -> None:
    interrupted, states, stats, _ = collect(tmp_path, ["done", "done"])
    assert not interrupted and all(w.done and not w.lost for w in states)
    assert [w.exit.index for w in states if w.exit] == [0, 1]
    sent = 2 * 3 * REQUESTS_PER_SECOND  # two workers, two seconds and a final snapshot each
    assert stats.totals[0].requests == sent and stats.worker_requests == [sent // 2, sent // 2]
    history = read_csv(tmp_path / HISTORY_NAME)
    last = [r for r in history if r["Name"] == AGGREGATED][-1]
    assert last["Total Request Count"] == str(sent)


def test_a_worker_that_dies_is_lost_named_and_its_counts_kept(tmp_path: Path) -> None:
    interrupted, states, stats, events = collect(tmp_path, ["done", "die"])
    survivor, dead = states
    assert survivor.done and not survivor.lost
    assert dead.lost and not dead.done and dead.exitcode == 3
    assert "exit code 3" in dead.error and "counts up to its last snapshot are kept" in dead.error
    assert stats.totals[0].requests == 3 * REQUESTS_PER_SECOND + 2 * REQUESTS_PER_SECOND
    assert not interrupted and any("worker 1" in e for e in events), events


def test_a_first_interrupt_asks_the_workers_to_stop_and_says_so(tmp_path: Path) -> None:
    interrupted, states, stats, events = collect(tmp_path, ["until_stopped"], interrupts=1)
    assert interrupted and states[0].done and not states[0].lost
    assert any(e.startswith("stopping:") for e in events), events
    assert stats.totals[0].requests == 3 * REQUESTS_PER_SECOND
