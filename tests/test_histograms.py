"""loadtest.core.histograms: the shipped form, the bucket layout and every reader and adder equal HdrHistogram's own,
bucket for bucket."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from loadtest.core.histograms import (
    COUNTS_LEN,
    HIGHEST_NS,
    PERCENTILES,
    SPARSE_FORMAT,
    SPARSE_HEADER,
    HistogramMerger,
    add_histogram,
    any_percentiles_ns,
    bucket_range,
    counts_at_or_below,
    counts_index,
    decode_histogram,
    new_histogram,
    percentiles_ns,
    shipped_max_ns,
    shipped_percentiles_ns,
)
from loadtest.core.stats import NOT_KEPT
from loadtest.core.recorder import TargetRecorder


def recorded_reference(values: list[int]) -> HdrHistogram:
    """HdrHistogram's own record_value, nothing of ours: what merged counts must equal."""
    reference = new_histogram()
    for v in values:
        reference.record_value(min(max(v, 1), HIGHEST_NS))
    return reference


def test_bucket_index_and_range_are_hdrhistogram_own_for_every_bucket() -> None:

    h = new_histogram()
    assert COUNTS_LEN == h.counts_len
    for i in range(COUNTS_LEN):
        low, high = bucket_range(i)
        assert (low, high) == (h.get_value_from_index(i), h.get_highest_equivalent_value(h.get_value_from_index(i))), i
        if low >= 1:
            assert counts_index(low) == counts_index(high) == h.get_counts_array_index(low) == i


def test_a_shipped_histogram_is_its_bucket_range_and_decodes_to_hdrhistogram_own_counts() -> None:
    """A worker ships the filled range uncompressed (SPARSE_FORMAT); decoded, it is what record_value makes, and
    the same as HdrHistogram's own encode and decode of it."""
    rng = random.Random(5)
    for values in ([1], [HIGHEST_NS], [1, HIGHEST_NS], [rng.randint(1, 10**10) for _ in range(4000)],
                   [int(rng.lognormvariate(14.5, 0.8)) for _ in range(2000)]):
        rec = TargetRecorder(0)
        for v in values:
            rec.success(v, 1, 1, 1)
        shipped = rec.snapshot().latency
        assert shipped[0] == SPARSE_FORMAT
        reference = recorded_reference(values)
        got = decode_histogram(shipped)
        assert list(got.counts) == list(reference.counts)
        via_hdrh = HdrHistogram.decode(reference.encode())
        assert (got.get_total_count(), got.get_min_value(), got.get_max_value()) == (
            via_hdrh.get_total_count(), via_hdrh.get_min_value(), via_hdrh.get_max_value()) == (
            len(values), reference.get_min_value(), reference.get_max_value())


def test_the_merger_adds_both_wire_forms_exactly_and_the_sum_is_what_workers_recorded() -> None:
    """Shipped ranges (what workers send now) and HdrHistogram's base64 `encode()` (what they sent before) add
    into the same counts as recording every value into one histogram."""
    rng = random.Random(9)
    merger = HistogramMerger()
    merged = new_histogram()
    everything: list[int] = []
    for n in (2000, 1, 0, 300, 5000, 7):
        values = [int(rng.lognormvariate(10 + n % 7, 2)) + 1 for _ in range(n)]
        everything += values
        rec = TargetRecorder(0)
        for v in values:
            rec.success(v, 1, 1, 1)
        if n % 2:
            encoded = recorded_reference(values).encode() if values else b""  # the old wire form
        else:
            encoded = rec.snapshot().latency
        if encoded:
            merger.add((merged,), encoded)
    reference = recorded_reference(everything)
    assert list(merged.counts) == list(reference.counts)
    assert (merged.get_total_count(), merged.get_min_value(), merged.get_max_value()) == (
        reference.get_total_count(), reference.get_min_value(), reference.get_max_value())
    assert percentiles_ns(merged) == [reference.get_max_value() if p == 100 else reference.get_value_at_percentile(p)
                                      for p in PERCENTILES]


def test_percentiles_of_any_layout_are_hdrhistograms_own() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(13, 2)) for _ in range(20_000)]
    points = [0.1, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0]
    ours = recorded_reference(values)
    other = HdrHistogram(1000, 60 * 10**9, 2)  # a histograms file written with other bounds and precision
    for v in values:
        other.record_value(min(max(v, 1000), 60 * 10**9))
    for hist in (ours, other):
        want = [hist.get_max_value() if p == 100 else hist.get_value_at_percentile(p) for p in points]
        assert any_percentiles_ns(hist, points) == want
    assert any_percentiles_ns(new_histogram(), [50.0, 100.0]) == [0, 0]


