"""The stats core: fast recording, exact merging, seconds in order."""

from __future__ import annotations

import ctypes
import gc
import random

import pytest
from hdrh.histogram import HdrHistogram

from loadtest.core.stats import (
    NOT_KEPT,
    HIGHEST_NS,
    PERCENTILES,
    LatencyHistogram,
    RunStats,
    Snapshot,
    decode_histogram,
    new_histogram,
    percentiles_ns,
)
from loadtest.core.recorder import TargetRecorder


def exact_percentile(sorted_values: list[int], p: float) -> int:
    """The value at percentile p as HdrHistogram defines it (the smallest value covering p%)."""
    rank = max(1, int(p / 100.0 * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# hdrhistogram's attributes that stats.py reads or sets: not its public API, so pinned in pyproject.toml
# (hdrhistogram>=0.10.8,<0.11) and checked here by name, so that a release that renames one fails this test
# and not a run.
HDRH_PRIVATE_ATTRIBUTES = ("counts", "sub_bucket_mask", "unit_magnitude", "sub_bucket_half_count_magnitude",
                           "sub_bucket_half_count", "total_count", "min_value", "max_value")


def test_hdrhistogram_still_has_the_private_attributes_stats_relies_on() -> None:
    h = new_histogram()
    missing = [name for name in HDRH_PRIVATE_ATTRIBUTES if not hasattr(h, name)]
    assert not missing, f"hdrhistogram no longer has {missing}: stats.py's LatencyHistogram and _recorded need them"
    # clear() zeroes `counts` with memset and _recorded reads it as 64-bit words: it must be a ctypes array of
    # 8-byte integers, one per bucket.
    assert isinstance(h.counts, ctypes.Array) and ctypes.sizeof(h.counts) == 8 * len(h.counts), type(h.counts)
    assert len(h.counts) == h.counts_len
    fast = LatencyHistogram()
    fast.record(1500)
    fast.clear()  # memset through ctypes, then the settled fields are set directly
    assert not any(fast.histogram().counts) and fast.histogram().get_total_count() == 0
    fast.record(2500)
    assert fast.histogram().get_total_count() == 1 and fast.histogram().get_max_value() >= 2500


def test_fast_record_matches_hdrhistogram_record_value() -> None:
    rng = random.Random(7)
    values = [rng.randint(1, 10**12) for _ in range(5000)] + [1, 2, 1023, 1024, 2047, 2048, 4095, HIGHEST_NS]
    fast = LatencyHistogram()
    reference = new_histogram()
    for v in values:
        fast.record(v)
        reference.record_value(v)
    h = fast.histogram()
    assert list(h.counts) == list(reference.counts)
    assert h.get_total_count() == reference.get_total_count() == len(values)
    assert h.get_min_value() == reference.get_min_value()
    assert h.get_max_value() == reference.get_max_value()


def test_recorder_success_records_exactly_as_hdrhistogram() -> None:
    """`TargetRecorder.success` records inline on the hot path: same counts, min, max as `record_value`."""
    rng = random.Random(11)
    values = [rng.randint(1, 10**11) for _ in range(3000)] + [0, -3, 1, 2047, 2048, HIGHEST_NS * 2]
    rec = TargetRecorder(0)
    reference = new_histogram()
    for v in values:
        rec.success(v, 10, 5, 2)
        reference.record_value(min(max(v, 1), HIGHEST_NS))
    h = rec.latency.histogram()
    assert list(h.counts) == list(reference.counts)
    assert h.get_total_count() == len(values) == rec.requests
    assert (h.get_min_value(), h.get_max_value()) == (reference.get_min_value(), reference.get_max_value())
    assert (rec.bytes_in, rec.bytes_out, rec.content_bytes) == (10 * len(values), 5 * len(values), 2 * len(values))


def test_values_out_of_range_are_clamped_not_lost() -> None:
    fast = LatencyHistogram()
    fast.record(0)
    fast.record(-5)
    fast.record(HIGHEST_NS * 10)
    h = fast.histogram()
    assert h.get_total_count() == 3
    assert h.get_max_value() >= HIGHEST_NS * 0.999


def test_merged_worker_percentiles_match_raw_samples_within_precision() -> None:
    """Four workers with different latency shapes: merge, then compare with all raw samples."""
    rng = random.Random(42)
    workers = 4
    samples: list[int] = []
    stats = RunStats([("t", "GET")], workers)
    for w in range(workers):
        for seq in range(3):
            rec = TargetRecorder(0)
            scale = (w + 1) * 200_000  # each worker has its own distribution
            for _ in range(3000):
                v = int(rng.lognormvariate(0, 1) * scale) + 1
                if rng.random() < 0.01:
                    v *= 50  # a tail
                samples.append(v)
                rec.success(v, 100, 50, 80)
            stats.add(Snapshot(w, seq, float(seq), float(seq + 1), (rec.snapshot(),), final=seq == 2))
    samples.sort()
    merged = stats.totals[0].latency
    assert merged.get_total_count() == len(samples)
    assert stats.totals[0].requests == len(samples)
    for p, got in zip(PERCENTILES, percentiles_ns(merged)):
        want = samples[-1] if p == 100.0 else exact_percentile(samples, p)
        # HdrHistogram with 3 significant digits: within 0.1% of the true value
        assert abs(got - want) <= want * 0.001 + 1, (p, got, want)
    assert merged.get_min_value() == pytest.approx(samples[0], rel=0.001)
    assert merged.get_max_value() == pytest.approx(samples[-1], rel=0.001)


def test_averaging_worker_percentiles_would_be_wrong() -> None:
    """Why we merge histograms: the mean of per-worker p99s is far from the true p99."""
    fast, slow = TargetRecorder(0), TargetRecorder(0)
    for _ in range(990):
        fast.success(1_000_000, 0, 0, 0)
    for _ in range(10):
        fast.success(100_000_000, 0, 0, 0)
    for _ in range(10):
        slow.success(100_000_000, 0, 0, 0)
    a = decode_histogram(fast.snapshot().latency)
    b = decode_histogram(slow.snapshot().latency)
    averaged = (a.get_value_at_percentile(99) + b.get_value_at_percentile(99)) / 2
    a.add(b)
    merged = a.get_value_at_percentile(99)
    assert merged == pytest.approx(100_000_000, rel=0.001)
    assert averaged < merged * 0.6


def test_recorder_counts_every_outcome_once_and_resets() -> None:
    rec = TargetRecorder(3)
    rec.success(1000, 200, 100, 150)
    rec.failure("status", "HTTP 500", 2000, 50, 100)
    rec.failure("refused", "connection refused")
    rec.failure("refused", "connection refused again")
    snap = rec.snapshot()
    assert snap.target == 3
    assert snap.requests == 4
    assert dict(snap.failures) == {"status": 1, "refused": 2}
    assert dict(snap.failure_samples)["refused"] == "connection refused"
    assert (snap.bytes_in, snap.bytes_out, snap.content_bytes) == (250, 200, 150)
    assert decode_histogram(snap.latency).get_total_count() == 2  # refused has no latency
    empty = rec.snapshot()
    assert empty.requests == 0 and empty.latency == b""
    rec.success(7_000_000, 1, 1, 1)  # the histograms are reused: nothing of the first interval remains
    again = decode_histogram(rec.snapshot().latency)
    assert again.get_total_count() == 1
    assert again.get_min_value() == pytest.approx(7e6, rel=1e-3) and again.get_max_value() == pytest.approx(7e6, rel=1e-3)


def test_seconds_are_released_only_when_every_live_worker_has_sent_them() -> None:
    stats = RunStats([("a", "GET"), ("b", "TCP")], workers=2)

    def snap(worker: int, seq: int, n: int, final: bool = False) -> Snapshot:
        rec_a, rec_b = TargetRecorder(0), TargetRecorder(1)
        for _ in range(n):
            rec_a.success(1000, 1, 1, 1)
        rec_b.failure("mismatch", "wrong reply", 500)
        return Snapshot(worker, seq, float(seq), seq + 1.0, (rec_a.snapshot(), rec_b.snapshot()), final)

    stats.add(snap(0, 0, 5))
    stats.add(snap(0, 1, 7))
    assert stats.ready_intervals() == []  # worker 1 has sent nothing yet
    stats.add(snap(1, 0, 11))
    ready = stats.ready_intervals()
    assert [i.seq for i in ready] == [0]
    assert ready[0].targets[0].requests == 16
    assert ready[0].targets[1].failures["mismatch"] == 2
    # worker 1 is lost: it no longer holds second 1 back
    assert [i.seq for i in stats.ready_intervals(lost=[1])] == [1]
    stats.add(snap(0, 2, 1, final=True))
    assert [i.seq for i in stats.ready_intervals(lost=[1])] == [2]
    assert stats.totals[0].requests == 5 + 7 + 11 + 1
    assert stats.worker_requests == [5 + 1 + 7 + 1 + 1 + 1, 11 + 1]
    (record,) = stats.failures()
    assert (record.target, record.kind, record.occurrences) == ("b", "mismatch", 4)
    assert (record.first_seen, record.last_seen) == (1.0, 3.0)


def test_a_second_is_written_once_however_late_a_snapshot_of_it_comes() -> None:
    stats = RunStats([("a", "GET")], workers=2)

    def snap(worker: int, seq: int, n: int) -> Snapshot:
        rec = TargetRecorder(0)
        for _ in range(n):
            rec.success(1000, 1, 1, 1)
        return Snapshot(worker, seq, float(seq), seq + 1.0, (rec.snapshot(),))

    stats.add(snap(0, 0, 5))
    stats.add(snap(0, 1, 6))
    assert [i.seq for i in stats.ready_intervals(lost=[1])] == [0, 1]  # written without worker 1 (a late node)
    stats.add(snap(1, 0, 7))  # worker 1's seconds 0 and 1 come after all
    stats.add(snap(1, 1, 8))
    stats.add(snap(0, 2, 9))
    later = stats.ready_intervals(flush=True)
    # Before, seconds 0 and 1 came back as second rows of their own; now the late counts join second 2
    assert [i.seq for i in later] == [2] and later[0].targets[0].requests == 7 + 8 + 9
    assert stats.totals[0].requests == 5 + 6 + 7 + 8 + 9  # nothing lost


def test_one_pass_percentiles_and_mean_equal_hdrhistogram_own() -> None:
    from loadtest.core.stats import mean_ns

    rng = random.Random(3)
    for n in (1, 2, 7, 1000, 20000):
        fast = LatencyHistogram()
        for _ in range(n):
            fast.record(int(rng.lognormvariate(14, 2.5)) + rng.choice([0, 1, 5, 3000]))
        h = fast.histogram()
        reference = [h.get_max_value() if p >= 100 else h.get_value_at_percentile(p) for p in PERCENTILES]
        assert percentiles_ns(h) == reference
        assert mean_ns(h) == pytest.approx(h.get_mean_value(), rel=1e-12)


def test_peak_connections_add_up_within_a_second_never_across_seconds() -> None:
    stats = RunStats([("t", "TCP")], 2)
    recorders = [TargetRecorder(0), TargetRecorder(0)]

    def second(worker: int, seq: int) -> Snapshot:
        return Snapshot(worker, seq, float(seq), float(seq + 1), (recorders[worker].snapshot(),))

    for _ in range(5):  # second 0: worker 0 opens five and closes them before the tick
        recorders[0].connected(1000)
    for _ in range(5):
        recorders[0].disconnected()
    stats.add(second(0, 0))
    stats.add(second(1, 0))
    assert stats.peak_open == [5]  # missed by the end-of-second gauge, kept by the peak
    for _ in range(5):  # second 1: worker 1 does the same; its report arrives before worker 0's
        recorders[1].connected(1000)
    for _ in range(5):
        recorders[1].disconnected()
    stats.add(second(1, 1))
    stats.add(second(0, 1))
    assert stats.peak_open == [5]  # never ten at once


def live_histograms() -> int:
    """Histograms alive in this process (a weak proxy to one passes isinstance too: counted by type)."""
    return sum(1 for o in gc.get_objects() if type(o) is HdrHistogram)


def test_merging_a_long_run_keeps_no_histogram_beyond_the_totals_without_the_cycle_collector() -> None:
    """Decoded and per-second histograms are freed by reference counting as soon as they are dropped.

    hdrh's histogram and its encoder refer to each other; left as a cycle, each one's 270 KB counts
    array waited for the cycle collector and the controller grew by megabytes a second.
    """
    targets, workers, seconds = 3, 2, 60
    stats = RunStats([(f"t{i}", "GET") for i in range(targets)], workers)
    gc.collect()
    gc.disable()
    try:
        before = live_histograms()
        for seq in range(seconds):
            for w in range(workers):
                recorders = [TargetRecorder(i) for i in range(targets)]
                for r in recorders:
                    r.success(1_000_000 + seq, 100, 10, 100)
                    r.lateness.record(5_000)
                    r.connected(20_000)
                stats.add(Snapshot(w, seq, seq, seq + 1.0, tuple(r.snapshot() for r in recorders)))
            for interval in stats.ready_intervals():
                stats.aggregated()  # what the history writer and the live view make each second
                del interval
            del recorders
        kept = live_histograms() - before
    finally:
        gc.enable()
    # The run's totals hold 4 per target; each recorder made above holds 4 more until dropped.
    assert kept <= 4 * targets, f"{kept} histograms still alive after {seconds} s of snapshots"
    assert stats.totals[0].latency.get_total_count() == seconds * workers


def test_a_second_waiting_for_a_slow_worker_keeps_one_histogram_per_target() -> None:
    """Seconds wait for the slowest worker; each keeps only its latency histogram (270 KB a target), and an open
    target's lateness and uncorrected latency once a worker sends them (a capacity search judges each step by
    them)."""
    targets, pending, open_targets = 20, 10, 5
    stats = RunStats([(f"t{i}", "GET") for i in range(targets)], 2)
    gc.collect()
    before = live_histograms()
    for seq in range(pending):  # worker 1 is behind: none of these seconds is ready
        recorders = [TargetRecorder(i) for i in range(targets)]
        for r in recorders:
            r.success(1_000_000, 100, 10, 100)
            if r.target < open_targets:
                r.lateness.record(5_000)
                r.uncorrected.record(995_000)
        stats.add(Snapshot(0, seq, seq, seq + 1.0, tuple(r.snapshot() for r in recorders)))
    del recorders, r
    gc.collect()
    kept = live_histograms() - before
    assert stats.ready_intervals() == []
    assert kept == pending * (targets + 2 * open_targets), kept
    assert stats.totals[3].lateness.get_total_count() == pending  # the run's totals keep every histogram
    seconds = stats.ready_intervals(flush=True)
    second = seconds[0].targets[3]
    assert second.latency.get_total_count() == 1 and second.lateness.get_total_count() == 1
    assert second.uncorrected.get_total_count() == 1
    closed = seconds[0].targets[open_targets]
    assert closed.lateness is NOT_KEPT and closed.uncorrected is NOT_KEPT


def test_the_merger_adds_snapshots_exactly_as_hdrhistogram_does() -> None:
    """`HistogramMerger` (one scratch array, adds over the filled buckets) equals decode-and-add."""
    import random

    from loadtest.core.stats import HistogramMerger, new_histogram

    rng = random.Random(3)
    merger = HistogramMerger()
    fast, reference = new_histogram(), new_histogram()
    for n in (500, 1, 3000, 0, 40):  # shrinking and growing ranges: the scratch is cleared between
        rec = TargetRecorder(0)
        for _ in range(n):
            rec.success(int(rng.lognormvariate(12 + n % 5, 1.5)), 1, 1, 1)
        encoded = rec.snapshot().latency
        if encoded:
            merger.add((fast,), encoded)
            reference.add(decode_histogram(encoded))
    assert list(fast.counts) == list(reference.counts)
    assert (fast.get_total_count(), fast.get_min_value(), fast.get_max_value()) == (
        reference.get_total_count(), reference.get_min_value(), reference.get_max_value())


def test_totals_read_mid_second_include_it_and_reading_them_changes_nothing() -> None:
    """Histograms join the totals when their second is handed over; totals read before then include
    the pending seconds all the same, and reading them does not count anything twice."""
    stats = RunStats([("t", "GET")], 2)

    def snap(worker: int, seq: int, latencies: list[int]) -> Snapshot:
        rec = TargetRecorder(0)
        for v in latencies:
            rec.success(v, 1, 1, 1)
        return Snapshot(worker, seq, float(seq), float(seq + 1), (rec.snapshot(),))

    stats.add(snap(0, 0, [1_000, 2_000]))
    assert stats.totals[0].latency.get_total_count() == 2  # second 0 pending: worker 1 has not sent it
    stats.add(snap(1, 0, [3_000]))
    assert [iv.seq for iv in stats.ready_intervals()] == [0]
    stats.add(snap(0, 1, [4_000_000]))
    mid = stats.totals[0]
    assert mid.latency.get_total_count() == 4 and mid.requests == 4
    assert mid.latency.get_max_value() == pytest.approx(4_000_000, rel=0.001)
    assert stats.totals[0].latency.get_total_count() == 4  # reading twice adds nothing
    stats.add(snap(1, 1, [5_000]))
    stats.ready_intervals(flush=True)
    final = stats.totals[0]
    assert final.latency.get_total_count() == final.requests == 5
    assert final.latency.get_min_value() == pytest.approx(1_000, rel=0.001)



def recorded_reference(values: list[int]) -> HdrHistogram:
    """HdrHistogram's own record_value, nothing of ours: what merged counts must equal."""
    reference = new_histogram()
    for v in values:
        reference.record_value(min(max(v, 1), HIGHEST_NS))
    return reference


def test_the_merged_run_is_the_sum_of_what_every_worker_recorded_bucket_for_bucket() -> None:
    """Many workers and seconds, some handed over and the last one pending: the totals' counts are exactly those
    of one histogram that recorded every value sent, and so are Aggregated's and the seconds' summed."""
    from loadtest.core.stats import aggregate

    rng = random.Random(21)
    workers, seconds = 12, 4
    stats = RunStats([("a", "GET"), ("b", "GET")], workers)
    sent: dict[int, list[int]] = {0: [], 1: []}
    handed = [new_histogram(), new_histogram()]
    for seq in range(seconds):
        for w in range(workers):
            if seq == seconds - 1 and w == 0:
                continue  # worker 0 never sends its last second: that second stays pending
            recs = [TargetRecorder(0), TargetRecorder(1)]
            for t, rec in enumerate(recs):
                for _ in range(rng.choice([0, 1, 50, 400])):
                    v = int(rng.lognormvariate(13 + t, 1.5)) + 1
                    sent[t].append(v)
                    rec.success(v, 1, 1, 1)
            stats.add(Snapshot(w, seq, float(seq), seq + 1.0, tuple(r.snapshot() for r in recs)))
        for interval in stats.ready_intervals():
            for t in (0, 1):
                handed[t].add(interval.targets[t].latency)
    assert [iv.seq for iv in stats._pending.values()] == [seconds - 1]
    totals = stats.totals
    for t in (0, 1):
        reference = recorded_reference(sent[t])
        assert list(totals[t].latency.counts) == list(reference.counts)
        assert totals[t].requests == len(sent[t])
        assert (totals[t].latency.get_min_value(), totals[t].latency.get_max_value()) == (
            reference.get_min_value(), reference.get_max_value())
    everything = recorded_reference(sent[0] + sent[1])
    assert list(aggregate(totals).latency.counts) == list(everything.counts)
    last = stats.ready_intervals(flush=True)[0]
    for t in (0, 1):
        handed[t].add(last.targets[t].latency)
        assert list(handed[t].counts) == list(stats.totals[t].latency.counts)


def test_a_worker_records_and_ships_without_importing_numpy() -> None:
    """numpy is the controller's (13 MB and 0.1 s a process): a worker's imports, recording and snapshot never
    load it."""
    import subprocess
    import sys

    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys, loadtest.engine.workload\n"
        "from loadtest.core.recorder import TargetRecorder\n"
        "rec = TargetRecorder(0)\n"
        "rec.success(1_500_000, 10, 10, 10); rec.connected(20_000); rec.lateness.record(5_000)\n"
        "snap = rec.snapshot()\n"
        "assert snap.latency and snap.connect_latency and snap.lateness\n"
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_each_second_of_history_has_its_own_timestamp_even_when_a_tick_came_late(tmp_path) -> None:
    """A worker's tick held up by a busy machine ends its second late (at 2.99 s, the next one at 3.01 s):
    two seconds' rows once shared one Timestamp, which read as one second written twice. A second's stamp is
    its own number, so the stamps climb by one a row, whenever each snapshot arrived."""
    import csv

    from loadtest.model.config import parse_config
    from loadtest.model.run_result import Frame
    from loadtest.outputs.base import RunStarted
    from loadtest.outputs.history import HistoryOutput

    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:9/", "concurrency": 2}], "duration": "4s"})
    stats = RunStats([("a", "GET")], workers=2)
    ends = {0: (1.002, 1.003), 1: (2.99, 2.004), 2: (3.01, 3.002), 3: (4.003, 4.001)}
    for seq, (end0, end1) in ends.items():
        for worker, end in ((0, end0), (1, end1)):
            rec = TargetRecorder(0)
            rec.success(1000, 1, 1, 1)
            stats.add(Snapshot(worker, seq, end - 1, end, (rec.snapshot(),)))
    history = HistoryOutput()
    history.start(RunStarted(config, tmp_path, started=1_000_000.5, workers=2))
    for interval in stats.ready_intervals(flush=True):
        history.add(Frame(interval, stats, [None, None], None))
    history.stop(None)
    with open(tmp_path / "history.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    assert [int(r["Timestamp"]) for r in rows] == [1_000_001, 1_000_002, 1_000_003, 1_000_004]
    assert [int(r["Total Request Count"]) for r in rows] == [2, 4, 6, 8]
