"""A cluster node merges the histograms of its workers' snapshots of one second before it forwards them
(loadtest.execution.nodes.merge_seconds, loadtest.core.carry): the run's numbers must be
exactly those of the unmerged snapshots. And it sends a second's messages of all its workers as one
batch (NodeOutbox)."""

from __future__ import annotations

import pickle
import random
import time

from loadtest.core.carry import CARRIED, ShippedMerger
from loadtest.core.histograms import counts_view, percentiles_ns
from loadtest.core.recorder import TargetRecorder
from loadtest.core.stats import HISTOGRAMS, RunStats, Snapshot
from loadtest.execution.nodes import FORWARD_WINDOW_S, NodeOutbox, merge_seconds
from loadtest.model.messages import NodeSamples, Ready, SnapshotSent, Stopping, WorkerEnded

WORKERS, TARGETS = 16, 3


def second(worker: int, seq: int, rng: random.Random, final: bool = False) -> Snapshot:
    parts = []
    for t in range(TARGETS):
        rec = TargetRecorder(t)
        for _ in range(0 if (worker + t) % 5 == 0 else rng.randrange(1, 400)):  # some workers idle on a target
            latency = int(rng.lognormvariate(14.5, 1.2))
            rec.success(latency, 100, 50, 10)
            rec.uncorrected.record(latency // 2 + 1)
            rec.lateness.record(int(rng.expovariate(1 / 300_000)) + 1)
        if seq == 0 and t != 1:
            for _ in range(rng.randrange(0, 4)):
                rec.connected(int(rng.uniform(50_000, 4_000_000)))
        if worker % 3 == 0:
            rec.failure("status", "HTTP 503", 2_000_000)
        parts.append(rec.snapshot())
    return Snapshot(worker, seq, float(seq), float(seq + 1) if not final else seq + 0.4, tuple(parts), final)


def test_merged_on_the_node_the_run_and_each_second_are_exactly_those_of_the_workers_snapshots() -> None:
    rng = random.Random(7)
    # One node's batches: a second's snapshots among other messages; worker 5's last second is its final one.
    batches = []
    for seq in range(3):
        batch: list[tuple[int, object]] = [(w, Ready(100 + w)) for w in range(WORKERS)] if seq == 0 else []
        for w in range(WORKERS):
            if seq == 2 and w == 5:
                batch += [(w, Stopping(w)), (w, SnapshotSent(second(w, seq, rng, final=True)))]
            else:
                batch.append((w, SnapshotSent(second(w, seq, rng))))
        batches.append(batch)
    merger = ShippedMerger()
    plain, merged = (RunStats([(f"t{t}", "GET") for t in range(TARGETS)], WORKERS) for _ in range(2))
    plain_seconds, merged_seconds = [], []
    for batch in batches:
        carried = merge_seconds(batch, merger)
        assert [(w, type(m)) for w, m in carried] == [(w, type(m)) for w, m in batch]  # every message, in order
        snaps = [(m.snapshot, c.snapshot) for (_, m), (_, c) in zip(batch, carried) if isinstance(m, SnapshotSent)]
        for before, after in snaps:
            assert (after.worker, after.seq, after.start, after.end, after.final) == \
                (before.worker, before.seq, before.start, before.end, before.final)
            for b, a in zip(before.targets, after.targets):  # counters, gauges and lateness stay each worker's
                assert a.lateness == b.lateness
                assert (a.requests, a.failures, a.connects, a.bytes_in, a.open_connections, a.users) == \
                    (b.requests, b.failures, b.connects, b.bytes_in, b.open_connections, b.users)
            plain.add(before)
            merged.add(after)
        for t in range(TARGETS):  # one histogram of each kind per target crosses for the node's second
            for name in CARRIED:
                shipped = [getattr(a.targets[t], name) for _, a in snaps if getattr(a.targets[t], name)]
                assert len(shipped) <= 1
        plain_seconds += plain.ready_intervals()
        merged_seconds += merged.ready_intervals()
    plain_seconds += plain.ready_intervals(flush=True)
    merged_seconds += merged.ready_intervals(flush=True)

    assert [s.seq for s in merged_seconds] == [s.seq for s in plain_seconds] == [0, 1, 2]
    for p, m in zip(plain_seconds, merged_seconds):
        for pt, mt in zip(p.targets, m.targets):
            assert pt.requests == mt.requests and pt.latency.total_count == mt.latency.total_count > 0
            assert (counts_view(pt.latency) == counts_view(mt.latency)).all()
            assert percentiles_ns(pt.latency) == percentiles_ns(mt.latency)
    for pt, mt in zip(plain.totals, merged.totals):
        assert (pt.requests, pt.failures, pt.connects) == (mt.requests, mt.failures, mt.connects)
        for name in HISTOGRAMS:
            a, b = getattr(pt, name), getattr(mt, name)
            assert a.total_count == b.total_count, name
            assert a.total_count or (name, pt.name) == ("connect_latency", "t1")  # t1 has no connects
            assert (a.get_min_value(), a.get_max_value()) == (b.get_min_value(), b.get_max_value()), name
            assert (counts_view(a) == counts_view(b)).all(), name
    assert plain.worker_requests == merged.worker_requests and plain.worker_seq == merged.worker_seq
    assert plain.worker_final == merged.worker_final


class Puts:
    """Where a NodeOutbox puts its batches (the run's Dask Queue in a run): each one unpickled, in order."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, object]]] = []

    def put(self, blob: bytes) -> None:
        self.batches.append(pickle.loads(blob))


def test_a_node_puts_a_batch_once_every_running_worker_is_in_it_or_when_its_window_closes() -> None:
    puts = Puts()
    outbox = NodeOutbox(puts)
    rng = random.Random(3)
    for w in (0, 1):
        outbox.add(w, Ready(100 + w), running=[0, 1, 2])
    assert puts.batches == [] and outbox.due() is not None
    outbox.add(2, Ready(102), running=[0, 1, 2])
    assert puts.batches == [[(w, Ready(100 + w)) for w in range(3)]] and outbox.due() is None
    outbox.extend([(-1, NodeSamples(("row",)))])  # the node's own rows wait for the workers' next batch
    for w in range(3):
        outbox.add(w, SnapshotSent(second(w, 0, rng)), running=[0, 1, 2])
    assert len(puts.batches) == 2  # a second of three workers: one put
    second_batch = puts.batches[1]
    assert [w for w, _ in second_batch] == [-1, 0, 1, 2]
    assert sum(1 for _, m in second_batch[1:] for ts in m.snapshot.targets if ts.latency) == TARGETS  # merged: one each
    # Worker 2 ends while 0 and 1 have not sent: the batch waits for them, or for its window.
    outbox.add(2, WorkerEnded(0), running=[0, 1])
    assert len(puts.batches) == 2
    due = outbox.due()
    assert due is not None and 0 < due - time.monotonic() <= FORWARD_WINDOW_S
    outbox.forward()  # as run_node does once `due` has passed
    assert puts.batches[2] == [(2, WorkerEnded(0))]
    outbox.add(0, Stopping(0), running=[0, 1])
    outbox.add(1, Stopping(1), running=[0, 1])
    assert puts.batches[3] == [(0, Stopping(0)), (1, Stopping(1))]
    outbox.add(1, WorkerEnded(0), running=[0])  # ... and the last one to end goes at once
    outbox.add(0, WorkerEnded(0), running=[])
    assert puts.batches[4] == [(1, WorkerEnded(0)), (0, WorkerEnded(0))] and len(puts.batches) == 5
