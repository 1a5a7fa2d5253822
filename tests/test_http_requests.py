"""The `requests` engine: redirects, cookies, failure kinds and its whole-response timeout.

Redirects, cookies and failure kinds run a `RequestsSession` in this (plain,
unpatched) process against raw loopback servers. The timeout needs the
worker's deadline scan, so it is tried in a real `loadtest run`.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from loadtest.model.config import parse_config
from loadtest.engine.protocols.http_requests import RequestsSession
from loadtest.core.stats import decode_histogram
from loadtest.core.recorder import TargetRecorder

from .conftest import RawServer, read_request

SEND_FOR_S = 10.0  # every hostile connection below stops by itself after this long


def session_for(url: str, **fields: object) -> tuple[RequestsSession, TargetRecorder]:
    target = parse_config({"duration": "1s", "targets": [{"url": url, "engine": "requests", "concurrency": 1, **fields}]}).targets[0]
    recorder = TargetRecorder(0)
    return RequestsSession(target, list(target.urls), recorder), recorder


def answer(conn: socket.socket, status: str, body: bytes = b"", extra: str = "") -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


def test_a_redirect_is_followed_and_counted_as_one_request(raw_server) -> None:
    paths: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        while head := read_request(conn):
            path = head.split(b" ")[1]
            paths.append(path)
            if path == b"/start":
                answer(conn, "302 Found", b"moved", "Location: /next\r\n")
            else:
                answer(conn, "200 OK", b"arrived")

    server: RawServer = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/start")
    for _ in range(3):
        session.exchange()
    session.close()
    snap = rec.snapshot()
    assert snap.requests == 3 and not snap.failures
    assert snap.content_bytes == 3 * len(b"arrived")  # the final response's body, not the redirect's
    assert paths == [b"/start", b"/next"] * 3
    assert decode_histogram(snap.latency).get_total_count() == 3


def test_endless_redirects_are_a_redirects_failure(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            answer(conn, "302 Found", extra="Location: /again\r\n")

    server = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/")
    session.exchange()
    session.close()
    assert dict(rec.snapshot().failures) == {"redirects": 1}


def test_a_cookie_set_by_the_server_is_sent_back(raw_server) -> None:
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        while head := read_request(conn):
            heads.append(head)
            answer(conn, "200 OK", b"hi", "Set-Cookie: visit=abc123; Path=/\r\n" if len(heads) == 1 else "")

    server = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/")
    session.exchange()
    session.exchange()
    session.close()
    assert not rec.snapshot().failures and len(heads) == 2
    assert b"cookie:" not in heads[0].lower()
    assert b"\r\nCookie: visit=abc123" in heads[1]


def test_refused_is_classified_from_the_errno_and_has_no_latency() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    session, rec = session_for(f"http://127.0.0.1:{port}/")
    session.exchange()
    session.exchange()
    session.close()
    snap = rec.snapshot()
    assert dict(snap.failures) == {"refused": 2} and snap.latency == b""


def test_a_close_before_the_response_is_closed(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)

    server = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/")
    session.exchange()
    session.close()
    assert dict(rec.snapshot().failures) == {"closed": 1}


def test_a_reset_mid_body_is_reset(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    server = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/")
    session.exchange()
    session.close()
    assert dict(rec.snapshot().failures) == {"reset": 1}


def test_an_endless_header_line_is_a_protocol_failure(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        stop = time.monotonic() + SEND_FOR_S
        while time.monotonic() < stop:
            conn.sendall(b"a" * 65536)

    server = raw_server(handle)
    session, rec = session_for(f"http://127.0.0.1:{server.port}/", timeout="5s")
    session.exchange()
    session.close()
    snap = rec.snapshot()
    assert dict(snap.failures) == {"protocol": 1}
    assert dict(snap.failure_samples)["protocol"].startswith("malformed response: LineTooLong: ")


TIMEOUT_MS = 300
# How late the docs (docs/guides/http.md) say a timeout fires at most while the worker has a core. On this shared machine a
# worker is sometimes given no CPU at all for a second (seen at load 13 on 2 cores), which delays everything
# in it, so the median of each target is held to the bound and the maximum is only reported.
LATE_MS = 100

def drip(conn: socket.socket) -> None:
    """The whole response, status line first, one byte every 20 ms: it would take 2.8 s."""
    if not read_request(conn):
        return
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 100:
        conn.sendall(bytes([byte]))
        time.sleep(0.02)


def endless_chunks(conn: socket.socket) -> None:
    """A chunked body of 1-byte chunks that never ends (until the client leaves or SEND_FOR_S passes)."""
    if not read_request(conn):
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    stop = time.monotonic() + SEND_FOR_S
    while time.monotonic() < stop:
        conn.sendall(b"1\r\nx\r\n" * 10_000)


def silent(conn: socket.socket) -> None:
    """Reads the request and never answers; ends when the client leaves (or at the raw server's 5 s)."""
    read_request(conn)
    conn.recv(1)


def test_the_whole_response_timeout_fires_on_time_in_both_engines(raw_server, tmp_path: Path) -> None:
    """Both engines end a dripping, an endless and a silent response as `read_timeout`, at most LATE_MS late.

    Before, the requests engine counted the drip as a success after 2.8 s and never ended endless chunks.
    """
    servers = {"drip": raw_server(drip), "silent": raw_server(silent), "chunks": raw_server(endless_chunks)}
    targets = [("requests", "drip", 2), ("requests", "silent", 2), ("requests", "chunks", 1),
               ("fast", "drip", 2), ("fast", "silent", 2)]
    config = tmp_path / "timeouts.yaml"
    config.write_text("name: timeouts\nduration: 2s\nworkers: 1\ntargets:\n" + "".join(
        f"  - {{name: {engine}-{name}, url: 'http://127.0.0.1:{servers[name].port}/', engine: {engine}, "
        f"concurrency: {users}, timeout: {TIMEOUT_MS}ms}}\n" for engine, name, users in targets))
    out = tmp_path / "r"
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == []
    for t in summary["targets"]:
        assert t["requests"] >= 2 and t["failures_by_kind"] == {"read_timeout": t["requests"]}, t["name"]
        latency = t["latency_ms"]
        print(f"{t['name']}: {t['requests']} timeouts, late by {latency['p50'] - TIMEOUT_MS:.1f} ms (median), "
              f"{latency['max'] - TIMEOUT_MS:.1f} ms (most)")
        assert latency["min"] >= TIMEOUT_MS - 1, t["name"]  # never early
        assert latency["p50"] <= TIMEOUT_MS + LATE_MS, t["name"]
