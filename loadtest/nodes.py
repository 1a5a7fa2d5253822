"""What runs on a node: one Dask worker's side of a cluster run.

A node is one Dask worker. The controller (`loadtest.cluster`) first runs
`describe_node` on every node (version, host, clock, whether it may start
children, whether its limits fit its share), then submits one long-running
`run_node` task per node, pinned to it. That task starts the node's per-core
load workers through the same spawn path as a local run, forwards every
message they send, unchanged, to the controller through the node's Dask
Queue, starts them at the run's start instant and stops them when the
controller sets the run's stop Event. Dask owns scheduling, heartbeats and
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
from multiprocessing.connection import Connection, wait
from typing import Any

from . import __version__
from .config import ConfigError
from .worker import WorkerPlan

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
    from .limits import check_limits

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
    from .spawn import ignore_interrupts

    ignore_interrupts()


def _start_workers(plans: tuple[WorkerPlan, ...]) -> tuple[Any, Any, list[tuple[int, Any, Connection]]]:
    """This node's load workers, started as a local run starts its own: spawned, patched, waiting for `start`."""
    from .spawn import start_child
    from .worker import main as worker_main

    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    children = []
    for plan in plans:
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(target=worker_main, args=(plan, writer, start, stop),
                              name=f"loadtest-worker-{plan.index}", daemon=True)
        start_child(process)
        writer.close()
        children.append((plan.index, process, reader))
    return start, stop, children


class _NodeSampler:
    """resources.csv rows of a node on another machine, sampled there: its workers and its machine.

    Rows go to the controller with the node's messages, as (-1, ("resources", samples)); their
    timestamps are moved onto the controller's clock, and the machine row is named node-N/machine.
    """

    def __init__(self, task: NodeTask, pids: list[int]) -> None:
        import threading

        from .resources import ResourceSampler

        self._task = task
        self._rows: list[Any] = []
        self._lock = threading.Lock()
        self._sampler = ResourceSampler(RESOURCE_INTERVAL_S, on_sample=self._on_sample)
        for role, pid in zip(task.roles, pids):
            self._sampler.register(role, pid)

    def _on_sample(self, samples: list[Any]) -> None:
        from dataclasses import replace

        from .resources import MACHINE_ROLE

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
        return [(-1, ("resources", rows))] if rows else []


def _client_connected(client_id: str, dask_scheduler: Any = None) -> bool:
    """On the scheduler: is this client still connected? (A controller killed outright is not.)"""
    return client_id in dask_scheduler.clients


def run_node(task: NodeTask) -> dict[str, Any]:
    """The long-running Dask task of one node: start its workers, forward what they send, end with them.

    Messages go to the controller as they come, in batches at most FORWARD_WINDOW_S late, each an
    (index, message) pair exactly as the worker sent it; ("ended", index, exitcode) says a worker's
    process is gone. Returns how the node's workers ended.
    """
    from distributed import Event, Queue, Variable, get_client

    queue = Queue(task.channel.queue)
    client = get_client()
    start_event, stop_event = Event(task.channel.start), Event(task.channel.stop)
    start, stop, children = _start_workers(task.plans)
    batch: list[tuple[int, Any]] = []
    pending_since: float | None = None  # when the oldest message of `batch` came

    def forward() -> None:
        nonlocal batch, pending_since
        if batch:
            queue.put(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            batch = []
        pending_since = None

    sampler = _NodeSampler(task, [process.pid for _, process, _ in children]) if task.sample else None
    running = {reader: (index, process) for index, process, reader in children}
    sentinels = {process.sentinel: (index, process, reader) for index, process, reader in children}
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
            for handle in wait([*running, *sentinels], timeout=max(0.0, timeout)):
                if handle in running:
                    index, _ = running[handle]
                    try:
                        message = handle.recv()  # type: ignore[union-attr]
                    except (EOFError, OSError):
                        del running[handle]
                        continue
                    batch.append((index, message))
                    pending_since = pending_since or time.monotonic()
                    if message[0] != "snapshot":
                        forward()  # ready, stopping, done, error: the controller waits on these
                elif handle in sentinels:
                    index, process, reader = sentinels.pop(handle)  # type: ignore[arg-type]
                    while reader in running and reader.poll():  # what it sent before it ended
                        try:
                            batch.append((index, reader.recv()))
                        except (EOFError, OSError):
                            break
                    running.pop(reader, None)
                    process.join(1.0)
                    exits[index] = process.exitcode
                    batch.append((index, ("ended", index, process.exitcode)))
                    forward()
            if pending_since is not None and time.monotonic() - pending_since >= FORWARD_WINDOW_S:
                forward()
            poll = time.monotonic() - polled >= NODE_POLL_S  # the scheduler is asked at most this often
            if poll:
                polled = time.monotonic()
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
                for _, process, _ in sentinels.values():
                    process.kill()
    finally:
        stop.set()
        if sampler is not None:
            sampler.stop()
            batch.extend(sampler.take())
        for index, process, reader in children:
            process.join(NODE_JOIN_S if index not in exits else 0)
            if process.is_alive():
                process.kill()
                process.join(NODE_JOIN_S)
            reader.close()
        forward()
    return {"name": task.name, "exits": exits}
