"""history.csv as an output: one row per second per target and Aggregated, flushed as it goes."""

from __future__ import annotations

from loadtest.core.run_files import HISTORY_NAME
from loadtest.model.run_result import Frame, RunResult
from loadtest.outputs.base import Output, RunStarted
from loadtest.outputs.reports import HistoryWriter


class HistoryOutput(Output):
    """Writes each merged second as it comes (see `reports.HistoryWriter` for the rows)."""

    def __init__(self) -> None:
        self._writer: HistoryWriter | None = None
        self._started = 0.0

    def start(self, run: RunStarted) -> None:
        self._writer = HistoryWriter(run.run_dir / HISTORY_NAME, run.config)
        self._started = run.started

    def add(self, frame: Frame) -> None:
        assert self._writer is not None, "add before start"
        self._writer.write(frame.interval, self._started)

    def stop(self, result: RunResult | None) -> None:
        if self._writer is not None:
            self._writer.close()
