"""In a worker: the factory of a flow target's virtual users (YAML steps or a Python function)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from loadtest.model.flows.data import RowDealer
from loadtest.engine.flows.runner import FlowRows, FlowSession, FlowShared, yaml_flow_factory
from loadtest.engine.flows.script import script_flow_factory
from loadtest.model.flows.spec import FlowSpec, flow_rows
from loadtest.model.flows.template import resolve_servers


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
            base = resolve_servers(base, addresses)
        return script_flow_factory(name, Path(spec.script), spec.function or "", base, shared)
    return yaml_flow_factory(name, spec.steps, rows, addresses, shared)
