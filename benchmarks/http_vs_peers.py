"""loadtest against wrk and Locust's FastHttpUser: same target, concurrency, duration.

    .venv/bin/pip install -e '.[bench]'        # Locust; wrk and nginx from apt
    .venv/bin/python benchmarks/http_vs_peers.py [--duration 10] [--concurrency 50]
    .venv/bin/python benchmarks/http_vs_peers.py --memory   # worker RSS: 30 s run vs 5 min run
    .venv/bin/python benchmarks/http_vs_peers.py --rounds 3 --duration 5 --skip-locust [--before DIR] [--unique]

--rounds N runs the tools N times, interleaved (wrk, loadtest, ... then again), and prints each tool's
median and spread of req/s and of CPU µs per request: on a shared machine the CPU per request moves far
less than req/s. --before DIR runs a second loadtest, the package found in DIR (a checkout's root, put
first on PYTHONPATH), in the same rounds: a before/after pair measured on the same machine state.
--unique has nginx answer each request with its own request id, so that no two responses are the
same bytes: the hub engine then parses every response (it reuses the parse of a repeated one).

The target is nginx on loopback (one worker process, a 12-byte response) when
nginx is installed, the embedded HTTP server otherwise. Each tool runs as one
process (loadtest: one worker, plus its controller, both counted), one after
the other, and its CPU time is the operating system's accounting of the
tool's processes (getrusage of waited-for children). Every load goes to
127.0.0.1 and stops after --duration.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
WRK = shutil.which("wrk")
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 65536; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "{body}"; }}
  }}
}}
"""
LOCUSTFILE = """
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class Visitor(FastHttpUser):
    wait_time = constant(0)

    @task
    def home(self):
        self.client.get("/")
"""


