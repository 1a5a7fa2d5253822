"""A connection of `HttpHub` (`http_hub`): one small record per virtual user's or pooled connection.

It holds the connection's socket, watchers and parser, and the request in flight on it; it is its
llhttp parser's callback object and one of the worker's `Deadlines` timers. Its `state` is one of
the four below.
"""

from __future__ import annotations

from typing import Any

from loadtest.engine.protocols import NO_DEADLINE_NS

_IDLE, _CONNECTING, _WAITING, _BACKING_OFF = 0, 1, 2, 3


class HubConnection:
    """One virtual user's connection (closed model) or one pooled connection (open model), and its request.

    It is its parser's callback object and one of the worker's `Deadlines` timers.
    """

    __slots__ = ("index", "driver", "sock", "reader", "writer", "parser", "state", "seq", "deadline_ns", "started_ns",
                 "sending_ns", "connect_ns", "scheduled", "request", "head", "sent", "received", "body", "complete",
                 "headers_done", "keep_alive", "heading", "reused", "retried", "request_deadline_ns", "wait",
                 "backoff_timer", "queued_seq", "status", "clean")

    def __init__(self, index: int, driver: Any) -> None:
        self.index = index  # closed model: its place, working while below the (staged) level
        self.driver = driver  # the HttpHub that drives it
        self.sock: Any = None
        self.reader: Any = None
        self.writer: Any = None
        self.parser: Any = None
        self.state = _IDLE
        self.seq = 0  # one per connect and per request: a timeout queued for an earlier one does nothing
        self.deadline_ns = 0  # non-zero while a request is in flight (connecting or awaiting its response)
        self.started_ns = 0  # latency counts from here: the first byte written, or the scheduled time (open)
        self.sending_ns = 0  # the first byte written (open model: the uncorrected latency's start)
        self.connect_ns = 0
        self.scheduled = False
        self.request = b""
        self.head = False
        self.sent = 0
        self.received = 0
        self.body = 0
        self.complete = False
        self.headers_done = False
        self.keep_alive = False
        self.heading = b""
        self.reused = False  # has this socket had a whole response yet?
        self.retried = False  # this request already reconnected once
        self.request_deadline_ns = 0
        self.wait = 0.0  # closed model: the back-off after this user's last failed connect, 0 after a success
        self.backoff_timer: Any = None
        self.queued_seq = -1  # the request queued to be written at the end of this turn of the loop
        self.status = 0  # the response's status code, once its head is parsed
        self.clean = True  # its parser stands at a message's start: no bytes past the last response were fed to it

    # httptools' callbacks: llhttp calls only these three

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # llhttp forgets this once the message is complete, so ask while the headers are fresh
        parser = self.parser
        self.keep_alive = parser.should_keep_alive()
        self.status = parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.body += len(chunk)

    def on_message_complete(self) -> None:
        self.complete = True

    # the Deadlines scan's side

    def expire(self) -> None:
        """Past its deadline: ended from a hub callback, once (the next scans leave it alone)."""
        self.driver.loop.run_callback(self.driver._expire_now, self, self.seq)
        self.deadline_ns = NO_DEADLINE_NS
