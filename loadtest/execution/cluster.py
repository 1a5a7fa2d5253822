"""A run on many nodes through Dask distributed: the controller's side.

One Dask worker is one node. Before the run, `Cluster.connect` reaches the
scheduler (or starts a `LocalCluster` for ``local:N``), `Cluster.check`
chooses the nodes and refuses, with one sentence, what cannot work: fewer
nodes than asked, another loadtest version, a daemon worker (it may not
start children), limits that cannot fit a node's share, an embedded server
on loopback with a node on another host. It also measures each node's clock
offset. `Cluster.launch` then submits one long-running task per node
(`loadtest.execution.nodes.run_node`, pinned to it) and hands the controller one
`children.Child` per remote worker (`relay.RemoteChild`): `relay.NodeRelay`
writes every message a node forwards, unchanged, into the pipe of the worker
that sent it. So the controller's collection loop and the stats core treat
a node's workers exactly as local ones.

Snapshots travel through one Dask Queue for the run, which every node puts
its batches on (about one a second: its workers' snapshots of that second)
and the relay reads with a get that waits for the next batch. A Queue is
held by the scheduler until it is read, in order, so a snapshot sent a
moment before the controller looks is not lost (a Variable keeps only its
last value; a topic's events (`log_event`) reach only the clients subscribed
when they are sent, and the scheduler keeps the last 1,000 of each; Dask's
Pub/Sub, which raced its subscribers, was removed in 2025): counts stay exact.

Dask owns scheduling, heartbeats and the loss of a node: a node is lost when
the scheduler no longer lists its worker. Nothing here rebuilds that.
Dask is imported only when a run asks for a cluster.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from loadtest import __version__
from loadtest.execution.children import ChildGroup
from loadtest.model.config import ConfigError, RunConfig
from loadtest.model.fields import ADDRESS_ENV, LOCAL_PREFIX, cluster_address_problem
from loadtest.execution.limits import auto_workers
from loadtest.execution.relay import Node, NodeRelay, RelayGroup
from loadtest.model.run_result import RunError

INSTALL_HINT = "pip install loadtest[cluster]"
CONNECT_TIMEOUT_S = 5.0  # no scheduler answering within this long: refused
NODES_WAIT_S = 3.0  # how long the scheduler gets to list as many nodes as --nodes asks
LOCAL_START_S = 60.0  # a LocalCluster's nodes must all be up within this long
CLOCK_PROBES = 3  # clock offset: the probe with the shortest round trip of these
START_LEAD_S = 1.0  # nodes start their load this far after the controller says go: time to hear it
CLOSE_WAIT_S = 20.0  # at the end, how long node tasks get to return after the stop signal
_LOOPBACK = re.compile(r"^(127\.|localhost$|::1$|\[::1\]$)")


def cluster_address(option: str | None, config: RunConfig) -> tuple[str, str] | None:
    """The scheduler to use and where it was given: --cluster, then the config's `cluster:`, then
    DASK_SCHEDULER_ADDRESS."""
    if option is not None:
        return option.strip(), "--cluster"
    if config.cluster:
        return config.cluster, "cluster"
    env = os.environ.get(ADDRESS_ENV, "").strip()
    return (env, ADDRESS_ENV) if env else None


def parse_cluster_address(text: str, where: str) -> str | int:
    """`tcp://HOST:PORT` (returned as is) or `local:N` (returned as N)."""
    problem = cluster_address_problem(text)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return int(text[len(LOCAL_PREFIX):]) if text.startswith(LOCAL_PREFIX) else text


def _import_distributed(where: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"{where}: a cluster run needs Dask distributed, which is not installed here; "
                          f"{INSTALL_HINT}") from None
    return distributed


@contextmanager
def _dask_threads_without_interrupts() -> Iterator[None]:
    """Block Ctrl-C and SIGTERM in this thread while Dask starts its own: they inherit the mask, and so
    the signals reach only the main thread, whose handler stops the run in order."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _quiet_dask_logs() -> None:
    """Dask's own log lines (reconnect attempts, a worker that left) are not the run's output: the run
    says what happened to a node in its own words."""
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