@dataclass
class Result:
    tool: str
    requests: int
    seconds: float
    cpu: float
    worker_cpu: float | None = None  # loadtest: its worker's own user + system CPU (summary.json)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu / self.requests * 1e6 if self.requests else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def measured(cmd: list[str], timeout: float, **kw: object) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run a command to its end; its wall time and the CPU time of it and its waited-for children."""
    cpu0, t0 = children_cpu(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    return done, time.monotonic() - t0, children_cpu() - cpu0


class Target:
    """nginx when installed, else the embedded HTTP server; one process either way."""

    def __init__(self, workdir: Path, prefer_nginx: bool = True, unique: bool = False) -> None:
        """`unique`: nginx answers each request with its own 32-digit request id, so that no two responses
        are the same bytes (the hub engine's full parse every time); otherwise "hello world"."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.group = None
        if NGINX and prefer_nginx:
            conf = workdir / "nginx.conf"
            body = "$request_id\\n" if unique else "hello world\\n"
            conf.write_text(NGINX_CONF.format(dir=workdir, port=self.port, body=body))
            self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(workdir)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.name = "nginx (1 worker process)"
        else:
            from loadtest.model.config import ServerSpec
            from loadtest.execution.servers import ServerGroup

            self.group = ServerGroup.start(ServerSpec("bench", "http", "127.0.0.1", self.port, 1))
            self.name = "loadtest serve http (1 process)"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"the target did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.group is not None:
            self.group.stop()


def run_loadtest(url: str, concurrency: int, duration: float, workdir: Path, name: str = "bench",
                 package_dir: Path | None = None, tool: str = "loadtest (1 worker)") -> tuple[Result, dict]:
    """One loadtest run (one worker); its CPU is the controller's and the worker's. `package_dir`: run the
    loadtest package found there instead of this checkout's."""
    config = workdir / f"{name}.yaml"
    config.write_text(f"name: {name}\nduration: {duration}s\nworkers: 1\n"
                      f"targets:\n  - name: home\n    url: {url}\n    concurrency: {concurrency}\n")
    out = workdir / f"{name}-report-{time.time_ns()}"
    env = dict(os.environ)
    if package_dir is not None:
        env["PYTHONPATH"] = str(package_dir) + os.pathsep + env.get("PYTHONPATH", "")
    done, wall, cpu = measured([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                               timeout=duration + 120, env=env, cwd=workdir)
    if done.returncode != 0:
        raise SystemExit(f"loadtest failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    result = Result(tool, summary["aggregated"]["requests"], summary["duration_s"], cpu)
    result.worker_cpu = sum((w["cpu_user_s"] or 0) + (w["cpu_system_s"] or 0) for w in summary["workers"])
    return result, summary


def run_wrk(url: str, concurrency: int, duration: float) -> Result | None:
    if not WRK:
        print("wrk is not installed (apt-get install wrk): skipped")
        return None
    done, wall, cpu = measured([WRK, "-t1", f"-c{concurrency}", f"-d{int(duration)}s", url], timeout=duration + 60)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if not m:
        raise SystemExit(f"cannot read wrk's output: {done.stdout} {done.stderr}")
    seconds = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    return Result("wrk -t1", int(m.group(1)), seconds, cpu)


def run_locust(url: str, concurrency: int, duration: float, workdir: Path) -> Result | None:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if not locust:
        print("Locust is not installed (pip install -e '.[bench]'): skipped")
        return None
    (workdir / "locustfile.py").write_text(LOCUSTFILE)
    prefix = workdir / "locust"
    done, wall, cpu = measured([locust, "-f", str(workdir / "locustfile.py"), "--headless", "-u", str(concurrency),
                                "-r", str(concurrency * 100), "-t", f"{int(duration)}s", "--host", url.rstrip("/"),
                                "--csv", str(prefix), "--only-summary", "--stop-timeout", "1"],
                               timeout=duration + 120, cwd=workdir)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    agg = rows["Aggregated"]
    requests = int(agg["Request Count"])
    return Result("Locust FastHttpUser (1 process)", requests, requests / float(agg["Requests/s"]), cpu)


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="http-vs-peers-") as tmp:
        workdir = Path(tmp)
        target = Target(workdir, prefer_nginx=not args.embedded, unique=args.unique)
        try:
            print(f"target: {target.name} at {target.url}; concurrency {args.concurrency}, {args.duration:g} s each, "
                  f"{os.cpu_count()} cores")
            results = [r for r in (
                run_wrk(target.url, args.concurrency, args.duration),
                run_loadtest(target.url, args.concurrency, args.duration, workdir)[0],
                None if args.skip_locust else run_locust(target.url, args.concurrency, args.duration, workdir),
            ) if r is not None]
        finally:
            target.stop()
    ours = next(r for r in results if r.tool.startswith("loadtest"))
    print()
    print(f"{'tool':34} {'requests':>10} {'req/s':>10} {'CPU s':>7} {'CPU µs/req':>11} {'loadtest ÷ tool':>16}")
    for r in results:
        ratio = ours.rps / r.rps
        print(f"{r.tool:34} {r.requests:>10} {r.rps:>10.0f} {r.cpu:>7.2f} {r.cpu_us_per_request:>11.1f} {ratio:>15.2f}×")


def rounds(args: argparse.Namespace) -> None:
    """`--rounds` interleaved rounds of wrk and loadtest (and the `--before` loadtest), then medians and spreads."""
    from statistics import median

    before = Path(args.before).resolve() if args.before else None
    if before is not None and not (before / "loadtest" / "__init__.py").exists():
        raise SystemExit(f"--before {args.before}: no loadtest package there")
    runs: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="http-vs-peers-") as tmp:
        workdir = Path(tmp)
        target = Target(workdir, prefer_nginx=not args.embedded, unique=args.unique)
        try:
            print(f"target: {target.name} at {target.url}; concurrency {args.concurrency}, {args.duration:g} s each, "
                  f"{args.rounds} interleaved rounds, {os.cpu_count()} cores", flush=True)
            for k in range(args.rounds):
                results = [run_wrk(target.url, args.concurrency, args.duration)]
                if before is not None:
                    results.append(run_loadtest(target.url, args.concurrency, args.duration, workdir, "before",
                                                before, "loadtest before (1 worker)")[0])
                results.append(run_loadtest(target.url, args.concurrency, args.duration, workdir)[0])
                wrk = results[0]
                for r in results:
                    if r is None:
                        continue
                    runs.setdefault(r.tool, []).append(r)
                    ratio = f"{r.rps / wrk.rps:5.2f}× wrk" if wrk is not None else ""
                    worker = f"  worker {r.worker_cpu / r.requests * 1e6:5.2f} µs/req" if r.worker_cpu else ""
                    print(f"round {k + 1}: {r.tool:28} {r.rps:>9,.0f} req/s  {r.cpu_us_per_request:5.2f} µs/req "
                          f"(all its processes){worker}  {ratio}", flush=True)
        finally:
            target.stop()
    print(f"\n{'tool':30} {'median req/s':>13} {'spread':>8} {'median µs/req':>14} {'spread':>8} "
          f"{'worker µs/req':>14} {'÷ wrk (median of rounds)':>25}")
    wrk_runs = runs.get("wrk -t1")
    for tool, rs in runs.items():
        rps = [r.rps for r in rs]
        us = [r.cpu_us_per_request for r in rs]
        worker = [r.worker_cpu / r.requests * 1e6 for r in rs if r.worker_cpu]
        ratio = f"{median(r.rps / w.rps for r, w in zip(rs, wrk_runs)):.2f}×" if wrk_runs else ""
        print(f"{tool:30} {median(rps):>13,.0f} {(max(rps) - min(rps)) / median(rps) * 100:>7.1f}% "
              f"{median(us):>14.2f} {(max(us) - min(us)) / median(us) * 100:>7.1f}% "
              f"{(f'{median(worker):.2f}' if worker else '-'):>14} {ratio:>25}")
    print("spread: (highest - lowest) / median over the rounds")


def memory(args: argparse.Namespace) -> None:
    """Worker peak RSS of a short and a long run: histograms keep it flat."""
    with tempfile.TemporaryDirectory(prefix="http-memory-") as tmp:
        workdir = Path(tmp)
        target = Target(workdir, prefer_nginx=not args.embedded, unique=args.unique)
        try:
            rss = {}
            for seconds in (30, 300):
                result, summary = run_loadtest(target.url, args.concurrency, seconds, workdir, name=f"mem{seconds}")
                rss[seconds] = summary["workers"][0]["peak_rss_bytes"]
                print(f"{seconds:>4} s run: {result.requests} requests, worker peak RSS {rss[seconds] / 2**20:.1f} MiB")
        finally:
            target.stop()
    print(f"5-minute run's worker RSS is {rss[300] / rss[30] * 100 - 100:+.1f}% of the 30-second run's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per tool (default 10)")
    parser.add_argument("--concurrency", type=int, default=50, help="connections / virtual users (default 50)")
    parser.add_argument("--embedded", action="store_true", help="use the embedded server even if nginx is installed")
    parser.add_argument("--skip-locust", action="store_true")
    parser.add_argument("--unique", action="store_true",
                        help="nginx answers each request with its own id: no two responses are the same bytes")
    parser.add_argument("--memory", action="store_true", help="compare worker RSS of a 30 s and a 5 min run")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds of wrk and loadtest, then medians")
    parser.add_argument("--before", default=None, metavar="DIR",
                        help="with --rounds: also run the loadtest package of the checkout in DIR, in the same rounds")
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 600:
        parser.error("--duration must be between 0 and 600 seconds")
    if not 0 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if args.memory:
        memory(args)
    elif args.rounds:
        rounds(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
