"""HTTP for flows: one virtual user's keep-alive connections, requests built per step, responses kept on demand.

The fast engine (`http_fast`) sends one prebuilt request per target and keeps
nothing of the answer. A flow's steps differ: each has its own request (often
filled in from captured values) and some must read the answer. So a
`FlowClient` sends any request bytes on the same pieces -- `Channel`s, the
llhttp parser, `RequestTimer` under the worker's `Deadlines`, the same
failure kinds and the same one reconnect after a keep-alive connection the
server closed -- and keeps of the response only what the caller asks for: the
headers, the body up to `MAX_KEPT_BODY` bytes, or nothing (then a request
costs what a plain target's does).

Failure kinds: refused, connect_timeout, read_timeout, reset, closed,
protocol, tls, resources, error (and cancelled, recorded by the caller).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Callable

import httptools
from gevent import GreenletExit

from loadtest.model.flows.extract import MAX_KEPT_BODY
from loadtest.engine.protocols import Deadlines, RequestTimer
from loadtest.engine.protocols.channel import Channel, TlsChannel
from loadtest.engine.protocols.http_fast import BodyCounter, ReplyReader, connect_failure

_STALE = ("closed", "reset")
Origin = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True)
class Address:
    """Where an origin's connections go, resolved once."""

    origin: Origin
    family: int
    sockaddr: tuple  # type: ignore[type-arg]
    host_header: str


