"""Plain HTTP on hub callbacks (`HttpHub`): the same outcomes as a greenlet's `HttpSession`, exact accounting.

The driver runs in this (unpatched) process on the gevent hub, stopped as the worker stops it: the budget
says stop, what is in flight may finish, the rest is killed and recorded as cancelled. Servers are raw
sockets in threads that misbehave on purpose, or the embedded HTTP server.
"""

from __future__ import annotations

import socket
import struct
import time
from types import SimpleNamespace
from typing import Callable

import httptools

import pytest
from gevent.pool import Pool

from tests.driven import stop_like_a_worker
from loadtest.core.schedule import ArrivalSchedule
from loadtest.core.recorder import TargetRecorder
from loadtest.core.stats import decode_histogram
from loadtest.engine.budget import Budget, Level
from loadtest.engine.protocols import Deadlines, http_hub_exchange
from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints
from loadtest.engine.protocols.http_hub import HttpHub, hub_eligible
from loadtest.model.config import parse_config

from .conftest import RawServer, read_request
from .test_http_fast import keep_alive


def http_target(url: str, **fields: object):  # type: ignore[no-untyped-def]
    model = {"rate": 1} if "rate" in fields else {"concurrency": 1}
    return parse_config({"duration": "1s", "targets": [{"url": url, **model, **fields}]}).targets[0]


class Driven:
    """An `HttpHub` running in this process, with the worker's stop sequence."""

    def __init__(self, url: str, users: int = 1, requests: int | None = None, level: Level | None = None,
                 rate: float = 0.0, cap: int = 50, **fields: object) -> None:
        if rate:
            fields["rate"] = rate
        self.target = http_target(url, **fields)
        self.recorder = TargetRecorder(0)
        self.budget = Budget(requests)
        self.deadlines = Deadlines()
        self.hub = HttpHub(self.target, build_endpoints(self.target, [url]), self.recorder, self.budget,
                           self.deadlines)
        self.pool = Pool()
        self.scan = self.pool.spawn(self.deadlines.scan)
        if rate:
            now = time.perf_counter_ns()
            self.schedule = ArrivalSchedule("constant", 1, lambda t: rate, False, now + 60e9)
            self.driver = self.pool.spawn(self.hub.arrive, self.pool, cap, self.schedule,
                                          self.schedule.next_due(now, 0.5))
        else:
            self.driver = self.pool.spawn(self.hub.drive, self.pool, users, level)

    def run(self, seconds: float) -> None:
        self.driver.join(seconds)

    def stop(self, grace: float = 1.0) -> int:
        """Stop as the worker does; return how many requests were cancelled."""
        cancelled = stop_like_a_worker(self.hub, self.pool, self.budget, self.deadlines, self.recorder, grace)
        assert not self.deadlines.timers  # and every record let go
        return cancelled


