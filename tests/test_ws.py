"""WebSocket targets against real sockets: the embedded echo server's WebSocket mode, hostile servers, the pipeline.

Most tests drive a `WsDriver` in this (unpatched) process for a second or so, as test_tcp_paced.py drives
a `PacedTcp`, against the embedded echo server (`ws: true`) or a thread server that speaks WebSocket
through wsproto and misbehaves on purpose. The last ones run the real pipeline and the command line.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gevent.pool import Pool
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong, RejectConnection,
                            Request, TextMessage)

from tests.driven import stop_like_a_worker
from loadtest.model.config import ServerSpec, parse_config
from loadtest.execution.controller import run
from loadtest.model.kinds import WsTarget
from loadtest.engine.protocols import Deadlines
from loadtest.engine.protocols.ws import WsDriver
from loadtest.execution.servers import ServerGroup
from loadtest.core.stats import decode_histogram
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.budget import Budget, Level

from .test_run import read_csv


def ws_target(url: str, **fields: object) -> WsTarget:
    target = parse_config({"duration": "1s", "targets": [{"ws": url, **fields}]}).targets[0]
    assert isinstance(target, WsTarget)
    return target


class Driven:
    """A `WsDriver` running in this process, stopped as the worker stops it."""

    def __init__(self, url: str, requests: int | None = None, level: Level | None = None, pause: float = 0.05,
                 **fields: object) -> None:
        target = ws_target(url, **fields)
        self.recorder = TargetRecorder(0)
        self.budget = Budget(requests)
        self.deadlines = Deadlines()
        self.driver = WsDriver(target, url, self.recorder, self.budget, deadlines=self.deadlines,
                               reconnect_pause=pause)
        self.pool = Pool()
        self.greenlet = self.pool.spawn(self.driver.drive, self.pool, target.connections, level)

    def run(self, seconds: float) -> Driven:
        self.greenlet.join(seconds)
        return self

    def stop(self, grace: float = 1.0) -> int:
        """Stop as the worker does; return how many messages were cancelled."""
        return stop_like_a_worker(self.driver, self.pool, self.budget, self.deadlines, self.recorder, grace)


@pytest.fixture(scope="module")
def ws_echo() -> Iterator[dict[bool, ServerGroup]]:
    groups = {upper: ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1,
                                                  ws=True, upper=upper)) for upper in (False, True)}
    yield groups
    for group in groups.values():
        group.stop()


def url_of(group: ServerGroup, path: str = "/echo?room=1") -> str:
    return f"ws://{group.address}{path}"


# -- against the embedded echo server ------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{"message": "Hello, WebSocket!"}, {"size": 1000}, {"size": 300_000},
                                    {"message": "héllo wörld", "rate": 60}])
def test_every_message_is_counted_once_as_the_server_counts_it_and_every_close_is_normal(
        ws_echo: dict[bool, ServerGroup], fields: dict[str, object]) -> None:
    group = ws_echo[False]
    before = group.served()
    run = Driven(url_of(group), connections=3, **fields).run(0.8)
    assert run.stop() == 0
    snap = run.recorder.snapshot()
    assert not snap.failures and snap.connects == 3 and snap.requests > (10 if "rate" not in fields else 30)
    after = group.served()
    assert after["messages"] - before["messages"] == snap.requests  # exactly: the server sees whole messages
    size = len(run.driver.target.message)
    assert after["bytes"] - before["bytes"] == snap.content_bytes == size * snap.requests
    assert snap.bytes_out > snap.content_bytes  # frames: a header and a masking key around each message
    assert decode_histogram(snap.latency).get_total_count() == snap.requests
    assert decode_histogram(snap.connect_latency).get_total_count() == 3
    deadline = time.monotonic() + 2
    while group.served()["closes"] - before["closes"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert group.served()["closes"] - before["closes"] == 3  # each connection ended with a close frame, code 1000


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("expect", ["echo", "upper", "any"])
def test_reply_checks(ws_echo: dict[bool, ServerGroup], upper: bool, expect: str) -> None:
    run = Driven(url_of(ws_echo[upper]), connections=1, message="Hello, ß!", expect=expect, pause=0.01).run(0.4)
    run.stop()
    snap = run.recorder.snapshot()
    failures = dict(snap.failures)
    if expect == "any" or (expect == "upper") == upper:
        assert not failures and snap.requests > 10
    else:
        assert failures.keys() == {"mismatch"} and failures["mismatch"] == snap.requests >= 3
        sample = dict(snap.failure_samples)["mismatch"]
        assert ("HELLO, ß!" if upper else "Hello, ß!").encode() in eval(sample.split("got ")[1].split(", expected")[0])


def test_stages_ramp_the_connections_and_a_requests_budget_is_spent_exactly(ws_echo: dict[bool, ServerGroup]) -> None:
    group = ws_echo[False]
    before = group.served()["messages"]
    level = Level(2.0)
    run = Driven(url_of(group), requests=500, level=level, connections=6, size=16)
    run.run(0.3)
    assert run.recorder.open_connections <= 2
    level.value = 6.0
    run.run(3)
    assert run.greenlet.dead  # the budget is spent: the driver ends by itself
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.requests == 500 and not snap.failures
    assert group.served()["messages"] - before == 500


# -- hostile and odd servers -----------------------------------------------------------------------------

Behaviour = Callable[[socket.socket, WSConnection], None]


def accept(conn: socket.socket) -> WSConnection | None:
    """The server's side of the upgrade, through wsproto."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = conn.recv(65536)
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                conn.sendall(ws.send(AcceptConnection()))
                return ws


