"""The stats core: snapshots in, exactly merged numbers out.

Pure code: no clock, no sockets, no printing. Workers fill a `TargetRecorder`
per target and ship its `TargetSnapshot` once a second; the controller adds
every snapshot into a `RunStats`, which keeps the totals (counters and an
HdrHistogram per target) and hands back each second once every live worker
has reported it. Percentiles of merged histograms are exact to the
histogram's precision (3 significant digits), unlike averaged percentiles.
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
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from hdrh.codec import PayloadHeader, ext_header_size, payload_header_size
from hdrh.histogram import HdrHistogram
from pyhdrh import decode as _decode_counts  # the C helpers hdrh itself uses
from pyhdrh import encode as _encode_counts

from .run_files import AGGREGATED, NOT_AGGREGATED_TYPES

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
FAILURE_KINDS = ("refused", "connect_timeout", "read_timeout", "reset", "closed", "status", "protocol", "tls",
                 "resources", "error", "cancelled", "mismatch", "redirects")


def _freed_when_dropped(hist: HdrHistogram) -> HdrHistogram:
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
    return _freed_when_dropped(HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS))


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


def _settle(hist: HdrHistogram, lo: int, hi: int, total: int) -> None:
    """Count, min and max of `hist` after `total` values in buckets `lo`..`hi` were added to its counts, as
    HdrHistogram's own `add` settles them (min the lowest value of `lo`'s bucket, max the highest of `hi`'s)."""
    low = bucket_range(lo)[0]
    high = bucket_range(hi)[1]
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
        return _freed_when_dropped(HdrHistogram.decode(encoded))
    first, last = shipped_span(encoded)
    hist = new_histogram()
    # the counts are zero: the varint stream decodes straight into them (it writes only non-zero buckets)
    found = _decode_counts(encoded, SPARSE_HEADER.size, ctypes.addressof(hist.counts) + first * _WORD,
                           last - first + 1, _WORD)
    if found["total"]:
        _settle(hist, first + found["min_nonzero_index"], first + found["max_nonzero_index"], found["total"])
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
# What a second (Interval) keeps of them: history.csv and the live view read only its latency. Each histogram
# is a 270 KB counts array and seconds wait for the slowest worker, so with 20 targets a pending second costs
# 5.4 MB this way instead of 22 (the whole run's totals keep all four).
SECOND_HISTOGRAMS = ("latency",)


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
            # count, min and max as HdrHistogram's own `add` settles them (see `_settle`)
            if not hist.total_count or low < hist.min_value:
                hist.min_value = low
            if high > hist.max_value:
                hist.max_value = high
            hist.total_count += total
        part.fill(0)


def decode(snap: TargetSnapshot) -> dict[str, HdrHistogram]:
    """A snapshot's non-empty histograms, decoded, by field name."""
    return {name: decode_histogram(getattr(snap, name)) for name in HISTOGRAMS if getattr(snap, name)}


