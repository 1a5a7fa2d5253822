"""The embedded echo server, with real processes and sockets on loopback."""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from loadtest.model.config import ServerSpec
from loadtest.execution.servers import ServerGroup

TIMEOUT = 5.0
MANY = 2000


def echo_spec(**overrides: object) -> ServerSpec:
    fields: dict[str, object] = {"name": "echo", "kind": "echo", "host": "127.0.0.1", "port": 0, "workers": 1}
    fields.update(overrides)
    return ServerSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerGroup]:
    with ServerGroup.start(echo_spec(workers=2)) as group:
        yield group


@pytest.fixture(scope="module")
def upper_server() -> Iterator[ServerGroup]:
    with ServerGroup.start(echo_spec(upper=True)) as group:
        yield group


@pytest.fixture(scope="module", autouse=True)
def enough_open_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 2 * MANY + 500)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(group: ServerGroup) -> socket.socket:
    return socket.create_connection((group.host, group.port), timeout=TIMEOUT)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        part = sock.recv(min(size, 65536))
        assert part, "the server closed the connection"
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def is_closed(sock: socket.socket, within: float = TIMEOUT) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_echo_returns_the_same_bytes(server: ServerGroup) -> None:
    with connect(server) as sock:
        for message in (b"x", b"hello\n", bytes(range(256)) * 4, os.urandom(200_000)):
            sock.sendall(message)
            assert read_exactly(sock, len(message)) == message


def test_upper_returns_ascii_upper_case(upper_server: ServerGroup) -> None:
    with connect(upper_server) as sock:
        message = b"Hello, World! \xc3\xa9\x00abc" * 100
        sock.sendall(message)
        assert read_exactly(sock, len(message)) == message.upper()


def test_replies_split_and_merged_arbitrarily(server: ServerGroup) -> None:
    message = os.urandom(100_000)
    with connect(server) as sock:
        offset = 0
        for piece in (1, 7, 1000, 3, 65536, 5000):  # sent in uneven pieces
            sock.sendall(message[offset:offset + piece])
            offset += piece
            time.sleep(0.005)
        sock.sendall(message[offset:])
        assert read_exactly(sock, len(message)) == message
        merged = b"".join(bytes([i]) * 100 for i in range(50))  # fifty messages in one send
        sock.sendall(merged)
        assert read_exactly(sock, len(merged)) == merged


def test_many_concurrent_connections_are_held_and_answered(server: ServerGroup) -> None:
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        for i in range(MANY):
            sock = connect(server)
            socks.append(sock)
        for i, sock in enumerate(socks):
            sock.sendall(b"%06d" % i)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, i)
        answered: dict[int, bytes] = {}
        deadline = time.monotonic() + 20
        while len(answered) < MANY and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                answered[key.data] = answered.get(key.data, b"") + key.fileobj.recv(64)  # type: ignore[union-attr]
                if len(answered[key.data]) == 6:
                    selector.unregister(key.fileobj)
        assert len(answered) == MANY
        assert all(answered[i] == b"%06d" % i for i in range(MANY))
    finally:
        selector.close()
        for sock in socks:
            sock.close()


def test_a_client_that_does_not_read_stalls_only_itself() -> None:
    with ServerGroup.start(echo_spec()) as group:
        [pid] = group.pids
        with connect(group) as hog, connect(group) as other:
            other.sendall(b"warm")
            assert read_exactly(other, 4) == b"warm"
            rss_before = psutil.Process(pid).memory_info().rss
            hog.setblocking(False)
            chunk = b"h" * 65536
            pushed = 0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and pushed < 64 * 1024 * 1024:
                try:
                    pushed += hog.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)  # buffers full both ways: the server stopped reading from us
                    if time.monotonic() > deadline - 2:
                        break
            for i in range(50):
                other.sendall(b"ping%02d" % i)
                assert read_exactly(other, 6) == b"ping%02d" % i
            grown = psutil.Process(pid).memory_info().rss - rss_before
            assert pushed < 64 * 1024 * 1024  # the hog was held back
            assert grown < 8 * 1024 * 1024


