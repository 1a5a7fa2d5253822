"""The relay of a cluster run (loadtest.execution.relay.NodeRelay) against a real `dask scheduler` on loopback.

Nodes are faked by a second Dask client that puts on the run's Queue what a node's task puts there
(pickled batches of (worker index, message)); the relay writes them into the workers' pipes as the
controller reads local workers. What a whole cluster run does is tests/test_cluster.py's.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from loadtest.core.stats import Snapshot
from loadtest.execution.relay import ABSENT_S, RELAY_WAIT_S, Node, NodeRelay
from loadtest.model.messages import Done, Failed, NodeSamples, Ready, SnapshotSent, Stopping, WorkerEnded, WorkerExit

from .test_cluster import REPO, start_scheduler

distributed = pytest.importorskip("distributed", reason="the test extra installs dask[distributed]")

NODES = 30
WORKERS = 2  # per node


class CountedQueue:
    """The run's Dask Queue, counting the relay's reads (each one a round trip to the scheduler)."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.reads = queue, 0

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return self.queue.get(*args, **kwargs)


@pytest.fixture
def dask_scheduler(tmp_path: Path):
    """A real `dask scheduler` on a free loopback port: (a client of the controller's, one of the nodes')."""
    file = tmp_path / "scheduler.json"
    proc = start_scheduler(file, REPO, tmp_path)
    clients = []
    try:
        deadline = time.monotonic() + 30
        while not file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        clients = [distributed.Client(address, timeout=30) for _ in range(2)]
        yield address, clients[0], clients[1]
    finally:
        for client in clients:
            client.close(timeout=5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def read(conn: Any, timeout: float = 10.0) -> Any:
    assert conn.poll(timeout), "the relay did not write the message"
    return conn.recv()


def test_one_queue_for_the_run_each_message_to_its_worker_in_order_and_no_polling_per_node(dask_scheduler) -> None:
    address, controller, node_client = dask_scheduler
    nodes = [Node(f"node-{i + 1}", f"tcp://127.0.0.2:{20000 + i}", host="elsewhere",
                  workers=list(range(i * WORKERS, (i + 1) * WORKERS))) for i in range(NODES)]
    listed = {n.address for n in nodes}
    rows: list[Any] = []
    queue = CountedQueue(distributed.Queue("loadtest-test-queue", client=controller))
    relay = NodeRelay(nodes, queue, address, lambda: controller.status == "running", lambda: set(listed), rows.extend)
    try:
        # Idle: the relay waits on the scheduler for the run's next batch; it does not ask each node's queue.
        time.sleep(1.0)
        reads, t0 = queue.reads, time.monotonic()
        time.sleep(1.5)
        idle_reads = queue.reads - reads
        assert idle_reads <= 2 * (time.monotonic() - t0) / RELAY_WAIT_S + 4, idle_reads  # polling 30 nodes: >= 300

        # A second of every node: its workers' messages as one batch, as run_node puts them.
        put = distributed.Queue("loadtest-test-queue", client=node_client)
        for node in nodes:
            batch: list[tuple[int, Any]] = []
            for w in node.workers:
                batch += [(w, Ready(1000 + w)), (w, SnapshotSent(Snapshot(w, 0, 0.0, 1.0, ()))),
                          (w, Stopping(w)), (w, SnapshotSent(Snapshot(w, 1, 1.0, 1.5, (), final=True)))]
            batch.append((-1, NodeSamples((f"{node.name} row",))))
            put.put(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        for child in relay.children:
            assert isinstance(read(child.conn), Ready)
            assert child.pid == 1000 + child.index  # its pid on the node, from its Ready
            first, stopping, final = read(child.conn), read(child.conn), read(child.conn)
            assert (first.snapshot.worker, first.snapshot.seq) == (child.index, 0)
            assert stopping == Stopping(child.index)
            assert (final.snapshot.worker, final.snapshot.seq, final.snapshot.final) == (child.index, 1, True)
            assert child.alive()
        assert sorted(rows) == sorted(f"{n.name} row" for n in nodes)

        # Every node but the last: its workers end (Done, then the node says their processes ended).
        for node in nodes[:-1]:
            put.put(pickle.dumps([m for w in node.workers for m in
                                  ((w, Done(WorkerExit(w, 1000 + w, 0.1, 0.0, 1, 0))), (w, WorkerEnded(0)))],
                                 protocol=pickle.HIGHEST_PROTOCOL))
        ending = [c for n in nodes[:-1] for c in relay.children if c.index in n.workers]
        for child in ending:
            assert isinstance(read(child.conn), Done)
        deadline = time.monotonic() + 10
        while any(c.alive() for c in ending):
            assert time.monotonic() < deadline, "a worker the node said ended is still alive"
            wait([c.sentinel for c in ending if c.alive()], timeout=0.5)
        assert all(c.exitcode == 0 for c in ending)
        assert not any(n.lost for n in nodes[:-1])

        # The last node's Dask worker is no longer listed: after ABSENT_S its workers fail, naming it.
        listed.discard(nodes[-1].address)
        last = [c for c in relay.children if c.index in nodes[-1].workers]
        for child in last:
            failed = read(child.conn, timeout=ABSENT_S + 10)
            assert isinstance(failed, Failed)
            assert failed.error.startswith(f"{nodes[-1].name} (elsewhere) was lost mid-run: its Dask worker "
                                           f"{nodes[-1].address} left the cluster")
            child.join(5)
            assert not child.alive() and child.exitcode is None
    finally:
        relay.stop()
        relay.close()
