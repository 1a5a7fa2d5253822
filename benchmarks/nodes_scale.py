"""What cluster nodes cost the controller and the Dask scheduler, with 10, 40 and 100 nodes faked on one machine.

    .venv/bin/python benchmarks/nodes_scale.py [--nodes 10,40,100] [--workers 16] [--seconds 10]
                                               [--targets 1] [--values 2000] [--hosts 2]

For each node count N: a real Dask scheduler (`python -m distributed.cli.dask_scheduler`, on
127.0.0.1, in a process of its own); this process as the controller: a Dask client, the real
relay (`relay.NodeRelay`, its thread and its workers' pipes) and a collection loop as the
controller's (`wait` on the workers' pipes, `recv`, `RunStats.add`, `ready_intervals`); and N fake
nodes, spread over --hosts processes, each node with a Dask client of its own. Every second, at
the same instant on every node (as a run's workers tick from one start instant), each fake node
puts on its queue what a node's task puts there: one pickled batch of its --workers workers'
`SnapshotSent` (realistic snapshots: --targets targets, --values latencies each, built as
benchmarks/merge_scale.py builds them), made before the run by the node's own code where it has
it (`nodes.NodeOutbox`, which also merges a second's histograms; its cost is printed apart).
After --seconds seconds each node says its workers ended (`WorkerEnded`), as a node does.

Printed per N, over the span from the start instant to the last snapshot merged (the load's
seconds, if everything kept up): the controller process's CPU (relay thread, Dask client thread and
collection loop together) and of that the collection loop alone (recv and merge); the scheduler
process's CPU; the fake nodes' CPU (spent on the nodes in a real cluster; here on the same cores,
so on a busy machine they can stretch the span); the queue reads and puts per second; and whether
every snapshot arrived and was merged exactly once (requests and latencies counted against what
the nodes sent). The fake nodes are not Dask workers: the relay's liveness check asks the
scheduler as the controller does (`scheduler_info`), without the per-worker entries a real
cluster's answer carries. The same script measures the code before this change (a queue per
node, polled; each worker's own histograms): it finds which the relay and the nodes have.
Everything is on loopback and ends by itself: at most --seconds + 60 s per node count.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import pickle
import random
import socket
import subprocess
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_scale import worker_snapshots  # noqa: E402

from loadtest.core.stats import RunStats, Snapshot  # noqa: E402
from loadtest.model.messages import SnapshotSent, WorkerEnded  # noqa: E402

SETUP_S = 60.0  # the scheduler, the clients and the fake nodes must be up within this long
LEAD_S = 2.0  # the nodes' first second starts this long after every fake node said it is ready
JITTER_S = 0.02  # nodes' clocks and workers' ticks differ by up to this much


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_queue() -> bool:
    """True if the relay reads one queue for the whole run (NodeRelay takes it), False if one per node."""
    from loadtest.execution.relay import NodeRelay

    return "queue" in inspect.signature(NodeRelay).parameters


def node_merge() -> Any:
    """What a node does to a batch before it puts it (`nodes.merge_seconds`, where there is one), else nothing."""
    try:
        from loadtest.core.carry import ShippedMerger
        from loadtest.execution.nodes import merge_seconds
    except ImportError:
        return None
    merger = ShippedMerger()
    return lambda batch: merge_seconds(batch, merger)


def queue_name(run: str, node: int, shared: bool) -> str:
    return f"{run}-queue" if shared else f"{run}-node-{node + 1}"


# -- the fake nodes (a process per --hosts) -----------------------------------------------------------


class Blobs(list):
    """What a node's outbox puts, kept to be put on the scheduler's queue later."""

    def put(self, blob: bytes) -> None:
        self.append(blob)


def batches(first: int, last: int, args: argparse.Namespace) -> dict[int, list[bytes]]:
    """Each node's pickled batches as its task makes them: one per second (its workers' snapshots), then its
    workers' ends. Through the node's own outbox (`nodes.NodeOutbox`), where there is one."""
    rng = random.Random(first)
    distinct = [worker_snapshots(4, args.targets, args.values, seq, rng) for seq in range(2)]
    try:
        from loadtest.execution.nodes import NodeOutbox
    except ImportError:
        NodeOutbox = None  # noqa: N806 - before it, a node put each batch as a pickled list
    out: dict[int, list[bytes]] = {}
    for node in range(first, last):
        indexes = range(node * args.workers, (node + 1) * args.workers)
        seconds = [[(i, SnapshotSent(Snapshot(i, seq, float(seq), float(seq + 1),
                                              distinct[min(seq, 1)][i % 4].targets))) for i in indexes]
                   for seq in range(args.seconds)]
        ends = [(i, WorkerEnded(0)) for i in indexes]
        if NodeOutbox is None:
            out[node] = [pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL) for b in (*seconds, ends)]
            continue
        out[node] = Blobs()
        outbox = NodeOutbox(out[node])
        for batch in seconds:
            for i, message in batch:
                outbox.add(i, message, indexes)
        for k, (i, message) in enumerate(ends):
            outbox.add(i, message, indexes[k + 1:])
        assert len(out[node]) == args.seconds + 1  # one put a second, one for the ends
    return out


async def fake_host(args: argparse.Namespace) -> None:
    """Nodes args.first..args.last-1: connect, say ready, read the start instant, put a batch a second."""
    from distributed import Client, Queue

    blobs = batches(args.first, args.last, args)
    clients, queues = {}, {}
    for node in blobs:
        clients[node] = await Client(args.address, asynchronous=True, timeout=30)
        queues[node] = await Queue(queue_name(args.run, node, args.shared), client=clients[node])
    print("ready", flush=True)
    start_at = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    jitter = random.Random(args.first)

    async def node(n: int) -> None:
        offset = jitter.uniform(0, JITTER_S)
        for k, blob in enumerate(blobs[n]):
            await asyncio.sleep(max(0.0, start_at + k + 1 + offset - time.time()))
            await queues[n].put(blob)

    await asyncio.wait_for(asyncio.gather(*(node(n) for n in blobs)), timeout=args.seconds + 30)
    for client in clients.values():
        await client.close()


# -- the controller (this process) ---------------------------------------------------------------------


def start_hosts(args: argparse.Namespace, nodes: int, address: str, run: str, shared: bool) -> list[subprocess.Popen]:
    hosts = []
    per = -(-nodes // args.hosts)
    for first in range(0, nodes, per):
        hosts.append(subprocess.Popen(
            [sys.executable, __file__, "--fake-host", "--address", address, "--run", run,
             "--first", str(first), "--last", str(min(nodes, first + per)), "--workers", str(args.workers),
             "--seconds", str(args.seconds), "--targets", str(args.targets), "--values", str(args.values),
             *(["--shared"] if shared else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    return hosts


def measure(args: argparse.Namespace, nodes: int) -> dict[str, float]:
    import distributed
    import psutil
    from distributed import Client, Queue

    from loadtest.execution.relay import Node, NodeRelay

    shared = shared_queue()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard", "--idle-timeout", "600s"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hosts: list[subprocess.Popen] = []
    client = relay = None
    reads = 0
    real_get = distributed.Queue.get

    def counted_get(self, *a, **k):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return real_get(self, *a, **k)

    distributed.Queue.get = counted_get  # type: ignore[method-assign]
    try:
        client = Client(address, timeout=SETUP_S)
        run = f"bench-{port}"
        fake = [Node(f"node-{i + 1}", f"tcp://127.0.0.2:{10000 + i}") for i in range(nodes)]
        for i, node in enumerate(fake):
            node.workers = list(range(i * args.workers, (i + 1) * args.workers))
            node.host = "fake"

        def present() -> set[str]:
            client.scheduler_info(n_workers=-1)  # the controller's liveness question; fake nodes are no workers
            return {n.address for n in fake}

        hosts = start_hosts(args, nodes, address, run, shared)
        for host in hosts:
            assert host.stdout is not None
            if host.stdout.readline().strip() != "ready":
                raise RuntimeError("a fake node host did not start")
        connected = lambda: client.status == "running"  # noqa: E731
        if shared:
            relay = NodeRelay(fake, Queue(queue_name(run, 0, True), client=client), address, connected, present,
                              lambda samples: None)
        else:
            for i, node in enumerate(fake):
                node.queue = Queue(queue_name(run, i, False), client=client)
            relay = NodeRelay(fake, address, connected, present, lambda samples: None)
        stats = RunStats([(f"t{t}", "GET") for t in range(args.targets)], nodes * args.workers)
        start_at = time.time() + LEAD_S
        for host in hosts:
            assert host.stdin is not None
            host.stdin.write(f"{start_at}\n")
            host.stdin.flush()
        sched = psutil.Process(scheduler.pid)
        fakes = [psutil.Process(h.pid) for h in hosts]

        def fake_cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in fakes)

        time.sleep(max(0.0, start_at - time.time()))
        wall0, cpu0, loop0, sched0, reads0, fake0 = time.monotonic(), time.process_time(), time.thread_time(), \
            sum(sched.cpu_times()[:2]), reads, fake_cpu()
        open_conns = {c.conn: c for c in relay.children}
        sentinels = {c.sentinel: c for c in relay.children}
        expected = nodes * args.workers * args.seconds
        merged = 0
        marks: tuple[float, float, float, float, int, float] | None = None

        def take(message: object) -> None:
            nonlocal merged, marks
            if isinstance(message, SnapshotSent):
                stats.add(message.snapshot)
                merged += 1
                if merged == expected:  # the last second merged: the measured span ends
                    marks = (time.monotonic(), time.process_time(), time.thread_time(),
                             sum(sched.cpu_times()[:2]), reads, fake_cpu())

        deadline = time.monotonic() + args.seconds + 30
        while (open_conns or sentinels) and time.monotonic() < deadline:
            for handle in wait([*open_conns, *sentinels], timeout=0.5):
                if handle in open_conns:
                    try:
                        take(handle.recv())
                    except (EOFError, OSError):
                        del open_conns[handle]
                elif handle in sentinels:
                    child = sentinels.pop(handle)
                    while child.conn in open_conns and child.conn.poll():
                        take(child.conn.recv())
                    open_conns.pop(child.conn, None)
            stats.ready_intervals()
        stats.ready_intervals(flush=True)
        sent = sum(int(t.requests) for t in stats.totals)
        per_worker_second = sum(ts.requests for ts in worker_snapshots(1, args.targets, args.values, 0,
                                                                        random.Random(0))[0].targets)
        if merged != expected or marks is None:
            raise RuntimeError(f"{merged} snapshots merged of {expected}")
        wall1, cpu1, loop1, sched1, reads1, fake1 = marks
        wall = wall1 - wall0
        return {"nodes": nodes, "wall": wall, "controller": (cpu1 - cpu0) / wall, "loop": (loop1 - loop0) / wall,
                "scheduler": (sched1 - sched0) / wall, "reads": (reads1 - reads0) / wall,
                "fake": (fake1 - fake0) / wall,
                "puts": nodes * args.seconds / wall,
                "exact": sent == expected * per_worker_second == sum(t.latency.total_count for t in stats.totals),
                "lost": sum(1 for n in fake if n.lost)}
    finally:
        distributed.Queue.get = real_get  # type: ignore[method-assign]
        if relay is not None:
            relay.stop()
        for host in hosts:
            try:
                host.wait(timeout=args.seconds + 40)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()
        if relay is not None:
            relay.close()
        if client is not None:
            client.close(timeout=5)
        scheduler.terminate()
        try:
            scheduler.wait(timeout=10)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="10,40,100", help="node counts, comma separated (default 10,40,100)")
    parser.add_argument("--workers", type=int, default=16, help="load workers per node (default 16)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of snapshots (default 10)")
    parser.add_argument("--targets", type=int, default=1, help="targets per snapshot (default 1)")
    parser.add_argument("--values", type=int, default=2000, help="latencies per target per worker-second (2000)")
    parser.add_argument("--hosts", type=int, default=2, help="processes the fake nodes are spread over (default 2)")
    parser.add_argument("--fake-host", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--last", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_host:
        asyncio.run(fake_host(args))
        return
    counts = [int(n) for n in args.nodes.split(",")]
    if not (all(1 <= n <= 200 for n in counts) and 1 <= args.workers <= 64 and 1 <= args.seconds <= 60
            and 1 <= args.targets <= 20 and 1 <= args.values <= 100_000 and 1 <= args.hosts <= 8):
        parser.error("--nodes 1..200 each, --workers 1..64, --seconds 1..60, --targets 1..20, --values 1..100000, "
                     "--hosts 1..8")
    size = len(batches(0, 1, args)[0][min(1, args.seconds - 1)])
    print(f"{'one queue for the run, blocking reads' if shared_queue() else 'a queue per node, polled'}; "
          f"{'histograms of a second merged on the node' if node_merge() else 'each worker its own histograms'}; "
          f"{args.workers} workers a node, {args.targets} target(s), {args.values} latencies per worker-second "
          f"({size / 1024:,.0f} KiB a node-second), {args.seconds} s; {os.cpu_count()} cores here")
    print("span: from the start instant to the last snapshot merged (the load's seconds, if everything kept up); "
          "CPU in cores over the span (1.0 = one core busy)")
    print(f"{'nodes':>5} {'span s':>6} {'controller':>10} {'collect':>8} {'scheduler':>9} {'fake nodes':>10} "
          f"{'reads/s':>8} {'puts/s':>7} {'exact':>5}")
    merge = node_merge()
    if merge is not None:  # what it costs a node, per second of its workers'
        one = [(i, SnapshotSent(s)) for i, s in enumerate(worker_snapshots(4, args.targets, args.values, 1,
                                                                          random.Random(1)) * (args.workers // 4 + 1))]
        one = [(i, SnapshotSent(Snapshot(i, 1, 1.0, 2.0, m.snapshot.targets))) for i, (_, m) in
               enumerate(one[:args.workers])]
        t0 = time.process_time()
        for _ in range(20):
            merge(one)
        print(f"a node merging its second (nodes.merge_seconds): {(time.process_time() - t0) / 20 * 1e3:.2f} ms CPU "
              f"per second on the node")
    for n in counts:
        r = measure(args, n)
        print(f"{n:>5} {r['wall']:>6.1f} {r['controller']:>10.3f} {r['loop']:>8.3f} {r['scheduler']:>9.3f} "
              f"{r['fake']:>10.3f} {r['reads']:>8.0f} {r['puts']:>7.0f} "
              f"{'yes' if r['exact'] and not r['lost'] else 'NO':>5}", flush=True)


if __name__ == "__main__":
    main()
