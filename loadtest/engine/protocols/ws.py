"""WebSocket connections on the paced TCP driver: the upgrade in its connectors, frames in its hub callbacks.

A `WsDriver` is a `PacedTcp` (one greenlet and hub callbacks for all of a
worker's connections of a target; no greenlet switch per message) whose
connections talk WebSocket:

- the connector that opens a connection also upgrades it (TLS first for
  wss://): the request is made, and the response parsed, by wsproto's
  `H11Handshake` (h11 underneath), within the target's timeout. The CONNECT
  histogram times the TCP connect and the upgrade together (`ws_upgrade`).
- each message goes out as one masked frame: its header is wsproto's (taken
  once from `FrameProtocol.send_data`), its masking key fresh for every frame
  (from `os.urandom`, drawn `KEY_BATCH` keys at a time), its payload masked
  with that key as one integer operation, the payload's integer XOR the key
  times 0x00000001 repeated (0.35 µs for 64 bytes, 1.6 µs for 1 KiB, against
  1.6 and 3.2 µs for wsproto's masker, which masks payloads past
  `INT_MASK_BYTES`).
- a reply is first compared, as it arrives, with the exact frame an echo
  server sends back (one unmasked, unfragmented text or binary frame of the
  expected payload). Bytes equal to it are that frame, so there is nothing to
  parse; the first byte that differs (a ping, a fragmented or wrong reply, a
  close frame, bytes while no message is in flight) hands the connection to a
  wsproto `Connection`, which parses from the reply's first byte on. It
  answers pings, reads close frames (replying to them), checks UTF-8, and
  hands back the reply's payload in pieces, checked where they fall; the
  connection goes back to comparing once that parser holds nothing partial.
  A reply longer than expected (an endless frame, a 2 GiB frame header) is
  wrong as soon as it passes the expected length, so it never buffers more
  than one read.
- back to back (no `rate`), a connection sends its next message as soon as
  the reply is in; with `rate`, on the paced schedule of `PacedTcp`.
- closing a connection (the run's end, a ramp down, a failure) sends a close
  frame with code 1000 first when the connection is in a state to.

Message failure kinds: mismatch, closed_<code> (the server's close frame,
with its code), closed (the TCP connection ended without one), protocol (a
frame that does not parse), reset, read_timeout, error, cancelled. Connect
failure kinds: those of `connect_failure`, rejected_<status> (the upgrade
answered with that HTTP status), protocol (an upgrade response that is not a
valid acceptance); an upgrade that does not finish within the timeout is a
connect_timeout.
"""

from __future__ import annotations

import os
import ssl
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gevent import Timeout
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import FrameProtocol, XorMaskerSimple

from loadtest.model.kinds.ws import WsTarget, ws_parts
from loadtest.engine.protocols import Deadlines
from loadtest.engine.protocols.channel import WRITE, connect_socket
from loadtest.engine.protocols.http_fast import connect_failure
from loadtest.engine.protocols.tcp import RECONNECT_PAUSE_S, RESET_ERRORS, SAMPLE_BYTES
from loadtest.engine.protocols.tcp_paced import PacedConnection, PacedTcp
from loadtest.engine.protocols.ws_upgrade import _WOULD_BLOCK, UpgradeFailed, UpgradeTimeout, _tls_handshake, upgrade

if TYPE_CHECKING:
    from loadtest.core.recorder import TargetRecorder
    from loadtest.engine.budget import Budget
    
READ_SIZE = 64 * 1024  # what one read takes while a parser has the connection
KEY_BATCH = 1024  # masking keys drawn from os.urandom at once
INT_MASK_BYTES = 64 * 1024  # payloads up to this size are masked as one integer XOR, longer ones by wsproto's
NORMAL_CLOSE = 1000


class WsConnection(PacedConnection):
    """A held WebSocket connection: a `PacedConnection` with what framing adds."""

    __slots__ = ("at", "parser", "pending", "frame_left", "got", "replied", "shut")

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.at = 0  # bytes of the expected reply frame matched so far (no parser)
        self.parser: Connection | None = None  # wsproto, while the bytes are not the expected frame
        self.pending: memoryview | None = None  # bytes still to write (a frame's rest, then pongs)
        self.frame_left = 0  # bytes of the message's frame not yet written
        self.got = 0  # the reply's payload so far (characters of a text reply), parsed replies only
        self.replied = False  # the whole reply is in (the message may still be writing)
        self.shut = False  # no close frame to send: the peer's is answered, or the socket failed


