"""The live web page's figures: an output fed each merged second, read by the page's HTTP threads.

`LivePage` keeps what the page (`loadtest.outputs.webpage`) and the JSON API of
`loadtest.execution.web` show: each target's requests, failures, rate and
percentiles so far, its level (users or rate) as the control inbox publishes
it, the failures, and each second's figures for the charts (the last
`MAX_POINTS`); once the run has ended, the links to its report and files.
Like every output it is started with the run, given each merged second
(`add`, never concurrent, never blocking on a reader) and stopped with the
result.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

from loadtest.core.histograms import percentiles_ns
from loadtest.core.run_files import RUN_FILES
from loadtest.core.stats import TargetTotals, aggregate
from loadtest.model.config import RunConfig
from loadtest.model.kinds import kind_of
from loadtest.model.run_result import Frame, RunResult
from loadtest.outputs.base import Output, RunStarted
from loadtest.outputs.reports import stopped_text

MAX_POINTS = 3600  # seconds of chart data kept (an hour); older seconds are dropped


def target_model(target: Any) -> str:
    """ "open" (arrivals per second) or "closed" (virtual users or connections)."""
    return "open" if kind_of(target).load(target).arrival is not None else "closed"


def steerable_targets(config: RunConfig) -> list[Any]:
    """The targets whose level can be set: those with load of their own (not a flow's step rows)."""
    return [t for t in config.targets if kind_of(t).load(t).users > 0]


def _ms(ns: float) -> float | None:
    return round(ns / 1e6, 3)


def _figures(total: TargetTotals, second: TargetTotals | None, length: float) -> dict[str, Any]:
    """requests, failures (so far), rps (the last second), p50_ms and p99_ms (so far)."""
    p50 = p99 = None
    if total.latency.get_total_count():
        p50, p99 = (_ms(v) for v in percentiles_ns(total.latency, (50.0, 99.0)))
    rps = round(second.requests / length, 3) if second is not None and length > 0 else 0.0
    return {"requests": total.requests, "failures": total.failure_count, "rps": rps, "p50_ms": p50, "p99_ms": p99}


def _point(second: TargetTotals, length: float) -> dict[str, Any]:
    """One second of one target for the charts: rate, failure rate and percentiles of that second."""
    p50 = p90 = p99 = None
    if second.latency.get_total_count():
        p50, p90, p99 = (_ms(v) for v in percentiles_ns(second.latency, (50.0, 90.0, 99.0)))
    return {"rps": round(second.requests / length, 3), "fps": round(second.failure_count / length, 3),
            "p50": p50, "p90": p90, "p99": p99}


def _level(load: str, value: float) -> float | int:
    """Users as a whole number (a ramp's level between two whole numbers as the workers take it), a rate to the
    thousandth."""
    return round(value, 3) if load == "open" else int(round(value))


class LivePage(Output):
    """The run as the page and the API show it: fed each merged second by the controller, read by HTTP threads.

    `add` never blocks on a reader: it builds the new figures and swaps them in under a lock held for a
    moment; readers copy what they need under the same lock.
    """

    def __init__(self, config: RunConfig, status: Any) -> None:
        """`status`: what the run is doing, as the control inbox publishes it (`execution.control.RunStatus`:
        state, levels, changes, stopped), read at each answer."""
        self.config, self.status = config, status
        steerable = steerable_targets(config)
        self.models = {t.name: target_model(t) for t in steerable}
        self.names = [t.name for t in config.targets]
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.elapsed = 0.0
        self.targets: list[dict[str, Any]] = [self._empty(n) for n in self.names]
        self.aggregated: dict[str, Any] = {"requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None,
                                           "p99_ms": None}
        self.failures: list[dict[str, Any]] = []
        self.series: deque[dict[str, Any]] = deque(maxlen=MAX_POINTS)
        self.result: dict[str, Any] | None = None
        self.run_dir: Path | None = None
        self.version = 0  # counts the seconds added (and the end), for event streams to wait on

    def _empty(self, name: str) -> dict[str, Any]:
        return {"name": name, "model": self.models.get(name, "closed"), "requests": 0, "failures": 0, "rps": 0.0,
                "p50_ms": None, "p99_ms": None}

    # -- the output side (the controller's thread) -------------------------------------------------

    def start(self, run: RunStarted) -> None:
        pass

    def add(self, frame: Frame) -> None:
        """One more merged second."""
        interval, stats = frame.interval, frame.stats
        length = max(interval.end - interval.start, 1e-9)
        targets = []
        point: dict[str, Any] = {"t": round(interval.end, 3), "targets": {}}
        levels = dict(self.status.levels)
        for name, total, second in zip(self.names, stats.totals, interval.targets):
            row = {"name": name, "model": self.models.get(name, "closed"), **_figures(total, second, length)}
            p = _point(second, length)
            if name in levels:
                p["level"] = _level(row["model"], levels[name])
                row["users" if row["model"] == "closed" else "rate"] = p["level"]
            if row["model"] == "closed":
                p["users"] = second.users
            targets.append(row)
            point["targets"][name] = p
        agg_second = aggregate(interval.targets)
        aggregated = _figures(stats.aggregated(), agg_second, length)
        point["aggregated"] = _point(agg_second, length)
        failures = [{"target": r.target, "kind": r.kind, "message": r.message, "count": r.occurrences,
                     "first_s": round(r.first_seen, 3), "last_s": round(r.last_seen, 3)}
                    for r in stats.failures()[:100]]
        with self._lock:
            self.elapsed = interval.end
            self.targets, self.aggregated, self.failures = targets, aggregated, failures
            self.series.append(point)
            self.version += 1
            self._changed.notify_all()

    def stop(self, result: RunResult | None) -> None:
        """The run has ended and its reports are written (the controller stops the report files' output
        first): the page links to them. None: the run failed before it had any."""
        if result is None:
            return
        files = [name for name in RUN_FILES if (result.run_dir / name).is_file()]
        with self._lock:
            self.run_dir = result.run_dir
            self.elapsed = result.stats.elapsed
            self.result = {"run_dir": str(result.run_dir), "exit_status": result.exit_status,
                           "files": [{"name": n, "url": f"/files/{n}"} for n in files],
                           "report": "/files/report.html" if "report.html" in files else None,
                           "stopped": stopped_text(result.stopped) if result.stopped else None}
            self.version += 1
            self._changed.notify_all()

    # -- the readers' side (HTTP threads) ----------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """GET /api/run (and each server-sent event)."""
        status = self.status
        levels = dict(status.levels)
        with self._lock:
            targets = [dict(t) for t in self.targets]
            doc: dict[str, Any] = {"state": "done" if self.result is not None else status.state,
                                   "elapsed_s": round(self.elapsed, 3), "targets": targets,
                                   "aggregated": dict(self.aggregated), "failures": list(self.failures),
                                   "point": self.series[-1] if self.series else None}
            result = self.result
        for t in targets:
            if t["name"] in levels:  # the level as set now, not as of the last second
                t["users" if t["model"] == "closed" else "rate"] = _level(t["model"], levels[t["name"]])
        doc["level_changes"] = [c.as_dict() for c in list(status.changes)]
        doc["stopped"] = status.stopped
        doc["result"] = result
        return doc

    def chart_series(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.series)

    def wait(self, version: int, timeout: float) -> int:
        """Wait until a second newer than `version` is added (or `timeout`); the version now."""
        with self._lock:
            if self.version == version:
                self._changed.wait(timeout)
            return self.version