def messages(conn: socket.socket, ws: WSConnection) -> Iterator[Message]:  # type: ignore[type-arg]
    """Each whole message the client sends (pongs and closes consumed)."""
    parts: list[object] = []
    while True:
        data = conn.recv(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                return
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    whole = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
                    parts = []
                    yield type(event)(data=whole)


def ws_server(raw_server, behaviour: Behaviour):  # type: ignore[no-untyped-def]
    def handle(conn: socket.socket) -> None:
        ws = accept(conn)
        if ws is not None:
            behaviour(conn, ws)
    return raw_server(handle)


def test_server_pings_are_answered_and_the_replies_after_them_still_count(raw_server) -> None:
    pongs: list[bytes] = []

    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        ws.receive_data(b"")
        n = 0
        data = b""
        while chunk := conn.recv(65536):
            ws.receive_data(chunk)
            for event in ws.events():
                if isinstance(event, Pong):
                    pongs.append(bytes(event.payload))
                elif isinstance(event, TextMessage):
                    n += 1
                    # a ping before every reply, in the same write, and one split across two writes
                    data = ws.send(Ping(payload=f"p{n}".encode())) + ws.send(Message(data=event.data))
                    if n % 2:
                        conn.sendall(data)
                    else:
                        conn.sendall(data[:3])
                        time.sleep(0.002)
                        conn.sendall(data[3:])

    server = ws_server(raw_server, behaviour)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, message="ping me").run(0.5)
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures and snap.requests >= 10
    assert pongs[:3] == [b"p1", b"p2", b"p3"] and len(pongs) >= snap.requests - 1
    assert run.driver.conns[0].parser is None  # back to comparing once the parser held nothing partial


def test_pings_between_paced_messages_are_answered(raw_server) -> None:
    pongs: list[bytes] = []
    lock = threading.Lock()

    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        stop = threading.Event()

        def pinger() -> None:
            n = 0
            while not stop.wait(0.03):  # every 30 ms, whatever the messages do
                n += 1
                with lock:
                    conn.sendall(ws.send(Ping(payload=b"%d" % n)))

        thread = threading.Thread(target=pinger, daemon=True)
        thread.start()
        try:
            while chunk := conn.recv(65536):
                with lock:
                    ws.receive_data(chunk)
                    for event in ws.events():
                        if isinstance(event, Pong):
                            pongs.append(bytes(event.payload))
                        elif isinstance(event, BytesMessage):
                            conn.sendall(ws.send(Message(data=event.data)))
        finally:
            stop.set()
            thread.join(1)

    server = ws_server(raw_server, behaviour)
    # one message every 250 ms: most pings come while no message is in flight
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, size=32, rate=4).run(0.8)
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures and 2 <= snap.requests <= 4
    assert len(pongs) >= 15 and pongs[:3] == [b"1", b"2", b"3"]


def test_a_fragmented_reply_is_one_message(raw_server) -> None:
    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        for message in messages(conn, ws):
            data = message.data
            conn.sendall(ws.send(Message(data=data[:5], message_finished=False)))
            conn.sendall(ws.send(Message(data=data[5:], message_finished=True)))

    server = ws_server(raw_server, behaviour)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=2, size=40).run(0.4)
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures and snap.requests >= 10 and snap.content_bytes == 40 * snap.requests


