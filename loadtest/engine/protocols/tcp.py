"""TCP message round trips over persistent connections.

One `TcpSession` per virtual user holds one connection, a hub-driven
`Channel`. Each `exchange()` writes the target's message, reads back exactly its length
into a buffer allocated once (TCP splits and merges as it likes, so a reply
may take several reads), and checks it: `echo` the same bytes, `upper`
upper-cased, `any` anything of that length. Each read may take one byte more
than the reply still lacks (OVERREAD_BYTES): a peer that sends more than it
was asked for, or sends without being asked (one that streams bytes on its
own), shows as a reply too long, a `mismatch`, at once: the connection is
dropped instead of reading the stream as replies until its unread messages
fill the socket's buffers and the write stalls into a read timeout.

Connections open lazily, paced per worker by `connect_rate` and spread over
`source_ips` round-robin; with `rate`, each connection sends on its own
schedule from a random phase, and latency is measured from the intended send
time (coordinated omission corrected). A connection that fails is closed and
opened again on the next exchange; a connect that fails is counted as a
connect failure and retried after `RECONNECT_PAUSE_S`, and so is a connection
that failed before its first reply (a server at its connection cap accepts and
closes at once: reconnecting at once would spin, and the connection would look
held most of the time while it never got an answer).

Message failure kinds: mismatch, closed, reset, read_timeout, error,
cancelled. Connect failure kinds: those of `connect_failure` (refused,
connect_timeout, reset, resources, error).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from typing import Any
from itertools import cycle
from time import perf_counter_ns

import gevent
from gevent import GreenletExit

from loadtest.core.outcome import start_ns
from loadtest.model.config import TcpTarget
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.protocols import Deadlines, RequestTimer
from loadtest.engine.protocols.channel import Channel, RequestTimeout
from loadtest.engine.protocols.http_fast import connect_failure

RECONNECT_PAUSE_S = 1.0  # after a failed connect, so a dead server does not spin the CPU
# A message bigger than this is written by a second greenlet while its reply is read: an echo
# server stops reading while its reply is unsent, so write-then-read would deadlock once the
# message outgrows the socket buffers on the way (16 MiB does on loopback).
WRITE_ALONGSIDE_BYTES = 64 * 1024
SAMPLE_BYTES = 32  # of a wrong reply, quoted in the failure message
OVERREAD_BYTES = 1  # read past the reply's length: more than asked for is a mismatch, seen at once


class ConnectPacer:
    """New-connection slots at a fixed rate, shared by one worker's sessions of a target."""

    __slots__ = ("interval_ns", "next_ns")

    def __init__(self, rate: float) -> None:
        self.interval_ns = int(1e9 / rate)
        self.next_ns = 0

    def wait(self) -> None:
        """Sleep until this caller's slot; an idle pacer gives no credit for the time it was idle."""
        now = perf_counter_ns()
        slot = max(now, self.next_ns)
        self.next_ns = slot + self.interval_ns
        if slot > now:
            gevent.sleep((slot - now) / 1e9)


RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # a failure of kind `reset`


def failure_message(target: TcpTarget, kind: str, detail: str, got: bytes = b"") -> str:
    """What a message's failure says, for a session and the paced driver alike; `got`: a wrong reply's start."""
    if kind == "mismatch" and detail == "longer":
        return (f"the peer sent more than the {len(target.message)}-byte reply (bytes it was not asked for): got "
                f"{got[:SAMPLE_BYTES]!r}")
    if kind == "mismatch":
        expected = {"echo": target.message, "upper": target.message.upper()}.get(target.expect, b"")
        return (f"the reply is not the {target.expect} of the message: got {got[:SAMPLE_BYTES]!r}, "
                f"expected {expected[:SAMPLE_BYTES]!r}")
    if kind == "closed":
        return "the server closed the connection before the whole reply arrived"
    if kind == "read_timeout":
        return f"no whole reply within {target.timeout:g} s"
    if kind == "reset":
        return f"connection reset: {detail}"
    return f"socket error: {detail}"


