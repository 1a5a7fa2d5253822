"""What a run folder's files must hold to be read: the checks that refuse a damaged summary, histogram or CSV.

Each refusal is a `RunFolderError`: one sentence naming the file and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import errno
import json
import math
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.core.run_files import (
    FAILURES_NAME,
    HISTORY_NAME,
    RESOURCES_NAME,
    LOCUST_FAILURES_HEADER,
    LOCUST_HISTORY_HEADER,
    RESOURCES_HEADER,
)


MAX_SUMMARY_BYTES = 16 * 2**20
MAX_CSV_BYTES = 64 * 2**20
MAX_HISTOGRAMS_BYTES = 64 * 2**20
# One encoded HdrHistogram: what loadtest writes (1 ns to 1 h at 3 significant digits) has 33,792 counts and
# decompresses to at most ~300 KB; anything past these caps is refused before it is decompressed whole.
MAX_HISTOGRAM_COUNTS = 2**17
MAX_HISTOGRAM_PAYLOAD_BYTES = 2**20
MAX_INTEGER = 2**63  # an integer in summary.json at or beyond this is damage (no count or byte total gets there)
MAX_FIGURE = 1e15  # larger numbers in a run's files are damage, not measurements
REQUIRED_LATENCY_KEYS = ("p50", "p95", "p99", "p99.9")  # what compare compares, in every summary ever written


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; its message is one sentence."""


def read_capped(path: Path, cap: int) -> bytes | None:
    """A run folder file's bytes, or None if it does not exist.

    Refuses (RunFolderError) anything but a regular file, checked on the open descriptor so that neither a
    FIFO (whose open would wait for a writer: O_NONBLOCK) nor a device (/dev/zero never ends) is read, and a
    file over `cap` bytes, checked both by its size and by what is actually read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0) |
                     getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return None
        if e.errno == errno.ELOOP:  # a run writes its files itself: a link puts some other file in its place
            raise RunFolderError(f"{path}: is not a regular file (it is a symbolic link, to "
                                 f"{_link_target(path)}), so it is not read") from None
        raise RunFolderError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            raise RunFolderError(f"{path}: is not a regular file (it is {_kind(mode.st_mode)}), so it is not read")
        if mode.st_size > cap:
            raise RunFolderError(f"{path}: is {mode.st_size:,} bytes, over the {cap:,} bytes a run folder's "
                                 f"{path.name} may hold")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise RunFolderError(f"{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > cap:  # grew while being read
        raise RunFolderError(f"{path}: is over the {cap:,} bytes a run folder's {path.name} may hold")
    return data


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "somewhere"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


class _HugeInteger(float):
    """An integer literal too long to convert: stands in for it until _check_numbers names its field."""

    digits: int


def _parse_int(text: str) -> int | float:
    # int() of a 5000-digit literal raises ValueError (Python caps the conversion at 4300 digits), and a
    # long one below the cap is slow: neither is a figure any run writes, so it is only marked here.
    if len(text) > 20:
        huge = _HugeInteger("inf")
        huge.digits = len(text.lstrip("-"))
        return huge
    return int(text)


def _check_numbers(summary: Any, where: Path) -> None:
    """Refuse NaN, Infinity and integers of MAX_INTEGER or more anywhere in a summary, naming the field."""
    stack: list[tuple[str, Any]] = [("", summary)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{at}.{k}" if at else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{at}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, _HugeInteger):
            raise RunFolderError(f"{where}: {at} is out of range (an integer of {value.digits} digits)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise RunFolderError(f"{where}: {at} is out of range ({value})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INTEGER:
            raise RunFolderError(f"{where}: {at} is out of range ({value})")


# The HdrHistogram V2 wire format: base64 of an external header (cookie, length: two big-endian 32-bit
# words) and a zlib stream, which holds a 40-byte payload header and then the counts as varints.
_EXTERNAL_HEADER = struct.Struct(">ii")
_PAYLOAD_HEADER = struct.Struct(">iiiiqqd")
_MAX_ENCODED_CHARS = 4 * MAX_HISTOGRAM_PAYLOAD_BYTES // 3  # compressed counts are never longer than inflated


def check_histogram(encoded: str, where: str) -> None:
    """Refuse an encoded histogram that would cost more to decode than any run's histogram does.

    Decompresses at most MAX_HISTOGRAM_PAYLOAD_BYTES (a zlib bomb stops there) and checks the header's
    range and precision, which fix the size of the counts array that decoding allocates. A histogram that is
    merely garbage passes: decoding it fails and the spectrum falls back to the summary's percentiles.
    """
    if len(encoded) > _MAX_ENCODED_CHARS:
        raise RunFolderError(f"{where}: is an encoded histogram of {len(encoded):,} characters, more than any "
                             "run writes, so it is not decoded")
    try:
        raw = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        return
    inflate = zlib.decompressobj()
    try:
        payload = inflate.decompress(raw[_EXTERNAL_HEADER.size:], MAX_HISTOGRAM_PAYLOAD_BYTES + 1)
    except zlib.error:
        return
    if len(payload) > MAX_HISTOGRAM_PAYLOAD_BYTES:
        raise RunFolderError(f"{where}: is an encoded histogram that decompresses to over the "
                             f"{MAX_HISTOGRAM_PAYLOAD_BYTES:,} bytes any run writes, so it is not decoded")
    if len(payload) < _PAYLOAD_HEADER.size:
        return
    _, _, _, digits, lowest, highest, _ = _PAYLOAD_HEADER.unpack_from(payload)
    if not (1 <= digits <= 5 and 1 <= lowest and 2 * lowest <= highest) or \
            _counts_length(lowest, highest, digits) > MAX_HISTOGRAM_COUNTS:
        raise RunFolderError(f"{where}: is an encoded histogram whose range ({lowest} to {highest} at {digits} "
                             f"significant digits) is beyond what a run writes, so it is not decoded")


def _counts_length(lowest: int, highest: int, digits: int) -> int:
    """How many counts an HdrHistogram of this range and precision allocates (as hdrh computes it)."""
    sub_bucket_count = 2 ** (max(math.ceil(math.log2(2 * 10**digits)), 1))
    smallest_untrackable = sub_bucket_count << int(math.floor(math.log2(lowest)))
    buckets = 1
    while smallest_untrackable <= highest:
        if smallest_untrackable > (2**63 - 1) // 2:
            buckets += 1
            break
        smallest_untrackable <<= 1
        buckets += 1
    return (buckets + 1) * (sub_bucket_count // 2)


# What each CSV file's header begins with, in every run folder this tool wrote (the Locust columns have led since
# the first); a file that begins otherwise is some other file in its place, and is refused. failures.csv first
# led with Target and Message.
_HEADERS: dict[str, Sequence[str]] = {
    HISTORY_NAME: LOCUST_HISTORY_HEADER, RESOURCES_NAME: RESOURCES_HEADER[:3], FAILURES_NAME: (),
}


def _refuse_header(path: Path, header: list[str], expected: Sequence[str]) -> None:
    if path.name == FAILURES_NAME:
        ok = header[:4] == LOCUST_FAILURES_HEADER[:4] or header[:2] == ["Target", "Kind"]
    else:
        ok = header[:len(expected)] == list(expected)
    if not ok:
        shown = ",".join(header)[:60]
        raise RunFolderError(f"{path}: is not a loadtest {path.name} (its header begins {shown!r}), so it is not "
                             f"read")


def _check_header(path: Path, expected: Sequence[str]) -> None:
    """Refuse a file a reader does not otherwise read (stats.csv) when it is not this tool's."""
    data = read_capped(path, MAX_CSV_BYTES)
    if data is None:
        return
    first = data[:4096].decode("utf-8", "replace").splitlines()[:1]
    header = next(csv.reader(first), []) if first else []
    _refuse_header(path, header, expected)


