"""A capacity search's files: capacity.json (the answer and every step) and capacity.csv (one row per step).

Their keys and columns are the run folder contract's (`run_files.CAPACITY_KEYS`, `CAPACITY_STEP_KEYS`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.core.capacity import SearchResult, StepResult
from loadtest.core.run_files import CAPACITY_CSV_NAME, CAPACITY_KEYS, CAPACITY_NAME, CAPACITY_STEP_KEYS
from loadtest.core.thresholds import Threshold
from loadtest.outputs.reports import csv_text, write_atomic


def capacity_document(result: SearchResult, slos: Sequence[Threshold], steps: Sequence[StepResult]) -> dict[str, Any]:
    """capacity.json's content."""
    document = {"max_rate": round(result.max_rate, 3), "limited_by": result.limited_by,
                "slo": [s.text for s in slos], "steps": [s.as_dict() for s in steps]}
    assert tuple(document) == CAPACITY_KEYS
    return document


def write_capacity_files(run_dir: Path, document: dict[str, Any]) -> None:
    """capacity.json and capacity.csv into the run folder."""
    write_atomic(run_dir / CAPACITY_NAME, json.dumps(document, indent=2) + "\n")
    rows = [[_cell(step.get(k)) for k in CAPACITY_STEP_KEYS] for step in document["steps"]]
    write_atomic(run_dir / CAPACITY_CSV_NAME, csv_text(list(CAPACITY_STEP_KEYS), rows))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