def test_unsent_echoes_are_capped_per_process_and_clients_that_read_are_served() -> None:
    # 300 clients send and never read. Each could leave the server holding a 64 KiB read it cannot send back
    # (19 MiB in all); with max_buffered 1 MiB, the connection whose unsent echo would pass the cap is closed.
    hogs_count, cap = 300, 2**20
    with ServerGroup.start(echo_spec(max_buffered=cap)) as group:
        [pid] = group.pids
        server = psutil.Process(pid)
        with connect(group) as steady:
            steady.sendall(b"warm")
            assert read_exactly(steady, 4) == b"warm"
            rss_before = server.memory_info().rss
            hogs = []
            for _ in range(hogs_count):
                hog = socket.socket()
                hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full soon: the server must hold
                hog.connect((group.host, group.port))
                hog.setblocking(False)
                hogs.append(hog)
            chunk = b"h" * 65536
            deadline = time.monotonic() + 10
            pushing = list(hogs)
            while pushing and time.monotonic() < deadline:  # each pushes until TCP holds it back, or it is closed
                still = []
                for hog in pushing:
                    try:
                        hog.send(chunk)
                        still.append(hog)
                    except BlockingIOError:
                        pass
                    except OSError:  # closed by the server: the cap
                        pass
                pushing = still
            time.sleep(0.3)
            for i in range(20):  # a client that reads its echoes is not held back by the hogs
                steady.sendall(b"ping%02d" % i)
                assert read_exactly(steady, 6) == b"ping%02d" % i
            # nor is one that sends far more than the cap while it reads, slower than it sends: the cap is full
            # of hogs, and room is made by closing those that went longest without reading, not the reader
            big = b"r" * (8 * 2**20)
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(read_exactly(steady, len(big))))
            reader.start()
            steady.sendall(big)
            reader.join(TIMEOUT * 4)
            assert got == [big]
            grown = server.memory_info().rss - rss_before
            closed = sum(is_closed(hog, within=0.05) for hog in hogs)
            for hog in hogs:
                hog.close()
    print(f"server RSS grew {grown / 2**20:.1f} MiB; {closed} of {hogs_count} non-reading clients closed")
    # The cap holds 16 reads of 64 KiB: most hogs are closed (161-277 of 300 measured; none without the cap,
    # where the server grew 5.6 MiB against 0.5-2.4 with it; RSS is printed, not asserted: the allocator's
    # heap does not shrink on cue)
    assert closed >= hogs_count // 3, closed


def test_connection_cap_closes_extra_connections() -> None:
    with ServerGroup.start(echo_spec(max_connections=5)) as group:
        held = [connect(group) for _ in range(5)]
        try:
            for sock in held:
                sock.sendall(b"ok")
                assert read_exactly(sock, 2) == b"ok"
            with connect(group) as extra:
                assert is_closed(extra, within=2.0)
            held.pop().close()
            time.sleep(0.1)
            with connect(group) as again:
                again.sendall(b"back")
                assert read_exactly(again, 4) == b"back"
        finally:
            for sock in held:
                sock.close()


OPEN_FILE_LIMIT = 256  # the server's, soft and hard, so it cannot lift it
PAST_THE_LIMIT = 400  # connections the test opens


def _lower_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