def _check_figures(summary: dict[str, Any], where: Path) -> None:
    """Refuse a summary whose figures no run writes, naming the first: what report draws and compare compares
    must be the same numbers, so both refuse the same files with the same sentence.

    Each target (and aggregated) has a text name, counts and a rate from 0 to MAX_FIGURE, an error rate from 0
    to 1 (or null: no requests), and latency_ms, a mapping of figures from 0 to MAX_FIGURE (empty: no request
    got a response) that holds at least p50, p95, p99 and p99.9; each worker's CPU seconds are such a figure
    or null.
    """
    parts = [(f"targets[{i}]", t) for i, t in enumerate(summary["targets"])]
    if summary.get("aggregated") is not None:
        parts.append(("aggregated", summary["aggregated"]))
    for at, part in parts:
        if at != "aggregated" and not isinstance(part.get("name"), str):
            raise RunFolderError(f"{where}: {at}.name is not text (got {_shown(part.get('name'))})")
        for key in ("requests", "failures", "requests_per_s"):
            summary_figure(where, part, key, at)
        if part.get("error_rate", 0) is not None:
            summary_figure(where, part, "error_rate", at, high=1.0)
        if "latency_ms" not in part:
            raise RunFolderError(f"{where}: {at}.latency_ms is missing")
        latency = part["latency_ms"] or {}
        for key in latency:
            summary_figure(where, latency, key, f"{at}.latency_ms")
        if latency:
            for key in REQUIRED_LATENCY_KEYS:
                summary_figure(where, latency, key, f"{at}.latency_ms")
    for i, worker in enumerate(summary.get("workers") or []):
        if not isinstance(worker, dict):
            raise RunFolderError(f"{where}: workers[{i}] is not a mapping of fields")
        for key in ("cpu_user_s", "cpu_system_s", "requests"):
            if worker.get(key) is not None:
                summary_figure(where, worker, key, f"workers[{i}]")


def summary_figure(where: Path, part: dict[str, Any], key: str, at: str, high: float = MAX_FIGURE) -> float:
    """A figure of summary.json: present, a number, finite and from 0 to `high`, or RunFolderError naming it."""
    if key not in part:
        raise RunFolderError(f"{where}: {at}.{key} is missing")
    v = part[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RunFolderError(f"{where}: {at}.{key} is not a number (got {_shown(v)})")
    if not (math.isfinite(v) and 0 <= v <= high):
        raise RunFolderError(f"{where}: {at}.{key} is out of range (got {v:g}; it must be from 0 to {high:g})")
    return float(v)


def _shown(value: Any) -> str:
    return json.dumps(value, default=str)[:40]


# The summary's fields that hold mappings, at the top and in each target: a damaged file that has
# something else there is refused whole rather than half drawn.
_MAPPINGS = ("aggregated", "machine", "config", "as_run", "latency_ms", "failures_by_kind", "connections",
             "open_model")
_LISTS = ("problems", "thresholds", "verdicts", "shortfalls", "servers", "workers")


def _check_shape(summary: dict[str, Any], where: Path) -> None:
    parts = [summary, *summary["targets"]]
    if not all(isinstance(p, dict) for p in parts):
        raise RunFolderError(f"{where}: is damaged (a target is not a mapping of fields)")
    for part in parts:
        for key in _MAPPINGS:
            if key in part and part[key] is not None and not isinstance(part[key], dict):
                raise RunFolderError(f"{where}: is damaged ({key} is not a mapping of fields)")
    for key in _LISTS:
        if key in summary and summary[key] is not None and not isinstance(summary[key], list):
            raise RunFolderError(f"{where}: is damaged ({key} is not a list)")
