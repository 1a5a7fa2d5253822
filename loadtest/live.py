"""What a run shows on the terminal: a line a second, then a summary table.

Plain text, so CI logs stay readable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from .config import RunConfig
from .reports import stats_rows
from .stats import Interval, RunStats, aggregate, percentiles_ns
from .thresholds import unit_of

if TYPE_CHECKING:
    from .controller import RunResult


class PlainLive:
    """One line per second: elapsed, requests/s, p50 and p99 of that second, failures."""

    def __init__(self, out: TextIO, duration: float | None) -> None:
        self.out = out
        self.duration = duration

    def interval(self, interval: Interval, stats: RunStats) -> None:
        part = aggregate(interval.targets)
        length = max(interval.end - interval.start, 1e-9)
        p50, p99 = percentiles_ns(part.latency, (50.0, 99.0))
        of = f"/{self.duration:g}s" if self.duration else "s"
        self.out.write(
            f"[{interval.end:6.1f}{of}] {part.requests / length:10.1f} req/s"
            f"  p50 {p50 / 1e6:8.3f} ms  p99 {p99 / 1e6:8.3f} ms"
            f"  failures {part.failure_count}\n")
        self.out.flush()

    def event(self, text: str) -> None:
        self.out.write(f"{text}\n")
        self.out.flush()


def print_summary(result: RunResult, config: RunConfig, out: TextIO) -> None:
    """The stats table as the terminal shows it, then the report folder."""
    rows = stats_rows(config, result.stats.totals, result.stats.elapsed)
    header = ["Type", "Name", "Requests", "Failures", "Req/s", "p50 ms", "p95 ms", "p99 ms", "Max ms"]
    table = [[r[0], r[1], r[2], r[3], r[9], r[11], r[16], r[18], r[7]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    line = "  ".join
    out.write(line(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))) + "\n")
    for row in table:
        out.write(line(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + "\n")
    for t in result.stats.totals:
        for kind, count in sorted(t.failures.items(), key=lambda kv: -kv[1]):
            out.write(f"  {t.name}: {count} {kind}\n")
    for o in result.thresholds:
        mark = "pass" if o.passed else "FAIL"
        out.write(f"threshold {mark}: {o.threshold.text}  (measured {o.measured:g} {unit_of(o.threshold)})\n")
    if result.aborted:
        out.write(f"aborted: {result.aborted}\n")
    for problem in result.problems:
        out.write(f"problem: {problem}\n")
    out.write(f"ran {result.stats.elapsed:.1f} s with {len(result.workers)} workers; "
              f"reports in {result.run_dir}\n")
    out.flush()