def _parser_idle(parser: Connection) -> bool:
    """Whether a wsproto connection holds nothing partial: no buffered bytes, no frame or message begun.

    wsproto has no public call for this; its frame decoder's `buffer` and `header` and its message
    decoder's `opcode` are what say it (wsproto 1.x, pinned in pyproject.toml)."""
    proto = parser._proto
    decoder = proto._frame_decoder
    return decoder.header is None and not len(decoder.buffer) and proto._message_decoder.opcode is None


class WsDriver(PacedTcp):
    """One worker's connections of a ws target, back to back or paced, run by `drive` (see `PacedTcp`)."""

    connection_class = WsConnection

    def __init__(self, target: WsTarget, url: str, recorder: TargetRecorder, budget: Budget, workers: int = 1,
                 deadlines: Deadlines | None = None, reconnect_pause: float = RECONNECT_PAUSE_S) -> None:
        self.tls, address, self.host, self.path = ws_parts(url)
        super().__init__(target, address, recorder, budget, workers, deadlines, reconnect_pause)
        self.headers = list(target.headers)
        self.tls_context: ssl.SSLContext | None = None
        if self.tls:
            self.tls_context = ctx = ssl.create_default_context()
            if not target.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        text = not target.binary
        payload = target.message
        expected = {"echo": payload, "upper": payload.upper()}.get(target.expect)
        self.expected = expected  # None: any reply
        self.expected_text = expected.decode("utf-8") if expected is not None and text else None
        self.expected_length = len(self.expected_text) if self.expected_text is not None else len(payload)
        self.payload_length = len(payload)
        # The frames on the wire, from wsproto: the reply an echo server sends, and the message's header
        server = FrameProtocol(client=False, extensions=[])
        likely = expected if expected is not None else payload
        self.reply_frame = bytes(server.send_data(likely.decode("utf-8") if text else likely))
        self.framer = FrameProtocol(client=True, extensions=[])
        frame = self.framer.send_data(payload.decode("utf-8") if text else payload)
        self.frame_header = bytes(frame[:len(frame) - len(payload) - 4])
        self.payload_int = int.from_bytes(payload, "big")
        repeats = (len(payload) + 3) // 4
        self.key_spread = int.from_bytes(b"\x00\x00\x00\x01" * repeats, "big")  # key * this: the key repeated
        self.key_shift = 8 * (4 * repeats - len(payload))  # ... less the bytes past the payload's end
        self.keys = b""
        self.key_at = 0
        self.hostname = urlsplit(url).hostname or ""  # for TLS: the name the certificate must have

    def __call__(self) -> Any:
        raise TypeError("a ws target runs on its driver only (WsDriver.drive)")

    # -- connecting: TCP, TLS, upgrade (in a connector greenlet) -----------------------------------------

    def _open(self, source: tuple[str, int] | None) -> Any:
        started = perf_counter_ns()
        raw = connect_socket(self.family, self.remote, self.timeout, source)
        sock: Any = raw
        try:
            left = self.timeout - (perf_counter_ns() - started) / 1e9
            with Timeout(max(left, 0.001), UpgradeTimeout):
                if self.tls_context is not None:
                    sock = _tls_handshake(raw, self.tls_context, self.hostname)
                leftover = upgrade(sock, self.host, self.path, self.headers)
        except BaseException:
            sock.close()
            raise
        return sock, leftover

    def _connect_failure(self, e: Exception) -> tuple[str, str]:
        if isinstance(e, UpgradeFailed):
            return e.kind, e.message
        if isinstance(e, UpgradeTimeout):
            return "connect_timeout", f"no upgrade within {self.timeout:g} s"
        return connect_failure(e, self.timeout)

    def _attach(self, conn: PacedConnection, sock: Any, now: int) -> None:
        opened, leftover = sock
        assert isinstance(conn, WsConnection)
        conn.at = conn.got = conn.frame_left = 0
        conn.parser = None
        conn.pending = None
        conn.replied = conn.shut = False
        super()._attach(conn, opened, now)
        if leftover and conn.sock is not None:  # frames sent right after the acceptance
            conn.received = 0
            self._parse(conn, leftover)

    # -- the hot path: hub callbacks ---------------------------------------------------------------------

    def _masked_frame(self) -> bytes:
        """The message as one frame, masked with a fresh key."""
        at = self.key_at
        if at + 4 > len(self.keys):
            self.keys, at = os.urandom(4 * KEY_BATCH), 0
        key = self.keys[at:at + 4]
        self.key_at = at + 4
        size = self.payload_length
        if size <= INT_MASK_BYTES:
            mask = int.from_bytes(key, "big") * self.key_spread >> self.key_shift
            masked = (self.payload_int ^ mask).to_bytes(size, "big")
        else:
            masked = bytes(XorMaskerSimple(key).process(bytearray(self.target.message)))
        return self.frame_header + key + masked

    def _put(self, conn: PacedConnection) -> None:
        """Write the turn's message as one masked frame (the rest, and pongs after it, from the write watcher)."""
        assert isinstance(conn, WsConnection)
        conn.got = 0
        conn.replied = False
        frame = self._masked_frame()
        conn.frame_left = len(frame)
        self._write(conn, frame, message=True)

    def _write(self, conn: WsConnection, data: bytes, message: bool = False) -> bool:
        """Write `data` after what is still unsent; False if the socket failed (the connection is closed)."""
        if conn.pending is not None:
            conn.pending = memoryview(bytes(conn.pending) + data)
            return True
        try:
            sent = conn.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError as e:
            self._socket_failed(conn, e)
            return False
        if message:
            conn.frame_left -= sent
            conn.sent = sent
        if sent < len(data):
            conn.pending = memoryview(data)[sent:]
            if conn.writer is None:
                conn.writer = self.loop.io(conn.sock.fileno(), WRITE)
            conn.writer.start(self._writable, conn)
        return True

    def _on_writable(self, conn: PacedConnection) -> None:
        """The rest of what the socket buffer did not take at once."""
        assert isinstance(conn, WsConnection)
        try:
            pending = conn.pending
            if pending is None:
                conn.writer.stop()
                return
            try:
                sent = conn.sock.send(pending)
            except _WOULD_BLOCK:
                return
            except OSError as e:
                self._socket_failed(conn, e)
                return
            if conn.frame_left:
                part = min(sent, conn.frame_left)
                conn.frame_left -= part
                conn.sent += part
            if sent < len(pending):
                conn.pending = pending[sent:]
                return
            conn.pending = None
            conn.writer.stop()
            if conn.replied and not conn.frame_left and conn.deadline_ns:
                self._complete(conn)
        except Exception as e:  # noqa: BLE001 - see PacedTcp._on_tick
            self._internal_error(conn, e)

    def _on_readable(self, conn: PacedConnection) -> None:
        """Read what has come: compared with the expected frame, or parsed once it differs."""
        assert isinstance(conn, WsConnection)
        try:
            while True:
                sock = conn.sock
                parser = conn.parser
                want = READ_SIZE if parser is not None or not conn.deadline_ns or conn.replied else min(
                    READ_SIZE, len(self.reply_frame) - conn.at)  # never past the expected frame's end
                try:
                    data = sock.recv(want)
                except _WOULD_BLOCK:
                    return
                except OSError as e:
                    self._socket_failed(conn, e)
                    return
                if not data:
                    conn.shut = True
                    if conn.deadline_ns:
                        self._fail(conn, "closed", "")
                    else:  # closed between messages: it reopens for the next one
                        self._reopen(conn)
                    return
                if conn.deadline_ns:
                    conn.received += len(data)
                if parser is None and conn.deadline_ns and not conn.replied:
                    at = conn.at
                    if self.reply_frame.startswith(data, at):
                        at += len(data)
                        if at == len(self.reply_frame):
                            conn.at = 0
                            conn.replied = True
                            if not conn.frame_left:
                                self._complete(conn)
                        else:
                            conn.at = at
                    else:  # not the expected frame: wsproto parses from the reply's first byte on
                        conn.at = 0
                        self._parse(conn, self.reply_frame[:at] + data)
                else:
                    self._parse(conn, data)
                if conn.sock is not sock or not self.tls or not sock.pending():
                    return  # (a TLS socket may hold decrypted bytes the watcher does not see)
        except Exception as e:  # noqa: BLE001 - see PacedTcp._on_tick
            self._internal_error(conn, e)

    def _parse(self, conn: WsConnection, data: bytes) -> None:
        """Feed bytes to the connection's wsproto parser (made if it has none) and act on its events."""
        parser = conn.parser
        if parser is None:
            parser = conn.parser = Connection(ConnectionType.CLIENT)
        parser.receive_data(data)
        for event in parser.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                if not conn.deadline_ns or conn.replied:
                    continue  # a message no message of ours asked for: not a reply
                if not self._reply_part(conn, event.data, event.message_finished):
                    return
            elif isinstance(event, Ping):
                if not self._write(conn, parser.send(event.response())):
                    return
            elif isinstance(event, CloseConnection):
                if parser.state is ConnectionState.REMOTE_CLOSING:  # the server's close frame
                    self._write(conn, parser.send(event.response()))
                    conn.shut = True
                    code = int(event.code)
                    reason = f": {event.reason}" if event.reason else ""
                    detail = f"the server closed the WebSocket with code {code}{reason}"
                    kind = f"closed_{code}"
                else:  # wsproto could not parse a frame
                    kind, detail = "protocol", f"a frame that is not valid WebSocket: {event.reason}"
                if conn.sock is None:
                    return
                if conn.deadline_ns:
                    self._fail(conn, kind, detail)
                else:
                    self._reopen(conn)
                return
            # a Pong: nothing to do
        if conn.sock is not None and conn.parser is parser and _parser_idle(parser):
            conn.parser = None  # back to comparing

    def _reply_part(self, conn: WsConnection, data: str | bytes, finished: bool) -> bool:
        """Check a piece of the reply's payload where it falls; complete or fail it at its end (or as soon as it
        runs past the expected length). False if the message ended here as a failure."""
        got = conn.got
        expected: Any = self.expected_text if self.expected_text is not None else self.expected
        if expected is not None and conn.wrong is None:
            if isinstance(data, str) == self.target.binary:  # a text reply to binary frames, or the reverse
                conn.wrong = b"(a binary reply)" if isinstance(data, bytes) else b"(a text reply)"
            elif not expected.startswith(data, got):
                sample = expected[:got] + data
                conn.wrong = (sample.encode("utf-8") if isinstance(sample, str) else bytes(sample))[:SAMPLE_BYTES]
        got += len(data)
        conn.got = got
        limit = self.expected_length if self.expected is not None else 16 * 1024 * 1024
        if got > limit:
            if conn.wrong is None:
                conn.wrong = (b"(longer than expected) " + (data.encode("utf-8") if isinstance(data, str)
                                                             else bytes(data)))[:SAMPLE_BYTES]
            self._fail(conn, "mismatch", "")
            return False
        if finished:
            if self.expected is not None and got != self.expected_length and conn.wrong is None:
                conn.wrong = b"(shorter than expected) " + (expected[:got].encode("utf-8")
                                                            if isinstance(expected, str) else expected[:got])
            conn.replied = True
            if not conn.frame_left:
                self._complete(conn)
                return conn.sock is not None
        return True

    def _complete(self, conn: PacedConnection) -> None:
        """A whole reply to a whole message: a success or a mismatch; then the next message, or a ramp's close."""
        assert isinstance(conn, WsConnection)
        if conn.wrong is not None:
            self._fail(conn, "mismatch", "")
            return
        now = perf_counter_ns()
        conn.deadline_ns = 0
        conn.replied = False
        self.in_flight -= 1
        if not self.in_flight:
            self.flight.deadline_ns = 0
        conn.answered = True
        self.recorder.success(now - conn.slot_ns, conn.received, conn.sent, self.payload_length)
        if conn.index >= self.open_below:  # a ramp down: this place closes after its message
            self._close(conn)
        elif not self.interval_ns:
            self._send(conn, now, now)  # back to back
        elif conn.late_slot_ns:
            slot, conn.late_slot_ns = conn.late_slot_ns, 0
            self._send(conn, slot, now)

    def _reopen(self, conn: WsConnection) -> None:
        """The server closed a connection between messages: close it, and open it again."""
        if not conn.answered:
            conn.retry_at_ns = perf_counter_ns() + self.pause_ns
        self._close(conn)
        budget = self.budget
        if conn.index < self.open_below and not budget.stopping and budget.left != 0:
            self._want(conn)

    def _socket_failed(self, conn: PacedConnection, e: OSError) -> None:
        assert isinstance(conn, WsConnection)
        conn.shut = True
        if conn.deadline_ns:
            self._fail(conn, "reset" if isinstance(e, RESET_ERRORS) else "error", e.strerror or str(e))
        else:
            self._reopen(conn)

    def _failure_message(self, conn: PacedConnection, kind: str, detail: str) -> str:
        if kind == "mismatch":
            expected = self.expected if self.expected is not None else b""
            return (f"the reply is not the {self.target.expect} of the message: got {conn.wrong!r}, "
                    f"expected {expected[:SAMPLE_BYTES]!r}")
        if kind == "closed":
            return "the server closed the connection before the whole reply arrived, with no close frame"
        if kind.startswith("closed_") or kind == "protocol":
            return detail
        return super()._failure_message(conn, kind, detail)

    def _close(self, conn: PacedConnection) -> None:
        """Close a connection, with a close frame (code 1000) first when it can take one whole."""
        assert isinstance(conn, WsConnection)
        sock = conn.sock
        if sock is not None and not conn.shut and conn.pending is None:
            try:
                sock.send(bytes(self.framer.close(NORMAL_CLOSE)))
            except (OSError, ValueError):
                pass
        conn.parser = None
        conn.pending = None
        conn.shut = False
        conn.at = 0
        conn.replied = False
        super()._close(conn)