def resolve_origin(scheme: str, host: str, port: int, host_header: str) -> Address:
    """Resolve one origin; raises OSError if its host does not resolve."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    return Address((scheme, host, port), family, sockaddr, host_header)


class _Keeping(BodyCounter):
    """Parser callbacks that also keep the body (up to MAX_KEPT_BODY bytes). The headers are read from the head's
    bytes when asked for (`parse_head`): a Python callback per header would cost more than most flows read."""

    __slots__ = ("chunks", "kept")

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.kept = 0

    def reset(self) -> None:
        super().reset()
        self.chunks = []
        self.kept = 0

    def on_body(self, chunk: bytes) -> None:
        self.body += len(chunk)
        room = MAX_KEPT_BODY - self.kept
        if room > 0:
            piece = chunk if len(chunk) <= room else chunk[:room]
            self.chunks.append(piece)
            self.kept += len(piece)


class _Connection:
    __slots__ = ("channel", "reused", "counting", "keeping")

    def __init__(self, channel: Channel | TlsChannel) -> None:
        self.channel = channel
        self.reused = False
        self.counting = self._parse(BodyCounter())
        self.keeping: _Keeping | None = None

    @staticmethod
    def _parse(callbacks: Any) -> Any:
        callbacks.parser = httptools.HttpResponseParser(callbacks)
        return callbacks

    def callbacks(self, keep: bool) -> BodyCounter:
        if not keep:
            return self.counting
        if self.keeping is None:
            self.keeping = self._parse(_Keeping())
        return self.keeping

    def fresh(self, callbacks: BodyCounter) -> None:
        """A new parser for `callbacks` (after HEAD, whose response llhttp would wait for a body of)."""
        self._parse(callbacks)

    def close(self) -> None:
        for c in (self.counting, self.keeping):
            if c is not None:
                c.parser = None  # parser and callbacks refer to each other
        self.channel.close()


class Reply:
    """How one request ended: a failure kind and message, or a status (and what was kept of the response)."""

    __slots__ = ("kind", "message", "latency", "received", "sent", "content", "status", "head", "body",
                 "truncated")

    def __init__(self) -> None:
        self.kind: str | None = None
        self.message = ""
        self.latency: int | None = None
        self.received = 0
        self.sent = 0
        self.content = 0
        self.status = 0
        self.head = b""  # kept: the status line and headers (and maybe the start of the body)
        self.body = b""
        self.truncated = False


def parse_head(head: bytes) -> dict[str, str]:
    """The headers of a response head, by lower-case name (the first of a name repeated)."""
    out: dict[str, str] = {}
    end = head.find(b"\r\n\r\n")
    for line in head[:end if end >= 0 else len(head)].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            key = name.strip().lower().decode("latin-1")
            if key not in out:
                out[key] = value.strip().decode("latin-1")
    return out


class FlowClient(ReplyReader):
    """One virtual user's keep-alive connections, one per origin, for any requests its flow sends.

    `on_connect(latency_ns)` and `on_disconnect()` report the connections it
    opens and closes (to the flow's own stats row); a connect that fails is
    the request's failure.
    """

    def __init__(self, timeout: float, deadlines: Deadlines | None, tls: Callable[[], ssl.SSLContext],
                 on_connect: Callable[[int], None], on_disconnect: Callable[[], None]) -> None:
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self._conns: dict[Origin, _Connection] = {}
        self._timer = RequestTimer(deadlines)
        self._reply = Reply()
        self._tls = tls
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect

    def send(self, address: Address, request: bytes, head: bool, keep: bool) -> Reply:
        """Send `request` and read its whole response; `keep` keeps its headers and body. Never raises for the
        network's doing; a GreenletExit (the run stopping) is re-raised after the connection is dropped.

        The Reply is this client's one, filled again by its next request: read it before sending another."""
        out = self._reply
        # Every field is set on each way out (a failed connect sets them in `_connect`): none is cleared here.
        if out.truncated or out.head:
            out.head = out.body = b""
            out.truncated = False
        origin = address.origin
        conn = self._conns.get(origin)
        if conn is None:
            conn = self._connect(address, out)
            if conn is None:
                return out
        timer = self._timer
        sending = perf_counter_ns()
        deadline = sending + self.timeout_ns
        timer.start(deadline)
        sent = len(request)
        try:
            callbacks = conn.callbacks(keep) if keep else conn.counting
            kind = self._read_reply(conn.channel, callbacks, callbacks.parser, request, head)
            if kind is not None and kind in _STALE and self._received == 0 and conn.reused:
                resent = self._resend(address, out, request, head, keep, deadline)
                if resent is None:
                    return out
                conn, callbacks, kind = resent
                sent += len(request)
            conn.reused = True
        except GreenletExit:
            timer.stop()
            self._drop(origin)
            raise
        timer.stop()
        out.latency = perf_counter_ns() - sending
        out.received = self._received
        out.sent = sent
        if kind is not None:
            return self._failed(out, origin, kind)
        out.kind = None
        out.status = callbacks.parser.get_status_code()
        out.content = callbacks.body
        if keep:
            kept: _Keeping = callbacks  # type: ignore[assignment]
            out.head = self._heading
            out.body = b"".join(kept.chunks)
            out.truncated = kept.body > kept.kept
        if not callbacks.keep_alive:
            self._drop(origin)
        elif keep:
            callbacks.reset()
        else:
            callbacks.body = 0
            callbacks.complete = callbacks.headers_done = False
            if head:
                conn.fresh(callbacks)
        return out

    def _resend(self, address: Address, out: Reply, request: bytes, head: bool, keep: bool,
                deadline: int) -> tuple[_Connection, Any, str | None] | None:
        """The server closed an idle keep-alive connection: reconnect once, as browsers do, and send the
        request again by `deadline`; (the new connection, its callbacks, the reply's failure kind or None),
        or None if the connect failed (`out` says how)."""
        self._drop(address.origin)
        self._timer.stop()
        conn = self._connect(address, out)
        if conn is None:
            return None
        callbacks = conn.callbacks(keep)
        self._timer.start(deadline)
        return conn, callbacks, self._read_reply(conn.channel, callbacks, callbacks.parser, request, head)

    def _failed(self, out: Reply, origin: Origin, kind: str) -> Reply:
        """The request failed (`kind`): drop its connection and say so in `out`."""
        self._drop(origin)
        out.kind, out.message = kind, self._message
        out.status = out.content = 0
        return out

    def _connect(self, address: Address, out: Reply) -> _Connection | None:
        started = perf_counter_ns()
        try:
            plain = Channel.connect(address.family, address.sockaddr, self.timeout)
            channel: Channel | TlsChannel = plain
            if address.origin[0] == "https":
                channel = TlsChannel(plain, self._tls(), address.origin[1], self.timeout)
        except GreenletExit:
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is counted, none escapes
            out.kind, out.message = connect_failure(e, self.timeout)
            out.latency = None  # it never connected: no latency
            out.received = out.sent = out.content = out.status = 0
            return None
        self._on_connect(perf_counter_ns() - started)
        conn = self._conns[address.origin] = _Connection(channel)
        return conn

    def _drop(self, origin: Origin) -> None:
        conn = self._conns.pop(origin, None)
        if conn is not None:
            conn.close()
            self._on_disconnect()

    def in_flight(self) -> bool:
        return bool(self._timer.deadline_ns)

    def close(self) -> None:
        for origin in list(self._conns):
            self._drop(origin)
        self._timer.close()
