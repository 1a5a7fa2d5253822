"""A flow target's spec and its stats rows: what the controller knows of a flow (nothing here imports gevent).

A flow target has rows of its own: the flow as a whole (Type ``FLOW``; one
request of it is one pass, its latency the whole journey), then one per step
(``shop/login``, Type the step's method). The flow's row is not part of the
Aggregated row, which adds up requests sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loadtest.model.flows.data import DEFAULT_DATA_MODE, DataTable
from loadtest.model.flows.source import OTHER_ROW, REQUEST_TYPE, script_rows
from loadtest.core.run_files import FLOW_TYPE
from loadtest.model.flows.steps import Step, step_rows

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
