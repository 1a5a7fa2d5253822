"""What does resource sampling cost the controller? The requirement: under 1% of one core.

    .venv/bin/python benchmarks/sampling_cost.py [--seconds 20] [--workers 16] [--sockets 6000]

Starts worker-like processes (idle Python interpreters) and two server-like
ones, one of which holds --sockets loopback TCP sockets (both ends of
--sockets/2 connections), registers them with a `ResourceSampler` at the
default interval, and measures the sampler thread's own CPU time (user +
system, `time.thread_time()` inside the thread, checked against the kernel's
per-thread accounting through psutil) over --seconds after its first sample
(reported apart: it counts every process's connections exactly, once, which
for a process already holding many sockets is a one-time cost).

It then runs again for a few seconds with the connection count exact at every
sample (an unlimited budget), and times one psutil `net_connections` call on
the socket holder, to show what the budget saves.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import psutil

from loadtest.execution.resources import (
    CONTROLLER_ROLE,
    DEFAULT_CONNECTIONS_BUDGET,
    DEFAULT_SAMPLE_INTERVAL_S,
    ResourceSampler,
    server_role,
    worker_role,
)

IDLE = "import sys, time; sys.stdin.read()"  # ends when the benchmark closes its stdin
SOCKET_HOLDER = r"""
import resource, socket, sys
want = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want + 100), hard))
listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
held = []
for _ in range(want // 2):
    held.append(socket.create_connection(listener.getsockname()))
    held.append(listener.accept()[0])
print(len(held), flush=True)
sys.stdin.read()
"""


def start(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def thread_cpu_s(native_id: int | None) -> float:
    """The kernel's account of one thread of this process (user + system)."""
    for t in psutil.Process().threads():
        if t.id == native_id:
            return float(t.user_time + t.system_time)
    return 0.0


def measure(processes: list[tuple[str, int]], seconds: float, budget: float) -> dict[str, float]:
    """The sampler's CPU: its first sample alone, then % of one core over `seconds` of steady state."""
    sampler = ResourceSampler(DEFAULT_SAMPLE_INTERVAL_S, on_sample=lambda rows: None, connections_budget=budget)
    for role, pid in processes:
        sampler.register(role, pid)
    sampler.start()
    native_id = sampler._thread.native_id
    while sampler.samples < 1:  # the first sample counts every process's connections exactly, once
        time.sleep(0.01)
    first = sampler.own_cpu_s
    kernel_before, own_before, began = thread_cpu_s(native_id), sampler.own_cpu_s, time.monotonic()
    time.sleep(seconds)
    kernel_after, own_after, wall = thread_cpu_s(native_id), sampler.own_cpu_s, time.monotonic() - began
    samples = sampler.samples - 1
    sampler.stop()
    return {"first_ms": 1000 * first, "own": 100 * (own_after - own_before) / wall,
            "kernel": 100 * (kernel_after - kernel_before) / wall, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--sockets", type=int, default=6000, help="sockets held by the second server")
    parser.add_argument("--exact-seconds", type=float, default=5.0, help="length of the exact-count comparison")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    children = [start(IDLE) for _ in range(args.workers)]
    children.append(start(IDLE))
    holder = start(SOCKET_HOLDER, str(args.sockets))
    children.append(holder)
    held = int(holder.stdout.readline()) if holder.stdout else 0
    processes = [(CONTROLLER_ROLE, os.getpid())]
    processes += [(worker_role(k), p.pid) for k, p in enumerate(children[:args.workers])]
    processes += [(server_role("idle", 0), children[-2].pid), (server_role("sockets", 0), holder.pid)]
    print(f"{len(processes)} processes sampled (controller, {args.workers} workers, 2 servers); "
          f"one server holds {held} TCP sockets; {os.cpu_count()} cores; fd limit {soft}/{hard}")
    try:
        m = measure(processes, args.seconds, DEFAULT_CONNECTIONS_BUDGET)
        print(f"default (interval {DEFAULT_SAMPLE_INTERVAL_S:g} s, connection budget "
              f"{100 * DEFAULT_CONNECTIONS_BUDGET:g}% of a core): first sample {m['first_ms']:.1f} ms CPU "
              f"(exact counts of every process, once); then {m['samples']:g} samples in {args.seconds:g} s: "
              f"sampler thread {m['own']:.3f}% of one core (kernel thread times: {m['kernel']:.3f}%)"
              f" -> {'PASS' if max(m['own'], m['kernel']) < 1.0 else 'FAIL'} (< 1%)")
        m = measure(processes, args.exact_seconds, budget=1.0)
        print(f"exact connection count at every sample: {m['samples']:g} samples in {args.exact_seconds:g} s: "
              f"sampler thread {m['own']:.3f}% of one core (kernel thread times: {m['kernel']:.3f}%)")
        began = time.thread_time()
        count = len(psutil.Process(holder.pid).net_connections(kind="tcp"))
        print(f"for comparison, one psutil net_connections(kind='tcp') of the socket holder: "
              f"{1000 * (time.thread_time() - began):.1f} ms CPU ({count} connections)")
    finally:
        for p in children:
            if p.stdin:
                p.stdin.close()
        for p in children:
            p.wait(10)


if __name__ == "__main__":
    main()
