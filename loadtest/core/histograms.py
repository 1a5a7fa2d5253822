"""Latency histograms: their layout, how a worker ships one, and exact arithmetic on them.

Every histogram of a run is an HdrHistogram of nanoseconds (1 ns to an hour,
3 significant digits: ~34,000 buckets). Workers record into
`LatencyHistogram` on the hot path and ship each interval's filled bucket
range (`LatencyHistogram.encode`); the controller adds shipped histograms
without building one per snapshot (`HistogramMerger`), adds histograms with
numpy (`add_histogram`), and reads percentiles, means and cumulative counts
from the bucket counts with numpy. Results are HdrHistogram's own, bucket
for bucket (tests/test_histograms.py checks each against it).

numpy is imported on first use, by the controller only: workers import this
module to record and never load it.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import struct
import sys
import threading
import weakref
import zlib
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from hdrh.codec import PayloadHeader, ext_header_size, payload_header_size
from hdrh.histogram import HdrHistogram
from pyhdrh import decode as _decode_counts  # the C helpers hdrh itself uses
from pyhdrh import encode as _encode_counts

if TYPE_CHECKING:
    import numpy

LOWEST_NS = 1
HIGHEST_NS = 3600 * 1_000_000_000  # one hour; longer latencies are clamped to it
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 66.0, 75.0, 80.0, 90.0, 95.0, 98.0, 99.0, 99.9, 99.99, 100.0)
# How a worker ships a histogram: this byte, the indices of its first and last non-empty buckets (uint32 each),
# then the buckets from first to last as HdrHistogram's V2 varint stream (zero runs as one number), neither zlib'd
# nor base64'd. The controller decodes it in C and adds only the buckets it spans. Anything else is HdrHistogram's
# own `encode()` form (base64, never starts with this byte) and takes the general path.
SPARSE_FORMAT = 1
SPARSE_HEADER = struct.Struct("<BII")
_WORD = 8  # bytes per bucket count: HdrHistogram's default word size, which every histogram here has


def freed_when_dropped(hist: HdrHistogram) -> HdrHistogram:
    """`hist` with its encoder pointing back at it weakly, so reference counting frees it.

    hdrh's histogram and its encoder refer to each other: a cycle, which only the
    cycle collector frees. That collector counts objects, not bytes, and a
    histogram is a handful of objects holding a 270 KB counts array, so the
    controller, which decodes several a second per worker and target, grew by
    megabytes a second (55 -> 305 MiB in 60 s of configs/sites.yaml). The
    encoder only uses its histogram while the histogram itself is being encoded
    or added to, so a weak reference is always alive when it is used.
    """
    hist.encoder.histogram = weakref.proxy(hist)
    return hist


def new_histogram() -> HdrHistogram:
    """An empty latency histogram (ns), freed as soon as it is dropped."""
    return freed_when_dropped(HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS))


def _layout() -> tuple[int, int, int, int, int]:
    """(counts length, sub-bucket half count magnitude, half count, unit magnitude, sub-bucket mask) of our
    histograms."""
    h = new_histogram()
    return h.counts_len, h.sub_bucket_half_count_magnitude, h.sub_bucket_half_count, h.unit_magnitude, h.sub_bucket_mask


COUNTS_LEN, _HALF_MAG, _HALF, _UNIT, _MASK = _layout()


def counts_index(value: int) -> int:
    """The index of the bucket that counts `value` (ns, within LOWEST_NS..HIGHEST_NS), as `record_value` finds it."""
    bucket = (value | _MASK).bit_length() - (_UNIT + _HALF_MAG + 1)
    return ((bucket + 1) << _HALF_MAG) + (value >> (bucket + _UNIT)) - _HALF


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest value (ns) that bucket `index` counts: HdrHistogram's `get_value_from_index` and the
    highest equivalent value of it, computed inline (a test checks they agree)."""
    bucket = (index >> _HALF_MAG) - 1
    sub = (index & (_HALF - 1)) + _HALF
    if bucket < 0:
        sub -= _HALF
        bucket = 0
    lowest = sub << (bucket + _UNIT)
    return lowest, lowest + (1 << (bucket + _UNIT)) - 1


