"""The echo server at scale and at speed, driven by loadtest's own tcp client.

    .venv/bin/python benchmarks/echo_scale.py                     # all three runs, 60 s + 10 s + 10 s
    .venv/bin/python benchmarks/echo_scale.py --duration 20s --only scale
    .venv/bin/python benchmarks/echo_scale.py --only throughput --seconds 10
    .venv/bin/python benchmarks/echo_scale.py --only paced
    .venv/bin/python benchmarks/echo_scale.py --only memory        # paced at 100 and at 5,000: RSS per held connection
    .venv/bin/python benchmarks/echo_scale.py --wait-quiet 300   # on a shared machine

(a) scale: configs/echo.yaml as it stands (30,000 connections from one worker
    per core, 64-byte messages once a second per connection, two echo server
    processes), for --duration. Prints the connections held at peak and in the
    last second before the stop, the messages, and every failure.

(b) throughput: 100 connections, 1 KiB messages, back to back, one loadtest
    worker against one echo server process, for --seconds. Prints messages/s,
    generator CPU per message (the worker's own CPU from summary.json, divided
    by the messages; and over the steady seconds only, sampled with psutil,
    which leaves out the worker's start-up), and the server's messages per
    CPU-second (its CPU sampled with psutil over the run).

(c) paced: 5,000 connections, 64-byte messages at 10,000 messages/s in all
    (each connection every 0.5 s), otherwise as (b): what a paced message
    costs, which is what sizes a run like configs/echo.yaml. Paced connections
    are driven from one greenlet per target per worker (loadtest/protocols/
    tcp_paced.py); the last line gives the figure against its goal.

(memory) (c) with 100 connections (at the same 2 messages/s each), then (c):
    the worker RSS a held, paced connection adds, (c)'s peak RSS less the
    100-connection run's over the connections it adds; the last line.

Loopback only; every run is bounded by its duration. Reports go to --out (a
temporary folder by default).
"""

from __future__ import annotations

# Only the standard library at the top: the workers are spawned, and spawning
# re-imports this script before the worker patches gevent in.
import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCALE_CONFIG = ROOT / "configs" / "echo.yaml"
THROUGHPUT_CONNECTIONS = 100
THROUGHPUT_SIZE = 1024
PACED_CONNECTIONS = 5000
PACED_SIZE = 64
PACED_RATE = 10_000.0
PACED_CONNECT_RATE = 5000.0
PACED_GOAL_US = 18.0  # issue 15: generator CPU per paced message
MEMORY_GOAL_KIB = 4.0  # issue 15: worker RSS per held, paced connection
DEFAULT_SCALE_DURATION = "60s"
DEFAULT_THROUGHPUT_S = 10.0


class MachineShare:
    """CPU seconds of the whole machine, and of this process and its reaped children, over a span.

    On a shared machine the difference is what other processes took: numbers measured while
    it is large measure the neighbours as much as loadtest.
    """

    def __init__(self) -> None:
        self.machine0, self.ours0 = self._machine(), self._ours()

    @staticmethod
    def _machine() -> float:
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    @staticmethod
    def _ours() -> float:
        import resource

        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def report(self, wall: float) -> str:
        import os

        machine, ours = self._machine() - self.machine0, self._ours() - self.ours0
        cores = os.cpu_count() or 1
        others = max(0.0, machine - ours)
        return (f"machine busy {machine:.1f} CPU-s of {cores * wall:.1f} over {wall:.1f} s; this run {ours:.1f}, "
                f"other processes {others:.1f} ({100 * others / (cores * wall):.0f}% of the machine)")


