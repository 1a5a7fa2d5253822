"""Flows' speed: a one-step YAML flow against the plain target of the same URL, and a three-step Python flow
against Locust's FastHttpUser running the same three requests.

    .venv/bin/pip install -e '.[bench]'        # Locust
    .venv/bin/python benchmarks/flows_speed.py [--duration 10] [--concurrency 50]

The target is the embedded HTTP server (one process: it has /login and /me).
Each tool runs as one process (loadtest: one worker, plus its controller, both
counted), one after the other; CPU time is the operating system's accounting
of the tool's processes. Each is run for --duration and for twice that, and
the difference of the two is its steady state: starting (imports, spawning)
and stopping cost the same in both runs and cancel out. On a machine other
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
from pathlib import Path
from typing import Callable

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


def run_loadtest(label: str, targets: str, duration: float, workdir: Path, name: str) -> Result:
    config = workdir / f"{name}.yaml"
    config.write_text(f"name: {name}\nduration: {duration}s\nworkers: 1\ntargets:\n{targets}")
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


def run_locust(url: str, concurrency: int, duration: float, workdir: Path, name: str = "locust") -> Result | None:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if not locust:
        print("Locust is not installed (pip install -e '.[bench]'): skipped")
        return None
    (workdir / "locustfile.py").write_text(LOCUSTFILE)
    prefix = workdir / name
    done, wall, cpu = measured([locust, "-f", str(workdir / "locustfile.py"), "--headless", "-u", str(concurrency),
                                "-r", str(concurrency * 100), "-t", f"{int(duration)}s", "--host", url.rstrip("/"),
                                "--csv", str(prefix), "--only-summary", "--stop-timeout", "1"],
                               timeout=duration + 120, cwd=workdir)
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows["Aggregated"]
    requests = int(agg["Request Count"])
    if int(agg["Failure Count"]):
        raise SystemExit(f"Locust: {agg['Failure Count']} failures; see {prefix}_failures.csv")
    return Result("Locust FastHttpUser (1 process)", requests, requests / float(agg["Requests/s"]), cpu)


def steady(run: Callable[[float, str], Result | None], duration: float, tag: str) -> Result | None:
    """A tool's steady state: run it for `duration` and for twice that, and take the difference, so the CPU of
    starting and stopping (imports, spawning, writing reports) cancels out of the CPU per request."""
    short = run(duration, f"{tag}-short")
    long = run(2 * duration, f"{tag}-long")
    if short is None or long is None:
        return None
    return Result(long.tool, long.requests - short.requests, long.seconds - short.seconds, long.cpu - short.cpu)


def _ratios(ours: Result, base: Result) -> tuple[float, float]:
    """Ours over base: requests per second, and requests per CPU second."""
    return ours.rps / base.rps, base.cpu_us_per_request / ours.cpu_us_per_request


def table(results: list[Result], base: Result) -> None:
    print(f"{'tool (steady state)':44} {'requests':>10} {'req/s':>10} {'CPU s':>7} {'CPU µs/req':>11} "
          f"{'÷ first req/s':>14} {'÷ first CPU/req':>16}")
    for r in results:
        print(f"{r.tool:44} {r.requests:>10} {r.rps:>10.0f} {r.cpu:>7.2f} {r.cpu_us_per_request:>11.1f} "
              f"{r.rps / base.rps:>13.2f}x {base.cpu_us_per_request / r.cpu_us_per_request:>15.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of the short run; the long one lasts twice that (default 10)")
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
        url, c = target.url.rstrip("/"), args.concurrency
        plain_yaml = f"  - {{name: home, url: '{url}/', concurrency: {c}}}\n"
        step_yaml = f"  - {{name: home, concurrency: {c}, flow: [{{name: home, url: '{url}/'}}]}}\n"
        python_yaml = f"  - {{name: shop, concurrency: {c}, url: '{url}', script: 'shopflow.py:shop'}}\n"
        ratios: dict[str, list[tuple[float, float]]] = {"one-step": [], "python": []}
        try:
            print(f"target: {target.name} at {url}; {c} virtual users; runs of {args.duration:g} s and "
                  f"{2 * args.duration:g} s, their difference taken")
            for k in range(args.repeat):
                plain = steady(lambda d, n: run_loadtest("plain target GET / (1 worker)", plain_yaml, d, workdir, n),
                               args.duration, f"plain{k}")
                step = steady(lambda d, n: run_loadtest("one-step YAML flow GET / (1 worker)", step_yaml, d, workdir,
                                                        n), args.duration, f"onestep{k}")
                assert plain is not None and step is not None
                print("\n1. one-step YAML flow vs the plain target")
                table([plain, step], plain)
                ratios["one-step"].append(_ratios(step, plain))
                locust = None if args.skip_locust else steady(
                    lambda d, n: run_locust(url, c, d, workdir, n), args.duration, f"locust{k}")
                python = steady(lambda d, n: run_loadtest("three-step Python flow (1 worker)", python_yaml, d,
                                                          workdir, n), args.duration, f"python{k}")
                assert python is not None
                print("\n2. three-step Python flow vs Locust FastHttpUser (login, me, home)")
                table([r for r in (locust, python) if r is not None], locust or python)
                if locust is not None:
                    ratios["python"].append(_ratios(python, locust))
        finally:
            target.stop()
    print(f"\nmedian of {args.repeat} (req/s ratio, CPU-per-request ratio):")
    for key, goal in (("one-step", "0.9x the plain target"), ("python", "5x Locust")):
        if ratios[key]:
            rps, cpu = (statistics.median(r[i] for r in ratios[key]) for i in (0, 1))
            print(f"  {key:8} {rps:5.2f}x req/s  {cpu:5.2f}x CPU/request   (goal: {goal})")


if __name__ == "__main__":
    main()