def _numpy() -> Any:
    """numpy, imported on first use: the controller adds and reads histograms with it; workers import this module
    to record and never need it (importing it would cost each worker ~13 MB and 0.1 s of start-up)."""
    import numpy

    return numpy


def counts_view(hist: HdrHistogram) -> numpy.ndarray:
    """A histogram's bucket counts as a numpy int64 array over the same memory: writes go into the histogram."""
    np = _numpy()
    return np.frombuffer(hist.counts, dtype=np.int64)


def _settle(hist: HdrHistogram, low: int, high: int, total: int) -> None:
    """Count, min and max of `hist` after `total` values were added to its counts, the lowest in a bucket whose
    lowest value is `low`, the highest in one whose highest is `high`, as HdrHistogram's own `add` settles them."""
    if not hist.total_count or low < hist.min_value:
        hist.min_value = low
    if high > hist.max_value:
        hist.max_value = high
    hist.total_count += total


def shipped_span(encoded: bytes) -> tuple[int, int]:
    """The first and last bucket a shipped histogram (SPARSE_FORMAT) counts in; ValueError if outside the range."""
    _, first, last = SPARSE_HEADER.unpack_from(encoded)
    if not first <= last < COUNTS_LEN:
        raise ValueError(f"a shipped histogram spans buckets {first}..{last}, not within 0..{COUNTS_LEN - 1}")
    return first, last


def shipped_max_ns(encoded: bytes) -> int:
    """The largest value a shipped histogram (or HdrHistogram's `encode()`) holds, as `get_max_value` gives it;
    0 if empty. From the header alone for what workers ship."""
    if not encoded:
        return 0
    if encoded[0] != SPARSE_FORMAT:
        return decode_histogram(encoded).get_max_value()
    return bucket_range(shipped_span(encoded)[1])[1]


def decode_histogram(encoded: bytes) -> HdrHistogram:
    """A histogram from what a worker ships (`LatencyHistogram.encode`) or from HdrHistogram's `encode()`;
    an empty one from b"". Freed as soon as it is dropped."""
    if not encoded:
        return new_histogram()
    if encoded[0] != SPARSE_FORMAT:
        return freed_when_dropped(HdrHistogram.decode(encoded))
    first, last = shipped_span(encoded)
    hist = new_histogram()
    # the counts are zero: the varint stream decodes straight into them (it writes only non-zero buckets)
    found = _decode_counts(encoded, SPARSE_HEADER.size, ctypes.addressof(hist.counts) + first * _WORD,
                           last - first + 1, _WORD)
    if found["total"]:
        _settle(hist, bucket_range(first + found["min_nonzero_index"])[0],
                bucket_range(first + found["max_nonzero_index"])[1], found["total"])
    return hist


def add_histogram(into: HdrHistogram, other: HdrHistogram) -> None:
    """`into.add(other)` with numpy: the same counts, count, min and max in a tenth of the time.

    HdrHistogram's own `add` adds the ~34,000 buckets one by one in C (about 125 µs); numpy's vector add takes
    about 10 µs for all of them, so this adds every bucket rather than trusting min and max to bound them.
    """
    if not other.total_count:
        return
    if type(into) is not HdrHistogram or (
            other.bucket_count, other.sub_bucket_count, other.unit_magnitude, other.word_size) != (
            into.bucket_count, into.sub_bucket_count, into.unit_magnitude, _WORD):
        into.add(other)  # not one of ours (or `NOT_KEPT`, which refuses): the general path
        return
    view = counts_view(into)
    view += counts_view(other)
    into.total_count += other.total_count
    into.max_value = max(into.max_value, other.get_max_value())
    into.min_value = min(into.get_min_value(), other.get_min_value())


