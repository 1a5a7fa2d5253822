"""The sending half of an embedded HTTP server's connection: its queue of answers, sent without blocking.

`QueuedSender` is a base of `http.HttpConnection`: answers (bytes, or a float, a delay before the
next) are queued by the parser's callbacks and sent in order here, small ones joined into one send
(within the server's budget of buffered bytes), with a lingering close after an error answer.
"""

from __future__ import annotations

import _socket
import time
from collections import deque
from typing import Any

LINGER_S = 0.5
LINGER_MAX_BYTES = 4 * 1024 * 1024
SEND_BATCH_MAX = 256 * 1024  # above this, pipelined responses go out in several sends
JOIN_MAX = 2 * SEND_BATCH_MAX  # the most one joined batch holds: SEND_BATCH_MAX plus one item of at most that
_READ, _WRITE = 1, 2  # event loop watcher events


class QueuedSender:
    """What a connection sends: `out`, in order, from the event loop's callbacks (see `send_queued`).

    The connection provides `server` (its loop, buffer and budget), `sock`, `reader`, `writer`, `timer`,
    `mark`, `closing`, `linger`, `lingered`, `held_out`, `held_batch`, `on_readable` and `close`.
    """

    server: Any
    sock: Any
    reader: Any
    writer: Any
    timer: Any
    mark: float
    out: deque[bytes | memoryview | float]
    closing: bool
    linger: bool
    lingered: int
    held_out: int
    held_batch: int

    def on_readable(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def send_queued(self) -> None:
        """Send what is queued, in order, without blocking; wait for the socket or a delay when needed.

        While anything is queued the connection does not read: pipelined requests
        wait in the kernel, so the queue stays short and in order.
        """
        out = self.out
        sock = self.sock
        while out:
            item = out[0]
            if item.__class__ is float:
                out.popleft()
                self.reader.stop()
                self.mark = time.monotonic() + item
                if self.timer is not None:
                    self.timer.close()
                self.timer = self.server.loop.timer(item)
                self.timer.start(self.send_queued)
                return
            if (len(out) > 1 and item.__class__ is bytes and out[1].__class__ is bytes and len(item) < SEND_BATCH_MAX
                    and self.server.buffered + JOIN_MAX <= self.server.max_buffered):
                item = self._join_batch()
            try:
                sent = sock.send(item)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(item):  # type: ignore[arg-type]
                out[0] = memoryview(item)[sent:]  # type: ignore[arg-type]
                self.mark = time.monotonic()
                self.reader.stop()
                if self.writer is None:
                    self.writer = self.server.loop.io(sock.fileno(), _WRITE)
                self.writer.start(self.send_queued)
                return
            out.popleft()
            if self.held_batch:
                self.server.buffered -= self.held_batch
                self.held_batch = 0
        if self.held_out:
            self.server.buffered -= self.held_out
            self.held_out = 0
        if self.writer is not None:
            self.writer.stop()
        if self.closing:
            self.linger_then_close() if self.linger else self.close()
        elif not self.reader.active:
            self.reader.start(self.on_readable)

    def _join_batch(self) -> bytes:
        """Replace the leading run of small queued responses by one bytes (charged until sent), and return it."""
        out = self.out
        batch: list[Any] = []
        size = 0
        while out and out[0].__class__ is bytes and size < SEND_BATCH_MAX:
            item = out.popleft()
            batch.append(item)
            size += len(item)  # type: ignore[arg-type]
        joined = b"".join(batch)
        out.appendleft(joined)
        self.server.buffered += size - self.held_batch  # a batch joined again is inside this one
        self.held_batch = size
        return joined

    def linger_then_close(self) -> None:
        """Close after an error answer without losing it: stop sending, read and drop what the client still sends.

        Closing a socket with unread data makes the kernel send a reset, and a reset
        can destroy the answer before the client reads it (a 413 in the middle of an
        upload, say). Like nginx's lingering close: bounded in time and bytes.
        """
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.mark = time.monotonic()
        self.reader.stop()
        self.reader.start(self._on_linger_readable)
        if self.timer is not None:
            self.timer.close()
        self.timer = self.server.loop.timer(LINGER_S)
        self.timer.start(self.close)

    def _on_linger_readable(self) -> None:
        try:
            n = self.sock.recv_into(self.server.buffer_view)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        self.lingered += n
        if not n or self.lingered > LINGER_MAX_BYTES:
            self.close()
