"""The echo server's WebSocket mode: every message back, unchanged or ASCII upper-cased, in frames.

`loadtest serve echo --ws`, or `{kind: echo, ws: true}` in a config's
`servers:`. The same event-loop callbacks, caps and accounting as the TCP
echo server (`echo.py`, which this extends): a connection cap, an idle
timeout, and a cap on unsent bytes in all. wsproto does the protocol: its
`H11Handshake` answers the upgrade (a request that is not one gets a 400, and
a head past `MAX_HEAD_BYTES` is refused the same way), and its
`FrameProtocol` parses the frames (unmasking them, checking UTF-8) and makes
the pongs and close frames (`wsproto.Connection` around it would cost another
2 µs a message in event objects). Each piece of
a message is echoed as it arrives, so a message is never held whole: a
message that arrives in one read goes back as one frame, a longer one as a
fragmented message of the same payload. The reply's frame header is written
here (an unmasked server frame: opcode, length), which costs a fraction of a
`send_data` call on the hot path.

Limits: a message whose payload passes `max_message` (16 MiB by default) is
answered with close code 1009 (too big); a frame that does not parse with the
close code wsproto names (1002, 1007). A close frame is answered and the
connection closed; one with code 1000 is counted (`closes`). A server that
stops, or an idle timeout, sends close code 1001 (going away) first. A
connection the server ends lingers (`_finish`), so that its close frame is not
lost to a reset.

Counts: messages (whole messages echoed: exact, unlike the TCP mode's reads),
bytes (payload bytes echoed), connections (accepted), closes (close frames
with code 1000 received).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from loadtest.servers.echo import READ_SIZE, EchoConnection, EchoServer

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
MAX_HEAD_BYTES = 16 * 1024  # of the upgrade request
DRAIN_BYTES = 16 * 1024 * 1024  # a closing connection reads and drops at most this much of what still comes ...
DRAIN_S = 2.0  # ... for at most about this long
MESSAGE_TOO_BIG = 1009
GOING_AWAY = 1001
NORMAL_CLOSE = 1000
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TEXT, _BINARY, _CONTINUATION, _CLOSE = 0x1, 0x2, 0x0, 0x8


def frame_header(opcode: int, fin: bool, length: int) -> bytes:
    """The header of an unmasked (server) frame: RFC 6455 section 5.2."""
    first = opcode | (0x80 if fin else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


_GOING_AWAY_FRAME = frame_header(_CLOSE, True, 2) + struct.pack("!H", GOING_AWAY)


class WsEchoConnection(EchoConnection):
    """One client connection: its upgrade, then its frames, driven by the TCP echo connection's watchers."""

    __slots__ = ("head", "ws", "length", "continued", "closing", "draining")

    def __init__(self, server: WsEchoServer, sock: Any, loop: Any) -> None:
        self.head = b""  # the upgrade request so far
        self.ws: FrameProtocol | None = None  # once upgraded
        self.length = 0  # payload of the message being echoed so far
        self.continued = False  # a piece of that message has been echoed: the next is a continuation
        self.closing = False  # a close frame is answered: close once it is written
        self.draining = -1  # after the last bytes are written: what may still be read and dropped; -1: not yet
        super().__init__(server, sock, loop)

    def on_readable(self) -> None:
        if self.draining >= 0:
            self._drain()
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.closing = True
            self.expire()
            return
        if not data:
            self.closing = True
            self.expire()
            return
        self.mark = time.monotonic()
        out = self._answer(data) if self.ws is not None else self._upgrade(data)
        if out:
            self._write(out)
        if self.closing and self.unsent is None:
            self._finish()

    def _upgrade(self, data: bytes) -> bytes:
        """Answer the upgrade request once its head is in; frames after it are answered too."""
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self.closing = True
                return b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            self.head = head
            return b""
        self.head = b""
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(head[:end + 4])
            for event in handshake.events():
                if isinstance(event, Request):
                    out = handshake.send(AcceptConnection())
                    self.ws = FrameProtocol(client=False, extensions=[])
                    return out + self._answer(head[end + 4:])  # frames that came with the request
        except RemoteProtocolError as e:
            self.closing = True
            status = e.event_hint.status_code if isinstance(e.event_hint, RejectConnection) else 400
            try:
                return handshake.send(RejectConnection(status_code=status))
            except Exception:  # noqa: BLE001 - h11 could not even say no: just close
                return b""
        self.closing = True
        return b""

    def _answer(self, data: bytes) -> bytes:
        """Feed bytes to the parser; return the frames that answer them (echoes, pongs, a close)."""
        ws = self.ws
        assert ws is not None
        if data:
            ws.receive_bytes(data)
        server = self.server
        assert isinstance(server, WsEchoServer)
        out: list[bytes] = []  # joined once: a read may hold many frames
        try:
            for frame in ws.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    piece = frame.payload
                    if isinstance(piece, str):
                        if server.upper:
                            piece = piece.translate(_ASCII_UPPER)
                        payload = piece.encode("utf-8")
                    else:
                        payload = piece.upper() if server.upper else piece  # type: ignore[assignment,union-attr]
                    self.length += len(payload)
                    if self.length > server.max_message:
                        server.say_once("message", f"a message passed {server.max_message} bytes, its cap: the "
                                        f"connection is closed with code {MESSAGE_TOO_BIG} (the cap is max_message)")
                        self.closing = True
                        out.append(ws.close(MESSAGE_TOO_BIG))
                        break
                    finished = frame.message_finished
                    out.append(frame_header(_CONTINUATION if self.continued else opcode, finished, len(payload)))
                    out.append(payload)
                    counts = server.counts
                    counts[1] += len(payload)
                    if finished:
                        counts[0] += 1
                        self.length = 0
                        self.continued = False
                    else:
                        self.continued = True
                elif opcode is Opcode.PING:
                    out.append(ws.pong(frame.payload))  # type: ignore[arg-type]
                elif opcode is Opcode.CLOSE:
                    code = frame.payload[0]  # type: ignore[index]
                    if code == NORMAL_CLOSE:
                        server.counts[3] += 1
                    self.closing = True
                    out.append(ws.close(code))  # the same code back (1005, no code: none back)
                    break
        except ParseFailed as e:  # a frame that is not valid WebSocket: closed with the code wsproto names
            self.closing = True
            out.append(ws.close(e.code, str(e)[:100]))
        return b"".join(out)

    def _write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closing = True
            self.expire()
            return
        if sent < len(data):  # the client reads slower than it sends: stop reading until this is out
            self._hold(data, sent)

    def on_writable(self) -> None:
        super().on_writable()
        if self.closing and self.unsent is None and self.draining < 0:
            self._finish()

    def _finish(self) -> None:
        """All is written: close, lingering (a client still sending would otherwise get a reset, which can
        discard the close frame before the client reads it). The write side is shut, and what the client still
        sends is read and dropped until it closes, `DRAIN_BYTES` have come, or `DRAIN_S` have passed."""
        if self.sock.fileno() < 0:  # already closed (a failed write)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.expire()
            return
        self.draining = DRAIN_BYTES
        # the idle sweep ends it DRAIN_S from now if nothing more comes
        self.mark = time.monotonic() - self.server.table.idle_timeout + DRAIN_S
        self.reader.start(self.on_readable)

    def _drain(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.draining -= len(data)
        if not data or self.draining < 0:
            self.expire()

    def expire(self) -> None:
        """Close the connection; one the server ends itself (a stop, an idle timeout) gets close code 1001
        first, when nothing else is unsent and the frame fits at once."""
        if self.ws is not None and self.unsent is None and not self.closing:
            self.closing = True
            try:
                self.sock.send(_GOING_AWAY_FRAME)
            except OSError:
                pass
        super().expire()


class WsEchoServer(EchoServer):
    """The WebSocket echo server of one process."""

    kind = "echo (WebSocket)"

    def __init__(self, listener: Any, counts: Any, upper: bool = False, max_connections: int = 0,
                 idle_timeout: float = 0.0, max_buffered: int = 0, max_message: int = 0) -> None:
        super().__init__(listener, counts, upper, max_connections, idle_timeout, max_buffered)
        self.max_message = max_message or DEFAULT_MAX_MESSAGE

    def say_once(self, event: str, sentence: str) -> None:
        self._say_once(event, sentence)

    def serve(self, sock: Any) -> None:
        self.counts[2] += 1
        self.table.add(WsEchoConnection(self, sock, self.loop))
