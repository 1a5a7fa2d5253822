"""Open-model rate accuracy and send-time lateness: achieved rate against the asked rate, 100/s to 50,000/s.

    .venv/bin/python benchmarks/rate_accuracy.py [--duration 10] [--workers 2] [--rates 100,1000,5000,10000,20000]
    .venv/bin/python benchmarks/rate_accuracy.py --rates 2000 --workers 2 --rounds 3 --before DIR
    .venv/bin/python benchmarks/rate_accuracy.py --rates 50000 --workers 1 --nginx
    .venv/bin/python benchmarks/rate_accuracy.py --tcp --rates 2000 --workers 2     # paced TCP against echo

Each rate runs against the embedded HTTP server on loopback (one process,
route `/`), or nginx with --nginx (one worker process: the embedded server
cannot answer 50,000/s on two shared cores), with the worker count given.
"achieved" is requests started per second of the configured duration; dropped
arrivals and the schedule's lateness (how late arrivals actually started, the
LATENESS row) are shown beside it, with the corrected and uncorrected p50 (when
sends leave on time the two differ by little more than the lateness), and the
workers' CPU per request (their user + system time from summary.json, start-up
included), which a busy machine changes far less than the lateness.

--tcp runs paced TCP instead (connections 50, 64-byte messages, against the
embedded echo server): its latency counts from each message's scheduled send,
so its p50 against the echo's round trip shows how late turns leave.

--before DIR runs the loadtest package found in DIR too (a checkout's root),
interleaved with this one's in --rounds rounds: before/after on one machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_rate(rate: int, duration: float, workers: int, workdir: Path, url: str | None, tcp: bool,
             package_dir: Path | None) -> dict:
    config = workdir / f"rate{rate}.yaml"
    if tcp:
        config.write_text(
            f"name: rate{rate}\nduration: {duration}s\nworkers: {workers}\n"
            "servers: [{name: e, kind: echo, workers: 1}]\n"
            f"targets: [{{name: paced, tcp: '{{e}}', connections: 50, size: 64, rate: {rate}, timeout: 5s}}]\n")
    else:
        servers = "" if url else "servers: [{name: s, kind: http, workers: 1}]\n"
        config.write_text(
            f"name: rate{rate}\nduration: {duration}s\nworkers: {workers}\n{servers}"
            f"targets: [{{name: paced, url: '{url or 'http://{s}/'}', rate: {rate}, timeout: 5s}}]\n")
    out = workdir / f"rate{rate}-{time.time_ns()}"
    env = dict(os.environ)
    if package_dir is not None:
        env["PYTHONPATH"] = str(package_dir) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=duration + 120, env=env, cwd=workdir)
    if done.returncode not in (0, 1):
        raise SystemExit(f"rate {rate}: loadtest failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads((out / "summary.json").read_text())


def row(label: str, rate: int, duration: float, summary: dict) -> str:
    target = summary["targets"][0]
    om = target.get("open_model") or {}
    achieved = target["requests"] / duration
    late = om.get("lateness_ms") or {}
    corrected = target["latency_ms"]
    uncorrected = om.get("uncorrected_latency_ms") or {}
    cpu = sum((w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"])
    per_request = cpu / target["requests"] * 1e6 if target["requests"] else float("nan")

    def ms(figures: dict, key: str) -> str:
        value = figures.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    return (f"{label:8} {rate:>8} {target['requests']:>9} {achieved:>11.1f} {(achieved / rate - 1) * 100:>7.2f}% "
            f"{om.get('dropped', 0):>8} {ms(late, 'p50'):>12} {ms(late, 'p99'):>12} {ms(corrected, 'p50'):>10} "
            f"{ms(uncorrected, 'p50'):>10} {ms(corrected, 'p99'):>8} {target['failures']:>9} {per_request:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rates", default="100,1000,5000,10000,20000")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--nginx", action="store_true", help="nginx (one worker process) as the target")
    parser.add_argument("--tcp", action="store_true", help="paced TCP against the embedded echo server")
    parser.add_argument("--before", default=None, metavar="DIR", help="also run the loadtest package in DIR")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if not 0 < args.duration <= 300 or any(not 0 < r <= 100_000 for r in rates) or not 1 <= args.rounds <= 10:
        parser.error("--duration must be in (0, 300] s, each rate in (0, 100000], --rounds in [1, 10]")
    before = Path(args.before).resolve() if args.before else None
    builds = [("before", before), ("after", None)] if before is not None else [("", None)]
    print(f"{'build':8} {'rate/s':>8} {'requests':>9} {'achieved/s':>11} {'error':>8} {'dropped':>8} "
          f"{'late p50 ms':>12} {'late p99 ms':>12} {'p50 ms':>10} {'uncorr p50':>10} {'p99 ms':>8} "
          f"{'failures':>9} {'CPU µs/req':>11}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rate-accuracy-") as tmp:
        workdir = Path(tmp)
        nginx = None
        if args.nginx:
            from http_vs_peers import Target

            nginx = Target(workdir)
        try:
            for _ in range(args.rounds):
                for rate in rates:
                    for label, package in builds:
                        summary = run_rate(rate, args.duration, args.workers, workdir,
                                           nginx.url if nginx else None, args.tcp, package)
                        print(row(label, rate, args.duration, summary), flush=True)
        finally:
            if nginx is not None:
                nginx.stop()


if __name__ == "__main__":
    main()