def url(server: RawServer, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def test_users_send_back_to_back_and_a_requests_total_is_exact(raw_server) -> None:
    server: RawServer = raw_server(keep_alive(b"x" * 100))
    run = Driven(url(server), users=4, requests=1000)
    run.run(20)
    assert run.driver.ready()  # it ended by itself once the total was spent
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.requests == 1000 and not snap.failures
    assert snap.content_bytes == 100_000 and snap.connects == 4 and server.connections == 4
    assert decode_histogram(snap.latency).get_total_count() == 1000
    assert snap.bytes_out == 1000 * len(build_endpoints(run.target, [url(server)])[0].request)


def _outcomes_of_session(address: str, requests: int, **fields: object) -> tuple[int, dict[str, int], int]:
    target = http_target(address, **fields)
    rec = TargetRecorder(0)
    session = HttpSession(target, build_endpoints(target, [address]), rec)
    for _ in range(requests):
        session.exchange()
    session.close()
    snap = rec.snapshot()
    return snap.requests, dict(snap.failures), snap.content_bytes


def _outcomes_of_hub(address: str, requests: int, **fields: object) -> tuple[int, dict[str, int], int]:
    run = Driven(address, users=1, requests=requests, **fields)
    run.run(10)
    run.stop()
    snap = run.recorder.snapshot()
    return snap.requests, dict(snap.failures), snap.content_bytes


def _chunked(conn: socket.socket) -> None:
    while read_request(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def _close_delimited(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close")


def _truncated(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")


def _garbage(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"SPDY/9 what is this\r\n\r\n")


def _not_found(conn: socket.socket) -> None:
    keep_alive(b"missing", "404 Not Found")(conn)


def _reset(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    time.sleep(0.05)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def _one_then_close(conn: socket.socket) -> None:
    read_request(conn)  # answer one request, then close as an idle timeout would: the next is retried once
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def _huge_head(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")


def _silent(conn: socket.socket) -> None:
    read_request(conn)
    time.sleep(1.0)


@pytest.mark.parametrize("handler, fields", [
    (_chunked, {}), (_close_delimited, {}), (_truncated, {}), (_garbage, {}), (_not_found, {}),
    (_not_found, {"expect_status": 404}), (_reset, {}), (_one_then_close, {}), (_huge_head, {}),
    (_silent, {"timeout": "200ms"}), (_chunked, {"method": "HEAD"}),
], ids=["chunked", "close-delimited", "truncated", "garbage", "404", "404-expected", "reset", "stale-retry",
        "huge-head", "timeout", "head"])
def test_each_outcome_is_the_greenlet_sessions(raw_server, handler: Callable[[socket.socket], None],
                                               fields: dict[str, object]) -> None:
    server: RawServer = raw_server(handler)
    expected = _outcomes_of_session(url(server), 3, **fields)
    got = _outcomes_of_hub(url(server), 3, **fields)
    assert got == expected
    assert got[0] == 3


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _scripted(responses: list[bytes]) -> Callable[[socket.socket], None]:
    """Answer a connection's n-th request with responses[n % len(responses)], each in one send."""
    def handle(conn: socket.socket) -> None:
        n = 0
        while read_request(conn):
            conn.sendall(responses[n % len(responses)])
            n += 1
    return handle


@pytest.mark.parametrize("responses", [
    # the same bytes again, then a failure of the same length, then a different body of the same length
    [_OK, _OK, _OK, _OK.replace(b"200 OK", b"500 NO"), _OK, _OK.replace(b"hello", b"world"), _OK],
    # a response with the start of another behind it: the parser is fed bytes past its end, so the
    # next response, byte for byte one parsed before, must still be parsed (here: a protocol failure)
    [_OK, _OK, _OK + _OK[:-3], _OK, _OK],
    # a response that closes: the next is parsed on a new connection's parser
    [_OK, _OK, _OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), _OK],
    # chunked, whose parse the driver does not keep
    [_OK, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", _OK],
], ids=["status-and-body", "bytes-past-the-end", "connection-close", "chunked"])
def test_responses_seen_before_count_as_parsed_ones(raw_server, responses: list[bytes]) -> None:
    server: RawServer = raw_server(_scripted(responses))
    expected = _outcomes_of_session(url(server), 40)
    got = _outcomes_of_hub(url(server), 40)
    assert got == expected
    assert got[0] == 40


@pytest.fixture
def fed(monkeypatch) -> list[int]:
    """How many reads the hub engine feeds to llhttp, counted from here."""
    count = [0]

    class CountingParser:
        """llhttp's parser, counting what it is fed."""

        def __init__(self, callbacks: object) -> None:
            self.parser = httptools.HttpResponseParser(callbacks)

        def feed_data(self, data: bytes) -> None:
            count[0] += 1
            self.parser.feed_data(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.parser, name)

    monkeypatch.setattr(http_hub_exchange, "httptools",
                        SimpleNamespace(HttpResponseParser=CountingParser, HttpParserError=httptools.HttpParserError))
    return count


def test_a_response_seen_before_is_not_parsed_again(raw_server, fed: list[int]) -> None:
    server: RawServer = raw_server(_scripted([_OK] * 9 + [_OK.replace(b"200 OK", b"503 NO")]))
    run = Driven(url(server), users=1, requests=1000)
    run.run(20)
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.requests == 1000 and dict(snap.failures) == {"status": 100}
    assert snap.content_bytes == 5000 and decode_histogram(snap.latency).get_total_count() == 1000
    # the first response, each 503 and the 200 after it are parsed; the other 200s are recognised
    assert fed[0] <= 1 + 2 * 100, fed[0]


def test_responses_that_never_repeat_stop_being_compared_until_one_repeats(raw_server, fed: list[int]) -> None:
    def unique_then_same(conn: socket.socket) -> None:
        n = 0
        while read_request(conn):
            body = b"%08d" % n if n < 3000 else b"same....."[:8]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + body)
            n += 1

    class Watched(HttpHub):
        """The driver, its `_looking` switches written down."""

        switches: list[tuple[int, bool]] = []

        @property
        def _looking(self) -> bool:
            return self.__dict__["looking"]

        @_looking.setter
        def _looking(self, value: bool) -> None:
            if value != self.__dict__.get("looking"):
                self.switches.append((fed[0], value))
            self.__dict__["looking"] = value

    server: RawServer = raw_server(unique_then_same)
    run = Driven(url(server), users=1, requests=6000)
    run.hub.__class__ = Watched  # before the driver first runs
    run.hub._looking = True
    run.run(60)
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.requests == 6000 and not snap.failures and snap.content_bytes == 6000 * 8
    # after some 2,000 different ones, no longer compared; then, a response looked at (one in 1,024 by then)
    # being one kept, recognised again (the first look keeps it, the next finds it)
    (_, first), (off_at, off), (on_at, on) = Watched.switches
    assert first and not off and on and 1000 < off_at < 3000 and 3000 < on_at <= 3000 + 2 * 1024 + 2
    assert fed[0] <= on_at + 1, fed[0]  # and none parsed after that


def test_a_big_response_is_parsed_every_time(raw_server, fed: list[int]) -> None:
    server: RawServer = raw_server(keep_alive(b"x" * (http_hub_exchange.REPEAT_MAX_BYTES + 1)))
    run = Driven(url(server), users=1, requests=200)
    run.run(20)
    run.stop()
    snap = run.recorder.snapshot()
    assert snap.requests == 200 and not snap.failures
    assert not run.hub._repeats and fed[0] >= 200  # never kept (a read may hold part of a response)


def test_each_of_several_urls_responses_is_recognised(raw_server, fed: list[int]) -> None:
    pages = {path: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(path) * 10) + path * 10
             for path in (b"/a", b"/bb", b"/ccc")}

    def by_path(conn: socket.socket) -> None:
        while head := read_request(conn):
            conn.sendall(pages[head.split(b" ")[1]])

    server: RawServer = raw_server(by_path)
    urls = [url(server, p) for p in ("/a", "/bb", "/ccc")]
    target = parse_config({"duration": "1s", "targets": [{"urls": urls, "concurrency": 1}]}).targets[0]
    recorder, budget, deadlines, pool = TargetRecorder(0), Budget(900), Deadlines(), Pool()
    hub = HttpHub(target, build_endpoints(target, urls), recorder, budget, deadlines)
    pool.spawn(deadlines.scan)
    pool.spawn(hub.drive, pool, 1, None).join(20)
    stop_like_a_worker(hub, pool, budget, deadlines, recorder, 1.0)
    snap = recorder.snapshot()
    assert snap.requests == 900 and not snap.failures
    assert snap.content_bytes == 300 * (20 + 30 + 40)  # every URL visited in turn, each body counted
    assert fed[0] <= 30, fed[0]  # each page kept once its parse is looked at, then recognised


def test_refused_connects_are_failed_requests() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    run = Driven(f"http://127.0.0.1:{port}/", users=2, requests=20)
    run.run(10)
    run.stop()
    # each user waits after a failed connect, 10 ms doubling, as a greenlet's virtual user does
    assert run.recorder.backoffs == 20 and run.recorder.backoff_s >= 2 * (0.01 + 0.02 + 0.04)
    snap = run.recorder.snapshot()
    assert snap.requests == 20 and dict(snap.failures) == {"refused": 20}
    assert snap.latency == b""  # a request that never connected has no latency


def test_a_stop_cancels_what_is_in_flight_once(raw_server) -> None:
    def slow(conn: socket.socket) -> None:
        while read_request(conn):
            time.sleep(5)

    server: RawServer = raw_server(slow)
    run = Driven(url(server), users=3, timeout="10s")
    run.run(0.3)
    assert run.deadlines.in_flight()
    cancelled = run.stop(grace=0.1)
    snap = run.recorder.snapshot()
    assert cancelled == 3 and snap.requests == 3 and dict(snap.failures) == {"cancelled": 3}


def test_a_staged_level_opens_and_closes_users(raw_server) -> None:
    server: RawServer = raw_server(keep_alive(b"ok"))
    level = Level(1.0)
    run = Driven(url(server), users=4, level=level)
    run.run(0.3)
    assert run.recorder.open_connections == 1
    level.value = 3.0
    run.run(0.3)
    assert run.recorder.open_connections == 3
    level.value = 0.0
    run.run(0.3)
    assert run.recorder.open_connections == 0
    run.stop()
    assert not run.recorder.failures


def test_open_model_arrivals_leave_on_time_and_every_one_ends_once(raw_server) -> None:
    server: RawServer = raw_server(keep_alive(b"ok"))
    run = Driven(url(server), rate=400)
    run.run(1.0)
    run.stop()
    snap = run.recorder.snapshot()
    lateness = decode_histogram(snap.lateness)
    started = lateness.get_total_count()
    assert 300 <= started <= 460, started
    failures = dict(snap.failures)
    assert snap.requests == started and set(failures) <= {"cancelled"}
    # each request that was sent and ended has its uncorrected latency too
    assert decode_histogram(snap.uncorrected).get_total_count() == started - failures.get("cancelled", 0)
    # the timerfd, not the loop's millisecond: a loop timer leaves half a millisecond late at the median
    assert lateness.get_value_at_percentile(50) < 250_000, lateness.get_value_at_percentile(50)
    assert snap.connects <= started // 4  # keep-alive: arrivals reuse idle connections


def test_open_model_at_the_cap_arrivals_wait_then_are_dropped_not_lost(raw_server) -> None:
    def slow(conn: socket.socket) -> None:
        while read_request(conn):
            time.sleep(1.5)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server: RawServer = raw_server(slow)
    run = Driven(url(server), rate=20, cap=2, timeout="5s")
    run.run(2.0)
    cancelled = run.stop(grace=0.1)
    snap = run.recorder.snapshot()
    started = decode_histogram(snap.lateness).get_total_count()
    assert snap.dropped > 0  # arrivals waited for a slot a whole second, then were dropped
    assert snap.requests == started  # every started arrival ended once: a success or cancelled
    assert set(dict(snap.failures)) <= {"cancelled"} and cancelled <= 2


def test_eligibility() -> None:
    def eligible(urls: list[str], **fields: object) -> bool:
        target = parse_config({"duration": "1s", "targets": [{"urls": urls, "concurrency": 1, **fields}]}).targets[0]
        return hub_eligible(target, build_endpoints(target, urls))

    assert eligible(["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"])
    assert not eligible(["http://127.0.0.1:1/", "http://127.0.0.1:2/"])  # two origins: a greenlet per user
    assert not eligible(["https://127.0.0.1:1/"])  # TLS stays on HttpSession
    assert not eligible(["http://127.0.0.1:1/"], think="10ms")
    assert not eligible(["http://127.0.0.1:1/"], engine="requests")
