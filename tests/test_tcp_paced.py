"""Paced TCP connections driven from one greenlet and hub callbacks (`PacedTcp`), against real sockets.

Most tests drive a `PacedTcp` in this (unpatched) process for a second or so against the embedded echo
server or a raw-socket server that misbehaves on purpose, then stop it as the worker does: the budget
says stop, what is in flight may finish, the rest is killed and recorded as cancelled. The last ones
run the real pipeline (controller, worker process) with paced targets.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gevent.pool import Pool

from tests.driven import stop_like_a_worker
from loadtest.model.config import ServerSpec
from loadtest.engine.protocols import Deadlines
from loadtest.engine.protocols.tcp_paced import PacedTcp
from loadtest.execution.servers import ServerGroup
from loadtest.core.stats import decode_histogram
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.budget import Budget, Level

from .test_tcp import echo_with, read_exact, tcp_run, tcp_target


class Driven:
    """A `PacedTcp` running in this process, with the worker's stop sequence."""

    def __init__(self, port: int, share: int | None = None, requests: int | None = None, level: Level | None = None,
                 pause: float = 0.05, address: str = "", **fields: object) -> None:
        target = tcp_target(port, **fields)
        self.recorder = TargetRecorder(0)
        self.budget = Budget(requests)
        self.deadlines = Deadlines()
        self.paced = PacedTcp(target, address or f"127.0.0.1:{port}", self.recorder, self.budget,
                              deadlines=self.deadlines, reconnect_pause=pause)
        self.pool = Pool()
        self.driver = self.pool.spawn(self.paced.drive, self.pool, share or target.connections, level)

    def run(self, seconds: float) -> None:
        self.driver.join(seconds)

    def stop(self, grace: float = 1.0) -> int:
        """Stop as the worker does; return how many messages were cancelled."""
        return stop_like_a_worker(self.paced, self.pool, self.budget, self.deadlines, self.recorder, grace)


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerGroup]:
    group = ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1))
    yield group
    group.stop()


def test_each_connection_sends_on_its_own_schedule_and_every_reply_is_checked(echo: ServerGroup) -> None:
    before = echo.served()["messages"]
    # 10 connections at 100 messages/s in all: each sends every 100 ms from a random phase
    run = Driven(echo.port, connections=10, rate=100, size=48)
    run.run(1.05)
    assert run.stop() == 0
    snap = run.recorder.snapshot()
    assert not snap.failures and snap.connects == 10
    # 1 s of turns: 10 or 11 per connection, never more (the schedule does not drift or bunch)
    assert 80 <= snap.requests <= 110, snap.requests
    assert echo.served()["messages"] - before == snap.requests
    assert snap.bytes_in == snap.bytes_out == 48 * snap.requests
    latency = decode_histogram(snap.latency)
    assert latency.get_total_count() == snap.requests and latency.get_max_value() < 500e6


@pytest.mark.parametrize("expect, upper", [("echo", True), ("upper", False)])
def test_a_reply_that_is_not_the_expected_one_is_a_mismatch(expect: str, upper: bool) -> None:
    group = ServerGroup.start(ServerSpec(name="e", kind="echo", host="127.0.0.1", port=0, workers=1, upper=upper))
    try:
        run = Driven(group.port, connections=2, rate=40, message="Hello, echo!", expect=expect, pause=0.01)
        run.run(0.6)
        run.stop()
    finally:
        group.stop()
    snap = run.recorder.snapshot()
    failures = dict(snap.failures)
    assert failures.keys() == {"mismatch"} and failures["mismatch"] >= 4
    assert snap.requests == failures["mismatch"] and snap.connects >= failures["mismatch"]  # each one reconnects
    sample = dict(snap.failure_samples)["mismatch"]
    assert (b"HELLO, ECHO!" if upper else b"Hello, echo!").decode() in sample and "expected" in sample


def test_a_reply_in_one_byte_writes_with_a_wrong_last_byte_is_a_mismatch(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 8):
            for b in data[:-1] + b"!":
                conn.sendall(bytes([b]))
                time.sleep(0.001)

    server = raw_server(handle)
    run = Driven(server.port, connections=1, rate=20, size=8, pause=0.01)
    run.run(0.5)
    run.stop()
    snap = run.recorder.snapshot()
    assert dict(snap.failures).keys() == {"mismatch"} and snap.bytes_in == 8 * snap.requests
    assert "got b'abcdefg!'" in dict(snap.failure_samples)["mismatch"]


def test_a_reply_split_into_one_byte_writes_is_one_message(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 16):
            for b in data:
                conn.sendall(bytes([b]))

    server = raw_server(handle)
    run = Driven(server.port, connections=1, rate=20, size=16)
    run.run(0.5)
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures and 8 <= snap.requests <= 11 and snap.connects == 1