class LatencyHistogram:
    """An HdrHistogram with a fast `record` for the hot path.

    `HdrHistogram.record_value` costs about 1.4 µs in pure Python; this
    computes the same counts index inline (a test checks they agree) and
    settles count, min and max only when the interval is encoded.

    This reaches into hdrhistogram's attributes, which are not its public
    API (and so does `counts_view`): `counts` (a ctypes array of 64-bit counts,
    zeroed in place with memset), `sub_bucket_mask`, `unit_magnitude`,
    `sub_bucket_half_count_magnitude`, `sub_bucket_half_count`, and
    `total_count`, `min_value`, `max_value` (set, not only read).
    pyproject.toml pins the tested range (0.10.x); tests/test_stats.py fails
    by name if any of these changes.
    """

    __slots__ = ("_hist", "_counts", "_mask", "_shift", "_half_mag", "_half", "_unit", "count", "min", "max")

    def __init__(self) -> None:
        h = new_histogram()
        self._hist = h
        self._counts = h.counts
        self._mask = h.sub_bucket_mask
        self._unit = h.unit_magnitude
        self._shift = h.unit_magnitude + h.sub_bucket_half_count_magnitude + 1
        self._half_mag = h.sub_bucket_half_count_magnitude
        self._half = h.sub_bucket_half_count
        self.count = 0
        self.min = HIGHEST_NS
        self.max = 0

    def record(self, value: int) -> None:
        if value < LOWEST_NS:
            value = LOWEST_NS
        elif value > HIGHEST_NS:
            value = HIGHEST_NS
        bucket = (value | self._mask).bit_length() - self._shift
        sub = value >> (bucket + self._unit)
        self._counts[((bucket + 1) << self._half_mag) + sub - self._half] += 1
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def histogram(self) -> HdrHistogram:
        """The underlying HdrHistogram with its count, min and max settled."""
        h = self._hist
        h.total_count = self.count
        if self.count:
            h.min_value = self.min
            h.max_value = self.max
        return h

    def encode(self) -> bytes:
        """This interval's counts as a worker ships them (see SPARSE_FORMAT); b"" if nothing was recorded.

        Only the buckets from the lowest value's to the highest's, varint-encoded in C: no zlib and no base64,
        which cost the controller more to undo (about 20 µs a histogram) than they save on the pipe.
        """
        if not self.count:
            return b""
        first, last = counts_index(self.min), counts_index(self.max)
        span = last - first + 1
        size = SPARSE_HEADER.size + span * (_WORD + 1)  # the varint stream's worst case: 9 bytes a count
        buf = ctypes.create_string_buffer(size)
        SPARSE_HEADER.pack_into(buf, 0, SPARSE_FORMAT, first, last)
        used = _encode_counts(ctypes.addressof(self._counts) + first * _WORD, span, _WORD,
                              ctypes.addressof(buf) + SPARSE_HEADER.size, size - SPARSE_HEADER.size)
        return ctypes.string_at(buf, SPARSE_HEADER.size + used)

    def clear(self) -> None:
        """Empty it in place: a new 270 KB counts array each second would fragment the heap."""
        if self.count:
            ctypes.memset(ctypes.addressof(self._counts), 0, ctypes.sizeof(self._counts))
            self._hist.total_count = 0
            self._hist.min_value = sys.maxsize
            self._hist.max_value = 0
        self.count = 0
        self.min = HIGHEST_NS
        self.max = 0