def test_a_close_frame_is_closed_with_its_code_and_answered(raw_server) -> None:
    answered: list[int] = []

    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        for _ in messages(conn, ws):
            conn.sendall(ws.send(CloseConnection(code=1011, reason="boom")))
            conn.settimeout(1)
            ws.receive_data(conn.recv(65536))
            answered.extend(e.code for e in ws.events() if isinstance(e, CloseConnection))
            return

    server = ws_server(raw_server, behaviour)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, size=8, pause=0.1).run(0.5)
    run.stop()
    snap = run.recorder.snapshot()
    failures = dict(snap.failures)
    assert failures.keys() == {"closed_1011"} and 2 <= failures["closed_1011"] <= 7, failures
    assert dict(snap.failure_samples)["closed_1011"] == "the server closed the WebSocket with code 1011: boom"
    assert answered and set(answered) == {1011}  # the client's close frame repeats the server's code


def test_a_server_that_closes_the_socket_mid_reply_is_closed(raw_server) -> None:
    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        for message in messages(conn, ws):
            conn.sendall(ws.send(Message(data=message.data))[:6])
            return

    server = ws_server(raw_server, behaviour)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, size=20, pause=0.1).run(0.35)
    run.stop()
    assert dict(run.recorder.snapshot().failures).keys() == {"closed"}


def test_a_frame_that_is_not_valid_websocket_is_a_protocol_failure(raw_server) -> None:
    def behaviour(conn: socket.socket, ws: WSConnection) -> None:
        for _ in messages(conn, ws):
            conn.sendall(b"\x82\x88" + b"\x01\x02\x03\x04" + b"12345678")  # masked: no server may send that
            return

    server = ws_server(raw_server, behaviour)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, size=8, pause=0.1).run(0.35)
    run.stop()
    snap = run.recorder.snapshot()
    assert dict(snap.failures).keys() == {"protocol"}
    assert "masked frame" in dict(snap.failure_samples)["protocol"]


