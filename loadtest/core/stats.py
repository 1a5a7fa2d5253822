"""The stats core: snapshots in, exactly merged numbers out.

Pure code: no clock, no sockets, no printing. Workers fill a `TargetRecorder`
per target and ship its `TargetSnapshot` once a second; the controller adds
every snapshot into a `RunStats`, which keeps the totals (counters and an
HdrHistogram per target) and hands back each second once every live worker
has reported it. Percentiles of merged histograms are exact to the
histogram's precision (3 significant digits), unlike averaged percentiles.
The histograms themselves (their layout, the form a worker ships, exact
adds and percentiles) are `loadtest.core.histograms`'.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from hdrh.histogram import HdrHistogram

from loadtest.core.histograms import (  # noqa: F401 - PERCENTILES and the readers below are the stats core's API too
    HIGHEST_NS,
    LOWEST_NS,
    PERCENTILES,
    SIGNIFICANT_DIGITS,
    HistogramMerger,
    LatencyHistogram,
    add_histogram,
    counts_at_or_below,
    decode_histogram,
    freed_when_dropped,
    mean_ns,
    min_ns,
    new_histogram,
    percentiles_ns,
)
from loadtest.core.run_files import AGGREGATED, NOT_AGGREGATED_TYPES

FAILURE_KINDS = ("refused", "connect_timeout", "read_timeout", "reset", "closed", "status", "protocol", "tls",
                 "resources", "error", "cancelled", "mismatch", "redirects")


@dataclass(frozen=True)
class TargetSnapshot:
    """One target's counters over one interval of one worker."""

    target: int
    requests: int = 0  # ended: successes + failures (cancelled included)
    failures: tuple[tuple[str, int], ...] = ()
    failure_samples: tuple[tuple[str, str], ...] = ()  # first message of each kind this interval
    bytes_in: int = 0
    bytes_out: int = 0
    content_bytes: int = 0
    connects: int = 0
    connect_failures: tuple[tuple[str, int], ...] = ()
    open_connections: int = 0  # a gauge: connections open at the end of the interval
    peak_open: int = 0  # the most connections open at once during the interval
    latency: bytes = b""  # encoded HdrHistogram, ns; every ended request except cancelled ones
    connect_latency: bytes = b""
    dropped: int = 0  # open model: arrivals that could not start on time
    lateness: bytes = b""  # open model: how late arrivals started
    uncorrected: bytes = b""  # open model: latency from the actual send, not the intended start
    users: int = 0  # a gauge: virtual users active (closed), requests in flight (open), connections (tcp)
    level: float = -1.0  # a gauge: the stage's level or the open model's rate in this worker; -1 if none
    held: int = -1  # final snapshot only: connections open when the load stopped
    backoffs: int = 0  # closed model: waits of virtual users after a failed connect or pass (workload.Backoff)
    backoff_s: float = 0.0  # and the seconds they waited


@dataclass(frozen=True)
class Snapshot:
    """What a worker ships once a second: every target's interval, numbered."""

    worker: int
    seq: int  # 0, 1, 2, ... one per interval
    start: float  # seconds since the run's start, when the interval began
    end: float
    targets: tuple[TargetSnapshot, ...]
    final: bool = False


HISTOGRAMS = ("latency", "connect_latency", "lateness", "uncorrected")  # a snapshot's encoded histograms
# What a second (Interval) keeps of them: history.csv and the live view read only its latency, a capacity
# search an open target's lateness and uncorrected latency too (were its arrivals on time, and was the target
# within its SLO without their lateness?). Each histogram is a 270 KB counts array and seconds wait for the
# slowest worker, so with 20 closed targets a pending second costs 5.4 MB this way instead of 22 (the whole
# run's totals keep all four); a second's lateness and uncorrected latency are made only for a target that sent
# them (the open model).
SECOND_HISTOGRAMS = ("latency", "lateness", "uncorrected")
MADE_WHEN_SENT = ("lateness", "uncorrected")  # of SECOND_HISTOGRAMS: a second's is made when a worker sends one


def decode(snap: TargetSnapshot) -> dict[str, HdrHistogram]:
    """A snapshot's non-empty histograms, decoded, by field name."""
    return {name: decode_histogram(getattr(snap, name)) for name in HISTOGRAMS if getattr(snap, name)}