class TargetRecorder:
    """A worker's counters for one target over the current interval."""

    __slots__ = ("target", "requests", "failures", "samples", "bytes_in", "bytes_out", "content_bytes",
                 "connects", "connect_failures", "open_connections", "peak_open", "latency", "connect_latency",
                 "dropped", "lateness", "uncorrected", "users", "level")

    def __init__(self, target: int) -> None:
        self.target = target
        self.open_connections = 0
        self.peak_open = 0
        self.users = 0
        self.level = -1.0
        # Allocated once and cleared in place each interval, so a worker's memory stays flat.
        self.latency = LatencyHistogram()
        self.connect_latency = LatencyHistogram()
        self.lateness = LatencyHistogram()
        self.uncorrected = LatencyHistogram()
        self._reset()

    def _reset(self) -> None:
        self.requests = 0
        self.failures: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.content_bytes = 0
        self.connects = 0
        self.connect_failures: Counter[str] = Counter()
        self.dropped = 0
        for name in HISTOGRAMS:
            getattr(self, name).clear()

    def success(self, latency_ns: int, bytes_in: int, bytes_out: int, content: int) -> None:
        self.requests += 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.content_bytes += content
        # `LatencyHistogram.record` inlined: this runs once per request, and the call is a tenth of it
        h = self.latency
        if latency_ns < LOWEST_NS:
            latency_ns = LOWEST_NS
        elif latency_ns > HIGHEST_NS:
            latency_ns = HIGHEST_NS
        bucket = (latency_ns | h._mask).bit_length() - h._shift
        h._counts[((bucket + 1) << h._half_mag) + (latency_ns >> (bucket + h._unit)) - h._half] += 1
        h.count += 1
        if latency_ns < h.min:
            h.min = latency_ns
        if latency_ns > h.max:
            h.max = latency_ns

    def failure(self, kind: str, message: str, latency_ns: int | None = None,
                bytes_in: int = 0, bytes_out: int = 0, content: int = 0) -> None:
        """A request that ended badly; `latency_ns` None keeps it out of the latencies. `content` is the
        body of a response that came whole (a 404's page): Locust counts it in Average Content Size."""
        self.requests += 1
        self.failures[kind] += 1
        if kind not in self.samples:
            self.samples[kind] = message[:300]
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.content_bytes += content
        if latency_ns is not None:
            self.latency.record(latency_ns)

    def connected(self, latency_ns: int) -> None:
        self.connects += 1
        self.open_connections += 1
        if self.open_connections > self.peak_open:
            self.peak_open = self.open_connections
        self.connect_latency.record(latency_ns)

    def connect_failed(self, kind: str, message: str) -> None:
        self.connect_failures[kind] += 1
        key = f"connect:{kind}"
        if key not in self.samples:
            self.samples[key] = message[:300]

    def disconnected(self) -> None:
        self.open_connections -= 1

    def snapshot(self) -> TargetSnapshot:
        """This interval's counters, and a fresh interval."""
        snap = TargetSnapshot(
            target=self.target,
            requests=self.requests,
            failures=tuple(self.failures.items()),
            failure_samples=tuple(self.samples.items()),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            content_bytes=self.content_bytes,
            connects=self.connects,
            connect_failures=tuple(self.connect_failures.items()),
            open_connections=self.open_connections,
            peak_open=self.peak_open,
            latency=self.latency.encode(),
            connect_latency=self.connect_latency.encode(),
            dropped=self.dropped,
            lateness=self.lateness.encode(),
            uncorrected=self.uncorrected.encode(),
            users=self.users,
            level=self.level,
        )
        self._reset()
        self.peak_open = self.open_connections  # the next interval's peak starts from what is open now
        return snap


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
        for name in HISTOGRAMS:
            hist = getattr(other, name)
            if hist.get_total_count():
                add_histogram(getattr(self, name), hist)


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


NOT_KEPT = _freed_when_dropped(_NotKept(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS))


def second_totals(name: str, type: str) -> TargetTotals:
    """A target's totals over one second: counters and latency; its other histograms are `NOT_KEPT`."""
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
        self._failures: dict[tuple[int, str], FailureRecord] = {}
        self._merger = HistogramMerger()
        self._open_sum = [0] * len(targets)  # the sums over workers of the gauges above
        self._users_sum = [0] * len(targets)
        self._level_sum = [-1.0] * len(targets)

    def add(self, snap: Snapshot) -> None:
        """Merge one worker's interval into the totals and into its second."""
        w = snap.worker
        interval = self._pending.get(snap.seq)
        if interval is None:
            interval = self._pending[snap.seq] = Interval(
                snap.seq, snap.start, snap.end, [second_totals(t.name, t.type) for t in self._totals])
        interval.start = min(interval.start, snap.start)
        interval.end = max(interval.end, snap.end)
        for ts in snap.targets:
            # Each histogram is decoded once, into a scratch array, and added over only the buckets it
            # fills (see `HistogramMerger`). A second keeps only its latency (SECOND_HISTOGRAMS), which
            # joins the totals' once, when the second is handed over: one add per target a second, not
            # one per worker; the other histograms go to the totals at once.
            total, part = self._totals[ts.target], interval.targets[ts.target]
            total.add(ts, histograms=False)
            part.add(ts, histograms=False)
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
