"""Flows' speed: a one-step YAML flow against the plain target of the same URL, and a three-step Python flow
against Locust's FastHttpUser running the same three requests.

    .venv/bin/pip install -e '.[bench]'        # Locust
    .venv/bin/python benchmarks/flows_speed.py [--duration 10] [--concurrency 50]

The target is the embedded HTTP server (one process: it has /login and /me).
Each tool runs as one process (loadtest: one worker, plus its controller, both
counted), one after the other; CPU time is the operating system's accounting
of the tool's processes. What starting and stopping costs each tool
(imports, spawning, reports) is measured once, by a run that sends next to
nothing, and taken off each run's CPU. On a machine other
work is loading, compare CPU per request (the last column) rather than
requests per second. Every load goes to 127.0.0.1 and stops by itself.

1. plain target `GET /` vs a flow with one step `GET /` (no capture, no check):
   the flow must reach at least 0.9x the plain target's requests/s.
2. Locust FastHttpUser vs a Python flow, each pass: POST /login (JSON), read the
   token from the JSON answer, GET /me with it, GET /: loadtest must reach 5x.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_vs_peers import Result, Target, measured  # noqa: E402

LOCUSTFILE = """
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class Shop(FastHttpUser):
    wait_time = constant(0)

    @task
    def shop(self):
        r = self.client.post("/login", json={"user": "u1", "password": "x"}, name="login")
        token = r.json()["token"]
        self.client.get("/me", headers={"Authorization": "Bearer " + token}, name="me")
        self.client.get("/", name="home")
"""
FLOWFILE = '''
def shop(user):
    r = user.post("/login", json={"user": "u1", "password": "x"}, name="login")
    token = r.json()["token"]
    user.get("/me", headers={"Authorization": "Bearer " + token}, name="me")
    user.get("/", name="home")
'''


def run_loadtest(label: str, targets: str, duration: float, workdir: Path, name: str,
                 requests: int | None = None) -> Result:
    """One run of one worker; with `requests`, a run that ends after that many (to measure starting and stopping)."""
    config = workdir / f"{name}.yaml"
    end = f"requests: {requests}" if requests else f"duration: {duration}s"
    config.write_text(f"name: {name}\n{end}\nworkers: 1\ntargets:\n{targets}")
    out = workdir / f"{name}-report"
    done, wall, cpu = measured([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                               timeout=duration + 120)
    if done.returncode != 0:
        raise SystemExit(f"loadtest failed ({done.returncode}): {done.stderr.strip()} {done.stdout[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    agg = summary["aggregated"]
    if agg["failures"]:
        raise SystemExit(f"{label}: {agg['failures']} failures; see {out}")
    return Result(label, agg["requests"], summary["duration_s"], cpu)


def run_locust(url: str, concurrency: int, duration: float, workdir: Path, name: str = "locust",
               idle: bool = False) -> Result | None:
    """One Locust run in one process; `idle`: one user that makes one pass and then waits (starting and stopping)."""
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if not locust:
        print("Locust is not installed (pip install -e '.[bench]'): skipped")
        return None
    locustfile = workdir / f"{name}.py"
    locustfile.write_text(LOCUSTFILE.replace("constant(0)", "constant(600)") if idle else LOCUSTFILE)
    prefix = workdir / name
    done, wall, cpu = measured([locust, "-f", str(locustfile), "--headless", "-u", str(concurrency),
                                "-r", str(concurrency * 100), "-t", f"{int(duration)}s", "--host", url.rstrip("/"),
                                "--csv", str(prefix), "--only-summary", "--stop-timeout", "1"],
                               timeout=duration + 120, cwd=workdir)
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows["Aggregated"]
    requests = int(agg["Request Count"])
    if int(agg["Failure Count"]):
        raise SystemExit(f"Locust: {agg['Failure Count']} failures; see {prefix}_failures.csv")
    rate = float(agg["Requests/s"])
    return Result("Locust FastHttpUser (1 process)", requests, requests / rate if rate else duration, cpu)


class ServerMeter:
    """The target server's CPU share of one core while a tool runs: near 100% means the server set the pace."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(p) for p in pids]
        self.last: list[str] = []

    def __call__(self, run: Callable[[], Result]) -> Result:
        cpu0, t0 = self._cpu(), time.monotonic()
        result = run()
        share = (self._cpu() - cpu0) / (time.monotonic() - t0) * 100
        self.last.append(f"{result.tool}: server {share:.0f}% of a core")
        return result

    def _cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def report(self) -> None:
        for line in self.last:
            print(f"  {line}")
        self.last.clear()