def wait_to_connect(retry_at_ns: int, pacer: ConnectPacer | None) -> None:
    """Before a connect: wait out a reconnect pause (`retry_at_ns`, 0 for none), then take a pacer's slot."""
    if retry_at_ns:
        delay = retry_at_ns - perf_counter_ns()
        if delay > 0:
            gevent.sleep(delay / 1e9)
    if pacer is not None:
        pacer.wait()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def tcp_session_factory(target: TcpTarget, address: str, recorder: TargetRecorder, workers: int = 1,
                        deadlines: Deadlines | None = None, reconnect_pause: float = RECONNECT_PAUSE_S,
                        stop: Any = None) -> Callable[[], TcpSession]:
    """A function that makes one connection's session; resolves `address` (``host:port``) once.

    Raises OSError if the host does not resolve. Without `deadlines` (a session used
    on its own, as in tests) each message arms a gevent timeout instead. `stop` is
    the worker's budget: a paced message whose turn comes after it says stopping is
    not sent.
    """
    host, port = split_address(address)
    family, _, _, _, remote = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    pacer = ConnectPacer(target.connect_rate / workers) if target.connect_rate > 0 else None
    sources = cycle(target.source_ips) if target.source_ips else None
    return lambda: TcpSession(target, family, remote, recorder, pacer, sources, deadlines, reconnect_pause, stop)


def _write_all(channel: Channel, message: bytes) -> OSError | None:
    """Write a whole message from a second greenlet; an error is returned, not raised (and logged by gevent)."""
    try:
        channel.send_all(message)
    except OSError as e:
        return e
    return None


