"""Ctrl-C and SIGTERM during a run: counted by a signal handler, then posted to the run's control inbox."""

from __future__ import annotations

import signal
import time
from typing import Any


from loadtest.execution.control import Inbox, Interrupt


# Signals this close together are one interrupt: `timeout` sends its signal to the command and then to the
# whole process group, so the controller gets it twice within microseconds. A person pressing Ctrl-C
# again, after the "interrupt again" line, takes longer than this.
SAME_INTERRUPT_S = 0.5


class Interrupts:
    """Ctrl-C and SIGTERM, counted by a signal handler rather than raised at whatever line is running.

    Before the load starts, the start-up asks (`check`) between steps and while it waits, and an
    interrupt raises KeyboardInterrupt there, where every process started so far is known and is
    stopped: there is nothing to save. Once the load runs, each interrupt is posted to the run's control
    inbox (`control.Interrupt`) and the main loop carries it out: the first asks the workers to stop
    (in-flight requests end as cancelled), the second (at least SAME_INTERRUPT_S later) stops them at
    once, and the reports are written either way. The children
    ignore both signals (see `loadtest.execution.children`), so a signal sent to the whole process group (a
    terminal's Ctrl-C, `timeout`, systemd) acts exactly as one sent to this process.
    """

    def __init__(self) -> None:
        self.count = 0
        self.running = False
        self.inbox: Inbox | None = None
        self._previous: dict[int, Any] = {}
        self._last = -SAME_INTERRUPT_S

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: a library caller keeps its own handling
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if now - self._last >= SAME_INTERRUPT_S:
            self.count += 1
            if self.running and self.inbox is not None:
                self.inbox.notify(Interrupt())
        self._last = now

    def start_running(self, inbox: Inbox) -> None:
        """The load starts: from now on each interrupt goes to `inbox` (one that came meanwhile included)."""
        self.inbox = inbox
        self.running = True
        for _ in range(self.count):
            inbox.notify(Interrupt())

    def pending(self) -> bool:
        """True if an interrupt came before the load started."""
        return bool(self.count) and not self.running

    def check(self) -> None:
        """Raise KeyboardInterrupt if an interrupt came before the load started."""
        if self.pending():
            raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