@pytest.mark.parametrize("options, sentence", [
    ([], "connections are open, its cap, so new ones are closed at once until some end"),
    (["--max-connections", "1000"], "cannot accept more connections: this process's open-file limit "
                                    f"({OPEN_FILE_LIMIT}) is reached with "),
], ids=["default-cap", "cap-above-the-limit"])
def test_serve_echo_past_the_open_file_limit_says_so_once_and_keeps_serving(options: list[str], sentence: str) -> None:
    """More connections than the server's open-file limit: one sentence on stderr, no traceback, still echoing.

    By default the cap fits the limit: connections past it are closed at once. With
    a cap above the limit, accepting fails (EMFILE) and pauses; connections wait
    in the backlog and are accepted once descriptors free up.
    """
    server = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "serve", "echo", "--listen", "127.0.0.1:0", "--workers", "1", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_lower_open_file_limit)
    socks: list[socket.socket] = []
    try:
        serving = server.stdout.readline() if server.stdout else ""  # "serving echo on 127.0.0.1:PORT (1 process)"
        assert serving.startswith("serving echo on 127.0.0.1:"), serving
        port = int(serving.split(":")[1].split()[0])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(PAST_THE_LIMIT)]
        for i, sock in enumerate(socks[:10]):  # the first connections are served throughout
            sock.sendall(b"early%d" % i)
            assert read_exactly(sock, 6) == b"early%d" % i
        waiting = socks.pop()  # past the limit: closed at once (default cap), or waiting to be accepted
        for sock in socks[100:]:  # free 299 descriptors
            sock.close()
        del socks[100:]
        if options:
            waiting.sendall(b"waited")
            assert read_exactly(waiting, 6) == b"waited"  # accepted once descriptors were free
        else:
            assert is_closed(waiting)
        waiting.close()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as again:
            again.sendall(b"again")
            assert read_exactly(again, 5) == b"again"
        for i, sock in enumerate(socks[:10]):
            sock.sendall(b"later%d" % i)
            assert read_exactly(sock, 6) == b"later%d" % i
    finally:
        for sock in socks:
            sock.close()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert "Traceback" not in err
    assert err.count(sentence) == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("echo server process ") and err.rstrip().endswith(".")


def test_idle_timeout_closes_only_idle_connections() -> None:
    with ServerGroup.start(echo_spec(idle_timeout=0.5)) as group, connect(group) as idle, connect(group) as busy:
        started = time.monotonic()
        for _ in range(8):  # 1.6 s of traffic every 0.2 s
            busy.sendall(b"tick")
            assert read_exactly(busy, 4) == b"tick"
            time.sleep(0.2)
        assert is_closed(idle, within=0.1)
        assert time.monotonic() - started < 2.5
        busy.sendall(b"still")
        assert read_exactly(busy, 5) == b"still"


def test_counts_at_stop() -> None:
    group = ServerGroup.start(echo_spec(workers=2))
    try:
        sent = 0
        for _ in range(3):
            with connect(group) as sock:
                for i in range(20):
                    message = b"m" * (100 + i)
                    sock.sendall(message)  # the next message only after the reply: one read each
                    assert read_exactly(sock, len(message)) == message
                    sent += len(message)
        assert group.served() == {"messages": 60, "bytes": sent, "connections": 3, "closes": 0}
    finally:
        counts = group.stop()
    assert counts == {"messages": 60, "bytes": sent, "connections": 3, "closes": 0}
    assert not any(psutil.pid_exists(pid) for pid in group.pids)


def test_hostile_clients_leave_everyone_else_served_and_memory_bounded() -> None:
    """Garbage, half messages, silent clients and thousands of connects and disconnects."""
    import os

    with ServerGroup.start(echo_spec()) as group:
        [pid] = group.pids
        server = psutil.Process(pid)
        with connect(group) as steady:
            steady.sendall(b"hello")
            assert read_exactly(steady, 5) == b"hello"
            rss_before = server.memory_info().rss
            silent = [connect(group) for _ in range(200)]  # connect and never send
            for _ in range(2000):  # connect, send half a message or garbage, vanish
                with connect(group) as c:
                    c.sendall(os.urandom(37))
            garbage = os.urandom(100_000)
            with connect(group) as g:
                g.sendall(garbage)
                assert read_exactly(g, len(garbage)) == garbage  # bytes are bytes: echoed unchanged
            for i in range(20):
                steady.sendall(b"still%02d" % i)
                assert read_exactly(steady, 7) == b"still%02d" % i
            for c in silent:
                c.close()
            assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
            assert server.memory_info().rss - rss_before < 16 * 1024 * 1024
        served = group.stop()
        assert served["connections"] >= 2202