class HistogramMerger:
    """Adds shipped histograms into HdrHistograms without building a histogram per snapshot.

    Each one is decoded in C into one scratch array, reused, and added with numpy over only the buckets it
    spans, then those are zeroed again: the controller's cost per worker snapshot, which is what limits how
    many workers one controller can merge.
    """

    def __init__(self) -> None:
        np = self._np = _numpy()
        self._scratch = np.zeros(COUNTS_LEN, dtype=np.int64)
        self._address = self._scratch.ctypes.data
        self._template = new_histogram()
        # each bucket's lowest and highest value, looked up rather than computed per snapshot
        lowest, highest, _ = _bucket_tables()
        self._lowest, self._highest = lowest.tolist(), highest.tolist()

    def add(self, into: Sequence[HdrHistogram], encoded: bytes) -> None:
        """Add `encoded` (what a worker ships, or HdrHistogram's `encode()`) into each of `into`."""
        if encoded[0] == SPARSE_FORMAT:
            first, last = shipped_span(encoded)
            self._add_varints(into, encoded, SPARSE_HEADER.size, first, last - first + 1)
            return
        # HdrHistogram's own encoding (base64 of zlib'd varints), as workers shipped it before SPARSE_FORMAT
        data = zlib.decompress(base64.b64decode(encoded)[ext_header_size:])
        header = PayloadHeader.from_buffer_copy(data)
        t = self._template
        if (header.significant_figures, header.lowest_trackable_value, header.highest_trackable_value) != (
                t.significant_figures, t.lowest_trackable_value, t.highest_trackable_value):
            other = HdrHistogram.decode(encoded)  # not one of ours: HdrHistogram's own decode and add
            for hist in into:
                hist.add(other)
            return
        self._add_varints(into, data, payload_header_size, 0, COUNTS_LEN)

    def _add_varints(self, into: Sequence[HdrHistogram], data: bytes, offset: int, first: int, span: int) -> None:
        """Add the varint stream at `data[offset:]`: at most `span` counts, the first of them bucket `first`'s."""
        try:
            found = _decode_counts(data, offset, self._address + first * _WORD, span, _WORD)
        except BaseException:
            self._scratch.fill(0)  # a stream cut short may have written part of itself
            raise
        total = found["total"]
        if not total:
            return
        lo, hi = first + found["min_nonzero_index"], first + found["max_nonzero_index"]
        part = self._scratch[lo:hi + 1]
        low, high = self._lowest[lo], self._highest[hi]
        for hist in into:
            view = self._np.frombuffer(hist.counts, dtype=self._np.int64)[lo:hi + 1]
            view += part
            _settle(hist, low, high, total)
        part.fill(0)


@functools.lru_cache(maxsize=1)
def _bucket_tables() -> tuple[Any, Any, Any]:
    """Every bucket's lowest value, highest value and midpoint (ns), as numpy arrays in index (= value) order.

    Built once, in the controller, from `bucket_range` (a test checks it against HdrHistogram for every bucket):
    percentiles, means and cumulative counts then read whole counts arrays with numpy instead of walking the
    ~34,000 buckets in Python as HdrHistogram's iterators do (about 2 ms a percentile).
    """
    np = _numpy()
    ranges = np.array([bucket_range(i) for i in range(COUNTS_LEN)], dtype=np.int64)
    lowest, highest = ranges[:, 0].copy(), ranges[:, 1].copy()
    return lowest, highest, lowest + ((highest - lowest + 1) >> 1)


def percentiles_ns(hist: HdrHistogram, points: Iterable[float] = PERCENTILES) -> list[int]:
    """Latency at each percentile from the cumulative bucket counts; 100 is the exact maximum recorded.

    The same values as `HdrHistogram.get_value_at_percentile`: the highest value of the first bucket whose
    cumulative count reaches the rank.
    """
    return _percentiles(counts_view(hist), 0, hist.get_total_count(), hist.get_max_value(), points)


def any_percentiles_ns(hist: HdrHistogram, points: Iterable[float]) -> list[int]:
    """`percentiles_ns` of a histogram of any layout: ours read with numpy, another (a histograms file written
    with other bounds) by HdrHistogram's own walk, about 2 ms a percentile; 100 is the maximum either way."""
    points = list(points)
    if hist.counts_len == COUNTS_LEN and hist.lowest_trackable_value == LOWEST_NS and \
            hist.highest_trackable_value == HIGHEST_NS and hist.significant_figures == SIGNIFICANT_DIGITS and \
            hist.word_size == _WORD:
        return percentiles_ns(hist, points)
    return [hist.get_max_value() if p >= 100 else hist.get_value_at_percentile(p) for p in points]


_SCRATCH = threading.local()  # a reused, zeroed counts array per thread for `shipped_percentiles_ns`


