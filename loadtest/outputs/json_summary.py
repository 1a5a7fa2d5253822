"""--json as an output: summary.json, as written, on stdout once the run ends (and nothing else on stdout)."""

from __future__ import annotations

import sys
from typing import TextIO

from loadtest.core.run_files import SUMMARY_NAME
from loadtest.model.run_result import RunResult
from loadtest.outputs.base import Output


class JsonSummary(Output):
    """Put after the report files' output: it prints the summary.json they wrote."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def stop(self, result: RunResult | None) -> None:
        if result is None:
            return
        text = (result.run_dir / SUMMARY_NAME).read_text(encoding="utf-8")
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()
