"""What runs on a node: one Dask worker's side of a cluster run.

A node is one Dask worker. The controller (`loadtest.execution.cluster`) first runs
`describe_node` on every node (version, host, clock, whether it may start
children, whether its limits fit its share), then submits one long-running
`run_node` task per node, pinned to it. That task starts the node's per-core
load workers through the child-process owner (`loadtest.execution.children`), exactly
as a local run starts its own, forwards every message they send, unchanged,
to the controller through the node's Dask Queue, starts them at the run's start instant and stops them when the
controller sets the run's stop Event. A steered run's commands (`messages.Command`: level changes, pause,
resume, end) come through a second Queue per node and go to every one of its workers. Dask owns scheduling, heartbeats and
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
from typing import Any

from loadtest import __version__
from loadtest.model.config import ConfigError
from loadtest.model.messages import WORKER_ENTRY, NodeSamples, SnapshotSent, WorkerEnded, WorkerPlan

# Each worker sends a snapshot a second, all at about the same moment: what came within this window goes to the
# controller as one batch. Short, because a node lost mid-run loses what it had not yet forwarded.
FORWARD_WINDOW_S = 0.2
NODE_POLL_S = 0.25  # how often the node asks the scheduler about the run's start and stop signals
RESOURCE_INTERVAL_S = 1.0  # a node on another machine samples its own workers and machine this often
NODE_JOIN_S = 5.0  # after its workers are told to stop, how long they get to exit before they are killed
CONTROLLER_CHECK_S = 2.0  # how often the node asks the scheduler whether the controller's client is still there
STOP_AFTER_S = 15.0  # after the stop signal, the longest a worker may take to finish before it is killed


@dataclass(frozen=True)
class NodeChannel:
    """The Dask names one run's controller and nodes share: one Queue per node, a start and a stop Event."""

    queue: str  # this node's queue: batches of (worker index, message), pickled
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


def _client_connected(client_id: str, dask_scheduler: Any = None) -> bool:
    """On the scheduler: is this client still connected? (A controller killed outright is not.)"""
    return client_id in dask_scheduler.clients


def run_node(task: NodeTask) -> dict[str, Any]:
    """The long-running Dask task of one node: start its workers, forward what they send, end with them.

    Messages go to the controller as they come, in batches at most FORWARD_WINDOW_S late, each an
    (index, message) pair exactly as the worker sent it; WorkerEnded says a worker's process is
    gone. Returns how the node's workers ended.
    """
    from distributed import Event, Queue, Variable, get_client

    from loadtest.execution.children import ChildGroup

    queue = Queue(task.channel.queue)
    control = Queue(task.channel.control) if task.channel.control else None
    client = get_client()
    start_event, stop_event = Event(task.channel.start), Event(task.channel.stop)
    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    group = ChildGroup.start(WORKER_ENTRY, [(plan, start, stop) for plan in task.plans], "loadtest-worker")
    index_of = {child: plan.index for child, plan in zip(group.children, task.plans)}
    batch: list[tuple[int, Any]] = []
    pending_since: float | None = None  # when the oldest message of `batch` came

    def forward() -> None:
        nonlocal batch, pending_since
        if batch:
            queue.put(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            batch = []
        pending_since = None

    def receive(child: Any) -> bool:
        """One message of `child` into the batch; False if its pipe is closed."""
        nonlocal pending_since
        try:
            message = child.conn.recv()
        except (EOFError, OSError):
            return False
        batch.append((index_of[child], message))
        pending_since = pending_since or time.monotonic()
        if not isinstance(message, SnapshotSent):
            forward()  # ready, failed, stopping, done: the controller waits on these
        return True

    sampler = _NodeSampler(task, [c.pid for c in group.children]) if task.sample else None
    open_pipes = {c.conn: c for c in group.children}
    sentinels = {c.sentinel: c for c in group.children}
    exits: dict[int, int | None] = {}
    due: float | None = None  # when this node starts its workers, on its own clock
    stopped_at: float | None = None
    checked = polled = time.monotonic()
    try:
        while sentinels:
            timeout = NODE_POLL_S  # shorter when a batch is due, or the start instant is near: met on time
            if pending_since is not None:
                timeout = min(timeout, pending_since + FORWARD_WINDOW_S - time.monotonic())
            if due is not None and not start.is_set():
                timeout = min(timeout, due - time.time())
            for handle in wait([*open_pipes, *sentinels], timeout=max(0.0, timeout)):
                if handle in open_pipes:
                    if not receive(open_pipes[handle]):
                        del open_pipes[handle]
                elif handle in sentinels:
                    child = sentinels.pop(handle)
                    while child.conn in open_pipes and child.conn.poll():  # what it sent before it ended
                        if not receive(child):
                            break
                    open_pipes.pop(child.conn, None)
                    child.join(1.0)
                    exits[index_of[child]] = child.exitcode
                    batch.append((index_of[child], WorkerEnded(child.exitcode)))
                    forward()
            if pending_since is not None and time.monotonic() - pending_since >= FORWARD_WINDOW_S:
                forward()
            poll = time.monotonic() - polled >= NODE_POLL_S  # the scheduler is asked at most this often
            if poll:
                polled = time.monotonic()
            if poll and control is not None:
                try:
                    commands = control.get(batch=True)
                except Exception:  # noqa: BLE001 - the scheduler did not answer this time; the next poll asks again
                    commands = []
                for blob in commands:
                    group.command(pickle.loads(blob))
            if poll and due is None and not start.is_set() and start_event.is_set():
                start_at = float(Variable(task.channel.start_at).get(timeout=5))
                due = start_at + task.clock_offset_s  # the same instant on every node
            if due is not None and not start.is_set() and time.time() >= due:
                start.set()
                if sampler is not None:
                    sampler.start()
            if sampler is not None and (rows := sampler.take()):
                batch.extend(rows)
                pending_since = pending_since or time.monotonic()
            gone = False
            if task.controller and time.monotonic() - checked >= CONTROLLER_CHECK_S:
                checked = time.monotonic()  # Dask knows whether the controller is there: no heartbeat of our own
                gone = not client.run_on_scheduler(_client_connected, task.controller)
            if stopped_at is None and (gone or (poll and stop_event.is_set())):
                stop.set()
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_AFTER_S:
                group.kill()
    finally:
        stop.set()
        if sampler is not None:
            sampler.stop()
            batch.extend(sampler.take())
        group.stop(NODE_JOIN_S)  # what is still running: lifelines closed, then killed
        forward()
    return {"name": task.name, "exits": exits}
