"""A run folder: made for a run (exclusively), and read back: its summary, CSV files and histograms.

Each run gets a folder of its own: `make_run_folder` creates it with os.mkdir,
never reusing one (two runs of one config started in the same second get
`<name>-<stamp>` and `<name>-<stamp>-2`), and refuses an `--out` folder that
already holds files unless told to overwrite them.

A run writes summary.json, history.csv, failures.csv, resources.csv and
histograms.json into one folder; this module reads them back for the report
and for comparing runs. Only summary.json is required: a missing optional file
reads as empty, and so does a CSV file whose text does not parse. From the
rows it derives the numbers the charts plot (each target's per-second series
and its latency percentile spectrum) and draws nothing itself.

A run folder may come from anywhere (an archive, a CI artifact), so reading one
is bounded: a file that is not a regular file (a FIFO, a device, a symlink to
/dev/zero) is refused before a byte is read, a file over its size cap is
refused, an encoded histogram whose header or decompressed size exceeds what
any run writes is refused before it is decompressed whole, and a summary
number out of any range a run writes (NaN, Infinity, a 5000-digit integer) is
refused naming its field. Each refusal is a RunFolderError of one sentence.

    from loadtest.outputs.run_folder import load_run
    run = load_run(Path("reports/sites-20260101-120000"))
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.core.run_files import (
    AGGREGATED,
    FAILURES_NAME,
    HISTOGRAMS_NAME,
    HISTORY_NAME,
    RESOURCES_NAME,
    RUN_FILES,
    SUMMARY_NAME,
    STATS_NAME,
    LOCUST_STATS_HEADER,
)
from loadtest.outputs.run_folder_checks import (  # noqa: F401 - RunFolderError, MAX_FIGURE, check_histogram: read from here too
    _HEADERS,
    MAX_CSV_BYTES,
    MAX_FIGURE,
    MAX_HISTOGRAMS_BYTES,
    MAX_SUMMARY_BYTES,
    RunFolderError,
    _check_figures,
    _check_header,
    _check_numbers,
    _check_shape,
    _parse_int,
    _refuse_header,
    check_histogram,
    read_capped,
)

OPTIONAL_FILES = (HISTORY_NAME, FAILURES_NAME, RESOURCES_NAME, HISTOGRAMS_NAME)  # read as empty when missing
MAX_FOLDER_SUFFIX = 1000  # <name>-<stamp>-2 … -1000: past that, something is making folders in a loop
# Size caps, far above what runs write (a 10-target run's summary.json is ~30 KB; its history.csv grows
# ~3 KB a second, so 64 MiB is ~6 hours; a 16-worker run's resources.csv ~3 KB a second): bigger files are
# damage or hostile, and reading them whole would cost gigabytes.
class CsvRow(Mapping[str, str]):
    """One row of a run folder's CSV file, read-only, by column name (as csv.DictReader's dicts are).

    A tuple of values beside the file's one shared column index, the values interned per file (percentiles,
    names and stamps repeat from row to row): a long history.csv's rows cost about a third of as many
    dicts. A short row reads "" in the columns it lacks.
    """

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: tuple[str, ...]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, column: str) -> str:
        i = self._index[column]
        return self._values[i] if i < len(self._values) else ""

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, as read."""

    path: Path
    summary: dict[str, Any]
    history: list[CsvRow]
    failures: list[CsvRow]
    resources: list[CsvRow]
    histograms: dict[str, str]  # target name: its whole-run latency HdrHistogram, encoded

    @property
    def name(self) -> str:
        return str(self.summary.get("name", self.path.name))

    def target_summaries(self) -> list[dict[str, Any]]:
        """Each target's summary, then the aggregate's (named Aggregated)."""
        targets = [t for t in self.summary.get("targets", []) if isinstance(t, dict)]
        agg = self.summary.get("aggregated")
        if isinstance(agg, dict):
            targets.append({**agg, "name": AGGREGATED, "type": ""})
        return targets

    @property
    def single_target(self) -> bool:
        """One target only: its Aggregated figures repeat it, and charts leave them out."""
        return len(self.summary.get("targets") or []) == 1


