"""What an output is: one consumer of a run's merged figures, in the manner of k6's output.Output.

The controller holds a list of outputs and never asks which it holds. Each is started once the
load starts (`start`, with the run's `RunStarted`), given every merged interval in order
(`add`: never called concurrently, and it must not block: an output that writes somewhere slow
buffers and flushes on its own time), and stopped with the run's result (`stop`; None when the
run failed before it had one). Abilities beyond these are small separate methods an output may
have, as k6's `WithThresholds`: `event(text)` takes the run's event lines (a server listening, a
worker lost, a verdict). Adding an output is adding a file here and putting it in the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from loadtest.model.config import RunConfig
from loadtest.model.run_result import Frame, RunResult


@dataclass(frozen=True)
class RunStarted:
    """What an output is started with: the run as it begins its load."""

    config: RunConfig
    run_dir: Path
    started: float  # wall clock of the load's start
    workers: int


class Output:
    """The core interface; the defaults do nothing, so an output overrides only what it uses."""

    def start(self, run: RunStarted) -> None:
        """The load starts now."""

    def add(self, frame: Frame) -> None:
        """One merged interval, in order."""

    def stop(self, result: RunResult | None) -> None:
        """The run ended with `result` (None: it failed before it had one). Called once, for every output started."""


@runtime_checkable
class WithEvents(Protocol):
    """An output that also takes the run's event lines."""

    def event(self, text: str) -> None: ...


class Callbacks(Output):
    """A library caller's two functions as an output: `on_interval(frame)` each interval, `on_event(text)`."""

    def __init__(self, on_interval: object = None, on_event: object = None) -> None:
        self._interval, self._event = on_interval, on_event

    def add(self, frame: Frame) -> None:
        if callable(self._interval):
            self._interval(frame)

    def event(self, text: str) -> None:
        if callable(self._event):
            self._event(text)


class Outputs:
    """The run's outputs, fed in their order: started once, each interval added, stopped once."""

    def __init__(self, outputs: Sequence[Output]) -> None:
        self.outputs = list(outputs)
        self._stopped = False

    def start(self, run: RunStarted) -> None:
        for output in self.outputs:
            output.start(run)

    def add(self, frame: Frame) -> None:
        for output in self.outputs:
            output.add(frame)

    def event(self, text: str) -> None:
        for output in self.outputs:
            if isinstance(output, WithEvents):
                output.event(text)

    def stop(self, result: RunResult | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        for output in self.outputs:
            output.stop(result)
