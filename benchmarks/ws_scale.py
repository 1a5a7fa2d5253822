"""WebSocket targets at scale and at speed, against the embedded echo server's WebSocket mode.

    .venv/bin/python benchmarks/ws_scale.py                      # all three, 30 s + 2 x 10 s + 2 x 10 s
    .venv/bin/python benchmarks/ws_scale.py --only scale --duration 60s --rate 3000   # one message per 10 s each
    .venv/bin/python benchmarks/ws_scale.py --only speed --seconds 10 --size 1024
    .venv/bin/python benchmarks/ws_scale.py --only memory

(scale) configs/ws.yaml as it stands, for --duration: 30,000 WebSocket
    connections from one worker per core (the open-file limit is 20,000 per
    process), spread over 127.0.0.1-127.0.0.4, 64-byte text messages once a
    second each, two echo server processes. Prints the connections held at
    peak and when the load stopped, messages against the server's own count,
    the close frames with code 1000 the server received, and every failure.

(speed) The same run twice, tcp then ws: 100 connections, --size byte
    messages back to back, one loadtest worker against one echo server process
    (TCP, then WebSocket), for --seconds each. Prints for each the messages/s,
    the generator's CPU per message over the steady seconds (psutil), the
    server's CPU per message, and the ratio of round trips per generator
    core-second, ws to tcp (goal >= 0.5).

(memory) ws paced at 100 connections, then at 5,000 (2 messages/s each, 64 B):
    the worker RSS a held WebSocket connection adds, the peak RSS difference
    over the connections added (goal <= 8 KiB).

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
SCALE_CONFIG = ROOT / "configs" / "ws.yaml"
SPEED_CONNECTIONS = 100
DEFAULT_SIZE = 1024
MEMORY_FEW, MEMORY_MANY = 100, 5000
MEMORY_SIZE = 64
MEMORY_RATE_EACH = 2.0  # messages/s per connection in the memory runs
SPEED_GOAL = 0.5  # issue 25: ws round trips per generator core-second >= half of tcp's
MEMORY_GOAL_KIB = 8.0  # issue 25: client RSS per held WebSocket connection


def _echo_scale() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import echo_scale

    return echo_scale


def scale_run(duration: str, out: Path, rate: float | None = None) -> bool:
    """configs/ws.yaml for `duration`; True if every connection was held, failure-free, and closed normally."""
    from dataclasses import replace

    from loadtest.execution.controller import run
    from loadtest.model.config import load_config, parse_duration

    es = _echo_scale()
    config = load_config(SCALE_CONFIG)
    config = replace(config, duration=parse_duration(duration, "--duration"))
    if rate is not None:
        config = replace(config, targets=(replace(config.targets[0], rate=rate),))
    asked = config.targets[0].connections  # type: ignore[union-attr]
    pace = config.targets[0].rate  # type: ignore[union-attr]
    print(f"(scale) {asked} WebSocket connections, {pace:,.0f} messages/s in all, {config.duration:g} s, "
          f"config {SCALE_CONFIG.relative_to(ROOT)}")
    share = es.MachineShare()
    started = time.monotonic()
    result = run(config, out_dir=out / "scale", on_event=lambda text: print(f"    {text}", flush=True))
    wall = time.monotonic() - started
    summary = json.loads((result.run_dir / "summary.json").read_text())
    t = summary["targets"][0]
    conns = t["connections"]
    with open(result.run_dir / "history.csv", newline="") as f:
        opened = [r["Open Connections"] for r in csv.DictReader(f) if r["Name"] == t["name"]]
    served = result.servers[0]["served"]
    cpu = [(w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"]]
    elapsed = summary["duration_s"] or 1.0
    print(f"    held at peak:               {conns['peak_open']}")
    print(f"    held when the load stopped: {conns['held_at_end']}   (open after the workers closed them: "
          f"{conns['open_at_end']})")
    print(f"    open by second:             {' '.join(opened)}")
    print(f"    connections opened/failed:  {conns['opened']} / {conns['failed']} {conns['failed_by_kind'] or ''}")
    print(f"    messages:                   {t['requests']} ({t['requests_per_s']:.0f}/s), server echoed "
          f"{served['messages']}; close frames (1000) the server received: {served['closes']}")
    print(f"    failures:                   {t['failures']} {t['failures_by_kind'] or ''}")
    lat, clat = t["latency_ms"], conns["connect_latency_ms"]
    if lat:
        print(f"    round trip ms:              p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}")
    if clat:
        print(f"    connect + upgrade ms:       p50 {clat['p50']:.3f}  p99 {clat['p99']:.3f}  max {clat['max']:.3f}")
    print(f"    worker CPU s:               {' '.join(f'{c:.1f}' for c in cpu)} "
          f"({' '.join(f'{100 * c / elapsed:.0f}%' for c in cpu)} of a core over {elapsed:.1f} s)")
    rss = [w.get("peak_rss_bytes") or 0 for w in summary["workers"]]
    print(f"    worker peak RSS MiB:        {' '.join(f'{r / 2**20:.1f}' for r in rss)}")
    print(f"    wall time:                  {wall:.1f} s; reports in {result.run_dir}")
    print(f"    CPU on the machine:         {share.report(wall)}")
    ok = (conns["peak_open"] == asked and conns["held_at_end"] == asked and t["failures"] == 0
          and conns["failed"] == 0 and result.exit_status == 0 and served["messages"] == t["requests"])
    print(f"    verdict: {'HELD' if ok else 'NOT HELD'} {asked} WebSocket connections with zero failures; "
          f"{served['closes']} of {conns['opened']} closed with a normal close frame")
    return ok


def speed_run(kind: str, seconds: float, out: Path, connections: int, size: int, rate: float = 0.0,
              name: str = "") -> dict[str, Any]:
    """`connections` of `kind` ("tcp" or "ws") back to back (or at `rate` in all), one worker against one echo
    process; the figures of the steady seconds."""
    import psutil

    from loadtest.execution.controller import run
    from loadtest.execution.servers import ServerGroup
    from loadtest.model.config import ServerSpec, parse_config

    es = _echo_scale()
    name = name or f"{kind}-{size}"
    pace = f"at {rate:,.0f}/s in all" if rate else "back to back"
    print(f"({name}) {kind}: {connections:,} connections, {size} B messages {pace}, 1 worker, 1 echo process, "
          f"{seconds:g} s")
    share = es.MachineShare()
    started = time.monotonic()
    group = ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1,
                                         ws=kind == "ws"))
    try:
        server = [psutil.Process(pid) for pid in group.pids]
        where = {"tcp": group.address} if kind == "tcp" else {"ws": f"ws://{group.address}/"}
        config = parse_config({
            "name": f"ws-{name}", "duration": f"{seconds}s", "workers": 1,
            "targets": [{"name": name, **where, "connections": connections, "size": size,
                         **({"rate": rate, "connect_rate": 5000} if rate else {})}],
        })
        samples: list[tuple[int, float, float, float]] = []
        counted = [0]
        workers: list[Any] = []

        def on_interval(frame: Any) -> None:
            counted[0] += frame.interval.targets[0].requests
            if not workers:
                workers.extend(es._worker_processes(set(group.pids)))
            user, system = es._cpu_split(workers)
            samples.append((counted[0], user + system, es._cpu_s(server), user))

        before = group.served()["messages"]
        result = run(config, out_dir=out / name, on_interval=on_interval)
        served = group.served()["messages"] - before
    finally:
        group.stop()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    t = summary["targets"][0]
    elapsed = summary["duration_s"] or 1.0
    figures: dict[str, Any] = {"messages": t["requests"], "per_s": t["requests"] / elapsed, "served": served,
                               "failures": t["failures"],
                               "rss": max((w.get("peak_rss_bytes") or 0) for w in summary["workers"]),
                               "held": t.get("connections", {}).get("peak_open") or connections}
    print(f"    messages:                   {t['requests']} in {elapsed:.2f} s = {figures['per_s']:,.0f}/s "
          f"(failures {t['failures']} {t['failures_by_kind'] or ''}; server echoed {served})")
    if t["latency_ms"]:
        lat = t["latency_ms"]
        print(f"    round trip ms:              p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}")
    steady = samples[2:-1]  # without the start-up intervals and the stop
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        d_msgs = steady[-1][0] - steady[0][0]
        d_cpu, d_srv, d_user = (steady[-1][i] - steady[0][i] for i in (1, 2, 3))
        figures["us"] = d_cpu / d_msgs * 1e6
        figures["server_us"] = d_srv / d_msgs * 1e6
        print(f"    generator CPU per message:  {figures['us']:.2f} µs over the steady seconds (user "
              f"{d_user / d_msgs * 1e6:.2f}, system {(d_cpu - d_user) / d_msgs * 1e6:.2f}; {d_msgs} messages)")
        print(f"    server CPU per message:     {figures['server_us']:.2f} µs")
    print(f"    worker peak RSS:            {figures['rss'] / 2**20:.1f} MiB for {figures['held']:,} connections")
    print(f"    CPU on the machine:         {share.report(time.monotonic() - started)}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="30s", help="scale run length (default 30s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="speed and memory run length, s")
    parser.add_argument("--rate", type=float, default=None,
                        help="scale run: messages/s in all instead of the config's (one per connection per second)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="speed runs' message size, bytes")
    parser.add_argument("--only", choices=("scale", "speed", "memory"))
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a temporary one)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the machine to be under 15%% busy")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ws-scale-"))
    es = _echo_scale()
    ok = True
    if args.only in (None, "speed"):
        es.wait_until_quiet(args.wait_quiet)
        tcp = speed_run("tcp", args.seconds, out, SPEED_CONNECTIONS, args.size)
        es.wait_until_quiet(args.wait_quiet)
        ws = speed_run("ws", args.seconds, out, SPEED_CONNECTIONS, args.size)
        if "us" in tcp and "us" in ws:
            ratio = tcp["us"] / ws["us"]
            print(f"(speed) {args.size} B: ws {ws['us']:.2f} µs, tcp {tcp['us']:.2f} µs of generator CPU per "
                  f"round trip: ws makes {ratio:.2f}x the round trips of tcp per generator core-second "
                  f"(goal >= {SPEED_GOAL}: {'met' if ratio >= SPEED_GOAL else 'NOT met'}); wall rate "
                  f"{ws['per_s']:,.0f} against {tcp['per_s']:,.0f}/s, echo server {ws['server_us']:.2f} against "
                  f"{tcp['server_us']:.2f} µs a message")
            ok = ok and ratio >= SPEED_GOAL
    if args.only in (None, "memory"):
        es.wait_until_quiet(args.wait_quiet)
        few = speed_run("ws", args.seconds, out, MEMORY_FEW, MEMORY_SIZE, MEMORY_FEW * MEMORY_RATE_EACH, "ws-few")
        es.wait_until_quiet(args.wait_quiet)
        many = speed_run("ws", args.seconds, out, MEMORY_MANY, MEMORY_SIZE, MEMORY_MANY * MEMORY_RATE_EACH, "ws-many")
        if many["held"] > few["held"]:
            per = (many["rss"] - few["rss"]) / (many["held"] - few["held"]) / 1024
            print(f"(memory) a held WebSocket connection costs {per:.2f} KiB of worker RSS "
                  f"({many['rss'] / 2**20:.1f} MiB at {many['held']:,}, {few['rss'] / 2**20:.1f} MiB at "
                  f"{few['held']:,}; goal <= {MEMORY_GOAL_KIB:g} KiB: "
                  f"{'met' if per <= MEMORY_GOAL_KIB else 'NOT met'})")
            ok = ok and per <= MEMORY_GOAL_KIB
    if args.only in (None, "scale"):
        es.wait_until_quiet(args.wait_quiet)
        ok = scale_run(args.duration, out, args.rate) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