@pytest.mark.parametrize("status", [403, 404])
def test_a_rejected_upgrade_is_a_connect_failure_with_its_status(raw_server, status: int) -> None:
    def handle(conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(conn.recv(65536))
        for event in ws.events():
            if isinstance(event, Request):
                conn.sendall(ws.send(RejectConnection(status_code=status)))

    server = raw_server(handle)
    run = Driven(f"ws://127.0.0.1:{server.port}/", connections=2, size=8, pause=0.1).run(0.35)
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.connects == 0 and snap.requests == 0
    assert dict(snap.connect_failures).keys() == {f"rejected_{status}"}
    assert dict(snap.failure_samples)[f"connect:rejected_{status}"] == (
        f"the server answered the upgrade with HTTP {status}")


def test_a_refused_connect_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = Driven(f"ws://127.0.0.1:{port}/", connections=1, pause=0.1).run(0.35)
    run.stop()
    assert dict(run.recorder.snapshot().connect_failures).keys() == {"refused"}


def hostile(raw_server, answer: Callable[[socket.socket], None]):  # type: ignore[no-untyped-def]
    """A server whose upgrade (or first reply) is `answer`, beside which a well-behaved echo target runs."""
    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        answer(conn)
    return raw_server(handle)


def never_upgrades(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(3)


def endless_frame(conn: socket.socket) -> None:
    ws = accept(conn)
    assert ws is not None
    conn.recv(65536)
    conn.sendall(b"\x82\x7e\xff\xff" + b"abcdefghijklmnop")  # 65,535 bytes for a 16-byte message, its echo first,
    try:
        for _ in range(2000):  # ... and bytes without end (bounded here: 2,000 writes)
            conn.sendall(b"x" * 4096)
    except OSError:
        pass


def huge_header(conn: socket.socket) -> None:
    ws = accept(conn)
    assert ws is not None
    conn.recv(65536)
    conn.sendall(b"\x82\x7f" + struct.pack("!Q", 2**31) + b"y" * 64)  # 2 GiB announced
    time.sleep(3)


@pytest.mark.parametrize("answer, kind, where", [
    (never_upgrades, "connect_timeout", "connect"),
    (endless_frame, "mismatch", "message"),
    (huge_header, "mismatch", "message"),
])
def test_a_hostile_server_costs_one_connection_never_the_run(raw_server, ws_echo: dict[bool, ServerGroup],
                                                              answer, kind: str, where: str) -> None:
    server = hostile(raw_server, answer)
    bad = Driven(f"ws://127.0.0.1:{server.port}/", connections=1, size=16, timeout="400ms", pause=5)
    good = Driven(url_of(ws_echo[False]), connections=2, size=16)
    started = time.monotonic()
    good.run(0.9)
    bad.run(0.0)
    bad.stop()
    good.stop()
    assert time.monotonic() - started < 3
    snap = bad.recorder.snapshot()
    counted = dict(snap.connect_failures if where == "connect" else snap.failures)
    assert counted == {kind: 1}, (dict(snap.failures), dict(snap.connect_failures))
    if kind == "connect_timeout":
        assert dict(snap.failure_samples)["connect:connect_timeout"] == "no upgrade within 0.4 s"
    else:
        assert snap.bytes_in < 200_000  # judged once the reply passed its length, not read to its end
        sample = dict(snap.failure_samples)["mismatch"]
        assert ("got b'abcdefghijklmnopxx" if answer is endless_frame else "got b'yyyy") in sample, sample
    g = good.recorder.snapshot()
    assert not g.failures and g.requests > 50  # the well-behaved target never noticed


def test_wss_upgrades_over_tls(raw_server, tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make a test certificate and is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            ws = accept(tls)  # type: ignore[arg-type]
            if ws is not None:
                for message in messages(tls, ws):  # type: ignore[arg-type]
                    tls.sendall(ws.send(Message(data=message.data)))

    server = raw_server(handle)
    run = Driven(f"wss://127.0.0.1:{server.port}/secure", connections=2, message="over TLS", verify_tls=False)
    run.run(0.6)
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures and not snap.connect_failures and snap.requests > 10
    checked = Driven(f"wss://127.0.0.1:{server.port}/", connections=1, message="x", pause=5).run(0.3)
    checked.stop()
    assert dict(checked.recorder.snapshot().connect_failures).keys() == {"tls"}  # a self-signed certificate


# -- the embedded server's WebSocket mode against raw clients ---------------------------------------------

def upgraded(port: int) -> tuple[socket.socket, WSConnection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target="/")))
    while True:
        ws.receive_data(sock.recv(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return sock, ws


def events_until(sock: socket.socket, ws: WSConnection, done: Callable[[list[object]], bool]) -> list[object]:
    seen: list[object] = []
    while not done(seen):
        data = sock.recv(65536)
        ws.receive_data(data or None)
        seen.extend(ws.events())
        if not data:
            break
    return seen


def test_the_echo_server_answers_pings_and_upper_cases_text_only_in_ascii(ws_echo: dict[bool, ServerGroup]) -> None:
    sock, ws = upgraded(ws_echo[True].port)
    with sock:
        sock.sendall(ws.send(Ping(payload=b"hi")) + ws.send(Message(data="straße")) + ws.send(Message(data=b"ab")))
        seen = events_until(sock, ws, lambda s: sum(isinstance(e, Message) for e in s) == 2)
        assert isinstance(seen[0], Pong) and seen[0].payload == b"hi"
        assert [(type(e).__name__, e.data) for e in seen[1:]] == [("TextMessage", "STRAßE"), ("BytesMessage", b"AB")]
        sock.sendall(ws.send(CloseConnection(code=1000)))
        seen = events_until(sock, ws, lambda s: any(isinstance(e, CloseConnection) for e in s))
        assert [e.code for e in seen if isinstance(e, CloseConnection)] == [1000]


def test_an_idle_websocket_is_closed_going_away() -> None:
    group = ServerGroup.start(ServerSpec(name="idle", kind="echo", host="127.0.0.1", port=0, workers=1, ws=True,
                                         idle_timeout=0.3))
    try:
        sock, ws = upgraded(group.port)
        with sock:
            started = time.monotonic()
            seen = events_until(sock, ws, lambda s: any(isinstance(e, CloseConnection) for e in s))
            assert [e.code for e in seen if isinstance(e, CloseConnection)] == [1001]
            assert 0.25 <= time.monotonic() - started < 2
    finally:
        group.stop()


def test_the_echo_server_answers_many_messages_in_one_write_each_once(ws_echo: dict[bool, ServerGroup]) -> None:
    group = ws_echo[False]
    before = group.served()["messages"]
    sock, ws = upgraded(group.port)
    with sock:
        sock.sendall(b"".join(ws.send(Message(data=f"m{i}")) for i in range(300)))  # one write, 300 frames
        seen = events_until(sock, ws, lambda s: sum(isinstance(e, Message) for e in s) == 300)
        assert [e.data for e in seen if isinstance(e, Message)] == [f"m{i}" for i in range(300)]
    assert group.served()["messages"] - before == 300


def test_the_echo_server_refuses_what_is_not_an_upgrade_and_closes_a_message_too_big(
        ws_echo: dict[bool, ServerGroup]) -> None:
    with socket.create_connection(("127.0.0.1", ws_echo[False].port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    sock, ws = upgraded(ws_echo[False].port)
    with sock:
        sock.sendall(ws.send(Message(data=b"", message_finished=False)))  # a message without end...
        closes: list[int] = []
        for _ in range(100):  # ... 16 MiB and more, in 256 KiB frames (the cap is 16 MiB), until it is closed
            if closes:
                break
            try:
                sock.sendall(ws.send(Message(data=b"z" * 256 * 1024, message_finished=False)))
            except OSError:
                break
            sock.setblocking(False)
            try:
                while data := sock.recv(1 << 20):
                    ws.receive_data(data)
                    closes += [e.code for e in ws.events() if isinstance(e, CloseConnection)]
            except BlockingIOError:
                pass
            sock.setblocking(True)
        sock.settimeout(5)
        if not closes:  # the server lingers after its close frame, so the frame is read, not lost to a reset
            closes = [e.code for e in events_until(sock, ws, lambda s: any(isinstance(e, CloseConnection) for e in s))
                      if isinstance(e, CloseConnection)]
        assert closes == [1009]


# -- the pipeline and the command line --------------------------------------------------------------------

def test_a_ws_run_counts_what_the_server_counts_and_closes_every_connection_normally(tmp_path: Path) -> None:
    config = parse_config({
        "name": "ws", "duration": "2s", "workers": 2,
        "servers": [{"name": "echo", "kind": "echo", "ws": True, "workers": 1}],
        "targets": [{"name": "chat", "ws": "ws://{echo}/chat", "connections": 20, "message": "hello there"},
                    {"name": "paced", "ws": "ws://{echo}/feed", "connections": 30, "size": 256, "rate": 300,
                     "source_ips": "127.0.0.1-127.0.0.2"}]})
    result = run(config, out_dir=tmp_path / "run")
    assert result.exit_status == 0, result.shortfalls
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    chat, paced = summary["targets"]
    assert chat["failures"] == paced["failures"] == 0
    assert 300 <= paced["requests"] <= 700  # 300 messages/s in all for about 2 s
    served = result.servers[0]["served"]
    assert served["messages"] == chat["requests"] + paced["requests"]
    assert served["connections"] == served["closes"] == 50  # every connection ended with a normal close frame
    assert chat["connections"]["opened"] == 20 and paced["connections"]["peak_open"] == 30
    rows = read_csv(tmp_path / "run" / "stats.csv")
    assert [(r["Type"], r["Name"]) for r in rows[:2]] == [("WS", "chat"), ("WS", "paced")]
    assert {(r["Type"], r["Name"]) for r in rows} >= {("CONNECT", "chat"), ("CONNECT", "paced")}


@pytest.mark.parametrize("target, message", [
    ({"ws": "ws://[::1"}, "targets[0].ws: is not a valid URL, got 'ws://[::1'"),
    ({"ws": "http://127.0.0.1:9000/"}, "targets[0].ws: must be a ws:// or wss:// URL (an HTTP target is written url:)"),
    ({"ws": "ws://127.0.0.1:9000/", "size": 64, "expect": "upper"},
     "targets[0].expect: upper needs a text message (message:); a binary one (size:) has no upper case"),
])
def test_bad_ws_targets_are_one_sentence_and_exit_2(tmp_path: Path, target: dict[str, object], message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"duration": "1s", "targets": [target]}))
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_serve_echo_ws_serves_websocket_until_stopped(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "serve", "echo", "--ws", "--upper", "--listen",
                             f"127.0.0.1:{port}", "--workers", "1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"serving echo on ws://127.0.0.1:{port} (1 process, upper-casing")
        sock, ws = upgraded(port)
        with sock:
            sock.sendall(ws.send(Message(data="quiet")))
            seen = events_until(sock, ws, lambda s: any(isinstance(e, Message) for e in s))
            assert [e.data for e in seen if isinstance(e, Message)] == ["QUIET"]
            sock.sendall(ws.send(CloseConnection(code=1000)))
            events_until(sock, ws, lambda s: any(isinstance(e, CloseConnection) for e in s))
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "1 connections, 1 messages, 5 bytes echoed, 1 normal closes" in out
