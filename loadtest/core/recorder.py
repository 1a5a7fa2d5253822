"""What a worker records of one target: the counters and histograms of the interval under way.

It ships them once a second as a `stats.TargetSnapshot`; the controller merges those (`stats.RunStats`).
"""

from __future__ import annotations

from collections import Counter

from loadtest.core.histograms import HIGHEST_NS, LOWEST_NS, LatencyHistogram
from loadtest.core.stats import HISTOGRAMS, TargetSnapshot


class TargetRecorder:
    """A worker's counters for one target over the current interval."""

    __slots__ = ("target", "requests", "failures", "samples", "bytes_in", "bytes_out", "content_bytes",
                 "connects", "connect_failures", "open_connections", "peak_open", "latency", "connect_latency",
                 "dropped", "lateness", "uncorrected", "users", "level", "backoffs", "backoff_s")

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
        self.backoffs = 0
        self.backoff_s = 0.0
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
            backoffs=self.backoffs,
            backoff_s=self.backoff_s,
        )
        self._reset()
        self.peak_open = self.open_connections  # the next interval's peak starts from what is open now
        return snap
