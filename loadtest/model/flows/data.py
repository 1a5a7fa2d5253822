"""A flow's data file: a CSV with a header row, dealt to the virtual users a row per pass.

    data: users.csv        # relative to the config file
    data_mode: unique      # the default; or cycle

Every worker deals from its own slice of the rows (worker k of W takes rows
k, k + W, k + 2W, ...), so two workers never hand out the same row.

- `unique` (the default): a row is held by one virtual user at a time. A user
  takes the next free row of its worker's slice when it starts a pass of the
  flow and gives it back when the pass ends, so the rows go round in turn.
  A closed-model target needs at least as many rows in each worker's slice as
  that worker has users at peak: `check_unique` says so before the run. In the
  open model a pass that finds every row held waits for one (its latency, from
  when it was due, shows the wait).
- `cycle`: every pass takes the next row of the slice, whether or not another
  user holds it; any number of rows serves any number of users.

The file is read whole when the config is loaded (its rows travel to the
workers in their plans), so it is meant for thousands of rows, not millions.
"""

from __future__ import annotations

import csv
from collections import deque
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_MODE = "unique"
DATA_MODES = ("unique", "cycle")
MAX_DATA_BYTES = 64 * 1024 * 1024  # a data file bigger than this is refused


class DataError(ValueError):
    """A data file that cannot be used: one sentence (without the field's location)."""


@dataclass(frozen=True)
class DataTable:
    """A data file as read: its columns and its rows (each a tuple of the columns' values)."""

    path: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def slice_for(self, worker: int, workers: int) -> list[dict[str, str]]:
        """Worker `worker`'s rows, as mappings by column."""
        return [dict(zip(self.columns, row)) for row in self.rows[worker::workers]]


def read_data(path: Path) -> DataTable:
    """Read a CSV data file with a header row; raises DataError with one sentence."""
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise DataError(f"{path} is {size:,} bytes; a data file may have at most {MAX_DATA_BYTES:,}")
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise DataError(f"{path} has no header row (the first line names the columns)")
    columns = tuple(cell.strip() for cell in lines[0])
    if any(not c for c in columns) or len(set(columns)) != len(columns):
        raise DataError(f"{path}: every column needs a name of its own, got {', '.join(map(repr, columns))}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue  # a blank line
        if len(line) != len(columns):
            raise DataError(f"{path} line {number} has {len(line)} fields, the header has {len(columns)}")
        rows.append(tuple(line))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return DataTable(str(path), columns, tuple(rows))


def check_unique(table: DataTable, users: int, workers: int) -> str | None:
    """Why `users` virtual users (at peak, in all) over `workers` workers cannot each hold a row of their own (a
    sentence), or None."""
    for k in range(workers):
        have = len(table.rows[k::workers])
        need = users // workers + (1 if k < users % workers else 0)
        if have < need:
            return (f"data_mode unique gives each virtual user a row of its own, but {len(table.rows)} rows over "
                    f"{workers} worker(s) leave {have} for worker {k}'s {need} users at peak; add rows, "
                    f"lower the users, or use data_mode: cycle")
    return None


class RowDealer:
    """One worker's rows, dealt to its virtual users a pass at a time (see the module's docstring)."""

    __slots__ = ("_free", "_unique")

    def __init__(self, rows: list[dict[str, str]], mode: str) -> None:
        self._free: deque[dict[str, str]] = deque(rows)
        self._unique = mode == "unique"

    def take(self) -> dict[str, str] | None:
        """The row for the pass that starts now; None if every row of a unique slice is held."""
        free = self._free
        if not free:
            return None
        if self._unique:
            return free.popleft()
        free.rotate(-1)
        return free[-1]

    def give_back(self, row: dict[str, str]) -> None:
        """The pass that held `row` ended (unique mode: the row is free again)."""
        if self._unique:
            self._free.append(row)