class ClusterSignal:
    """The run's start or stop signal for every node: a Dask Event (and, for start, the instant)."""

    def __init__(self, event: Any, start_at: Any = None) -> None:
        self._event, self._start_at = event, start_at
        self.at: float | None = None

    def set(self) -> None:
        """Start: every node starts its workers START_LEAD_S from now. Stop: every node stops them.

        A stop the scheduler cannot take (it is gone) is not an error: its nodes are lost already.
        """
        if self._start_at is not None:
            self.at = time.time() + START_LEAD_S
            self._start_at.set(self.at)
            self._event.set()
            return
        try:
            self._event.set()
        except Exception:  # noqa: BLE001 - the scheduler is gone: the relay marks every node lost
            pass

    def is_set(self) -> bool:
        return bool(self._event.is_set())


class Cluster:
    """The Dask client of one run, its nodes, and (for local:N) the LocalCluster it started."""

    def __init__(self, client: Any, local: Any, where: str, address: str) -> None:
        self.client, self.local, self.where, self.address = client, local, where, address
        self.nodes: list[Node] = []
        self.run_id = uuid.uuid4().hex[:12]
        self.relay: NodeRelay | None = None
        self.stop: ClusterSignal | None = None
        self.on_resources: Callable[[list[Any]], None] = lambda samples: None  # a remote node's own samples

    # -- before the run -------------------------------------------------------------------------

    @classmethod
    def connect(cls, text: str, where: str) -> Cluster:
        """Reach the scheduler at `text` (or start local:N); ConfigError if none answers in time."""
        target = parse_cluster_address(text, where)
        distributed = _import_distributed(where)
        import dask

        from loadtest.execution.nodes import leave_interrupts_to_controller

        # Dask's own threads are made with Ctrl-C and SIGTERM blocked: the controller's main thread
        # alone handles them and stops the nodes in order.
        with _dask_threads_without_interrupts():
            if isinstance(target, int):
                # A daemon process may not start children, and each node starts its per-core workers.
                with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"}):
                    try:
                        # The scheduler's HTTP server takes a free loopback port: its default, 8787, may be another
                        # cluster's (it then warns on stderr), and a load test opens nothing beyond loopback.
                        local = distributed.LocalCluster(n_workers=target, threads_per_worker=1, processes=True,
                                                         host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                                         silence_logs=logging.CRITICAL)
                        client = distributed.Client(local, timeout=CONNECT_TIMEOUT_S)
                        client.wait_for_workers(target, timeout=LOCAL_START_S)
                    except (OSError, TimeoutError, RuntimeError) as e:

                        raise RunError(f"{where}: could not start {target} local nodes: {e}") from None
                # A terminal's Ctrl-C reaches the whole process group, these nodes included.
                client.run(leave_interrupts_to_controller)
                return cls(client, local, where, text)
            try:
                client = distributed.Client(target, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                raise ConfigError(f"{where}: no Dask scheduler answered at {target} within {CONNECT_TIMEOUT_S:g} s "
                                  f"({type(e).__name__})") from None
        _quiet_dask_logs()
        cluster = cls(client, None, where, text)
        try:
            cluster._check_scheduler()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _check_scheduler(self) -> None:
        """The scheduler unpickles each node's task, so it needs loadtest too, at the controller's version."""
        from loadtest.execution.nodes import loadtest_version

        try:
            version = self.client.run_on_scheduler(loadtest_version)
        except Exception as e:  # noqa: BLE001 - whatever it raised (no module loadtest), the sentence names it
            raise ConfigError(f"{self.where}: the Dask scheduler at {self.address} cannot import loadtest "
                              f"({type(e).__name__}: {e}); install loadtest {__version__} where it runs too "
                              f"({INSTALL_HINT}=={__version__})") from None
        if version != __version__:
            raise ConfigError(f"{self.where}: the Dask scheduler at {self.address} has loadtest {version}, this "
                              f"controller {__version__}; install the same version on the scheduler and every node "
                              f"({INSTALL_HINT}=={__version__})")

    def choose(self, wanted: int | None) -> None:
        """Use `wanted` of the scheduler's workers (all of them if None), named node-1, node-2, ... by address."""
        if wanted is not None:
            try:
                self.client.wait_for_workers(wanted, timeout=NODES_WAIT_S)
            except (TimeoutError, OSError):
                pass
        found = sorted(self._worker_addresses())
        if not found or (wanted is not None and len(found) < wanted):
            raise ConfigError(f"--nodes: the scheduler at {self.address} has {len(found)} node"
                              f"{'' if len(found) == 1 else 's'} (Dask workers), fewer than the "
                              f"{wanted or 1} asked")
        self.nodes = [Node(f"node-{i + 1}", a) for i, a in enumerate(found[:wanted or len(found)])]

    def _worker_addresses(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1)["workers"])

    def check(self, config: RunConfig, per_node: int | None) -> None:
        """Refuse, with one sentence, a run these nodes cannot make; measure each node's clock offset.

        `per_node` workers on every node, or (None) one per core of each node, as a local run has.
        """
        from loadtest.execution.nodes import describe_node, node_limits

        described: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            try:
                t0 = time.time()
                info = self.client.run(describe_node, workers=[node.address])[node.address]
                t1 = time.time()
            except Exception as e:  # noqa: BLE001 - whatever the node raised, the sentence names it
                raise ConfigError(f"{node.name} ({node.address}): cannot run loadtest there "
                                  f"({type(e).__name__}: {e}); install loadtest {__version__} on every node "
                                  f"({INSTALL_HINT})") from None
            described[node.name] = info
            node.host, node.pid, node.cores = str(info["host"]), int(info["pid"]), int(info.get("cores", 1))
            node.clock_rtt_s, node.clock_offset_s = t1 - t0, float(info["time"]) - (t0 + t1) / 2
        for node in self.nodes:  # the version first: with another version the other answers mean little
            version = described[node.name]["version"]
            if version != __version__:
                raise ConfigError(f"{node.name} ({node.host}, {node.address}) has loadtest {version}, this "
                                  f"controller {__version__}; install the same version on every node "
                                  f"({INSTALL_HINT}=={__version__})")
        for node in self.nodes:
            node.count = per_node or auto_workers(config, node.cores, len(self.nodes))
        total = sum(n.count for n in self.nodes)
        for node in self.nodes:
            if described[node.name]["daemon"]:
                raise ConfigError(f"{node.name} ({node.host}, {node.address}): its Dask worker is a daemon process, "
                                  f"which may not start load workers; start it with "
                                  f"DASK_DISTRIBUTED__WORKER__DAEMON=False (or dask worker --no-nanny)")
            limits = self.client.run(node_limits, config, total, workers=[node.address])[node.address]
            if limits:
                raise ConfigError(f"{node.name} ({node.host}): {limits}")
        for spec in config.servers:
            away = [n for n in self.nodes if not n.same_host]
            if _LOOPBACK.match(spec.host) and away:
                raise ConfigError(f"servers: {spec.name} listens on {spec.host}, which {away[0].name} "
                                  f"({away[0].host}) on another machine cannot reach; give it a listen address "
                                  f"the nodes can reach (such as 0.0.0.0:PORT)")
        self._measure_clocks()

    def _measure_clocks(self) -> None:
        """Each node's clock offset from the probe with the shortest round trip (it is good to half of that)."""
        for _ in range(CLOCK_PROBES - 1):
            for node in self.nodes:
                t0 = time.time()
                their = self.client.run(time.time, workers=[node.address])[node.address]
                t1 = time.time()
                if t1 - t0 < node.clock_rtt_s:
                    node.clock_rtt_s, node.clock_offset_s = t1 - t0, float(their) - (t0 + t1) / 2

    def same_host(self, index: int) -> bool:
        """True if global worker `index` runs on this machine (its pids can be sampled here)."""
        return any(n.same_host for n in self.nodes if index in n.workers)

    def reachable(self, addresses: dict[str, str]) -> dict[str, str]:
        """Embedded servers' addresses as the nodes reach them: a wildcard listen becomes this machine's address."""
        if all(n.same_host for n in self.nodes):
            return {k: v.replace("0.0.0.0:", "127.0.0.1:") for k, v in addresses.items()}
        scheduler = self.client.scheduler.address.split("://", 1)[-1].rsplit(":", 1)[0]
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet: only the route is asked
            probe.connect((scheduler, 9))
            here = probe.getsockname()[0]
        return {k: v.replace("0.0.0.0:", f"{here}:") for k, v in addresses.items()}

    # -- the run ------------------------------------------------------------------------------------

    def launch(self, plans_for: Callable[[int, int], Any]) -> tuple[ClusterSignal, ClusterSignal, ChildGroup]:
        """Submit one task per node; the run's start and stop signals, and every node's workers as children.

        `plans_for(index, total)` is the WorkerPlan of global worker `index` of `total`. The group's
        `ready` waits for the remote workers' Ready messages as for local ones.
        """
        from distributed import Event, Queue, Variable

        from loadtest.execution.nodes import NodeChannel, NodeTask, run_node

        prefix = f"loadtest-{self.run_id}"
        start_at = Variable(f"{prefix}-start-at", client=self.client)
        start = ClusterSignal(Event(f"{prefix}-start", client=self.client), start_at)
        self.stop = ClusterSignal(Event(f"{prefix}-stop", client=self.client))
        total = sum(n.count for n in self.nodes)
        first = 0
        steered = bool(self.nodes) and plans_for(0, total).steered
        queue = Queue(f"{prefix}-queue", client=self.client)
        for node in self.nodes:
            channel = NodeChannel(queue.name, f"{prefix}-start", f"{prefix}-start-at", f"{prefix}-stop",
                                  f"{prefix}-{node.name}-control" if steered else "")
            node.control = Queue(channel.control, client=self.client) if steered else None
            plans = tuple(plans_for(first + k, total) for k in range(node.count))
            node.workers = [p.index for p in plans]
            roles = tuple(f"{node.name}/worker-{k}" for k in range(node.count))
            first += node.count
            task = NodeTask(node.name, plans, node.clock_offset_s, channel, self.client.id,
                            sample=not node.same_host, roles=roles)
            node.future = self.client.submit(run_node, task, workers=[node.address], allow_other_workers=False,
                                             pure=False, key=f"{prefix}-{node.name}")
        self.relay = NodeRelay(self.nodes, queue, self.address, lambda: self.client.status == "running",
                               self._worker_addresses, lambda samples: self.on_resources(samples))
        return start, self.stop, RelayGroup(self.relay)

    def summaries(self, states: list[Any]) -> list[dict[str, Any]]:
        """summary.json's `nodes`: each node's host, clock offset, workers and how it ended."""
        by_index = {s.index: s for s in states}
        out = []
        for node in self.nodes:
            ended = [by_index[i].ended for i in node.workers if i in by_index]
            how = "lost" if node.lost else "ok" if ended and all(e == "ok" for e in ended) else \
                next((e for e in ended if e != "ok"), "unknown")
            out.append(node.summary(how))
        return out

    def close(self) -> None:
        """Stop every node's task, then the client (and the LocalCluster, with its node processes)."""
        if self.relay is not None:
            self.relay.stop()
        try:
            if self.stop is not None:
                self.stop.set()
            pending = [n.future for n in self.nodes if n.future is not None and not n.lost]
            if pending:
                from distributed import wait as dask_wait

                dask_wait(pending, timeout=CLOSE_WAIT_S)
            for node in self.nodes:
                if node.future is not None:
                    node.future.cancel()
        except Exception:  # noqa: BLE001 - the scheduler may be gone; closing must go on
            pass
        if self.relay is not None:
            self.relay.close()
        try:
            self.client.close(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        if self.local is not None:
            try:
                self.local.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
