"""What a run shows on the terminal while it lasts, and the summary after.

On a terminal: a progress bar of elapsed against duration and a table
redrawn each second (per target requests/s, p50, p95, p99 and failures of
that second; per worker CPU; machine CPU), with warnings printed above it.
Anywhere else (CI logs, pipes): one plain line per second.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from loadtest.model.config import RunConfig
from loadtest.outputs.base import Output
from loadtest.outputs.reports import LOCUST_NO_LATENCY, run_outcome, stats_rows
from loadtest.core.run_files import (AGGREGATED, NO_FIGURE, OPEN_MODEL_MEANING, OPEN_MODEL_TYPES, STATS_HEADER,
                                     open_model_lateness)
from loadtest.core.stats import aggregate, percentiles_ns
from loadtest.core.verdicts import NO_CONDITION_FOUND, WORKER_SATURATED_PERCENT
from loadtest.core.thresholds import CANCELLED

if TYPE_CHECKING:
    from loadtest.model.run_result import Frame, RunResult


MISSING = "—"  # a figure that does not exist, such as the latency of a second in which nothing got a response
SUMMARY_COLUMNS = {  # the terminal's summary table: its heading, and the stats.csv column it shows
    "Type": "Type", "Name": "Name", "Requests": "Request Count", "Failures": "Failure Count", "Req/s": "Requests/s",
    "p50 ms": "50% ms", "p95 ms": "95% ms", "p99 ms": "99% ms", "Max ms": "Max Response Time",
}


def _latency_ms(hist: Any, percentiles: tuple[float, ...]) -> list[str]:
    """Percentiles in ms for the live view, or "—" each when the histogram has no samples."""
    if not hist.get_total_count():
        return [MISSING] * len(percentiles)
    return [f"{v / 1e6:.3f}" for v in percentiles_ns(hist, percentiles)]


def _cpu(values: list[float | None]) -> str:
    return " ".join(f"{v:.0f}%" if v is not None else "-" for v in values)


class PlainLive:
    """One line per second: elapsed, requests/s, p50 and p99 of that second, failures, CPU."""

    def __init__(self, out: TextIO, duration: float | None) -> None:
        self.out = out
        self.duration = duration

    def interval(self, frame: Frame) -> None:
        interval = frame.interval
        part = aggregate(interval.targets)
        length = max(interval.end - interval.start, 1e-9)
        p50, p99 = _latency_ms(part.latency, (50.0, 99.0))
        of = f"/{self.duration:g}s" if self.duration else "s"
        machine = f" machine {frame.machine_cpu:.0f}%" if frame.machine_cpu is not None else ""
        self.out.write(
            f"[{interval.end:6.1f}{of}] {part.requests / length:10.1f} req/s"
            f"  p50 {p50:>8} ms  p99 {p99:>8} ms"
            f"  failures {part.failure_count}  cpu {_cpu(frame.worker_cpu)}{machine}\n")
        self.out.flush()

    def event(self, text: str) -> None:
        self.out.write(f"{text}\n")
        self.out.flush()

    def close(self) -> None:
        pass


class RichLive:
    """A progress bar and a table redrawn each second, for a terminal."""

    def __init__(self, config: RunConfig, duration: float | None, out: TextIO = sys.stdout) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn

        self.config = config
        self.duration = duration
        self.console = Console(file=out)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                                 console=self.console)
        total = duration if duration else None
        self.task = self.progress.add_task(config.name, total=total, done=self._done(0.0, 0))
        self.live = Live(self.progress, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def interval(self, frame: Frame) -> None:
        from rich.console import Group
        from rich.table import Table

        interval = frame.interval
        length = max(interval.end - interval.start, 1e-9)
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("Target", "Type", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures"):
            table.add_column(column, justify="left" if column in ("Target", "Type") else "right")
        rows = list(zip(self.config.targets, interval.targets))
        for target, part in [*rows, (None, aggregate(interval.targets))]:
            p50, p95, p99 = _latency_ms(part.latency, (50.0, 95.0, 99.0))
            failures = str(part.failure_count) if not part.failure_count else f"[red]{part.failure_count}[/red]"
            table.add_row(part.name if target is not None else f"[bold]{AGGREGATED}", part.type,
                          f"{part.requests / length:,.0f}", p50, p95, p99, failures)
        hot = [v for v in frame.worker_cpu if v is not None and v > WORKER_SATURATED_PERCENT]
        cpu = _cpu(frame.worker_cpu)
        machine = f"{frame.machine_cpu:.0f}%" if frame.machine_cpu is not None else "-"
        line = f"workers CPU {'[red]' if hot else ''}{cpu}{'[/red]' if hot else ''}   machine CPU {machine}"
        requests = frame.stats.aggregated().requests
        done = self._done(interval.end, requests)
        if self.progress.tasks[0].total:
            self.progress.update(self.task, completed=min(interval.end, self.progress.tasks[0].total), done=done)
        else:
            self.progress.update(self.task, completed=requests, done=done)
        self.live.update(Group(self.progress, table, line), refresh=True)

    def _done(self, elapsed: float, requests: int) -> str:
        """How far the run is: `3.0 s of 10 s`, or `1,200 of 5,000 requests` for a run that stops at a count."""
        if self.duration:
            return f"{elapsed:.1f} s of {self.duration:g} s"
        return f"{requests:,} of {self.config.requests or 0:,} requests"

    def event(self, text: str) -> None:
        style = "bold yellow" if text.startswith("warning") else None
        self.console.print(text, style=style, markup=False, highlight=False)

    def close(self) -> None:
        self.live.stop()


def print_summary(result: RunResult, config: RunConfig, out: TextIO) -> None:
    """The stats table as the terminal shows it, verdicts and thresholds, then the report folder."""
    rows = [dict(zip(STATS_HEADER, r)) for r in stats_rows(config, result.stats.totals, result.stats.elapsed)]
    header = list(SUMMARY_COLUMNS)
    table = [[_summary_cell(r, column) for column in SUMMARY_COLUMNS.values()] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    line = "  ".join
    out.write(line(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))) + "\n")
    for row in table:
        out.write(line(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + "\n")
    if any(r["Type"] in OPEN_MODEL_TYPES for r in rows):
        out.write(f"{OPEN_MODEL_MEANING}\n")
        for t in result.stats.totals:
            if t.lateness.get_total_count():
                late50, late99 = (v / 1e6 for v in percentiles_ns(t.lateness, (50, 99)))
                corrected = percentiles_ns(t.latency, (50,))[0] / 1e6 if t.latency.get_total_count() else None
                uncorrected = percentiles_ns(t.uncorrected, (50,))[0] / 1e6 if t.uncorrected.get_total_count() else None
                out.write(f"  {open_model_lateness(t.name, late50, late99, corrected, uncorrected)}\n")
    for t in result.stats.totals:
        for kind, count in sorted(t.failures.items(), key=lambda kv: -kv[1]):
            said = f" ({CANCELLED_MEANING})" if kind == CANCELLED else ""
            out.write(f"  {t.name}: {count:,} {kind}{said}\n")
    for t in result.stats.totals:
        if t.backoffs:
            out.write(f"  {t.name}: users backed off {t.backoffs:,} time{'s' if t.backoffs != 1 else ''} "
                      f"({t.backoff_s:,.1f} s in all) after failed connects or passes (failure_backoff: "
                      f"{config.failure_backoff:g}s at most)\n")
    for server in result.servers:
        cost: dict[str, Any] = server.get("cost") or {}
        if cost.get("cpu_seconds_per_1000") is not None:
            per_conn = cost.get("rss_bytes_per_connection")
            memory = f", {per_conn / 1024:.1f} KiB RSS per connection" if per_conn else ""
            out.write(f"server {server['name']}: {cost['cpu_seconds_per_1000']:.3f} CPU s per 1,000 served{memory}\n")
    for verdict in result.verdicts:
        out.write(f"verdict: {verdict['what']}\n")
    if not result.verdicts:
        out.write(f"{NO_CONDITION_FOUND}\n")
    for o in result.thresholds:
        mark = "pass" if o.passed else "FAIL"
        counted = "requests" if o.threshold.target is None else "passes"
        default = f"  [the default without thresholds: no failed {counted}]" if o.default else ""
        measured = o.measured_text
        if o.threshold.figure == "failed":  # the table's Failures count them; say why this figure does not
            t = result.stats.aggregated() if o.threshold.target is None else \
                result.stats.totals[result.stats.names.index(o.threshold.target)]
            if t.failures.get(CANCELLED):
                measured += f"; {t.failures[CANCELLED]:,} {CANCELLED} not counted"
        out.write(f"threshold {mark}: {o.threshold.text}  (measured {measured}){default}\n")
    if result.aborted:
        out.write(f"aborted: {result.aborted}\n")
    for shortfall in result.shortfalls:
        out.write(f"FAILED: {shortfall}\n")
    for problem in result.problems:
        out.write(f"problem: {problem}\n")
    count = len(result.workers)
    out.write(f"ran {result.stats.elapsed:.1f} s with {count} worker{'' if count == 1 else 's'}; "
              f"reports in {result.run_dir}\n")
    out.write(f"{run_outcome(result)}\n")
    out.flush()


def _summary_cell(row: dict[str, str], column: str) -> str:
    """A stats.csv cell as the terminal shows it: a row without latency samples shows "—", not Locust's 0s;
    counts and rates with thousands separators, as the live view shows them."""
    no_latency = row["50%"] == NO_FIGURE
    if no_latency and (column in LOCUST_NO_LATENCY or row[column] == NO_FIGURE):
        return MISSING
    if column in _COUNT_COLUMNS:
        return f"{int(row[column]):,}"
    if column == "Requests/s":
        return f"{float(row[column]):,.1f}"
    return row[column]


_COUNT_COLUMNS = ("Request Count", "Failure Count")
# What a cancelled request is, wherever the terminal names them
CANCELLED_MEANING = "in flight when the run was stopped: counted in Failures, not held against the target"


class TerminalOutput(Output):
    """The terminal as an output: the live view each second, the run's event lines, and the summary at the end.

    `quiet`: no live view and no table; the report folder's path alone (unless `path` is False, as with
    --json, whose stdout carries summary.json), and the run's problems on stderr. A line that starts
    with "error:" (the run has failed: a server died) goes to stderr at once, whatever else is shown.
    """

    def __init__(self, config: RunConfig, out: TextIO, quiet: bool = False, path: bool = True) -> None:
        self.config, self.out, self.quiet, self.path = config, out, quiet, path
        self.view: PlainLive | RichLive | None = None
        if not quiet:
            self.view = RichLive(config, config.duration, out) if out.isatty() else PlainLive(out, config.duration)

    def add(self, frame: Frame) -> None:
        if self.view is not None:
            self.view.interval(frame)

    def event(self, text: str) -> None:
        if text.startswith("error:"):
            sys.stderr.write(f"loadtest: {text}\n")
            sys.stderr.flush()
        elif self.view is not None:
            self.view.event(text)

    def stop(self, result: RunResult | None) -> None:
        if self.view is not None:
            self.view.close()
        if result is None:
            return
        if not self.quiet:
            print_summary(result, self.config, self.out)
            return
        if self.path:
            sys.stdout.write(f"{result.run_dir}\n")
            sys.stdout.flush()
        for problem in result.problems:
            sys.stderr.write(f"problem: {problem}\n")
        sys.stderr.flush()
