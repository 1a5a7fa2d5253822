"""The main loop of a run: read every worker's messages, merge its snapshots, carry out the control inbox.

It ends when every worker is done or lost; a worker that goes silent, or does not stop in time after
the run was stopped, is killed and lost, its counts up to its last snapshot kept.
"""

from __future__ import annotations

import time
from multiprocessing.connection import wait
from typing import Any, Callable


from loadtest.execution.control import Interrupt, Steering
from loadtest.model.messages import (CANCEL_WAIT_S, GRACEFUL_STOP_S, Done, Failed, Ready, SnapshotSent, Stopping,
                       WorkerMessage)
from loadtest.execution.monitor import RunMonitor
from loadtest.model.run_result import Frame, WorkerState
from loadtest.core.stats import RunStats
from loadtest.execution.interrupts import Interrupts
from loadtest.outputs.base import Outputs

WAIT_S = 0.25
SILENT_WORKER_S = 5.0  # a worker that sends nothing for this long is lost (hung or stopped)
STOP_TIMEOUT_S = 15.0  # after a stop request, how long workers get before they are terminated
JOIN_TIMEOUT_S = 5.0
SECOND_INTERRUPT = "killed by a second interrupt"


class ServerWatch:
    """The run's embedded servers: a process of one that ends before the run does fails the run.

    The load goes on (the server's other processes, if any, still share its port), but its figures
    are no longer the server's, and the exit status says so.
    """

    def __init__(self, groups: list[Any], event: Callable[[str], None]) -> None:
        self.groups, self.event = groups, event
        self.problems: list[str] = []
        self._seen: set[int] = set()

    def check(self) -> None:
        for g in self.groups:
            for pid, code in g.ended():
                if pid in self._seen:
                    continue
                self._seen.add(pid)
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                problem = (f"server {g.spec.name} ({g.spec.kind}) process {pid} exited during the run ({how}); "
                           f"requests to it failed from then on")
                self.problems.append(problem)
                self.event(f"error: {problem}")


def _receive(w: WorkerState, stats: RunStats | None = None) -> WorkerMessage | None:
    """Read one message from a worker; None if its pipe is closed."""
    try:
        message: WorkerMessage = w.child.conn.recv()
    except (EOFError, OSError):
        return None
    w.last_heard = time.monotonic()
    if isinstance(message, SnapshotSent):
        if stats is not None:
            stats.add(message.snapshot)
    elif isinstance(message, Done):
        w.exit, w.done = message.exit, True
    elif isinstance(message, Stopping):
        w.stopping = True
    elif isinstance(message, Ready):
        w.ready, w.pid = True, message.pid
    elif isinstance(message, Failed):
        w.error = message.error
    return message


