"""What a cluster node merges of its workers' snapshots of one second before it forwards them.

Pure code, as the rest of the core. A node's workers each ship their
histograms of a second (`stats.Snapshot`); the node adds each target's
histograms of the second into one, carried by one of the snapshots, and
empties them in the others. `RunStats.add` adds a snapshot's histograms into
its target's totals and into its second whichever worker's snapshot carries
them, so the run's numbers are exactly the same (sums are sums), and the
controller decodes one histogram per target a second for a node instead of
one per worker. Counters, gauges and lateness stay each worker's own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

from loadtest.core.histograms import HistogramMerger, LatencyHistogram
from loadtest.core.stats import Snapshot

# The histograms a node merges. Lateness is not: the controller's verdicts judge each worker's arrivals by it.
CARRIED = ("latency", "connect_latency", "uncorrected")


class ShippedMerger:
    """Adds shipped histograms (`LatencyHistogram.encode`) into one, shipped the same way: exact, the bucket
    counts are added. One counts array and one scratch array, reused."""

    def __init__(self) -> None:
        self._sum = LatencyHistogram()
        self._merger = HistogramMerger()

    def merge(self, encoded: Iterable[bytes]) -> bytes:
        """The sum of `encoded`, shipped as a worker ships a histogram."""
        total = self._sum
        hist = total.histogram()  # empty: settled as nothing
        for part in encoded:
            if part:
                self._merger.add((hist,), part)
        if hist.total_count:
            total.count, total.min, total.max = hist.total_count, hist.min_value, hist.max_value
        shipped = total.encode()
        total.clear()
        return shipped


def carry_histograms(snapshots: Sequence[Snapshot], merger: ShippedMerger) -> list[Snapshot]:
    """The same snapshots, with each second's CARRIED histograms of a target merged into the first snapshot of that
    second that has the target, and emptied in the others; counters, gauges and lateness unchanged."""
    out = list(snapshots)
    by_seq: dict[int, list[int]] = {}
    for k, snap in enumerate(out):
        by_seq.setdefault(snap.seq, []).append(k)
    for positions in by_seq.values():
        if len(positions) < 2:
            continue
        carrier: dict[int, int] = {}  # target -> the position whose snapshot carries its histograms
        parts: dict[tuple[int, str], list[bytes]] = {}
        for k in positions:
            for ts in out[k].targets:
                carrier.setdefault(ts.target, k)
                for name in CARRIED:
                    if getattr(ts, name):
                        parts.setdefault((ts.target, name), []).append(getattr(ts, name))
        merged = {key: encoded[0] if len(encoded) == 1 else merger.merge(encoded) for key, encoded in parts.items()}
        for k in positions:
            out[k] = replace(out[k], targets=tuple(
                replace(ts, **{name: merged.get((ts.target, name), b"") if carrier[ts.target] == k else b""
                               for name in CARRIED})
                for ts in out[k].targets))
    return out
