"""Open-model rate accuracy: achieved rate against the asked rate, 100/s to 20,000/s.

    .venv/bin/python benchmarks/rate_accuracy.py [--duration 10] [--workers 2] [--rates 100,1000,5000,10000,20000]

Each rate runs against the embedded HTTP server on loopback (one process,
route `/`), with the worker count given. "achieved" is requests started per
second of the configured duration; dropped arrivals and the schedule's
lateness (how late arrivals actually started) are shown beside it, and the
workers' CPU per request (their user + system time from summary.json, start-up
included), which a busy machine changes far less than the lateness.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run_rate(rate: int, duration: float, workers: int, workdir: Path) -> dict:
    config = workdir / f"rate{rate}.yaml"
    config.write_text(
        f"name: rate{rate}\nduration: {duration}s\nworkers: {workers}\n"
        "servers: [{name: s, kind: http, workers: 1}]\n"
        f"targets: [{{name: paced, url: 'http://{{s}}/', rate: {rate}, timeout: 5s}}]\n")
    out = workdir / f"rate{rate}"
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=duration + 120)
    if done.returncode != 0:
        raise SystemExit(f"rate {rate}: loadtest failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rates", default="100,1000,5000,10000,20000")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if not 0 < args.duration <= 300 or any(not 0 < r <= 100_000 for r in rates):
        parser.error("--duration must be in (0, 300] s and each rate in (0, 100000]")
    print(f"{'rate/s':>8} {'requests':>9} {'achieved/s':>11} {'error':>8} {'dropped':>8} "
          f"{'late p50 ms':>12} {'late p99 ms':>12} {'p99 ms':>8} {'failures':>9} {'CPU µs/req':>11}")
    with tempfile.TemporaryDirectory(prefix="rate-accuracy-") as tmp:
        for rate in rates:
            summary = run_rate(rate, args.duration, args.workers, Path(tmp))
            target = summary["targets"][0]
            om = target["open_model"]
            achieved = target["requests"] / args.duration
            late = om["lateness_ms"]
            cpu = sum((w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"])
            per_request = cpu / target["requests"] * 1e6 if target["requests"] else float("nan")
            print(f"{rate:>8} {target['requests']:>9} {achieved:>11.1f} {(achieved / rate - 1) * 100:>7.2f}% "
                  f"{om['dropped']:>8} {late.get('p50', 0):>12.3f} {late.get('p99', 0):>12.3f} "
                  f"{target['latency_ms'].get('p99', 0):>8.3f} {target['failures']:>9} {per_request:>11.2f}")


if __name__ == "__main__":
    main()