def test_a_server_that_closes_before_the_reply_is_closed_and_the_connection_reopens(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_exact(conn, 8)
        conn.sendall(b"abc")  # part of the reply, then gone

    server = raw_server(handle)
    # failed before any reply: each reconnect waits the pause (100 ms), not the next turn (every 25 ms)
    run = Driven(server.port, connections=1, rate=40, size=8, pause=0.1)
    run.run(0.75)
    run.stop()
    snap = run.recorder.snapshot()
    failures = dict(snap.failures)
    assert failures.keys() == {"closed"} and 3 <= failures["closed"] <= 9, failures
    assert snap.bytes_in == 3 * failures["closed"] and server.connections >= snap.connects
    assert "closed the connection" in dict(snap.failure_samples)["closed"]


def test_a_reset_is_reset(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        read_exact(conn, 8)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = raw_server(handle)
    run = Driven(server.port, connections=2, rate=20, size=8, pause=0.05)
    run.run(0.5)
    run.stop()
    failures = dict(run.recorder.snapshot().failures)
    assert failures.keys() == {"reset"} and failures["reset"] >= 2


def test_a_silent_server_is_a_read_timeout_from_the_first_byte_written(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)
        while conn.recv(1024):
            pass

    server = raw_server(handle)
    run = Driven(server.port, connections=3, rate=30, size=8, timeout="200ms", pause=0.01)
    run.run(0.9)
    run.stop(grace=0.0)
    snap = run.recorder.snapshot()
    failures = dict(snap.failures)
    # three connections each time out after 200 ms, reconnect after the pause, and go again
    assert failures["read_timeout"] >= 6 and failures.keys() <= {"read_timeout", "cancelled"}
    latency = decode_histogram(snap.latency)
    # from the scheduled send: never less than the timeout; well before the next 200 ms, even on a busy machine
    assert latency.get_min_value() >= 199e6 and latency.get_max_value() < 600e6
    assert "no whole reply within 0.2 s" in dict(snap.failure_samples)["read_timeout"]


def test_messages_in_flight_at_stop_count_for_the_grace_period_and_are_cancelled_once(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)
        while conn.recv(1024):
            pass

    server = raw_server(handle)
    run = Driven(server.port, connections=5, rate=50, size=8, timeout="30s")
    run.run(0.4)  # each connection has sent its first message (a turn every 100 ms) and waits
    assert run.deadlines.in_flight()  # the worker's grace period waits for them
    assert run.stop(grace=0.2) == 5
    snap = run.recorder.snapshot()
    assert dict(snap.failures) == {"cancelled": 5} and snap.requests == 5 and snap.bytes_out == 40
    assert decode_histogram(snap.latency).get_total_count() == 0
    assert not run.deadlines.in_flight()


def test_a_reply_late_past_the_next_turn_sends_the_next_message_at_once(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 8):
            time.sleep(0.25)
            conn.sendall(data)

    server = raw_server(handle)
    run = Driven(server.port, connections=1, rate=10, size=8)  # a turn every 100 ms, a reply after 250 ms
    run.run(1.2)
    run.stop(grace=0.0)
    snap = run.recorder.snapshot()
    # replies gate the messages: about one per 250 ms, not one per turn
    assert 3 <= snap.requests - dict(snap.failures).get("cancelled", 0) <= 5
    latency = decode_histogram(snap.latency)
    # each is measured from its own slot, which falls further behind: 250, 400, 550 ms, ...
    assert latency.get_min_value() >= 240e6 and latency.get_max_value() >= 500e6


def test_the_requests_budget_is_exact_and_the_driver_ends_by_itself(echo: ServerGroup) -> None:
    before = echo.served()["messages"]
    run = Driven(echo.port, connections=8, rate=400, size=16, requests=37)
    run.run(3.0)
    assert run.driver.dead  # spent, in-flight messages done: it returned
    assert run.stop() == 0
    snap = run.recorder.snapshot()
    assert snap.requests == 37 and not snap.failures and echo.served()["messages"] - before == 37


def test_a_place_a_ramp_closes_before_its_first_message_gives_its_budget_unit_back(echo: ServerGroup) -> None:
    # A connect takes a unit of `requests:` for the connection's first message. A ramp down that closes the
    # place before that message gives the unit back: it was never a request (it was lost before: 74 of 150
    # sent, the run ended early as spent).
    before = echo.served()["messages"]
    level = Level(40.0)
    run = Driven(echo.port, share=40, level=level, connections=40, rate=40, size=16, requests=60)
    run.run(0.1)  # connected, most first turns (random phases over a second) still ahead
    level.value = 0.0
    run.run(0.3)  # the ramp closes them all
    assert run.recorder.open_connections == 0 and run.budget.left > 20  # the unsent ones' units are back
    level.value = 40.0
    run.run(8.0)  # the budget is spent by messages, and the driver returns by itself
    assert run.driver.dead
    assert run.stop() == 0
    snap = run.recorder.snapshot()
    assert snap.requests == 60 and not snap.failures and echo.served()["messages"] - before == 60


def test_a_unit_given_back_after_the_budget_ran_out_is_still_sent(echo: ServerGroup, monkeypatch) -> None:
    # Place 0 sends first and spends the last unit it can; place 1 opens (taking a unit for its first message)
    # and is closed by the ramp before its turn, giving that unit back while place 0, the only one open, has
    # already found the budget spent. Place 0 must take its turn again, or the unit is never sent and the
    # driver never ends by itself.
    phases = iter([0.0, 0.9] + [0.5] * 100)  # each connection's first turn, as a share of the interval
    monkeypatch.setattr("random.random", lambda: next(phases))
    before = echo.served()["messages"]
    level = Level(1.0)
    run = Driven(echo.port, share=2, level=level, connections=2, rate=2, size=16, requests=2)
    run.run(0.3)  # place 0 sent at once; its next turn is a second later
    level.value = 2.0
    run.run(0.8)  # place 1 opened; its turn is at 0.9 of a second; place 0's turn at 1 s finds nothing left
    level.value = 1.0
    run.run(3.0)
    assert run.driver.dead, (run.budget.left, run.paced.tickets)
    assert run.stop() == 0
    assert echo.served()["messages"] - before == 2


def test_a_message_stuck_until_its_timeout_does_not_keep_the_finished_ones_queued(raw_server) -> None:
    first = [True]

    def handle(conn: socket.socket) -> None:
        silent, first[0] = first[0], False
        while data := read_exact(conn, 8):
            if not silent:  # the first connection never answers; the others echo
                conn.sendall(data)

    server = raw_server(handle)
    run = Driven(server.port, connections=20, rate=2000, size=8, timeout="30s")
    run.run(1.0)
    fifo, in_flight = len(run.paced.fifo), run.paced.in_flight
    run.stop(grace=0.0)
    snap = run.recorder.snapshot()
    assert snap.requests - dict(snap.failures).get("cancelled", 0) > 1000  # the others went on meanwhile
    # Bounded by what is in flight, not by the ~2,000 messages that ended behind the stuck one. It is
    # compacted when an entry added makes it longer than twice what was in flight then, plus 64; fewer may
    # be in flight when it is read (seen: 74 entries, 2 in flight), but never more than one a connection.
    assert fifo <= 2 * 20 + 64 + 1, (fifo, in_flight)


def test_a_failed_connect_takes_from_the_budget_and_is_retried_after_the_pause() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = Driven(port, connections=3, rate=30, pause=0.2)
    run.run(0.7)
    run.stop()
    snap = run.recorder.snapshot()
    refused = dict(snap.connect_failures).get("refused", 0)
    assert 6 <= refused <= 15 and snap.requests == 0  # 3 at once, then 3 every 200 ms
    counted = Driven(port, connections=3, rate=30, pause=0.01, requests=10)
    counted.run(3.0)
    assert counted.driver.dead and dict(counted.recorder.snapshot().connect_failures) == {"refused": 10}


def test_connects_are_paced_by_connect_rate(echo: ServerGroup) -> None:
    run = Driven(echo.port, connections=20, rate=20, size=8, connect_rate=40)
    run.run(0.25)
    early = run.recorder.open_connections
    run.run(0.5)
    held = run.recorder.open_connections
    run.stop()
    assert 3 <= early <= 12, early  # about 10 connections in the first 250 ms at 40/s
    assert held == 20


def test_connections_spread_over_source_addresses(raw_server) -> None:
    peers: list[str] = []

    def handle(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[0])
        echo_with(8)(conn)

    server = raw_server(handle)
    run = Driven(server.port, connections=4, rate=40, size=8, source_ips="127.0.0.1-127.0.0.2")
    run.run(0.4)
    run.stop()
    assert sorted(peers) == ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]
    assert not run.recorder.failures


def test_a_staged_level_closes_connections_above_it_and_reopens_them(raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 8):
            time.sleep(0.05)  # a message is in flight for 50 ms of each 100 ms turn
            conn.sendall(data)

    server = raw_server(handle)
    level = Level(6.0)
    run = Driven(server.port, share=6, level=level, connections=6, rate=60, size=8)
    run.run(0.4)
    assert run.recorder.open_connections == 6
    level.value = 2.0
    run.run(0.35)  # the driver follows within 100 ms; one in flight closes after its reply
    assert run.recorder.open_connections == 2
    level.value = 4.5  # places 0..4 are below 4.5
    run.run(0.35)
    assert run.recorder.open_connections == 5
    run.stop()
    snap = run.recorder.snapshot()
    assert not snap.failures  # a connection closed by the ramp finished its message first
    assert snap.connects == 9 and server.connections == 9


def test_a_message_the_socket_cannot_take_at_once_is_finished_from_a_write_watcher(raw_server) -> None:
    size = 64 * 1024

    def handle(conn: socket.socket) -> None:
        while True:
            data = b""
            while len(data) < size:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
                time.sleep(0.001)  # a slow reader: the client's send buffer fills
            conn.sendall(data)

    server = raw_server(handle)
    run = Driven(server.port, connections=1, rate=5, size=size, timeout="5s")
    run.run(0.6)
    run.stop(grace=3.0)
    snap = run.recorder.snapshot()
    assert not snap.failures and snap.requests >= 2 and snap.bytes_out == snap.bytes_in == size * snap.requests


# -- through the real pipeline -----------------------------------------------------------------

def test_paced_messages_in_flight_at_the_end_are_cancelled_once_by_the_worker(tmp_path: Path, raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)
        while conn.recv(1024):
            pass

    server = raw_server(handle)
    _, summary = tcp_run(tmp_path, [{"name": "silent", "tcp": f"127.0.0.1:{server.port}", "connections": 6,
                                     "rate": 60, "size": 8, "timeout": "30s"}], duration="1s")
    target = summary["targets"][0]
    assert target["failures_by_kind"] == {"cancelled": 6} and target["requests"] == 6
    assert sum(w["cancelled"] for w in summary["workers"]) == 6
    assert target["connections"]["open_at_end"] == 0 and target["connections"]["peak_open"] == 6


def test_a_paced_run_spends_its_requests_total_exactly(tmp_path: Path) -> None:
    result, summary = tcp_run(
        tmp_path, [{"name": "counted", "tcp": "{echo}", "connections": 10, "rate": 500, "size": 10}],
        servers=[{"name": "echo", "kind": "echo", "listen": "127.0.0.1:0", "workers": 1}],
        requests=300, duration="8s")
    assert result.exit_status == 0, result.shortfalls
    target = summary["targets"][0]
    assert target["requests"] == 300 and target["failures"] == 0
    assert result.servers[0]["served"]["messages"] == 300
    assert summary["duration_s"] < 4  # it ended when the total was spent, not at 8 s


def test_bytes_past_the_reply_are_a_mismatch_at_once_and_nothing_escapes_the_hub(raw_server, capfd) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 8):
            conn.sendall(data + b"!")  # one byte more than the reply, in the same write

    server = raw_server(handle)
    run = Driven(server.port, connections=2, rate=40, size=8, pause=0.01)
    run.run(0.6)
    run.stop()
    snap = run.recorder.snapshot()
    # Before, the "!" waited and was read as the start of the next reply: the first message on each connection
    # passed. Now every reply is judged too long as it comes, and its connection dropped
    failures = dict(snap.failures)
    assert failures.keys() == {"mismatch"} and failures["mismatch"] == snap.requests >= 6
    assert "the peer sent more than the 8-byte reply" in dict(snap.failure_samples)["mismatch"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_peer_that_floods_unasked_is_judged_at_once_without_stalling(raw_server) -> None:
    def flood(conn: socket.socket) -> None:
        stop = time.monotonic() + 10  # bounded: the client leaves long before
        while time.monotonic() < stop:
            conn.sendall(b"x" * 65536)  # never reads; raises once the client has closed

    server = raw_server(flood)
    run = Driven(server.port, connections=2, rate=1000, size=64, expect="any", timeout="2s", pause=0.2)
    run.run(1.0)
    run.stop()
    snap = run.recorder.snapshot()
    # Before: the stream was read as replies (~1,000 "successes" a second) until the unread messages filled the
    # socket buffers and the sends stalled into read timeouts
    assert dict(snap.failures).keys() == {"mismatch"} and snap.failures and snap.requests <= 2 * 6, snap.failures
    assert snap.requests == dict(snap.failures)["mismatch"]


def test_paced_messages_in_flight_at_the_end_finish_within_the_grace_period(tmp_path: Path, raw_server) -> None:
    def handle(conn: socket.socket) -> None:
        while data := read_exact(conn, 8):
            time.sleep(0.4)
            conn.sendall(data)

    server = raw_server(handle)
    # each connection sends every 500 ms and waits 400 ms for its reply: at the end of the second, most are
    # in flight; the worker lets them finish (the grace period is 2 s) instead of cancelling them
    _, summary = tcp_run(tmp_path, [{"name": "slow", "tcp": f"127.0.0.1:{server.port}", "connections": 8,
                                     "rate": 16, "size": 8}], duration="1.2s", workers=1)
    target = summary["targets"][0]
    assert target["failures"] == 0 and 8 <= target["requests"] <= 24, target
    assert target["latency_ms"]["min"] >= 399