def load_run(path: Path, files: Collection[str] = OPTIONAL_FILES) -> RunFolder:
    """Read a run folder: summary.json, which is required, and those of the optional `files` it has.

    Raises RunFolderError (one sentence) for a folder that is not a run folder or holds a file that is
    not a regular file, is over its size cap, or holds an out-of-range value.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: is not a folder")
    summary_path = path / SUMMARY_NAME
    data = read_capped(summary_path, MAX_SUMMARY_BYTES)
    if data is None:
        raise RunFolderError(f"{path}: is not a run folder (it has no summary.json)")
    try:
        summary = json.loads(data.decode("utf-8"), parse_int=_parse_int, parse_constant=float)
    except UnicodeDecodeError as e:
        raise RunFolderError(f"{summary_path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{summary_path}: is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise RunFolderError(f"{summary_path}: is nested too deeply to be a loadtest summary") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("targets"), list):
        raise RunFolderError(f"{summary_path}: is not a loadtest summary (it has no list of targets)")
    _check_numbers(summary, summary_path)
    _check_shape(summary, summary_path)
    _check_figures(summary, summary_path)
    _check_header(path / STATS_NAME, LOCUST_STATS_HEADER)  # no reader needs stats.csv, but it must be this run's
    histograms: dict[str, str] = {}
    hist_path = path / HISTOGRAMS_NAME
    raw_histograms = read_capped(hist_path, MAX_HISTOGRAMS_BYTES) if HISTOGRAMS_NAME in files else None
    if raw_histograms is not None:
        try:
            raw = json.loads(raw_histograms.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
            raw = {}  # the spectrum falls back to the summary's percentiles
        wanted = {str(t.get("name", "")) for t in summary["targets"]} | {AGGREGATED}
        if isinstance(raw, dict):  # {name: {"latency": encoded, ...}}, or {name: encoded}
            for k, v in raw.items():
                encoded = v.get("latency") if isinstance(v, dict) else v
                if isinstance(encoded, str) and str(k) in wanted:  # only what a chart can show is decoded
                    check_histogram(encoded, f"{hist_path}: {k!r}")
                    histograms[str(k)] = encoded

    def csv_file(name: str) -> list[dict[str, str]]:
        return _read_csv(path / name, _HEADERS[name]) if name in files else []

    return RunFolder(path, summary, csv_file(HISTORY_NAME), csv_file(FAILURES_NAME), csv_file(RESOURCES_NAME),
                     histograms)


def make_run_folder(path: Path, *, exact: bool, overwrite: bool = False) -> tuple[Path, bool]:
    """Make this run's folder and return it, with whether this call created it.

    `exact` (from --out): `path` itself, which may exist if it is an empty folder; a folder that holds
    files is refused unless `overwrite`, and then the files a run writes (RUN_FILES) are removed from it
    first. An existing folder is claimed by creating its history.csv exclusively (O_EXCL), so that of two
    runs given one empty --out folder at once, the second is refused. Otherwise `path` is a name to make
    fresh: if it exists, `path-2`, `path-3`, … are tried, each with an exclusive os.mkdir, so concurrent
    runs never share a folder. Raises RunFolderError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"{path.parent}: cannot be made ({e.strerror or e})") from None
    for k in range(1, 2 if exact else MAX_FOLDER_SUFFIX + 1):
        candidate = path if k == 1 else path.with_name(f"{path.name}-{k}")
        try:
            os.mkdir(candidate)
            return candidate, True
        except FileExistsError:
            continue
        except OSError as e:
            raise RunFolderError(f"{candidate}: cannot be made ({e.strerror or e})") from None
    if not exact:
        raise RunFolderError(f"{path}: it and {path.name}-2 to {path.name}-{MAX_FOLDER_SUFFIX} all exist already; "
                             "remove some or give --out")
    if not path.is_dir():
        raise RunFolderError(f"{path}: exists and is not a folder")
    try:
        held = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise RunFolderError(f"{path}: cannot be read ({e.strerror or e})") from None
    if held and not overwrite:
        raise RunFolderError(f"{path}: is not empty (it holds {held[0]}{' and more' if len(held) > 1 else ''}); "
                             "give a new or empty folder, or add --overwrite to replace its run files")
    for name in RUN_FILES if held else ():
        try:
            (path / name).unlink(missing_ok=True)
        except OSError as e:
            raise RunFolderError(f"{path / name}: cannot be replaced ({e.strerror or e})") from None
    try:
        os.close(os.open(path / HISTORY_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise RunFolderError(f"{path}: another run has just started writing into it") from None
    except OSError as e:
        raise RunFolderError(f"{path / HISTORY_NAME}: cannot be made ({e.strerror or e})") from None
    return path, False


def release_run_folder(path: Path, made: bool) -> None:
    """Undo make_run_folder for a run that failed before it began: remove the empty history.csv that
    claimed the folder, and the folder itself if this run made it and nothing else is in it."""
    try:
        if (path / HISTORY_NAME).stat().st_size == 0:
            (path / HISTORY_NAME).unlink()
    except OSError:
        pass  # not there, or not empty: either way it is no longer this run's to remove
    if made:
        try:
            path.rmdir()
        except OSError:
            pass


def write_page(path: Path, text: str) -> Path:
    """Write an HTML page whole or not at all; a path that cannot take it is a RunFolderError."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{path}: is a folder; give the path of the HTML file to write")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise RunFolderError(f"{path}: cannot be written ({e.strerror or e})") from None
    return path


def _read_csv(path: Path, expected: Sequence[str] = ()) -> list[CsvRow]:
    """A CSV file's rows; [] if it is missing or its text does not parse (RunFolderError if not readable, or
    if its header does not begin with `expected`: some other file in its place)."""
    data = read_capped(path, MAX_CSV_BYTES)
    if data is None:
        return []
    try:
        lines = data.decode("utf-8").splitlines(keepends=True)
        del data
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            return []
        _refuse_header(path, header, expected)
        index = {column: i for i, column in reversed(list(enumerate(header)))}  # a repeated name: its first
        seen: dict[str, str] = {}
        return [CsvRow(index, tuple(seen.setdefault(v, v) for v in row)) for row in reader if row]
    except (UnicodeDecodeError, csv.Error):
        return []


def as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and abs(f) <= MAX_FIGURE else None