def shipped_percentiles_ns(encoded: bytes, points: Iterable[float]) -> list[int]:
    """`percentiles_ns` of a histogram as a worker ships it (`LatencyHistogram.encode`), without building an
    HdrHistogram (about 0.5 ms): the controller reads a lateness percentile from every open-model snapshot."""
    if not encoded or encoded[0] != SPARSE_FORMAT:
        return percentiles_ns(decode_histogram(encoded), points)
    first, last = shipped_span(encoded)
    scratch = getattr(_SCRATCH, "counts", None)
    if scratch is None:
        np = _numpy()
        scratch = _SCRATCH.counts = np.zeros(COUNTS_LEN, dtype=np.int64)
    counts = scratch[first:]
    end = len(counts)  # until the decode says how far it wrote
    try:
        found = _decode_counts(encoded, SPARSE_HEADER.size, counts.ctypes.data, last - first + 1, _WORD)
        if not found["total"]:
            return [0 for _ in points]
        end = found["max_nonzero_index"] + 1
        largest = int(_bucket_tables()[1][first + end - 1])
        return _percentiles(counts[:end], first, found["total"], largest, points)
    finally:
        counts[:end].fill(0)


def _percentiles(counts: Any, first: int, total: int, largest: int, points: Iterable[float]) -> list[int]:
    """Each percentile of `total` values, the largest `largest`, counted in `counts` (numpy; element 0 is bucket
    `first`'s)."""
    points = list(points)
    if not total:
        return [0 for _ in points]
    out = [largest] * len(points)
    wanted = [(k, max(1, int(p * total / 100.0 + 0.5))) for k, p in enumerate(points) if p < 100.0]
    if wanted:
        np = _numpy()
        highest = _bucket_tables()[1]
        cumulative = np.cumsum(counts)
        at = np.searchsorted(cumulative, [rank for _, rank in wanted]).tolist()
        for (k, _), j in zip(wanted, at):
            if j < len(cumulative):  # (a rank past the counts, were they short of the total, keeps the maximum)
                out[k] = int(highest[first + j])
    return out


# A sum of count x value in int64 is exact while count x highest value stays below this; past it (a billion
# requests of an hour each) the mean is summed with Python's unbounded integers instead.
_EXACT_INT64 = 2**62


def mean_ns(hist: HdrHistogram) -> float:
    """The mean as HdrHistogram computes it (each bucket counted at its midpoint), summed exactly."""
    total = hist.get_total_count()
    if not total:
        return 0.0
    counts = counts_view(hist)
    middle = _bucket_tables()[2]
    if total * (hist.get_max_value() + 1) < _EXACT_INT64:
        return int(counts @ middle) / total
    index = _numpy().flatnonzero(counts)
    return sum(c * m for c, m in zip(counts[index].tolist(), middle[index].tolist())) / total


def min_ns(hist: HdrHistogram) -> int:
    return hist.get_min_value() if hist.get_total_count() else 0


def counts_at_or_below(hist: HdrHistogram, bounds_ns: Sequence[int]) -> list[int]:
    """How many values are at or below each bound (ascending, ns): the cumulative buckets of a histogram.

    A value counts by its bucket's highest equivalent value, as `percentiles_ns` reports it.
    """
    if not hist.get_total_count():
        return [0] * len(bounds_ns)
    np = _numpy()
    cumulative = np.concatenate(([0], np.cumsum(counts_view(hist))))
    below = np.searchsorted(_bucket_tables()[1], list(bounds_ns), side="right")  # buckets wholly at or below
    return [int(v) for v in cumulative[below]]


def latency_summary(hist: Any) -> dict[str, float]:
    """Percentiles and moments of a latency histogram, in milliseconds."""
    if not hist.get_total_count():
        return {}
    out = {f"p{p:g}": round(v / 1e6, 6) for p, v in zip(PERCENTILES, percentiles_ns(hist))}
    out.update(mean=round(mean_ns(hist) / 1e6, 6), min=round(min_ns(hist) / 1e6, 6),
               max=round(hist.get_max_value() / 1e6, 6))
    return out
