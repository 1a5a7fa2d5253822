"""loadtest.model.messages: every message crosses a real multiprocessing pipe intact, and a worker's messages
come back from a real child, in order, as the classes they were sent as."""

from __future__ import annotations

import multiprocessing as mp

from loadtest.execution.children import ChildGroup
from loadtest.model.config import parse_config
from loadtest.model.messages import Done, Failed, Ready, SnapshotSent, Stopping, WorkerExit, WorkerPlan
from loadtest.core.stats import Snapshot
from loadtest.core.recorder import TargetRecorder

CONFIG = {"name": "messages", "duration": "2s",
          "targets": [{"name": "home", "url": "http://127.0.0.1:9/", "concurrency": 1}]}


def every_message() -> list[object]:
    recorder = TargetRecorder(0)
    recorder.success(1_500_000, 200, 40, 120)
    snapshot = Snapshot(1, 4, 4.0, 5.0, (recorder.snapshot(),), final=True)
    return [Ready(1234), Failed("worker 1 cannot resolve a target: nope"), SnapshotSent(snapshot), Stopping(1),
            Done(WorkerExit(1, 1234, 0.5, 0.25, 40_000, 3, spent=True))]


def test_every_message_and_the_plan_round_trip_through_a_pipe() -> None:
    plan = WorkerPlan(index=1, workers=2, config=parse_config(CONFIG), addresses={"site": "127.0.0.1:8080"},
                      shares=(3,), requests=None, duration=2.0)
    reader, writer = mp.get_context("spawn").Pipe(duplex=False)
    try:
        for message in [plan, *every_message()]:
            writer.send(message)
            received = reader.recv()
            assert type(received) is type(message)
            if isinstance(message, SnapshotSent):  # histograms compare by their counts, not identity
                assert received.snapshot.targets[0].requests == message.snapshot.targets[0].requests == 1
                assert (received.snapshot.worker, received.snapshot.seq, received.snapshot.final) == (1, 4, True)
            else:
                assert received == message
    finally:
        reader.close()
        writer.close()


def test_a_child_sends_each_message_in_order_as_its_class() -> None:
    sent = [m for m in every_message() if not isinstance(m, SnapshotSent)]
    group = ChildGroup.start("tests.children_entries:sends", [(sent,)], "messages")
    try:
        group.ready(timeout=20)
        conn = group.children[0].conn
        received = [conn.recv() for _ in sent if conn.poll(20)]
        assert received == sent
    finally:
        group.stop(timeout=10)