def scale_run(duration: str, out: Path, workers: int | None) -> bool:
    """Run configs/echo.yaml for `duration`; print what was held; True if it held every connection, failure-free."""
    from dataclasses import replace

    from loadtest.model.config import load_config, parse_duration
    from loadtest.execution.controller import run

    config = load_config(SCALE_CONFIG)
    config = replace(config, duration=parse_duration(duration, "--duration"))
    target = config.targets[0]
    asked = target.connections  # type: ignore[union-attr]
    print(f"(a) scale: {asked} connections, {config.duration:g} s, config {SCALE_CONFIG.relative_to(ROOT)}")
    share = MachineShare()
    started = time.monotonic()
    result = run(config, workers=workers, out_dir=out / "scale",
                 on_event=lambda text: print(f"    {text}", flush=True))
    wall = time.monotonic() - started
    summary = json.loads((result.run_dir / "summary.json").read_text())
    t = summary["targets"][0]
    conns = t["connections"]
    with open(result.run_dir / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == t["name"]]
    opened_by_second = [int(r["Open Connections"]) for r in rows]
    held_last = conns["held_at_end"]  # open when the load stopped, before the workers closed them
    served = result.servers[0]["served"]
    cpu = [(w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"]]
    elapsed = summary["duration_s"] or 1.0
    print(f"    held at peak:               {conns['peak_open']}")
    print(f"    held when the load stopped: {held_last}   (open after the workers closed them: {conns['open_at_end']})")
    print(f"    open by second:             {' '.join(str(n) for n in opened_by_second)}")
    print(f"    connections opened/failed:  {conns['opened']} / {conns['failed']} {conns['failed_by_kind'] or ''}")
    print(f"    messages:                   {t['requests']} ({t['requests_per_s']:.0f}/s), "
          f"server echoed {served['messages']}")
    print(f"    failures:                   {t['failures']} {t['failures_by_kind'] or ''}")
    lat, clat = t["latency_ms"], conns["connect_latency_ms"]
    if lat:
        print(f"    round trip ms:              p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}")
    if clat:
        print(f"    connect ms:                 p50 {clat['p50']:.3f}  p99 {clat['p99']:.3f}  max {clat['max']:.3f}")
    print(f"    worker CPU s:               {' '.join(f'{c:.1f}' for c in cpu)} "
          f"({' '.join(f'{100 * c / elapsed:.0f}%' for c in cpu)} of a core over {elapsed:.1f} s)")
    print(f"    wall time:                  {wall:.1f} s; reports in {result.run_dir}")
    print(f"    CPU on the machine:         {share.report(wall)}")
    ok = (conns["peak_open"] == asked and held_last == asked and t["failures"] == 0 and conns["failed"] == 0
          and result.exit_status == 0)
    print(f"    verdict: {'HELD' if ok else 'NOT HELD'} {asked} connections with zero failures")
    return ok


def _worker_processes(exclude: set[int]) -> list[Any]:
    import psutil

    found = []
    for child in psutil.Process().children():
        try:
            if child.pid not in exclude and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def _cpu_s(processes: list[Any]) -> float:
    return sum(_cpu_split(processes))


def _cpu_split(processes: list[Any]) -> tuple[float, float]:
    """User and system CPU seconds of these processes so far."""
    import psutil

    user = system = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
            user += times.user
            system += times.system
        except psutil.Error:
            pass
    return user, system


def throughput_run(seconds: float, out: Path, name: str = "throughput", connections: int = THROUGHPUT_CONNECTIONS,
                   size: int = THROUGHPUT_SIZE, rate: float = 0.0) -> tuple[int, int, float | None]:
    """Connections sending messages back to back (or at `rate` in all), one worker against one echo process.

    Returns the connections held at peak, the worker's peak RSS in bytes and its CPU µs per message over
    the steady seconds (None if the run was too short for them)."""
    import psutil

    from loadtest.model.config import ServerSpec, parse_config
    from loadtest.execution.controller import run
    from loadtest.execution.servers import ServerGroup

    pace = f"at {rate:,.0f} messages/s in all" if rate else "back to back"
    print(f"({name}) {connections:,} connections, {size} B messages {pace}, 1 worker, 1 echo process, {seconds:g} s")
    share = MachineShare()
    started = time.monotonic()
    group = ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1))
    try:
        server = [psutil.Process(pid) for pid in group.pids]
        config = parse_config({
            "name": f"echo-{name}", "duration": f"{seconds}s", "workers": 1,
            "targets": [{"name": name, "tcp": group.address, "connections": connections, "size": size,
                         **({"rate": rate, "connect_rate": PACED_CONNECT_RATE} if rate else {})}],
        })
        samples: list[tuple[int, float, float, float]] = []  # messages so far, worker CPU s, server CPU s, user s
        counted = [0]
        workers: list[Any] = []

        def on_interval(frame: Any) -> None:
            counted[0] += frame.interval.targets[0].requests
            if not workers:
                workers.extend(_worker_processes(set(group.pids)))
            user, system = _cpu_split(workers)
            samples.append((counted[0], user + system, _cpu_s(server), user))

        served_before = group.served()["messages"]
        server_before = _cpu_s(server)
        run_started = time.monotonic()
        result = run(config, out_dir=out / name, on_interval=on_interval)
        wall = time.monotonic() - run_started
        server_cpu = _cpu_s(server) - server_before
        served = group.served()["messages"] - served_before
    finally:
        group.stop()
    machine = share.report(time.monotonic() - started)

    summary = json.loads((result.run_dir / "summary.json").read_text())
    t = summary["targets"][0]
    messages = t["requests"]
    elapsed = summary["duration_s"] or 1.0
    worker_cpu = sum((w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"])
    print(f"    messages:                   {messages} in {elapsed:.2f} s = {messages / elapsed:,.0f}/s "
          f"(failures {t['failures']} {t['failures_by_kind'] or ''}; server echoed {served})")
    if t["latency_ms"]:
        lat = t["latency_ms"]
        print(f"    round trip ms:              p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}")
    per_msg = worker_cpu / messages * 1e6 if messages else float("nan")
    print(f"    generator CPU per message:  {per_msg:.2f} µs  (worker CPU {worker_cpu:.2f} s from summary.json, "
          f"start-up included; {100 * worker_cpu / elapsed:.0f}% of a core)")
    # the steady seconds: leave out the first two intervals (start-up, connects) and the last (the stop)
    steady = samples[2:-1]
    steady_us = None
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        d_msgs = steady[-1][0] - steady[0][0]
        d_cpu = steady[-1][1] - steady[0][1]
        d_srv = steady[-1][2] - steady[0][2]
        d_user = steady[-1][3] - steady[0][3]
        steady_us = d_cpu / d_msgs * 1e6
        print(f"    generator CPU per message:  {d_cpu / d_msgs * 1e6:.2f} µs over the steady seconds "
              f"(user {d_user / d_msgs * 1e6:.2f}, system {(d_cpu - d_user) / d_msgs * 1e6:.2f}; "
              f"{d_msgs} messages; psutil)")
        print(f"    server CPU per message:     {d_srv / d_msgs * 1e6:.2f} µs over the steady seconds")
    else:
        print("    (too few seconds for a steady-state figure; use --seconds 5 or more)")
    if server_cpu > 0:
        print(f"    server messages per core:   {served / server_cpu:,.0f} per CPU-second "
              f"(server CPU {server_cpu:.2f} s over {wall:.1f} s of wall time, "
              f"{100 * server_cpu / elapsed:.0f}% of a core over the load)")
    rss = max((w.get("peak_rss_bytes") or 0) for w in summary["workers"])
    held = t.get("connections", {}).get("peak_open") or connections
    print(f"    worker peak RSS:            {rss / 2**20:.1f} MiB for {held:,} connections = "
          f"{rss / held / 1024:.1f} KiB a connection, interpreter included (--only memory subtracts a "
          f"{THROUGHPUT_CONNECTIONS}-connection paced run's RSS for the cost of a connection alone)")
    print(f"    CPU on the machine:         {machine}")
    print(f"    reports in {result.run_dir}")
    return held, rss, steady_us


def wait_until_quiet(limit_s: float, busy_percent: float = 15.0) -> None:
    """On a shared machine: wait (at most `limit_s`) until it is less than `busy_percent` busy."""
    import psutil

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=2.0)
        if busy < busy_percent:
            return
        print(f"    (machine {busy:.0f}% busy; waiting for it to quiet down)", flush=True)
    print(f"    (machine still busy after {limit_s:g} s; measuring anyway)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default=DEFAULT_SCALE_DURATION, help="scale run length (default 60s)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_THROUGHPUT_S, help="throughput run length, s")
    parser.add_argument("--workers", type=int, default=None, help="scale run workers (default: one per core)")
    parser.add_argument("--only", choices=("scale", "throughput", "paced", "memory"),
                        help="run only one of them; memory: paced at 100 and at 5,000 connections, and the RSS a connection adds")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a temporary one)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the machine to be under 15%% busy")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="echo-scale-"))
    ok = True
    few = many = None
    if args.only in (None, "throughput"):
        wait_until_quiet(args.wait_quiet)
        throughput_run(args.seconds, out)
    if args.only in (None, "memory"):  # the baseline: the same paced run with few connections
        wait_until_quiet(args.wait_quiet)
        few = throughput_run(args.seconds, out, "paced-few", THROUGHPUT_CONNECTIONS, PACED_SIZE,
                             PACED_RATE * THROUGHPUT_CONNECTIONS / PACED_CONNECTIONS)
    if args.only in (None, "paced", "memory"):
        wait_until_quiet(args.wait_quiet)
        many = throughput_run(args.seconds, out, "paced", PACED_CONNECTIONS, PACED_SIZE, PACED_RATE)
        if many[2] is not None:
            print(f"(paced) a paced {PACED_SIZE}-byte message costs {many[2]:.2f} µs of generator CPU over the "
                  f"steady seconds (goal <= {PACED_GOAL_US:g} µs: {'met' if many[2] <= PACED_GOAL_US else 'NOT met'})")
    if few is not None and many is not None and many[0] > few[0]:
        per = (many[1] - few[1]) / (many[0] - few[0])
        print(f"(memory) a held, paced connection costs {per / 1024:.1f} KiB of worker RSS "
              f"({many[1] / 2**20:.1f} MiB at {many[0]:,} connections, {few[1] / 2**20:.1f} MiB at {few[0]:,}; "
              f"goal <= {MEMORY_GOAL_KIB:g} KiB: {'met' if per / 1024 <= MEMORY_GOAL_KIB else 'NOT met'})")
    if args.only in (None, "scale"):
        wait_until_quiet(args.wait_quiet)
        ok = scale_run(args.duration, out, args.workers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