class Collection:
    """The main loop of a run: read snapshots until every worker is done or lost."""

    def __init__(self, states: list[WorkerState], stats: RunStats, stop: Any, outputs: Outputs,
                 event: Callable[[str], None], abort: Callable[[], None], monitor: RunMonitor,
                 interrupts: Interrupts, servers: ServerWatch, steering: Steering) -> None:
        self.states, self.stats, self.stop, self.outputs = states, stats, stop, outputs
        self.event, self.abort = event, abort
        self.monitor, self.interrupts, self.servers = monitor, interrupts, servers
        self.steering = steering

    def flush(self, final: bool = False) -> None:
        lost = [w.index for w in self.states if w.lost or w.killed]
        for interval in self.stats.ready_intervals(lost, flush=final):
            self.outputs.add(Frame(interval, self.stats, self.monitor.worker_cpu(len(self.states)),
                                   self.monitor.machine_cpu()))
            self.abort()
        self.monitor.say_new_verdicts()

    def receive(self, w: WorkerState) -> bool:
        message = _receive(w, self.stats)
        if isinstance(message, SnapshotSent):
            self.monitor.note_snapshot(message.snapshot)
        return message is not None

    def lose(self, w: WorkerState, error: str = "", kill: bool = False) -> None:
        if kill:
            w.child.kill()
        if error:
            w.error = error
        self.monitor.worker_gone(w.pid)
        _mark_lost(w, self.stats, self.event)

    def kill_now(self, w: WorkerState) -> None:
        """Stop a worker at once, as a second interrupt asks; keep what it sent before it died."""
        w.child.kill()
        w.child.join(JOIN_TIMEOUT_S)
        while not w.done and w.child.conn.poll() and self.receive(w):
            pass
        if not w.done:
            w.killed, w.error, w.exitcode = True, SECOND_INTERRUPT, w.child.exitcode
            self.event(f"worker {w.index} (pid {w.pid}) {SECOND_INTERRUPT}; counts up to its last snapshot are kept")
        self.monitor.worker_gone(w.pid)

    def collect(self) -> bool:
        """True if the run was interrupted."""
        interrupted = False
        stop_deadline = float("inf")
        for w in self.states:
            w.last_heard = time.monotonic()
        while True:
            active = [w for w in self.states if not w.done and not w.lost]
            if not active:
                break
            # The control inbox: level changes, pause, resume and stop are carried out by the steering; an
            # interrupt and a failed abort_on_fail threshold come back to be carried out here.
            elapsed = time.time() - (self.steering.status.started or time.time())
            killed = False
            for notice in self.steering.take(elapsed, ending=interrupted or any(w.stopping or w.done
                                                                                for w in self.states)):
                if isinstance(notice, Interrupt) and interrupted:  # a second Ctrl-C: stop at once, as asked
                    for w in active:
                        self.kill_now(w)
                    killed = True
                    break
                if isinstance(notice, Interrupt):
                    interrupted = True
                    self.event("stopping: in-flight requests are cancelled, reports will be written "
                               "(interrupt again to stop at once)")
                self.stop.set()  # the first interrupt, or an abort: in-flight requests end as cancelled
                stop_deadline = min(stop_deadline, time.monotonic() + STOP_TIMEOUT_S)
            if killed:
                break
            by_handle: dict[Any, WorkerState] = {}
            for w in active:
                by_handle[w.child.conn] = w
                by_handle[w.child.sentinel] = w
            for handle in wait(list(by_handle), timeout=WAIT_S):
                w = by_handle[handle]
                if w.done or w.lost:
                    continue
                if handle is w.child.conn:
                    if not self.receive(w):
                        self.lose(w)
                else:  # the process ended: read what it sent before it did
                    while not w.done and w.child.conn.poll() and self.receive(w):
                        pass
                    if not w.done:
                        self.lose(w)
            self.servers.check()
            now = time.monotonic()
            for w in active:
                allowed = SILENT_WORKER_S + (GRACEFUL_STOP_S + CANCEL_WAIT_S if w.stopping else 0.0)
                if not w.done and not w.lost and now - w.last_heard > allowed:
                    self.lose(w, f"sent nothing for {allowed:g} s (hung or stopped); killed", kill=True)
            if now > stop_deadline:
                for w in active:
                    if not w.done and not w.lost:
                        self.lose(w, "did not stop in time after the run was stopped; killed", kill=True)
            self.flush()
        self.flush(final=True)
        return interrupted




def await_exit(states: list[WorkerState], monitor: RunMonitor) -> None:
    """Wait for finished workers to exit, without reaping them, so their last sample has exact CPU times."""
    waiting = {w.child.sentinel: w for w in states if not w.lost}
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for sentinel in wait(list(waiting), timeout=max(0.0, deadline - time.monotonic())):
            monitor.worker_gone(waiting.pop(sentinel).pid)


def _mark_lost(w: WorkerState, stats: RunStats, event: Callable[[str], None]) -> None:
    w.lost = True
    w.child.join(0.5)
    w.exitcode = w.child.exitcode
    if not w.error:
        code = w.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        w.error = f"ended without finishing ({how}); counts up to its last snapshot are kept"
    event(f"worker {w.index} (pid {w.pid}) lost: {w.error}")


def terminate(states: list[WorkerState]) -> None:
    """Let finished workers exit (up to JOIN_TIMEOUT_S), kill the others at once, and close their pipes."""
    for w in states:
        w.child.stop(JOIN_TIMEOUT_S if w.done else 0)
        if w.exitcode is None:
            w.exitcode = w.child.exitcode
        w.child.close()