def test_a_shipped_histogram_outside_the_buckets_is_refused_and_merging_stays_exact() -> None:

    merger = HistogramMerger()
    merged = new_histogram()
    for first, last in ((COUNTS_LEN, COUNTS_LEN), (5, COUNTS_LEN), (9, 8)):
        bad = SPARSE_HEADER.pack(SPARSE_FORMAT, first, last) + b"\x02"
        with pytest.raises(ValueError, match="not within"):
            merger.add((merged,), bad)
        with pytest.raises(ValueError, match="not within"):
            decode_histogram(bad)
    # a stream longer than its header says is refused by the C decoder before it writes past the last bucket named,
    # and the scratch it half filled is cleared: the next add below is exact
    spill = SPARSE_HEADER.pack(SPARSE_FORMAT, 100, 101) + b"\x02" * 50
    with pytest.raises(IndexError):
        merger.add((merged,), spill)
    assert merged.get_total_count() == 0 and not any(merged.counts)
    rec = TargetRecorder(0)
    rec.success(5_000_000, 1, 1, 1)
    merger.add((merged,), rec.snapshot().latency)
    assert list(merged.counts) == list(recorded_reference([5_000_000]).counts)


def test_add_histogram_is_hdrhistogram_add() -> None:
    """The numpy add gives HdrHistogram.add's counts, count, min and max, into an empty histogram or not; a second's
    histogram it does not keep still refuses."""
    rng = random.Random(13)
    ours, theirs = new_histogram(), new_histogram()
    for n in (3, 0, 1000, 1):
        part = recorded_reference([rng.randint(1, 10**9) for _ in range(n)])
        add_histogram(ours, part)
        if n:  # (HdrHistogram.add of an empty histogram sets min to 0; ours leaves it, and nothing here adds one)
            theirs.add(part)
        assert list(ours.counts) == list(theirs.counts)
        assert (ours.total_count, ours.get_min_value(), ours.get_max_value()) == (
            theirs.total_count, theirs.get_min_value(), theirs.get_max_value())
    with pytest.raises(TypeError):
        add_histogram(NOT_KEPT, ours)


def test_cumulative_counts_equal_a_walk_over_hdrhistogram_buckets() -> None:
    rng = random.Random(17)
    values = [int(rng.lognormvariate(13, 2)) + 1 for _ in range(5000)]
    h = recorded_reference(values)
    bounds = [0, 1, 1000, 10**5, 10**6, 5 * 10**6, 10**8, 10**12, HIGHEST_NS * 2]
    want = []
    for bound in bounds:
        want.append(sum(h.counts[i] for i in range(h.counts_len)
                        if h.counts[i] and h.get_highest_equivalent_value(h.get_value_from_index(i)) <= bound))
    assert counts_at_or_below(h, bounds) == want
    assert counts_at_or_below(new_histogram(), bounds) == [0] * len(bounds)


def test_a_percentile_read_from_a_shipped_histogram_is_hdrhistogram_own() -> None:
    """The controller reads each open-model snapshot's p99 lateness without decoding it into a histogram."""
    rng = random.Random(23)
    for n in (1, 2, 50, 2000, 20000):
        rec = TargetRecorder(0)
        for _ in range(n):
            rec.lateness.record(int(rng.expovariate(1 / 200_000)) + rng.choice([1, 10**9]))
        shipped = rec.snapshot().lateness
        reference = decode_histogram(shipped)
        want = [reference.get_max_value() if p == 100 else reference.get_value_at_percentile(p) for p in PERCENTILES]
        assert shipped_percentiles_ns(shipped, PERCENTILES) == want == percentiles_ns(reference)
        assert shipped_percentiles_ns(reference.encode(), PERCENTILES) == want  # HdrHistogram's own form too
    assert shipped_percentiles_ns(b"", (99.0,)) == [0]


def test_the_largest_value_of_a_shipped_histogram_comes_from_its_header() -> None:

    for values in ([1], [7, 3_000_000], [HIGHEST_NS, 5]):
        rec = TargetRecorder(0)
        for v in values:
            rec.lateness.record(v)
        shipped = rec.snapshot().lateness
        assert shipped_max_ns(shipped) == decode_histogram(shipped).get_max_value() == recorded_reference(
            values).get_max_value()
        assert shipped_max_ns(recorded_reference(values).encode()) == recorded_reference(values).get_max_value()
    assert shipped_max_ns(b"") == 0
