"""A flow target as validated, its stats rows, and the factory of its virtual users in a worker.

A flow target has rows of its own: the flow as a whole (Type ``FLOW``; one
request of it is one pass, its latency the whole journey), then one per step
(``shop/login``, Type the step's method). The flow's row is not part of the
Aggregated row, which adds up requests sent (`steps.FLOW_TYPE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .data import DEFAULT_DATA_MODE, DataTable, RowDealer
from .runner import FlowRows, FlowSession, FlowShared, yaml_flow_factory
from .script import OTHER_ROW, REQUEST_TYPE, script_flow_factory, script_rows
from .steps import FLOW_TYPE, Step, step_rows

DEFAULT_FLOW_TIMEOUT_S = 10.0  # each request's, as a plain target's


@dataclass(frozen=True)
class FlowSpec:
    """What a flow target runs: YAML `steps`, or the function `function` of the Python file `script`."""

    steps: tuple[Step, ...] = ()
    script: str | None = None  # an absolute path (the config gives it relative to itself)
    function: str | None = None
    base_url: str | None = None  # a script's paths are joined to it
    data: DataTable | None = None
    data_mode: str = DEFAULT_DATA_MODE
    timeout: float = DEFAULT_FLOW_TIMEOUT_S
    verify_tls: bool = True
    script_rows: tuple[tuple[str, str], ...] = field(default=())  # a script's rows, read from its source


def flow_rows(name: str, spec: FlowSpec) -> list[tuple[str, str]]:
    """A flow target's stats rows, (name, Type): the flow's own first, then its steps'."""
    if spec.script is None:
        return [(name, FLOW_TYPE), *step_rows(name, spec.steps)]
    return [(name, FLOW_TYPE), *((f"{name}/{row}", kind) for row, kind in spec.script_rows)]


def scan_script(path: Path) -> tuple[tuple[str, str], ...]:
    """A script's rows as its source shows them (the `other` row last, when some request's name is not literal)."""
    rows, other = script_rows(path)
    if other and all(name != OTHER_ROW for name, _ in rows):
        rows.append((OTHER_ROW, REQUEST_TYPE))
    return tuple(rows)


def flow_factory(name: str, spec: FlowSpec, recorders: list[Any], worker: int, workers: int,
                 addresses: Mapping[str, str], deadlines: Any, budget: Any,
                 tls: Callable[[], Any]) -> Callable[[], FlowSession]:
    """In a worker: the function that makes one virtual user of the flow. `recorders` are the worker's recorders
    of the flow's rows, in `flow_rows` order. Raises OSError if a host does not resolve, ScriptError if the
    script cannot be imported."""
    names = [row for row, _ in flow_rows(name, spec)]
    rows = FlowRows(recorders[0], dict(zip(names[1:], recorders[1:])))
    dealer = None
    if spec.data is not None:
        mine = spec.data.slice_for(worker, workers)
        if not mine and spec.data_mode == "cycle":  # fewer rows than workers: cycling may share them
            mine = spec.data.slice_for(0, 1)
        dealer = RowDealer(mine, spec.data_mode)
    shared = FlowShared(rows, spec.timeout, deadlines, budget, tls, dealer, worker, workers, seed=worker * 7919 + 17)
    if spec.script is not None:
        base = spec.base_url
        if base is not None:
            from .template import resolve_servers

            base = resolve_servers(base, addresses)
        return script_flow_factory(name, Path(spec.script), spec.function or "", base, shared)
    return yaml_flow_factory(name, spec.steps, rows, addresses, shared)
