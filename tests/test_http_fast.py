"""The fast HTTP engine against real sockets and servers that misbehave on purpose.

The test process is not monkey-patched, so the client runs on plain blocking
sockets with per-read timeouts; the worker's gevent path is covered by the
end-to-end tests.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Callable

import pytest

from loadtest.model.config import parse_config
from loadtest.engine.protocols.http_fast import MAX_HEAD_BYTES, HttpSession, build_endpoints
from loadtest.core.stats import decode_histogram
from loadtest.core.recorder import TargetRecorder

from .conftest import RawServer, read_request


def session_for(port: int, path: str = "/", **fields: object) -> tuple[HttpSession, TargetRecorder]:
    config = parse_config({"duration": "1s", "targets": [{"url": f"http://127.0.0.1:{port}{path}", "concurrency": 1,
                                                          **fields}]})
    target = config.targets[0]
    recorder = TargetRecorder(0)
    return HttpSession(target, build_endpoints(target, list(target.urls)), recorder), recorder


def keep_alive(body: bytes, status: str = "200 OK", extra: bytes = b"") -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n" + extra + b"\r\n" + body)
    return handle


def run(session: HttpSession, n: int) -> None:
    for _ in range(n):
        session.exchange()
    session.close()


def test_keep_alive_reuses_one_connection_and_counts_bodies(raw_server) -> None:
    server: RawServer = raw_server(keep_alive(b"x" * 1000))
    session, rec = session_for(server.port)
    run(session, 5)
    snap = rec.snapshot()
    assert snap.requests == 5 and not snap.failures
    assert snap.content_bytes == 5000
    assert rec.connects == 0 and snap.connects == 1 and server.connections == 1
    assert decode_histogram(snap.latency).get_total_count() == 5
    assert snap.bytes_out == 5 * len(session._single.request)  # type: ignore[union-attr]
    assert snap.bytes_in > snap.content_bytes


def test_chunked_response(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"hello ", b"chunked ", b"world"):
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                time.sleep(0.001)
            conn.sendall(b"0\r\n\r\n")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 3)
    snap = rec.snapshot()
    assert snap.requests == 3 and not snap.failures
    assert snap.content_bytes == 3 * len(b"hello chunked world")
    assert server.connections == 1


def test_head_does_not_wait_for_the_body_its_length_announces(raw_server) -> None:
    server = raw_server(head_handler)
    session, rec = session_for(server.port, method="HEAD", timeout="2s")
    started = time.monotonic()
    run(session, 3)
    assert time.monotonic() - started < 1.0
    snap = rec.snapshot()
    assert snap.requests == 3 and not snap.failures and snap.content_bytes == 0
    assert server.connections == 1


def head_handler(conn: socket.socket) -> None:
    while head := read_request(conn):
        assert head.startswith(b"HEAD / ")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")


def test_connection_close_means_a_new_connection_each_time(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 4)
    snap = rec.snapshot()
    assert snap.requests == 4 and not snap.failures
    assert server.connections == 4 and snap.connects == 4


def test_a_body_delimited_by_the_server_closing(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 2)
    snap = rec.snapshot()
    assert snap.requests == 2 and not snap.failures and snap.content_bytes == 2 * len(b"until the end")


def test_a_truncated_body_is_a_closed_failure(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 2)
    snap = rec.snapshot()
    assert snap.requests == 2 and dict(snap.failures) == {"closed": 2}


def test_garbage_is_a_protocol_failure(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        time.sleep(0.2)

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 1)
    snap = rec.snapshot()
    assert dict(snap.failures) == {"protocol": 1}
    assert "malformed response" in dict(snap.failure_samples)["protocol"]


@pytest.mark.parametrize("header_bytes, kind", [(60 * 1024, None), (70 * 1024, "protocol")])
def test_a_status_line_and_headers_over_64_kib_are_a_protocol_failure(raw_server, header_bytes: int,
                                                                      kind: str | None) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * header_bytes + b"\r\nContent-Length: 2\r\n\r\n"

    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(head + b"ok")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 2)
    snap = rec.snapshot()
    assert snap.requests == 2
    if kind is None:  # a big but finite head is fine
        assert not snap.failures and snap.content_bytes == 4
    else:
        assert dict(snap.failures) == {kind: 2}
        assert dict(snap.failure_samples)[kind] == f"the status line and headers run past {MAX_HEAD_BYTES // 1024} KiB"


def test_status_codes_follow_expect_status(raw_server) -> None:
    server = raw_server(keep_alive(b"oops", status="500 Internal Server Error"))
    session, rec = session_for(server.port)
    run(session, 2)
    snap = rec.snapshot()
    assert dict(snap.failures) == {"status": 2} and dict(snap.failure_samples)["status"] == "HTTP 500"
    session, rec = session_for(server.port, expect_status=[500])
    run(session, 2)
    assert not rec.snapshot().failures


def test_redirects_count_as_success_but_are_not_followed(raw_server) -> None:
    server = raw_server(keep_alive(b"", status="302 Found", extra=b"Location: /elsewhere\r\n"))
    session, rec = session_for(server.port)
    run(session, 2)
    snap = rec.snapshot()
    assert snap.requests == 2 and not snap.failures and server.connections == 1


def test_refused() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    session, rec = session_for(port)
    run(session, 3)
    snap = rec.snapshot()
    assert snap.requests == 3 and dict(snap.failures) == {"refused": 3}
    assert snap.latency == b""  # a request that never connected has no latency


def test_a_server_that_never_answers_is_a_read_timeout(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(1.0)

    server = raw_server(handle)
    session, rec = session_for(server.port, timeout="200ms")
    started = time.monotonic()
    run(session, 1)
    assert time.monotonic() - started < 0.9
    snap = rec.snapshot()
    assert dict(snap.failures) == {"read_timeout": 1}
    latency = decode_histogram(snap.latency).get_max_value()
    assert 150e6 <= latency <= 800e6


def test_a_reset_mid_response(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST

    server = raw_server(handle)
    session, rec = session_for(server.port)
    run(session, 1)
    assert dict(rec.snapshot().failures) == {"reset": 1}


def test_a_keep_alive_connection_the_server_closed_is_retried_once(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)  # answer one request, then close as an idle timeout would
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(handle)
    session, rec = session_for(server.port)
    session.exchange()
    time.sleep(0.1)  # the server has closed by now
    session.exchange()
    session.close()
    snap = rec.snapshot()
    assert snap.requests == 2 and not snap.failures and server.connections == 2


@pytest.mark.parametrize("method, body", [("POST", "hello"), ("PUT", "")])
def test_request_bytes(raw_server, method: str, body: str) -> None:
    seen: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        data = b""
        while not data.endswith(body.encode()) or b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        seen.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = raw_server(handle)
    session, rec = session_for(server.port, "/a?b=1", method=method, body=body, headers={"X-Test": "yes"})
    run(session, 1)
    assert not rec.snapshot().failures
    request = seen[0]
    assert request.startswith(f"{method} /a?b=1 HTTP/1.1\r\n".encode())
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"X-Test: yes\r\n" in request
    assert f"Content-Length: {len(body)}\r\n".encode() in request
    assert request.endswith(b"\r\n\r\n" + body.encode())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make a test certificate and is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_keep_alive(raw_server, certificate: tuple[str, str]) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def handle(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            keep_alive(b"secret")(tls)

    server = raw_server(handle)
    config = parse_config({"duration": "1s", "targets": [
        {"url": f"https://127.0.0.1:{server.port}/", "concurrency": 1, "verify_tls": False}]})
    target = config.targets[0]
    rec = TargetRecorder(0)
    run(HttpSession(target, build_endpoints(target, list(target.urls)), rec), 3)
    snap = rec.snapshot()
    assert snap.requests == 3 and not snap.failures and snap.content_bytes == 18 and server.connections == 1

    # verified by default: a self-signed certificate is refused as a TLS failure
    strict = parse_config({"duration": "1s", "targets": [{"url": f"https://127.0.0.1:{server.port}/",
                                                          "concurrency": 1}]}).targets[0]
    rec = TargetRecorder(0)
    run(HttpSession(strict, build_endpoints(strict, list(strict.urls)), rec), 1)
    assert dict(rec.snapshot().failures) == {"tls": 1}


def test_late_replies_are_waited_for_before_reading_and_each_one_still_arrives(raw_server) -> None:
    """A reply slower than the client switches its channel to park before reading (no recv that finds
    nothing); every reply is still read whole, and a reply that is already waiting wakes it at once."""
    from loadtest.engine.protocols.channel import WAIT_FIRST_REPLIES

    def slow(conn: socket.socket) -> None:
        while read_request(conn):
            time.sleep(0.005)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server: RawServer = raw_server(slow)
    session, rec = session_for(server.port)
    session.exchange()
    channel = next(iter(session._conns.values())).channel
    assert channel._wait_first == WAIT_FIRST_REPLIES  # type: ignore[union-attr]  # the first read missed
    for _ in range(5):
        session.exchange()
    assert channel._wait_first == WAIT_FIRST_REPLIES - 5  # type: ignore[union-attr]  # these waited first
    fast: RawServer = raw_server(keep_alive(b"ok"))
    quick, quick_rec = session_for(fast.port)
    quick.exchange()
    quick_channel = next(iter(quick._conns.values())).channel
    quick_channel._wait_first = 3  # type: ignore[union-attr]
    started = time.monotonic()
    for _ in range(3):
        quick.exchange()  # each reply comes while the client parks: level-triggered, so it wakes
    assert time.monotonic() - started < 2.0
    session.close()
    quick.close()
    assert rec.snapshot().requests == 6 and not rec.failures
    snap = quick_rec.snapshot()
    assert snap.requests == 4 and not snap.failures and snap.content_bytes == 8


FAULTS_SCRIPT = """
import ctypes, resource, sys
# glibc's threshold at its start value, kept there: a process that has freed nothing large yet
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
from loadtest.model.config import parse_config
from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints
from loadtest.core.recorder import TargetRecorder
url = sys.argv[1]
target = parse_config({"duration": "1s", "targets": [{"url": url, "concurrency": 1}]}).targets[0]
rec = TargetRecorder(0)
session = HttpSession(target, build_endpoints(target, [url]), rec)
for _ in range(50):
    session.exchange()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    session.exchange()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
session.close()
print(rec.requests, sum(rec.failures.values()), faults)
"""


def test_a_fresh_process_does_not_map_a_buffer_per_response(raw_server) -> None:
    """Each read allocates its size and shrinks it; a read size over glibc's first mmap threshold was
    mapped and unmapped on every response (two page faults each) in a process that had not yet freed
    anything that large."""
    import ctypes.util
    import subprocess
    import sys

    if sys.platform != "linux" or "libc.so.6" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("glibc's malloc only")

    server: RawServer = raw_server(keep_alive(b"hello world\n"))
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, f"http://127.0.0.1:{server.port}/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    requests, failed, faults = (int(x) for x in done.stdout.split())
    assert requests == 1050 and failed == 0
    assert faults < 200, faults  # was about 2000: two per response
