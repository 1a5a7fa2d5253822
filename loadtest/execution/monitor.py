"""A run's watch over its own processes: resources.csv, verdicts, and what they cost.

The controller makes one `RunMonitor` per run: it registers the controller,
every worker, every embedded server process and any `--watch-pid`, samples
them with a `ResourceSampler` thread, appends resources.csv, feeds the
`Verdicts`, and at the end answers for workers.csv, the verdicts and each
embedded server's cost per request and per connection. A resources.csv that
cannot be written (a full disk) is one of the run's `problems()`, and said
on stderr when first seen; the sampling and the verdicts go on without it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from loadtest.core.histograms import shipped_max_ns, shipped_percentiles_ns
from loadtest.core.run_files import RESOURCES_NAME
from loadtest.execution.resources import (
    CONTROLLER_ROLE,
    DEFAULT_SAMPLE_INTERVAL_S,
    MACHINE_ROLE,
    ResourceSampler,
    ResourcesWriter,
    RoleTotals,
    Sample,
    cpu_seconds_per_1000_requests,
    rss_per_connection,
    server_role,
    watch_role,
    worker_role,
)
from loadtest.core.stats import Snapshot
from loadtest.core.verdicts import Verdicts

BEHIND_LATENESS_S = 0.1  # an open-model worker whose arrivals start later than this (p99) is behind


class RunMonitor:
    """Samples every process of a run and turns the samples into verdicts and costs."""

    def __init__(self, run_dir: Path, interval: float = DEFAULT_SAMPLE_INTERVAL_S,
                 event: Callable[[str], None] = lambda text: None) -> None:
        self.event = event
        self.verdicts = Verdicts()
        self.writer = ResourcesWriter(run_dir / RESOURCES_NAME)
        self.sampler = ResourceSampler(interval, on_sample=self._on_sample)
        self.sampler.register(CONTROLLER_ROLE, os.getpid())
        self._started = False
        self._problems_said = 0
        self._write_lock = threading.Lock()  # this machine's sampler and a cluster's relay both write rows
        self._closed = False  # stopped: rows from elsewhere that arrive late are dropped
        self._roles: list[str] | None = None  # each worker's role, if not worker-N (a cluster's node-N/worker-K)

    def _on_sample(self, samples: list[Sample]) -> None:
        with self._write_lock:
            self.verdicts.add(samples)  # first: a resources.csv that cannot be written must not stop the verdicts
            self.writer.write(samples)  # an OSError here is kept by the sampler (callback_error) and reported

    def add_samples(self, samples: list[Sample]) -> None:
        """Rows sampled elsewhere (a cluster node on another machine samples its own): verdicts and resources.csv."""
        if self._started and not self._closed:
            self._on_sample(samples)

    def problems(self) -> list[str]:
        """What went wrong with the run's own watch, one sentence each: for summary.json's problems."""
        error = self.sampler.callback_error or self.writer.error
        if error is None:
            return []
        what = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
        if isinstance(error, OSError):
            return [f"{self.writer.path.name} could not be written ({what}): its rows stop there"]
        return [f"resource sampling's callback failed ({what}): {self.writer.path.name} may stop there"]

    def _say_problems(self) -> None:
        """Each problem on stderr once, when first seen, even with the live view off (--quiet)."""
        problems = self.problems()
        for problem in problems[self._problems_said:]:
            print(f"problem: {problem}", file=sys.stderr, flush=True)
        self._problems_said = len(problems)

    def watch_workers(self, pids: Iterable[int], roles: list[str] | None = None) -> None:
        """Sample worker k's pid as `roles[k]` (default worker-k); a pid of 0 is a worker on another machine."""
        self._roles = roles
        for k, pid in enumerate(pids):
            if pid > 0:
                self.sampler.register(self._role(k), pid)

    def _role(self, k: int) -> str:
        return self._roles[k] if self._roles and k < len(self._roles) else worker_role(k)

    def watch_servers(self, groups: Iterable[Any]) -> None:
        for g in groups:
            for i, pid in enumerate(g.pids):
                self.sampler.register(server_role(g.spec.name, i), pid)

    def watch_pids(self, pids: Iterable[int]) -> list[int]:
        """Sample processes the run did not start; returns the pids that do not exist."""
        return [pid for pid in pids if not self.sampler.register(watch_role(pid), pid)]

    def start(self) -> None:
        self.sampler.start()
        self._started = True

    def note_snapshot(self, snap: Snapshot) -> None:
        """Tell the verdicts when an open-model worker's arrivals started late or were dropped."""
        late_ns = 0
        for ts in snap.targets:
            # p99 can pass the line only if the latest arrival did (the header says): most snapshots need no percentile
            if ts.lateness and shipped_max_ns(ts.lateness) > BEHIND_LATENESS_S * 1e9:
                late_ns = max(late_ns, shipped_percentiles_ns(ts.lateness, (99.0,))[0])
            if ts.dropped:
                late_ns = max(late_ns, int(1e9))
        if late_ns or any(ts.lateness for ts in snap.targets):
            lateness = late_ns / 1e9
            self.verdicts.note_behind(snap.worker, snap.end, lateness if lateness > BEHIND_LATENESS_S else 0.0)

    def say_new_verdicts(self) -> None:
        for verdict in self.verdicts.new():
            self.event(f"warning: {verdict['what']}")
        self._say_problems()

    def worker_cpu(self, workers: int) -> list[float | None]:
        """Each worker's CPU % of one core at the latest sample."""
        out: list[float | None] = []
        for k in range(workers):
            sample = self.sampler.last(self._role(k))
            out.append(sample.cpu_percent if sample is not None else None)
        return out

    def machine_cpu(self) -> float | None:
        sample = self.sampler.last(MACHINE_ROLE)
        return sample.cpu_percent if sample is not None else None

    def worker_gone(self, pid: int) -> None:
        """A worker exited: take its last sample before anything reaps it."""
        self.sampler.unregister(pid)

    def stop(self) -> None:
        if self._started:
            self.sampler.stop()
        with self._write_lock:
            self._closed = True
            self.writer.close()
        self._say_problems()

    def worker(self, k: int) -> RoleTotals:
        return self.sampler.totals(self._role(k))

    def server_cost(self, name: str, served: dict[str, int]) -> dict[str, Any]:
        """An embedded server's CPU per 1,000 requests (or messages) and memory per connection."""
        role = f"server-{name}"
        totals = self.sampler.totals(role)
        count = served.get("requests", served.get("messages", 0))
        per_1000 = cpu_seconds_per_1000_requests(self.sampler.cpu_seconds(role, during=True), count)
        per_connection = rss_per_connection(totals.peak_rss_bytes, totals.peak_connections,
                                            baseline_rss_bytes=totals.first_rss_bytes)
        return {
            "cpu_seconds": round(self.sampler.cpu_seconds(role, during=True), 3),
            "cpu_seconds_per_1000": round(per_1000, 6) if per_1000 is not None else None,
            "peak_rss_bytes": totals.peak_rss_bytes,
            "peak_connections": totals.peak_connections,
            "rss_bytes_per_connection": round(per_connection, 1) if per_connection is not None else None,
        }
