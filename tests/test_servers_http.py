"""The embedded HTTP server and the server group, with real processes and sockets on loopback."""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from loadtest.model.config import ConfigError, ServerSpec, parse_config
from loadtest.execution.servers import ServerError, ServerGroup, serve_foreground
from loadtest.servers import sites

TIMEOUT = 5.0


def http_spec(**overrides: object) -> ServerSpec:
    fields: dict[str, object] = {"name": "web", "kind": "http", "host": "127.0.0.1", "port": 0, "workers": 1}
    fields.update(overrides)
    return ServerSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerGroup]:
    with ServerGroup.start(http_spec()) as group:
        yield group


@pytest.fixture()
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def connect(group: ServerGroup) -> socket.socket:
    sock = socket.create_connection((group.host, group.port), timeout=TIMEOUT)
    return sock


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


def read_response(stream: io.BufferedReader, head: bool = False) -> Response:
    """One response from a raw stream: status line, headers, Content-Length body."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    _, code, reason = status_line.decode().rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    return Response(int(code), reason, headers, stream.read(length))


def exchange(group: ServerGroup, raw: bytes, responses: int = 1, head: bool = False) -> list[Response]:
    with connect(group) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw)
        return [read_response(stream, head) for _ in range(responses)]


def request(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def is_closed(sock: socket.socket, within: float = TIMEOUT) -> bool:
    """True when the server closed the connection (end of stream or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# Routes


def test_index_page(server: ServerGroup, session: requests.Session) -> None:
    reply = session.get(f"http://{server.address}/", timeout=TIMEOUT)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b"loadtest" in reply.content
    assert int(reply.headers["Content-Length"]) == len(reply.content)


@pytest.mark.parametrize("size", [0, 1, 1000, 300_000, 2_500_000])
def test_bytes_gives_n_bytes(server: ServerGroup, session: requests.Session, size: int) -> None:
    reply = session.get(f"http://{server.address}/bytes/{size}", timeout=TIMEOUT)
    assert reply.status_code == 200
    assert len(reply.content) == size == int(reply.headers["Content-Length"])
    pattern = sites.pattern()
    assert reply.content[: len(pattern)] == pattern[:size]


@pytest.mark.parametrize("path", ["/bytes", "/bytes/abc", "/bytes/-1", "/bytes/104857601", "/delay/60001", "/delay/x",
                                  "/status/99", "/status/100", "/status/600", "/status/abc"])
def test_bad_arguments_are_400(server: ServerGroup, session: requests.Session, path: str) -> None:
    assert session.get(f"http://{server.address}{path}", timeout=TIMEOUT).status_code == 400


def test_delay_answers_after_the_delay(server: ServerGroup, session: requests.Session) -> None:
    started = time.monotonic()
    reply = session.get(f"http://{server.address}/delay/300", timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200
    assert 0.3 <= elapsed < 2.0


@pytest.mark.parametrize("code, reason", [(200, "OK"), (418, "I'm a Teapot"), (503, "Service Unavailable"),
                                          (299, "Success"), (599, "Server Error")])
def test_status_answers_that_status(server: ServerGroup, code: int, reason: str) -> None:
    [reply] = exchange(server, request(f"/status/{code}"))
    assert (reply.status, reply.reason) == (code, reason)
    assert int(reply.headers["content-length"]) == len(reply.body) > 0


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body_has_no_content_length(server: ServerGroup, code: int) -> None:
    first, second = exchange(server, request(f"/status/{code}") + request("/bytes/3"), responses=2)
    assert first.status == code and "content-length" not in first.headers
    assert (second.status, second.body) == (200, b"abc")


def test_205_has_no_body_and_says_so_with_a_zero_length(server: ServerGroup) -> None:
    first, second = exchange(server, request("/status/205") + request("/bytes/3"), responses=2)
    assert (first.status, first.headers["content-length"], first.body) == (205, "0", b"")
    assert (second.status, second.body) == (200, b"abc")


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_echo_returns_the_body(server: ServerGroup, session: requests.Session, method: str) -> None:
    body = os.urandom(100_000)
    reply = session.request(method, f"http://{server.address}/echo", data=body, timeout=TIMEOUT)
    assert reply.status_code == 200
    assert reply.content == body


def test_site_pages_have_the_table_sizes_and_stay_the_same(server: ServerGroup, session: requests.Session) -> None:
    for page in range(12):
        first = session.get(f"http://{server.address}/site/{page}", timeout=TIMEOUT)
        again = session.get(f"http://{server.address}/site/{page}", timeout=TIMEOUT)
        assert first.status_code == 200
        assert first.headers["Content-Type"].startswith("text/html")
        assert len(first.content) == sites.SITE_PAGE_SIZES[page % len(sites.SITE_PAGE_SIZES)]
        assert first.content == again.content
        assert first.content.startswith(b"<!DOCTYPE html>") and first.content.endswith(b"</html>\n")
    sizes = {len(sites.site_page(page)) for page in range(sites.SITE_PAGES)}
    assert min(sizes) == 2 * 1024 and max(sizes) == 120 * 1024


@pytest.mark.parametrize("path", ["/nope", "/site/100", "/site/x", "/echo/1", "/static/a.css"])
def test_unknown_paths_are_404(server: ServerGroup, session: requests.Session, path: str) -> None:
    assert session.get(f"http://{server.address}{path}", timeout=TIMEOUT).status_code == 404


def test_query_string_is_ignored(server: ServerGroup, session: requests.Session) -> None:
    reply = session.get(f"http://{server.address}/bytes/5?x=1", timeout=TIMEOUT)
    assert reply.content == b"abcde"


# Connections


def test_keep_alive_serves_several_requests_on_one_connection(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        for size in range(1, 8):
            sock.sendall(request(f"/bytes/{size}"))
            reply = read_response(stream)
            assert (reply.status, len(reply.body)) == (200, size)
            assert "connection" not in reply.headers


def test_pipelined_requests_are_answered_in_order(server: ServerGroup) -> None:
    paths = ["/delay/100", "/bytes/10", "/status/404", "/site/1", "/bytes/300000", "/delay/0", "/"]
    raw = b"".join(request(path) for path in paths) + (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    replies = exchange(server, raw, responses=len(paths) + 1)
    assert [r.status for r in replies] == [200, 200, 404, 200, 200, 200, 200, 200]
    assert replies[0].body == b"delayed 100 ms\n"
    assert len(replies[1].body) == 10
    assert len(replies[3].body) == len(sites.site_page(1))
    assert len(replies[4].body) == 300_000
    assert replies[-1].body == b"hello"


PIPELINED = 100_000


def test_100000_pipelined_requests_split_anywhere_are_all_answered(server: ServerGroup) -> None:
    """A client that pipelines and reads its answers as it goes: every request 200, none 431.

    The requests go out in pieces of 16,001 bytes, so nearly every read the server
    makes ends inside a request's header section (this once gave 431 after ~10,000).
    """
    one = request("/bytes/1")
    stream = one * PIPELINED
    piece, window = 16_001, 20_000  # requests sent ahead of the answers, at most
    status_200, status_431 = b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 431 "
    answered = refused = sent = 0
    tail = b""
    deadline = time.monotonic() + 60
    with connect(server) as sock:
        sock.setblocking(False)
        while answered + refused < PIPELINED and time.monotonic() < deadline:
            want_write = sent < len(stream) and sent // len(one) - answered < window
            readable, writable, _ = select.select([sock], [sock] if want_write else [], [], TIMEOUT)
            assert readable or writable, f"no progress after {answered} answers"
            if writable:
                sent += sock.send(stream[sent:sent + piece])
            if readable:
                data = sock.recv(1 << 20)
                assert data, f"the server closed the connection after {answered} answers"
                # A status line is 17 bytes: one split between two reads is found in the 16-byte tail, once.
                seen = tail + data
                answered += seen.count(status_200)
                refused += seen.count(status_431)
                tail = seen[-16:]
    assert (answered, refused) == (PIPELINED, 0)


def _rss(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def test_buffered_bodies_are_capped_and_freed_when_their_connections_close() -> None:
    """100 clients each hold an unfinished 10 MiB /echo body: the process keeps at most its cap, then lets it all go.

    Without the cap this took the server from ~80 MiB to ~1 GiB, and closing the
    connections gave nothing back until a garbage collection.
    """
    size, cap_mib, clients = 10 * 2**20, 256, 100
    with ServerGroup.start(http_spec()) as group:
        process = psutil.Process(group.pids[0])
        exchange(group, request("/"))
        before = _rss(process)
        socks: list[socket.socket] = []
        ends: list[str] = []  # per client: "held" (no answer), "503", or "closed" (reset before the 503 was read)
        body = b"x" * (size - 1)  # all but the last byte: the request stays unfinished
        try:
            for _ in range(clients):
                sock = connect(group)
                socks.append(sock)
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
                if select.select([sock], [], [], 0.02)[0]:  # refused already: the cap is full
                    continue
                try:
                    sock.sendall(body)
                except OSError:  # refused while sending: the server answered 503 and closed
                    pass
            time.sleep(0.3)
            held_rss = _rss(process)
            for sock in socks:
                if not select.select([sock], [], [], 0)[0]:
                    ends.append("held")
                    continue
                try:
                    ends.append(sock.recv(64)[9:12].decode() or "closed")
                except ConnectionResetError:
                    ends.append("closed")
        finally:
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 5
        while _rss(process) > before + 32 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = _rss(process)
        assert exchange(group, request("/bytes/3"))[0].body == b"abc"  # still serving
    held = ends.count("held")
    assert set(ends) <= {"held", "503", "closed"} and ends.count("503") >= clients // 2, ends
    assert 15 <= held <= cap_mib * 2**20 // size, ends
    print(f"server RSS {before:.0f} MiB, {held_rss:.0f} MiB with {held} bodies held, {after:.0f} MiB after")
    assert held_rss - before < cap_mib + 64, (before, held_rss)
    assert after - before < 32, (before, held_rss, after)


# A server process with the cycle collector off: what it still holds after its
# clients left is what reference counting did not free.
NO_GC_SERVER = """
import gc, sys
from gevent import monkey; monkey.patch_all()
import gevent, gevent.socket
from loadtest.servers.child import listen
from loadtest.servers.http import HttpConnection, HttpServer
gc.disable()
listener = listen("127.0.0.1", 0)
server = HttpServer(listener, [0], idle_timeout=0.3, max_buffered=4 << 20)
server.start()
print(listener.getsockname()[1], flush=True)
gevent.socket.wait_read(sys.stdin.fileno())
for _ in range(300):
    if not server.table.live:
        break
    gevent.sleep(0.01)
left = sum(isinstance(o, HttpConnection) for o in gc.get_objects())
print(len(server.table.live), server.buffered, left, flush=True)
"""


def test_every_way_a_connection_ends_frees_it_without_the_cycle_collector() -> None:
    server = subprocess.Popen([sys.executable, "-c", NO_GC_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())

        def answer(raw: bytes, read: bool = True) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.sendall(raw)
                return int(sock.recv(64).split()[1]) if read else 0

        assert answer(request("/") * 50) == 200  # keep-alive, pipelined
        echoed = 3 * 2**20
        assert answer(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (echoed, b"e" * echoed)) == 200
        assert answer(b"POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n") == 413
        assert answer(request("/", extra="X-Big: " + "v" * 40_000 + "\r\n")) == 431
        assert answer(b"NOT HTTP\r\n\r\n") == 400
        assert answer(b"POST /echo HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n") == 503  # over max_buffered
        assert answer(b"GET / HTTP/1.1\r\n") == 408  # unfinished past the idle timeout
        answer(request("/delay/300"), read=False)  # gone before its answer
        answer(request("/bytes/50000000") + request("/site/9") * 2000, read=False)  # answers never read
        out, _ = server.communicate("done\n", timeout=TIMEOUT)
    finally:
        server.kill()
        server.wait()
    assert out.split() == ["0", "0", "0"]  # no live connection, nothing charged, no connection object left


def test_max_buffered_refuses_an_echo_body_past_it_and_echoes_one_within() -> None:
    with ServerGroup.start(http_spec(max_buffered=4 * 2**20)) as group:
        body = bytes(range(256)) * (3 * 2**12)  # 3 MiB: kept, and echoed back whole
        replies = exchange(group, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert replies[0].status == 200 and replies[0].body == body
        # Refused as soon as the headers say it cannot fit, before the body is sent.
        replies = exchange(group, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (5 * 2**20))
        assert replies[0].status == 503
        # A chunked body has no length up front: refused when the cap would be passed.
        with connect(group) as sock, sock.makefile("rb") as stream:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (2**20, b"z" * 2**20)
            try:
                for _ in range(6):
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_response(stream).status == 503
        # Other routes never keep a body: a 5 MiB upload to / is read and dropped.
        replies = exchange(group, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (5 * 2**20, b"y" * 5 * 2**20))
        assert replies[0].status == 200


def test_unfinished_header_sections_count_against_max_buffered() -> None:
    with ServerGroup.start(http_spec(max_buffered=2**20)) as group:
        socks = [connect(group) for _ in range(8)]
        try:
            for sock in socks:  # 8 x 200 KiB of one header line that has not ended: under the 431 limit each
                sock.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 200 * 1024)
                time.sleep(0.05)
            answered: list[socket.socket] = []
            deadline = time.monotonic() + TIMEOUT
            while len(answered) < 3 and time.monotonic() < deadline:
                answered = select.select(socks, [], [], 0.05)[0]
            time.sleep(0.2)  # and no more than that
            answered = select.select(socks, [], [], 0)[0]
            refused = sum(sock.recv(64).startswith(b"HTTP/1.1 503 ") for sock in answered)
        finally:
            for sock in socks:
                sock.close()
    assert (len(answered), refused) == (3, 3)  # 1 MiB holds five sections of 200 KiB, not six


def test_max_buffered_in_a_config_and_on_the_command_line() -> None:
    def config(server: dict[str, object]) -> Any:
        return parse_config({"servers": [server], "duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", "concurrency": 1}]})

    assert config({"kind": "http", "max_buffered": 64}).servers[0].max_buffered == 64 * 2**20
    assert config({"kind": "http"}).servers[0].max_buffered == 0  # the server's default
    assert config({"kind": "echo", "max_buffered": 64}).servers[0].max_buffered == 64 * 2**20  # echo caps too
    with pytest.raises(ConfigError, match=r"servers\[0\]\.max_buffered: must be a whole number of MiB, got '1G'"):
        config({"kind": "http", "max_buffered": "1G"})
    done = subprocess.run([sys.executable, "-m", "loadtest", "serve", "http", "--max-buffered", "9999999999"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "loadtest: --max-buffered: must be at most 1048576 MiB, got 9999999999"


def test_head_has_the_get_length_and_no_body(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("/bytes/1000", "HEAD") + request("/site/2", "HEAD") + request("/bytes/2"))
        first, second = read_response(stream, head=True), read_response(stream, head=True)
        third = read_response(stream)
    assert first.headers["content-length"] == "1000" and first.body == b""
    assert second.headers["content-length"] == str(len(sites.site_page(2)))
    assert third.body == b"ab"


def test_connection_close_is_honoured(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        # the request after "Connection: close" is not answered
        sock.sendall(request("/bytes/4", extra="Connection: close\r\n") + request("/bytes/9"))
        reply = read_response(stream)
        assert reply.body == b"abcd"
        assert reply.headers["connection"] == "close"
        assert stream.read() == b""


def test_an_upgrade_request_is_answered_and_then_closed_saying_so(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("/bytes/4", extra="Connection: Upgrade\r\nUpgrade: h2c\r\n") + request("/bytes/9"))
        reply = read_response(stream)
        assert reply.body == b"abcd" and reply.headers["connection"] == "close"  # no upgrade here
        assert stream.read() == b""


def test_distinct_query_strings_do_not_grow_the_response_cache() -> None:
    # The routes ignore the query, so it is not part of the cache key, and the cache has a byte cap.
    with ServerGroup.start(http_spec()) as group, connect(group) as sock, sock.makefile("rb") as stream:
        rss = psutil.Process(group.pids[0]).memory_info().rss
        for i in range(400):
            sock.sendall(request(f"/bytes/{200_000 + i % 50}?{i}"))
            assert len(read_response(stream).body) == 200_000 + i % 50
        grown = psutil.Process(group.pids[0]).memory_info().rss - rss
    assert grown < 40 * 1024 * 1024  # 400 distinct URLs of 200 KB cached whole would be 80 MB


def test_http_10(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GET /bytes/3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = read_response(stream)
        assert reply.headers["connection"] == "keep-alive" and reply.body == b"abc"
        sock.sendall(b"GET /bytes/2 HTTP/1.0\r\n\r\n")
        reply = read_response(stream)
        assert reply.headers["connection"] == "close" and reply.body == b"ab"
        assert stream.read() == b""


def test_chunked_request_body(server: ServerGroup, session: requests.Session) -> None:
    raw = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    [reply] = exchange(server, raw)
    assert (reply.status, reply.body) == (200, b"hello world")
    parts = (bytes([65 + i]) * 1000 for i in range(20))
    via_requests = session.post(f"http://{server.address}/echo", data=parts, timeout=TIMEOUT)
    assert via_requests.content == b"".join(bytes([65 + i]) * 1000 for i in range(20))


def test_expect_100_continue(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        sock.sendall(b"abc")
        assert read_response(stream).body == b"abc"


def test_malformed_request_is_400_and_closed(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
        assert read_response(stream).status == 400
        assert stream.read() == b""


def test_headers_over_the_limit_are_431_and_closed(server: ServerGroup) -> None:
    big = "".join(f"X-Filler-{i}: {'v' * 100}\r\n" for i in range(200))  # ~22 KiB
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("/", extra=big))
        assert read_response(stream).status == 431
        assert stream.read() == b""
    # one header line that never ends is cut off too
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Long: ")
        sent = 0
        for _ in range(400):  # at most 400 x 16 KiB, until the server answers
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"v" * 16384)
            sent += 16384
            time.sleep(0.001)
        assert stream.readline().startswith(b"HTTP/1.1 431 ")
        assert sent < 16384 + 256 * 1024 + 2 * 1024 * 1024  # the limit, a read, and what loopback buffers
        assert is_closed(sock)


def test_body_over_the_limit_is_413_and_closed(server: ServerGroup) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485761\r\n\r\n")
        assert read_response(stream).status == 413
        assert stream.read() == b""
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"z" * (1 << 20))
        try:
            for _ in range(11):  # 11 MiB in all
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_response(stream).status == 413


def test_slow_and_idle_clients_are_closed() -> None:
    with ServerGroup.start(http_spec(idle_timeout=0.5)) as group:
        with connect(group) as idle:
            started = time.monotonic()
            assert is_closed(idle)
            assert 0.4 <= time.monotonic() - started < 2.5
        with connect(group) as slow, slow.makefile("rb") as stream:
            started = time.monotonic()
            for byte in request("/"):  # one byte every 50 ms would take 1.3 s; stop once answered
                if select.select([slow], [], [], 0)[0] or time.monotonic() - started > 1.5:
                    break
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
            reply = read_response(stream)
            assert reply.status == 408
            assert 0.4 <= time.monotonic() - started < 1.5
            assert stream.read() == b""
        # a connection that keeps working is not closed
        with connect(group) as busy, busy.makefile("rb") as stream:
            for _ in range(8):
                busy.sendall(request("/bytes/1"))
                assert read_response(stream).status == 200
                time.sleep(0.2)


def test_connection_cap_closes_extra_connections() -> None:
    with ServerGroup.start(http_spec(max_connections=3)) as group:
        held = [connect(group) for _ in range(3)]
        try:
            for sock in held:
                sock.sendall(request("/bytes/1"))
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            with connect(group) as extra:
                assert is_closed(extra, within=2.0)
        finally:
            for sock in held:
                sock.close()


# The group


def test_two_processes_share_the_port() -> None:
    with ServerGroup.start(http_spec(workers=2)) as group:
        assert len(set(group.pids)) == 2
        held = [connect(group) for _ in range(40)]
        try:
            for sock in held:
                sock.sendall(request("/bytes/1"))
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            ports = {sock.getsockname()[1] for sock in held}
            serving = {pid for pid in group.pids
                       if any(c.raddr and c.raddr.port in ports for c in psutil.Process(pid).net_connections())}
            assert serving == set(group.pids)
        finally:
            for sock in held:
                sock.close()


def test_counts_equal_requests_sent(session: requests.Session) -> None:
    group = ServerGroup.start(http_spec(workers=2))
    try:
        for i in range(40):
            assert session.get(f"http://{group.address}/bytes/{i}", timeout=TIMEOUT).status_code == 200
        exchange(group, request("/") * 10, responses=10)
        exchange(group, request("/nope", "HEAD"), head=True)
        assert group.served()["requests"] == 51
    finally:
        counts = group.stop()
    # per route too: 40 /bytes/N, 10 /, one 404 (a HEAD of an unknown path)
    assert {k: v for k, v in counts.items() if v} == {"requests": 51, "/bytes": 40, "/": 10, "other": 1}
    assert group.served() == counts
    assert not any(psutil.pid_exists(pid) for pid in group.pids)


def test_port_in_use_is_one_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError) as caught:
            ServerGroup.start(http_spec(port=port), where="servers[0]")
    assert str(caught.value) == f"servers[0] (http): cannot listen on 127.0.0.1:{port}: address already in use"


def test_address_not_on_this_machine_is_one_sentence() -> None:
    with pytest.raises(ServerError, match=r"^server 'web' \(http\): cannot listen on 192\.0\.2\.1:0: "
                                          r"cannot assign requested address$"):
        ServerGroup.start(http_spec(host="192.0.2.1"))


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with ServerGroup.start(http_spec(host="::1")) as group, requests.Session() as s:
        assert group.address == f"[::1]:{group.port}"
        assert s.get(f"http://{group.address}/bytes/2", timeout=TIMEOUT).content == b"ab"


def test_serve_foreground_runs_until_sigterm() -> None:
    out = io.StringIO()
    status: list[int] = []

    def stop_when_serving() -> None:
        deadline = time.monotonic() + 15
        while "serving" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        address = out.getvalue().split("http://")[1].split()[0]
        with requests.get(f"http://{address}/bytes/3", timeout=TIMEOUT) as reply:
            assert reply.content == b"abc"
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_serving)
    stopper.start()
    status.append(serve_foreground(http_spec(workers=2), out=out))
    stopper.join(TIMEOUT)
    serving, stopped = out.getvalue().splitlines()
    assert serving.startswith("serving http on http://127.0.0.1:") and serving.endswith(" (2 processes)")
    assert stopped.startswith("stopped http on http://127.0.0.1:")
    assert stopped.endswith(": 1 requests served")
    assert status == [0]


def test_login_gives_a_token_that_me_accepts(server: ServerGroup, session: requests.Session) -> None:
    base = f"http://{server.address}"
    r = session.post(f"{base}/login", json={"user": "ann", "password": "pw"}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    token = r.json()["token"]
    assert r.json()["user"] == "ann"
    # the token is derived from the user: the same user gets the same token, another user another
    again = session.post(f"{base}/login", json={"user": "ann", "password": "other"}, timeout=TIMEOUT).json()["token"]
    bob = session.post(f"{base}/login", json={"user": "bob", "password": "pw"}, timeout=TIMEOUT).json()["token"]
    assert again == token != bob
    me = session.get(f"{base}/me", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert me.status_code == 200 and me.json() == {"user": "ann"}
    assert session.get(f"{base}/me", headers={"Authorization": f"Bearer {bob}"}, timeout=TIMEOUT).json() == {
        "user": "bob"}
    # /me is never answered from the byte cache: without a token, or with a forged one, it is 401
    assert session.get(f"{base}/me", timeout=TIMEOUT).status_code == 401
    forged = token.split(".")[0] + "." + "0" * 32
    assert session.get(f"{base}/me", headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT).status_code == 401
    assert session.get(f"{base}/me", headers={"Authorization": f"Basic {token}"}, timeout=TIMEOUT).status_code == 401


@pytest.mark.parametrize("body", [b"", b"not json", b'{"user": ""}', b'{"user": "a"}', b'["a"]',
                                  b'{"user": "a", "password": 5}'])
def test_login_without_user_and_password_is_400(server: ServerGroup, session: requests.Session, body: bytes) -> None:
    r = session.post(f"http://{server.address}/login", data=body, timeout=TIMEOUT)
    assert r.status_code == 400 and "user" in r.json()["error"]
