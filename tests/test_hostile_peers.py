"""Peers that never stop sending, next to a healthy target, in a real `loadtest run`.

Each hostile server is a raw socket on loopback that answers every request with
a response that never ends: an endless header line, an endless status line, an
endless body of 1-byte chunks, an endless body under a huge Content-Length, and
an endless body delimited by the server closing (which it never does); each
once per engine. Before reads gave the hub a turn, one such peer kept the
worker from ever sending a snapshot: the controller killed it after 5 s and
the run exited 3 with every target's data lost.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from loadtest.engine.protocols.http_fast import MAX_HEAD_BYTES

from .conftest import RawServer, read_request
from .test_run import read_csv

SEND_FOR_S = 15.0  # each hostile connection stops sending by itself after this long
PIECE = 64 * 1024
MAX_WORKER_RSS = 100 * 1024 * 1024
TIMEOUT_MS = 500
STALL_MS = 1500  # how late anything may end here: a shared 2-core machine sometimes stops a worker for ~1 s
ENGINES = ("fast", "requests")

# name: (what the response starts with, what it repeats for ever, the failure kind it must end as)
SHAPES: dict[str, tuple[bytes, bytes, str]] = {
    "header": (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * PIECE, "protocol"),
    "status": (b"HTTP/1.1 200 ", b"O" * PIECE, "protocol"),
    "chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * (PIECE // 6),
               "read_timeout"),
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n", b"y" * PIECE, "read_timeout"),
    "close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"z" * PIECE, "read_timeout"),
}


def endless(first: bytes, rest: bytes) -> Callable[[socket.socket], None]:
    """A handler that answers one request with `first`, then sends `rest` until the client leaves."""
    def handle(conn: socket.socket) -> None:
        if not read_request(conn):
            return
        conn.sendall(first)
        stop = time.monotonic() + SEND_FOR_S
        while time.monotonic() < stop:
            conn.sendall(rest)  # raises once the client has closed, which ends this connection
    return handle


def test_endless_responses_end_as_failures_and_the_healthy_target_keeps_exact_counts(raw_server,
                                                                                       tmp_path: Path) -> None:
    servers: dict[str, RawServer] = {name: raw_server(endless(first, rest))
                                     for name, (first, rest, _) in SHAPES.items()}
    hostile = "".join(f"  - {{name: {engine}-{name}, url: 'http://127.0.0.1:{s.port}/', engine: {engine}, "
                      f"concurrency: 1, timeout: {TIMEOUT_MS}ms}}\n"
                      for engine in ENGINES for name, s in servers.items())
    config = tmp_path / "hostile.yaml"
    config.write_text("name: hostile\nduration: 2s\nworkers: 1\n"
                      "servers: [{name: site, kind: http, listen: '127.0.0.1:0', workers: 1}]\n"
                      "targets:\n"
                      f"  - {{name: healthy, url: 'http://{{site}}/', concurrency: 2, timeout: {TIMEOUT_MS}ms}}\n"
                      + hostile)
    out = tmp_path / "r"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    took = time.monotonic() - started
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 3 was a worker lost to a hostile peer
    assert "Traceback" not in done.stderr
    assert took < 30

    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == []
    (worker,) = summary["workers"]
    assert worker["ended"] == "ok"
    assert 0 < worker["peak_rss_bytes"] < MAX_WORKER_RSS

    targets = {t["name"]: t for t in summary["targets"]}
    healthy = targets["healthy"]
    assert healthy["requests"] > 0 and healthy["failures"] == 0
    (site,) = summary["servers"]
    assert site["served"]["requests"] == healthy["requests"]  # every one counted, by both sides

    for engine in ENGINES:
        for name, (_, _, kind) in SHAPES.items():
            t = targets[f"{engine}-{name}"]
            assert t["requests"] > 0 and t["failures"] == t["requests"], t["name"]
            assert t["failures_by_kind"] == {kind: t["requests"]}, t["name"]
            assert t["latency_ms"]["max"] < TIMEOUT_MS + STALL_MS, t["name"]

    # the worker sent a snapshot every second all along, and the healthy target was served in each one
    seconds = [r for r in read_csv(out / "history.csv") if r["Name"] == "healthy"]
    assert len(seconds) >= 2 and all(int(r["Interval Requests"]) > 0 for r in seconds)
    messages = {(r["Name"], r["Error"]) for r in read_csv(out / "failures.csv")}
    limit = f"the status line and headers run past {MAX_HEAD_BYTES // 1024} KiB"
    assert ("fast-header", limit) in messages and ("fast-status", limit) in messages