@dataclass
class FailureRecord:
    """One (target, kind) of failure over the run."""

    target: str
    kind: str
    message: str
    occurrences: int
    first_seen: float
    last_seen: float


@dataclass
class TargetTotals:
    """Merged counters and histograms of one target (or of all: Aggregated)."""

    name: str
    type: str
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    content_bytes: int = 0
    connects: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    open_connections: int = 0
    peak_open: int = 0  # in a second's totals: each worker's most open at once in that second, added up
    latency: HdrHistogram = field(default_factory=new_histogram)
    connect_latency: HdrHistogram = field(default_factory=new_histogram)
    dropped: int = 0
    lateness: HdrHistogram = field(default_factory=new_histogram)
    uncorrected: HdrHistogram = field(default_factory=new_histogram)
    users: int = 0  # gauges, summed over workers at the latest snapshot
    level: float = -1.0
    backoffs: int = 0  # virtual users' waits after a failed connect or pass, and the seconds they waited
    backoff_s: float = 0.0

    @property
    def failure_count(self) -> int:
        return sum(self.failures.values())

    def add(self, snap: TargetSnapshot, decoded: dict[str, HdrHistogram] | None = None,
            merger: HistogramMerger | None = None, histograms: bool = True) -> None:
        """Add one interval; pass `decode(snap)` when the same snapshot is added twice, or a `merger`
        to add its histograms without decoding each into a histogram of its own; `histograms=False`
        adds only the counters."""
        self.requests += snap.requests
        # a loop, not Counter.update: this runs per worker snapshot, and update's Mapping check costs more than
        # adding the one or two kinds a snapshot has
        failures = self.failures
        for kind, count in snap.failures:
            failures[kind] += count
        self.bytes_in += snap.bytes_in
        self.bytes_out += snap.bytes_out
        self.content_bytes += snap.content_bytes
        self.connects += snap.connects
        if snap.connect_failures:
            connect_failures = self.connect_failures
            for kind, count in snap.connect_failures:
                connect_failures[kind] += count
        self.dropped += snap.dropped
        if snap.backoffs:
            self.backoffs += snap.backoffs
            self.backoff_s += snap.backoff_s
        if not histograms:
            return
        if merger is not None and decoded is None:
            for name in HISTOGRAMS:
                encoded = getattr(snap, name)
                if encoded:
                    merger.add((getattr(self, name),), encoded)
            return
        for name, hist in (decoded if decoded is not None else decode(snap)).items():
            add_histogram(getattr(self, name), hist)

    def merge(self, other: TargetTotals) -> None:
        self.requests += other.requests
        self.failures.update(other.failures)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.content_bytes += other.content_bytes
        self.connects += other.connects
        self.connect_failures.update(other.connect_failures)
        self.open_connections += other.open_connections
        self.users += other.users
        self.dropped += other.dropped
        self.backoffs += other.backoffs
        self.backoff_s += other.backoff_s
        for name in HISTOGRAMS:
            hist = getattr(other, name)
            if hist.get_total_count():
                add_histogram(getattr(self, name), hist)

def aggregate(totals: Sequence[TargetTotals], name: str = AGGREGATED) -> TargetTotals:
    """All targets' totals merged into one: every request sent, so not the rows that count something else (a flow's
    own row counts passes through its steps, whose rows count their requests)."""
    out = TargetTotals(name=name, type="")
    for t in totals:
        if t.type not in NOT_AGGREGATED_TYPES:
            out.merge(t)
    return out


class _NotKept(HdrHistogram):
    """Stands for a histogram a second does not keep (see SECOND_HISTOGRAMS): always empty, one for all."""

    def add(self, other_hist: HdrHistogram) -> None:
        raise TypeError("a second of the run keeps only its latency histogram")

    def record_value(self, value: int, count: int = 1) -> bool:
        raise TypeError("a second of the run keeps only its latency histogram")


NOT_KEPT = freed_when_dropped(_NotKept(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS))