class TcpSession:
    """One virtual user's persistent connection to a TCP target."""

    back_off = False  # never set: a failed connect waits its own `reconnect_pause` (see protocols.Session)

    __slots__ = ("target", "family", "remote", "recorder", "pacer", "sources", "message", "size", "expected",
                 "buffer", "view", "channel", "timer", "timeout", "timeout_ns", "interval_ns", "next_send_ns",
                 "retry_at_ns", "pause_ns", "stop", "answered")

    def __init__(self, target: TcpTarget, family: int, remote: tuple, recorder: TargetRecorder,  # type: ignore[type-arg]
                 pacer: ConnectPacer | None = None, sources: Iterator[str] | None = None,
                 deadlines: Deadlines | None = None, reconnect_pause: float = RECONNECT_PAUSE_S,
                 stop: Any = None) -> None:
        self.target = target
        self.family = family
        self.remote = remote
        self.recorder = recorder
        self.pacer = pacer
        self.sources = sources
        self.message = target.message
        self.size = len(target.message)
        self.expected: bytes | None = {"echo": target.message, "upper": target.message.upper()}.get(target.expect)
        self.buffer = bytearray(self.size + OVERREAD_BYTES)
        self.view = memoryview(self.buffer)
        self.channel: Channel | None = None
        self.timer = RequestTimer(deadlines)
        self.timeout = target.timeout
        self.timeout_ns = int(target.timeout * 1e9)
        # each connection's share of the target's rate (at the stages' peak); 0: back to back
        self.interval_ns = int(1e9 * target.peak_connections / target.rate) if target.rate > 0 else 0
        self.next_send_ns = 0
        self.retry_at_ns = 0
        self.pause_ns = int(reconnect_pause * 1e9)
        self.stop = stop
        self.answered = False  # has this connection had a whole reply yet?

    def exchange(self, scheduled_ns: int = 0) -> None:
        channel = self.channel
        if channel is None:
            channel = self._connect()
            if channel is None:
                return
        if self.interval_ns and not scheduled_ns:
            scheduled_ns = self._wait_turn()
            if self.stop is not None and self.stop.stopping:  # the load stopped while this one waited
                return
        rec, size, view = self.recorder, self.size, self.view
        recv_into, timer = channel.recv_into, self.timer
        # The round trip is inlined: this is the hot path, and every call and tuple counts.
        kind = detail = ""
        sent = received = 0
        writer = None
        sending = perf_counter_ns()
        started = start_ns(scheduled_ns, sending)
        timer.start(sending + self.timeout_ns)  # from the first byte written, even when the turn came late
        try:
            if size > WRITE_ALONGSIDE_BYTES:
                writer = gevent.spawn(_write_all, channel, self.message)
            else:
                channel.send_all(self.message)
                sent = size
                channel.await_reply()
            while received < size:
                got = recv_into(view[received:] if received else view)
                if not got:
                    kind = "closed"
                    break
                received += got
            if writer is not None:
                error = writer.get()
                if error is not None:
                    raise error
                sent = size
        except GreenletExit:
            self._cancelled(writer, received, sent)
            raise
        except RequestTimeout:
            kind = "read_timeout"
        except OSError as e:  # a reset (RESET_ERRORS) or another error
            kind, detail = "reset" if isinstance(e, RESET_ERRORS) else "error", e.strerror or str(e)
        timer.stop()
        if writer is not None and not writer.dead:
            writer.kill()  # before the channel it writes to closes
        latency = perf_counter_ns() - started
        if not kind:
            expected = self.expected
            if received > size:
                kind, detail = "mismatch", "longer"
            elif expected is None or self.buffer.startswith(expected):  # its first `size` bytes: the reply
                self.answered = True
                rec.success(latency, received, sent, received)
                return
            else:
                kind = "mismatch"
        self._failed(kind, detail, latency, received, sent)

    def _cancelled(self, writer: Any, received: int, sent: int) -> None:
        """The run stopped while a message was in flight: drop the connection and record it as cancelled."""
        self.timer.stop()
        if writer is not None:
            writer.kill()
        self._drop()
        self.recorder.failure("cancelled", "the run stopped while this message was in flight", None, received, sent)

    def _failed(self, kind: str, detail: str, latency: int, received: int, sent: int) -> None:
        """A message failed (`kind`): record it and drop the connection (a pause first if it never had a reply)."""
        self.recorder.failure(kind, failure_message(self.target, kind, detail, bytes(self.buffer[:received])),
                              latency, received, sent)
        if not self.answered:  # failed before any reply: pause as after a failed connect
            self.retry_at_ns = perf_counter_ns() + self.pause_ns
        self._drop()

    def _wait_turn(self) -> int:
        """Sleep until this connection's next send time and return it (ns); the schedule never drifts."""
        slot = self.next_send_ns
        self.next_send_ns = slot + self.interval_ns
        delay = slot - perf_counter_ns()
        if delay > 0:
            gevent.sleep(delay / 1e9)
        return slot

    def _connect(self) -> Channel | None:
        wait_to_connect(self.retry_at_ns, self.pacer)
        self.retry_at_ns = 0
        started = perf_counter_ns()
        try:
            source = (next(self.sources), 0) if self.sources is not None else None
            channel = Channel.connect(self.family, self.remote, self.timeout, source)
        except GreenletExit:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is counted, none escapes
            kind, message = connect_failure(e, self.timeout)
            self.recorder.connect_failed(kind, message)
            self.retry_at_ns = perf_counter_ns() + self.pause_ns
            return None
        now = perf_counter_ns()
        self.recorder.connected(now - started)
        self.channel = channel
        self.answered = False
        if self.interval_ns:  # a random phase spreads the connections' sends over the interval
            self.next_send_ns = now + int(random.random() * self.interval_ns)
        return channel

    def _drop(self) -> None:
        channel = self.channel
        if channel is not None:
            self.channel = None
            channel.close()
            self.recorder.disconnected()

    def close(self) -> None:
        self._drop()
        self.timer.close()
