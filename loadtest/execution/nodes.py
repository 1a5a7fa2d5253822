"""What runs on a node: one Dask worker's side of a cluster run.

A node is one Dask worker. The controller (`loadtest.execution.cluster`) first runs
`describe_node` on every node (version, host, clock, whether it may start
children, whether its limits fit its share), then submits one long-running
`run_node` task per node, pinned to it. That task starts the node's per-core
load workers through the child-process owner (`loadtest.execution.children`), exactly
as a local run starts its own, forwards every message they send, unchanged,
to the controller through the run's Dask Queue (a second's snapshots of all its workers as one batch,
their histograms merged into one: `merge_seconds`), starts them at the run's start instant and stops
them when the controller sets the run's stop Event. A steered run's commands (`messages.Command`:
level changes, pause, resume, end) come through a second Queue per node and go to every one of its
workers. Dask owns scheduling, heartbeats and
the loss of a node; this task only runs and reports.

Nothing here imports Dask at module level: the controller's base install
does not need it, and a node imports it only inside the task it runs.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import platform
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Iterable

from loadtest import __version__
from loadtest.model.config import ConfigError
from loadtest.core.carry import ShippedMerger, carry_histograms
from loadtest.model.messages import WORKER_ENTRY, NodeSamples, SnapshotSent, WorkerEnded, WorkerPlan

# Each worker sends a snapshot a second, all at about the same moment (they tick from one start instant): a batch
# goes to the controller as soon as every running worker has a message in it, so a second's snapshots cross the
# scheduler as one put, or this long after its first message if one is late. Short, because a node lost mid-run
# loses what it had not yet forwarded.
FORWARD_WINDOW_S = 0.2
NODE_POLL_S = 0.25  # how often the node asks the scheduler about the run's start and stop signals
RESOURCE_INTERVAL_S = 1.0  # a node on another machine samples its own workers and machine this often
NODE_JOIN_S = 5.0  # after its workers are told to stop, how long they get to exit before they are killed
CONTROLLER_CHECK_S = 2.0  # how often the node asks the scheduler whether the controller's client is still there
STOP_AFTER_S = 15.0  # after the stop signal, the longest a worker may take to finish before it is killed


@dataclass(frozen=True)
class NodeChannel:
    """The Dask names a run's controller and nodes share: the run's Queue, start and stop Events, a command Queue."""

    queue: str  # the run's queue, every node's: batches of (worker index, message), pickled
    start: str  # Event: the controller set the run's start instant (Variable `start_at`)
    start_at: str  # Variable: the start instant on the controller's clock (time.time())
    stop: str  # Event: every node stops its workers
    control: str = ""  # this node's command queue (a steered run): messages.Command, pickled, for all its workers


@dataclass(frozen=True)
class NodeTask:
    """One node's part of a run: its name, its workers' plans (global indexes) and its clock offset."""

    name: str  # node-1, node-2, ...
    plans: tuple[WorkerPlan, ...]
    clock_offset_s: float  # this node's clock minus the controller's, as measured before the run
    channel: NodeChannel
    controller: str = ""  # the controller's Dask client id: while the scheduler lists it, the run wants this node
    sample: bool = False  # sample its workers and machine here (the controller is on another machine)
    roles: tuple[str, ...] = ()  # its workers' roles in resources.csv, in plan order


def describe_node() -> dict[str, Any]:
    """What the controller checks before it uses this node: version, host, clock, daemon, cores.

    Runs inside the Dask worker process (client.run).
    """
    return {
        "version": __version__,
        "host": platform.node(),
        "time": time.time(),
        "daemon": multiprocessing.current_process().daemon,
        "pid": os.getpid(),
        "cores": os.cpu_count() or 1,
    }


def loadtest_version(dask_scheduler: Any = None) -> str:
    """This process's loadtest version: run on the scheduler (run_on_scheduler), which unpickles the
    node tasks and so must import loadtest too."""
    return __version__


def node_limits(config: Any, total_workers: int) -> str:
    """The sentence a local run would be refused with on this node, for one worker's share of
    `total_workers` (descriptors, ports, source_ips), or "" if its limits fit. Runs on the node."""
    from loadtest.execution.limits import check_limits

    try:
        check_limits(config, total_workers)
    except ConfigError as e:
        return str(e)
    return ""


def leave_interrupts_to_controller() -> None:
    """On a local:N node (client.run, in the Dask worker's main thread): ignore Ctrl-C and SIGTERM.

    Its process is in the controller's process group, so a terminal's Ctrl-C reaches it too; the
    controller alone handles it and stops the node's load in order through the stop signal.
    """
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


class _NodeSampler:
    """resources.csv rows of a node on another machine, sampled there: its workers and its machine.

    Rows go to the controller with the node's messages, as (-1, ("resources", samples)); their
    timestamps are moved onto the controller's clock, and the machine row is named node-N/machine.
    """

    def __init__(self, task: NodeTask, pids: list[int]) -> None:
        import threading

        from loadtest.execution.resources import ResourceSampler

        self._task = task
        self._rows: list[Any] = []
        self._lock = threading.Lock()
        self._sampler = ResourceSampler(RESOURCE_INTERVAL_S, on_sample=self._on_sample)
        for role, pid in zip(task.roles, pids):
            self._sampler.register(role, pid)

    def _on_sample(self, samples: list[Any]) -> None:
        from dataclasses import replace

        from loadtest.execution.resources import MACHINE_ROLE

        moved = [replace(s, timestamp=s.timestamp - self._task.clock_offset_s,
                         role=f"{self._task.name}/{MACHINE_ROLE}" if s.role == MACHINE_ROLE else s.role)
                 for s in samples]
        with self._lock:
            self._rows.extend(moved)

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()

    def take(self) -> list[tuple[int, Any]]:
        with self._lock:
            rows, self._rows = self._rows, []
        return [(-1, NodeSamples(tuple(rows)))] if rows else []


def merge_seconds(batch: list[tuple[int, Any]], merger: ShippedMerger) -> list[tuple[int, Any]]:
    """`batch` with the histograms of its workers' snapshots of each second merged into one of them
    (`core.carry`: exact); every message still there, in order, with each worker's counters."""
    at = [k for k, (_, message) in enumerate(batch) if isinstance(message, SnapshotSent)]
    if len(at) < 2:
        return batch
    out = list(batch)
    for k, snap in zip(at, carry_histograms([batch[k][1].snapshot for k in at], merger)):
        out[k] = (batch[k][0], SnapshotSent(snap))
    return out


class NodeOutbox:
    """What a node sends the controller: its workers' messages in batches, each one put on the run's Queue.

    A batch goes when every worker still running has a message in it (their snapshots of a second, which
    they all send at the same instant, or their readies, stops, ends), or FORWARD_WINDOW_S after its
    first message if one is late (`due`), its second's histograms merged into one (`merge_seconds`).
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue  # anything with put(bytes): the run's Dask Queue
        self._batch: list[tuple[int, Any]] = []
        self._heard: set[int] = set()  # the workers with a message in the batch
        self._merger = ShippedMerger()
        self.pending_since: float | None = None  # when the oldest message of the batch came (monotonic)

    def add(self, index: int, message: Any, running: Iterable[int]) -> None:
        """Worker `index`'s message; the batch goes if every one of `running` (the workers still running)
        has a message in it."""
        self._batch.append((index, message))
        self._heard.add(index)
        self.pending_since = self.pending_since or time.monotonic()
        if all(i in self._heard for i in running):
            self.forward()

    def extend(self, rows: list[tuple[int, Any]]) -> None:
        """The node's own rows (resources.csv), with the next batch."""
        if rows:
            self._batch.extend(rows)
            self.pending_since = self.pending_since or time.monotonic()

    def due(self) -> float | None:
        """When the batch must go at the latest (monotonic), or None if there is none."""
        return None if self.pending_since is None else self.pending_since + FORWARD_WINDOW_S

    def forward(self) -> None:
        """Put the batch on the queue now."""
        if self._batch:
            self._queue.put(pickle.dumps(merge_seconds(self._batch, self._merger), protocol=pickle.HIGHEST_PROTOCOL))
            self._batch = []
        self._heard.clear()
        self.pending_since = None


def _client_connected(client_id: str, dask_scheduler: Any = None) -> bool:
    """On the scheduler: is this client still connected? (A controller killed outright is not.)"""
    return client_id in dask_scheduler.clients


def run_node(task: NodeTask) -> dict[str, Any]:
    """The long-running Dask task of one node: start its workers, forward what they send, end with them.

    Messages go to the controller in the order they came, in batches (`NodeOutbox`), each an (index,
    message) pair as the worker sent it, but for the histograms of a second's snapshots, merged into
    one of them; WorkerEnded says a worker's process is gone. Returns how the node's workers ended.
    """
    from distributed import Queue

    from loadtest.execution.children import ChildGroup

    outbox = NodeOutbox(Queue(task.channel.queue))
    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    group = ChildGroup.start(WORKER_ENTRY, [(plan, start, stop) for plan in task.plans], "loadtest-worker")
    node: _NodeRun | None = None
    try:
        node = _NodeRun(task, group, outbox, start, stop)
        node.loop()
    finally:
        stop.set()
        if node is not None and node.sampler is not None:
            node.sampler.stop()
            outbox.extend(node.sampler.take())
        group.stop(NODE_JOIN_S)  # what is still running: lifelines closed, then killed
        outbox.forward()
    return {"name": task.name, "exits": node.exits}


class _NodeRun:
    """One node's run as its task follows it: its workers' pipes and processes, the run's signals."""

    def __init__(self, task: NodeTask, group: Any, outbox: NodeOutbox, start: Any, stop: Any) -> None:
        from distributed import Event, Queue, get_client

        self.task, self.group, self.outbox, self.start, self.stop = task, group, outbox, start, stop
        self.control = Queue(task.channel.control) if task.channel.control else None
        self.client = get_client()
        self.start_event, self.stop_event = Event(task.channel.start), Event(task.channel.stop)
        self.index_of = {child: plan.index for child, plan in zip(group.children, task.plans)}
        self.sampler = _NodeSampler(task, [c.pid for c in group.children]) if task.sample else None
        self.open_pipes = {c.conn: c for c in group.children}
        self.sentinels = {c.sentinel: c for c in group.children}
        self.exits: dict[int, int | None] = {}
        self.due: float | None = None  # when this node starts its workers, on its own clock
        self.stopped_at: float | None = None
        self.checked = self.polled = time.monotonic()

    def running(self) -> Any:
        return (self.index_of[c] for c in self.sentinels.values())

    def receive(self, child: Any) -> bool:
        """One message of `child` into the outbox; False if its pipe is closed."""
        try:
            message = child.conn.recv()
        except (EOFError, OSError):
            return False
        self.outbox.add(self.index_of[child], message, self.running())
        return True

    def ended(self, child: Any) -> None:
        """A worker's process ended: what it sent before it did, then WorkerEnded."""
        while child.conn in self.open_pipes and child.conn.poll():
            if not self.receive(child):
                break
        self.open_pipes.pop(child.conn, None)
        child.join(1.0)
        self.exits[self.index_of[child]] = child.exitcode
        self.outbox.add(self.index_of[child], WorkerEnded(child.exitcode), self.running())

    def loop(self) -> None:
        """Until every worker's process has ended: forward, start and stop them as the run says."""
        while self.sentinels:
            timeout = NODE_POLL_S  # shorter when a batch is due, or the start instant is near: met on time
            if (batch_due := self.outbox.due()) is not None:
                timeout = min(timeout, batch_due - time.monotonic())
            if self.due is not None and not self.start.is_set():
                timeout = min(timeout, self.due - time.time())
            for handle in wait([*self.open_pipes, *self.sentinels], timeout=max(0.0, timeout)):
                if handle in self.open_pipes:
                    if not self.receive(self.open_pipes[handle]):
                        del self.open_pipes[handle]
                elif handle in self.sentinels:
                    self.ended(self.sentinels.pop(handle))
            if (batch_due := self.outbox.due()) is not None and time.monotonic() >= batch_due:
                self.outbox.forward()
            self.follow_the_run()

    def follow_the_run(self) -> None:
        """The controller's commands, the start instant, the stop signal; a controller that is gone stops it."""
        from distributed import Variable

        poll = time.monotonic() - self.polled >= NODE_POLL_S  # the scheduler is asked at most this often
        if poll:
            self.polled = time.monotonic()
        if poll and self.control is not None:
            try:
                commands = self.control.get(batch=True)
            except Exception:  # noqa: BLE001 - the scheduler did not answer this time; the next poll asks again
                commands = []
            for blob in commands:
                self.group.command(pickle.loads(blob))
        if poll and self.due is None and not self.start.is_set() and self.start_event.is_set():
            start_at = float(Variable(self.task.channel.start_at).get(timeout=5))
            self.due = start_at + self.task.clock_offset_s  # the same instant on every node
        if self.due is not None and not self.start.is_set() and time.time() >= self.due:
            self.start.set()
            if self.sampler is not None:
                self.sampler.start()
        if self.sampler is not None:
            self.outbox.extend(self.sampler.take())
        gone = False
        if self.task.controller and time.monotonic() - self.checked >= CONTROLLER_CHECK_S:
            self.checked = time.monotonic()  # Dask knows whether the controller is there: no heartbeat of our own
            gone = not self.client.run_on_scheduler(_client_connected, self.task.controller)
        if self.stopped_at is None and (gone or (poll and self.stop_event.is_set())):
            self.stop.set()
            self.stopped_at = time.monotonic()
        if self.stopped_at is not None and time.monotonic() - self.stopped_at > STOP_AFTER_S:
            self.group.kill()
