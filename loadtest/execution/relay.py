"""A cluster node's workers as local children: the run's Dask Queue relayed into local pipes.

The controller follows every worker through a `children.Child`: a pipe to read
its messages from and a sentinel that is ready when its process has ended. For
a worker on a cluster node, `RemoteChild` is that child: `NodeRelay`, a thread
of the controller, reads the run's Dask Queue and writes every message,
unchanged, into the pipe of the worker that sent it, and makes the sentinel
ready when the node says the worker's process ended (`WorkerEnded`) or when
the node is lost. So the controller's collection loop and the stats core
cannot tell a node's worker from a local one.

Every node puts its batches on one Queue for the whole run (a node's
workers' snapshots of one second are one batch: see `nodes.run_node`), and
the relay reads it with a get that waits on the scheduler for the next
batch, then takes whatever else is waiting in one more get. So the
scheduler sees about one put per node per second and a few reads a second
for the whole run, however many nodes there are: no node is polled.

A node is lost when the scheduler no longer lists its Dask worker, when its
task failed, or when the scheduler itself is gone: Dask owns that knowledge.
Each of the node's workers still running is then sent `Failed` (the reason,
naming the node, which the controller keeps as the worker's error) and ends.

A steered run's commands go the other way: `RelayGroup.command` hands one to
the relay thread, which puts it on every node's command Queue once (the node
gives it to each of its workers), so the controller's loop never waits on
the scheduler.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from multiprocessing.connection import Connection
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

from collections import deque

from loadtest.execution.children import Child, ChildGroup
from loadtest.model.messages import Command, Failed, NodeSamples, Ready, WorkerEnded

# The longest one read of the run's queue waits on the scheduler for a batch: a batch is taken as soon as it is
# there; this bounds how long the relay thread is away from its other duties (liveness, closing)
RELAY_WAIT_S = 0.1
RETRY_S = 0.1  # after a read that failed (the scheduler did not answer), before the next one
LIVENESS_S = 0.5  # how often the scheduler is asked which nodes it still has
# A node is lost once the scheduler has not listed it for this long: one answer without it, or an asking that
# failed, on a machine busy enough to delay the scheduler, is not a lost node (a killed one stays unlisted)
ABSENT_S = 2.0
STOP_WAIT_S = 5.0  # how long the relay thread gets to finish its last read


@dataclass
class Node:
    """One Dask worker used as a node: where it is, its clock, its workers and how it ended."""

    name: str  # node-1, node-2, ...
    address: str  # the Dask worker's address
    host: str = ""
    pid: int = 0  # the Dask worker's process on its host
    clock_offset_s: float = 0.0  # its clock minus the controller's
    clock_rtt_s: float = 0.0  # round trip of the probe the offset came from: the offset is good to half of it
    cores: int = 0
    count: int = 0  # how many load workers it runs: --workers / workers:, or one per core of its own
    workers: list[int] = field(default_factory=list)  # global worker indexes
    lost: str = ""  # why it was lost, if it was
    absent_since: float = 0.0  # monotonic time of the first liveness check that did not list it; 0: listed
    future: Any = None
    control: Any = None  # its command Queue (a steered run)

    @property
    def same_host(self) -> bool:
        return self.host == platform.node()

    def summary(self, ended: str) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "host": self.host, "pid": self.pid,
                "clock_offset_ms": round(self.clock_offset_s * 1000, 3),
                "clock_rtt_ms": round(self.clock_rtt_s * 1000, 3),
                "workers": list(self.workers), "ended": ended, "problem": self.lost or None}


class RemoteChild(Child):
    """A node's worker as the controller sees it: a `children.Child` whose process is on the node.

    `conn` is a local pipe the relay writes the worker's messages into; `sentinel` is the read end
    of a pipe that becomes readable (end of file) when the node says the worker's process ended,
    or when the node is lost. Stopping and killing ask nothing of the node (its task stops its
    workers when the run's stop signal is set, and kills them if they do not stop); they only
    stop waiting for it.
    """

    def __init__(self, index: int, role: str, conn: Connection) -> None:  # noqa: D107 - no process here
        self.index, self.role, self.conn = index, role, conn
        self.pid = 0  # its pid on the node, from its Ready message (WorkerState.pid)
        self._commands = None  # commands reach its node through RelayGroup
        self._read, self._write = os.pipe()
        self._exitcode: int | None = None
        self._ended = threading.Event()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.role

    @property
    def sentinel(self) -> int:
        return self._read

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def end(self, exitcode: int | None) -> None:
        """The node said the process ended (or the node is gone): the sentinel becomes ready."""
        with self._lock:
            if self._ended.is_set():
                return
            self._exitcode = exitcode
            self._ended.set()
            os.close(self._write)

    def alive(self) -> bool:
        return not self._ended.is_set()

    def join(self, timeout: float) -> None:
        self._ended.wait(max(0.0, timeout))

    def ask_to_stop(self) -> None:
        pass  # the run's stop signal reaches its node

    def kill(self) -> None:
        self.end(self._exitcode)

    def stop(self, grace: float = 0.0) -> None:
        self.join(grace)
        self.kill()

    def close(self) -> None:
        self.kill()
        self.conn.close()
        with self._lock:  # once: a number closed twice may by then be another file's
            if self._read >= 0:
                os.close(self._read)
                self._read = -1


class NodeRelay:
    """The thread that turns the run's Dask Queue into its workers' pipes, and notices lost nodes."""

    def __init__(self, nodes: list[Node], queue: Any, scheduler: str, connected: Callable[[], bool],
                 present: Callable[[], set[str]], on_resources: Callable[[list[Any]], None]) -> None:
        """`queue`: the Dask Queue every node puts its batches on; `connected()`: the controller's client
        still reaches the scheduler; `present()`: the addresses of the Dask workers the scheduler lists;
        `on_resources`: a node's own resources.csv rows."""
        self.nodes, self.queue, self.scheduler = nodes, queue, scheduler
        self._connected, self._present, self.on_resources = connected, present, on_resources
        self._children: dict[int, RemoteChild] = {}
        self._writers: dict[int, Connection] = {}
        for node in nodes:
            for k, index in enumerate(node.workers):
                reader, writer = multiprocessing.Pipe(duplex=False)
                self._children[index] = RemoteChild(index, f"{node.name}/worker-{k}", reader)
                self._writers[index] = writer
        self.children = [self._children[i] for n in nodes for i in n.workers]
        self._closing = threading.Event()
        self._commands: deque[Command] = deque()  # for every node, put by the relay thread
        self._thread = threading.Thread(target=self._relay_loop, name="loadtest-node-relay", daemon=True)
        self._thread.start()

    def _relay_loop(self) -> None:
        """The run's queue into its workers' pipes; a node the scheduler no longer has is lost."""
        last_check = 0.0
        while not self._closing.is_set():
            active = [n for n in self.nodes if not n.lost and not self._all_ended(n)]
            if not active:  # every node ended or was lost: nothing more to relay
                self._closing.wait(RELAY_WAIT_S)
                continue
            if not self._connected():  # its connection to the scheduler closed
                for node in active:
                    self._lose(node, f"the Dask scheduler at {self.scheduler} is gone")
                continue
            self._send_commands(active)
            self._receive(RELAY_WAIT_S)
            now = time.monotonic()
            if now - last_check >= LIVENESS_S:
                last_check = now
                try:
                    present: set[str] | None = self._present()
                except Exception:  # noqa: BLE001 - no answer this time; a scheduler that is gone is `connected`'s
                    present = None
                for node in active:
                    if node.future is not None and node.future.status == "error":
                        self._receive()
                        self._lose(node, f"its task failed: {node.future.exception()}")
                    elif present is not None and node.address in present:
                        node.absent_since = 0.0
                    elif present is not None and not node.absent_since:
                        node.absent_since = now
                    elif node.absent_since and now - node.absent_since >= ABSENT_S:
                        self._receive()
                        self._lose(node, f"its Dask worker {node.address} left the cluster")

    def command(self, message: Command) -> None:
        """Queue a command for every node (put by the relay thread on its next pass, within RELAY_WAIT_S)."""
        self._commands.append(message)

    def _send_commands(self, nodes: list[Node]) -> None:
        while self._commands:
            blob = pickle.dumps(self._commands.popleft(), protocol=pickle.HIGHEST_PROTOCOL)
            for node in nodes:
                if node.control is None:
                    continue
                try:
                    node.control.put(blob)
                except Exception:  # noqa: BLE001 - unreachable now; the liveness check decides what that means
                    pass

    def _all_ended(self, node: Node) -> bool:
        return all(not self._children[i].alive() for i in node.workers)

    def _receive(self, wait: float = 0.0) -> None:
        """Relay every batch the nodes sent: the next one waited for up to `wait` seconds (none if 0), then
        all that are already there, in the order they were put."""
        batches = []
        try:
            if wait > 0:
                batches.append(self.queue.get(timeout=wait))
            batches.extend(self.queue.get(batch=True))
        except TimeoutError:
            pass  # nothing came within `wait`
        except Exception:  # noqa: BLE001 - unreachable now; the liveness check decides what that means
            self._closing.wait(RETRY_S)
        for blob in batches:
            for index, message in pickle.loads(blob):
                if isinstance(message, NodeSamples):  # the node's own resources.csv rows
                    self.on_resources(list(message.samples))
                elif isinstance(message, WorkerEnded):
                    self._children[index].end(message.exitcode)
                elif self._children[index].alive():
                    if isinstance(message, Ready):
                        self._children[index].pid = message.pid  # its pid on the node, for messages that name it
                    try:
                        self._writers[index].send(message)
                    except OSError:
                        pass  # the controller closed the pipe: it no longer waits for this worker

    def _lose(self, node: Node, why: str) -> None:
        node.lost = f"{node.name} ({node.host}) was lost mid-run: {why}; counts up to its last snapshot are kept"
        for index in node.workers:
            child = self._children[index]
            if child.alive():
                try:
                    self._writers[index].send(Failed(node.lost))  # the controller keeps it as the worker's error
                except OSError:
                    pass
                child.end(None)

    def stop(self) -> None:
        """Stop relaying (the run is over)."""
        self._closing.set()
        self._thread.join(STOP_WAIT_S)

    def close(self) -> None:
        """Release every pipe and sentinel."""
        for writer in self._writers.values():
            writer.close()
        for child in self._children.values():
            child.close()


class RelayGroup(ChildGroup):
    """Every node's workers as one `children.ChildGroup`, whose commands go once to each node."""

    def __init__(self, relay: NodeRelay) -> None:
        super().__init__(list(relay.children))
        self.relay = relay

    def command(self, message: Command) -> None:
        self.relay.command(message)