def steady(run: Result, startup: Result) -> Result:
    """A run's steady state: its CPU less what starting and stopping the tool costs (a run that sends next to
    nothing: imports, spawning, reports), so a tool's start-up weighs on neither side of a comparison."""
    return Result(run.tool, run.requests, run.seconds, run.cpu - startup.cpu)


def _ratios(ours: Result, base: Result) -> tuple[float, float]:
    """Ours over base: requests per second, and requests per CPU second."""
    return ours.rps / base.rps, base.cpu_us_per_request / ours.cpu_us_per_request


def table(results: list[Result], base: Result) -> None:
    print(f"{'tool (CPU less start-up)':44} {'requests':>10} {'req/s':>10} {'CPU s':>7} {'CPU µs/req':>11} "
          f"{'÷ first req/s':>14} {'÷ first CPU/req':>16}")
    for r in results:
        print(f"{r.tool:44} {r.requests:>10} {r.rps:>10.0f} {r.cpu:>7.2f} {r.cpu_us_per_request:>11.1f} "
              f"{r.rps / base.rps:>13.2f}x {base.cpu_us_per_request / r.cpu_us_per_request:>15.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds a run (default 10)")
    parser.add_argument("--concurrency", type=int, default=50, help="virtual users (default 50)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each pair this many times, alternating, and judge by the median (default 1)")
    parser.add_argument("--skip-locust", action="store_true")
    args = parser.parse_args()
    if not 0 < args.duration <= 300:
        parser.error("--duration must be between 0 and 300 seconds")
    with tempfile.TemporaryDirectory(prefix="flows-speed-") as tmp:
        workdir = Path(tmp)
        (workdir / "shopflow.py").write_text(FLOWFILE)
        target = Target(workdir, prefer_nginx=False)
        url, c, d = target.url.rstrip("/"), args.concurrency, args.duration
        plain_yaml = "  - {{name: home, url: '%s/', concurrency: {c}}}\n" % url
        step_yaml = "  - {{name: home, concurrency: {c}, flow: [{{name: home, url: '%s/'}}]}}\n" % url
        python_yaml = "  - {{name: shop, concurrency: {c}, url: '%s', script: 'shopflow.py:shop'}}\n" % url
        ratios: dict[str, list[tuple[float, float]]] = {"one-step": [], "python": []}
        try:
            print(f"target: {target.name} at {url}; {c} virtual users, {d:g} s a run")
            # What starting and stopping costs each tool: runs that send (next to) nothing.
            start = {key: run_loadtest(key, text.format(c=1), d, workdir, f"start-{key}", requests=3)
                     for key, text in (("plain", plain_yaml), ("step", step_yaml), ("python", python_yaml))}
            locust_start = None if args.skip_locust else run_locust(url, 1, 1, workdir, "locust-start", idle=True)
            print("start-up and stop, CPU s: " + ", ".join(f"{k} {r.cpu:.2f}" for k, r in start.items())
                  + (f", Locust {locust_start.cpu:.2f}" if locust_start else ""))
            meter = ServerMeter(target.group.pids)  # type: ignore[attr-defined]
            for k in range(args.repeat):
                plain = steady(meter(lambda: run_loadtest("plain target GET / (1 worker)", plain_yaml.format(c=c), d,
                                                          workdir, f"plain{k}")), start["plain"])
                step = steady(meter(lambda: run_loadtest("one-step YAML flow GET / (1 worker)", step_yaml.format(c=c),
                                                         d, workdir, f"step{k}")), start["step"])
                print("\n1. one-step YAML flow vs the plain target")
                table([plain, step], plain)
                meter.report()
                ratios["one-step"].append(_ratios(step, plain))
                locust = None if locust_start is None else meter(
                    lambda: run_locust(url, c, d, workdir, f"locust{k}"))  # type: ignore[arg-type,return-value]
                python = steady(meter(lambda: run_loadtest("three-step Python flow (1 worker)",
                                                           python_yaml.format(c=c), d, workdir, f"python{k}")),
                                start["python"])
                print("\n2. three-step Python flow vs Locust FastHttpUser (login, me, home)")
                if locust is not None and locust_start is not None:
                    locust = steady(locust, locust_start)
                    ratios["python"].append(_ratios(python, locust))
                table([r for r in (locust, python) if r is not None], locust or python)
                meter.report()
        finally:
            target.stop()
    print(f"\nmedian of {args.repeat} (req/s ratio, CPU-per-request ratio):")
    for key, goal in (("one-step", "0.9x the plain target"), ("python", "5x Locust")):
        if ratios[key]:
            rps, cpu = (statistics.median(r[i] for r in ratios[key]) for i in (0, 1))
            print(f"  {key:8} {rps:5.2f}x req/s  {cpu:5.2f}x CPU/request   (goal: {goal})")


if __name__ == "__main__":
    main()