def second_totals(name: str, type: str) -> TargetTotals:
    """A target's totals over one second: counters and latency; its other histograms are `NOT_KEPT` (lateness
    and uncorrected latency until a worker sends one: `RunStats.add` makes it then)."""
    return TargetTotals(name=name, type=type, connect_latency=NOT_KEPT, lateness=NOT_KEPT, uncorrected=NOT_KEPT)


@dataclass
class Interval:
    """One second of the run, merged over every worker that reported it (`second_totals` per target)."""

    seq: int
    start: float
    end: float
    targets: list[TargetTotals]


class RunStats:
    """Every snapshot of a run, merged: totals per target and per worker, and seconds."""

    def __init__(self, targets: Sequence[tuple[str, str]], workers: int) -> None:
        self.names = [n for n, _ in targets]
        # Counters are added per snapshot; histograms per second, when the second is handed over
        # (see `totals`).
        self._totals = [TargetTotals(name=n, type=t) for n, t in targets]
        self.worker_requests = [0] * workers
        self.worker_failures = [0] * workers
        self.worker_bytes = [0] * workers
        self.worker_seq = [-1] * workers
        self.worker_final = [False] * workers
        self.worker_open: list[list[int]] = [[0] * len(targets) for _ in range(workers)]
        self.worker_users: list[list[int]] = [[0] * len(targets) for _ in range(workers)]
        self.worker_level: list[list[float]] = [[-1.0] * len(targets) for _ in range(workers)]
        self.peak_open = [0] * len(targets)
        self.worker_held: list[list[int]] = [[0] * len(targets) for _ in range(workers)]
        self.elapsed = 0.0
        self._pending: dict[int, Interval] = {}
        self._handed = -1  # the last second handed over (written to history.csv): it never comes again
        self._failures: dict[tuple[int, str], FailureRecord] = {}
        self._merger = HistogramMerger()
        self._open_sum = [0] * len(targets)  # the sums over workers of the gauges above
        self._users_sum = [0] * len(targets)
        self._level_sum = [-1.0] * len(targets)

    def add(self, snap: Snapshot) -> None:
        """Merge one worker's interval into the totals and into its second."""
        w = snap.worker
        # A second already handed over is written: a snapshot of it that comes later still (a node's, held
        # up on its way) joins the first second not yet handed, so that no second is ever written twice
        seq = snap.seq if snap.seq > self._handed else self._handed + 1
        interval = self._pending.get(seq)
        if interval is None:
            interval = self._pending[seq] = Interval(
                seq, snap.start, snap.end, [second_totals(t.name, t.type) for t in self._totals])
        interval.start = min(interval.start, snap.start)
        interval.end = max(interval.end, snap.end)
        for ts in snap.targets:
            # Each histogram is decoded once, into a scratch array, and added over only the buckets it
            # fills (see `HistogramMerger`). A second keeps only its latency, lateness and uncorrected latency
            # (SECOND_HISTOGRAMS), which join the totals' once, when the second is handed over: one add per
            # target a second, not one per worker; the other histograms go to the totals at once.
            total, part = self._totals[ts.target], interval.targets[ts.target]
            total.add(ts, histograms=False)
            part.add(ts, histograms=False)
            for name in MADE_WHEN_SENT:
                if getattr(ts, name) and getattr(part, name) is NOT_KEPT:
                    setattr(part, name, new_histogram())
            for name in HISTOGRAMS:
                encoded = getattr(ts, name)
                if encoded:
                    self._merger.add((getattr(part if name in SECOND_HISTOGRAMS else total, name),), encoded)
            if total.type not in NOT_AGGREGATED_TYPES:  # a worker's requests, as Aggregated's
                self.worker_requests[w] += ts.requests
                self.worker_failures[w] += sum(c for _, c in ts.failures)
                self.worker_bytes[w] += ts.bytes_in + ts.bytes_out
            # The gauges' sums over workers move by this worker's change: summing every worker's
            # row on every snapshot made a second's merging grow with the square of the workers.
            i = ts.target
            self._open_sum[i] += ts.open_connections - self.worker_open[w][i]
            self.worker_open[w][i] = ts.open_connections
            interval.targets[i].peak_open += ts.peak_open
            self._users_sum[i] += ts.users - self.worker_users[w][i]
            self.worker_users[w][i] = ts.users
            if ts.level != self.worker_level[w][i]:  # levels move only while stages ramp: summed exactly then
                self.worker_level[w][i] = ts.level
                levels = [row[i] for row in self.worker_level if row[i] >= 0]
                self._level_sum[i] = sum(levels) if levels else -1.0
            if ts.held >= 0:
                self.worker_held[w][ts.target] = ts.held
            self._note_failures(ts, snap.end)
        for i, total in enumerate(self._totals):
            total.open_connections = self._open_sum[i]
            # Each worker's most at once within the same second, added up: a peak between two seconds'
            # samples (the tip of a ramp, a run shorter than a second) is not missed. Workers' peaks
            # within one second need not coincide, so with connections that come and go this can
            # be a little more than were ever open at once.
            self.peak_open[i] = max(self.peak_open[i], total.open_connections, interval.targets[i].peak_open)
            total.users = self._users_sum[i]
            total.level = self._level_sum[i]
            part = interval.targets[i]
            part.open_connections, part.users, part.level = total.open_connections, total.users, total.level
        self.worker_seq[w] = max(self.worker_seq[w], snap.seq)
        self.worker_final[w] = self.worker_final[w] or snap.final
        self.elapsed = max(self.elapsed, snap.end)

    def _note_failures(self, ts: TargetSnapshot, when: float) -> None:
        samples = dict(ts.failure_samples)
        for kind, count in ts.failures:
            self._note(ts.target, kind, count, samples.get(kind, ""), when)
        for kind, count in ts.connect_failures:
            self._note(ts.target, f"connect:{kind}", count, samples.get(f"connect:{kind}", ""), when)

    def _note(self, target: int, kind: str, count: int, message: str, when: float) -> None:
        rec = self._failures.get((target, kind))
        if rec is None:
            self._failures[(target, kind)] = FailureRecord(self.names[target], kind, message, count, when, when)
        else:
            rec.occurrences += count
            rec.last_seen = when

    def failures(self) -> list[FailureRecord]:
        return sorted(self._failures.values(), key=lambda r: (self.names.index(r.target), -r.occurrences, r.kind))

    def ready_intervals(self, lost: Iterable[int] = (), flush: bool = False) -> list[Interval]:
        """Seconds every worker still running has reported, oldest first (all of them if `flush`).

        A worker that sent its final snapshot, or is in `lost`, no longer holds a second back.
        """
        gone = set(lost)
        waiting = [s for w, s in enumerate(self.worker_seq) if not self.worker_final[w] and w not in gone]
        upto = max(self._pending, default=-1) if flush or not waiting else min(waiting)
        out = [self._pending.pop(seq) for seq in sorted(self._pending) if seq <= upto]
        if out:
            self._handed = max(self._handed, out[-1].seq)
        for interval in out:
            for total, part in zip(self._totals, interval.targets):
                for name in HISTOGRAMS:
                    hist = getattr(part, name)
                    if hist.total_count:
                        add_histogram(getattr(total, name), hist)
        return out

    @property
    def totals(self) -> list[TargetTotals]:
        """Every target's totals over the run so far: every snapshot added, handed over or not.

        While seconds are still pending, their histograms are added to copies of the totals' (the
        controller reads these right after handing a second over, when little or nothing is
        pending, so this is rare and small); once every second is handed over, the totals
        themselves.
        """
        pending = [iv for iv in self._pending.values()
                   if any(getattr(t, name).total_count for t in iv.targets for name in HISTOGRAMS)]
        if not pending:
            return self._totals
        out = []
        for i, total in enumerate(self._totals):
            copies = {}
            for name in HISTOGRAMS:
                parts = [getattr(iv.targets[i], name) for iv in pending if getattr(iv.targets[i], name).total_count]
                if parts:
                    merged = new_histogram()
                    for hist in (getattr(total, name), *parts):
                        if hist.total_count:
                            add_histogram(merged, hist)
                    copies[name] = merged
            out.append(replace(total, **copies) if copies else total)
        return out

    def aggregated(self) -> TargetTotals:
        return aggregate(self.totals)

    def held_at_end(self, target: int) -> int:
        """Connections open when the load stopped, over every worker that finished."""
        return sum(row[target] for row in self.worker_held)
