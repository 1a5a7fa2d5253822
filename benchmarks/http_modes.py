"""Repeated short loadtest runs against one nginx: the spread of requests/s and CPU per request, and where
the processes ran while each run was under way.

    .venv/bin/python benchmarks/http_modes.py [--runs 8] [--seconds 5]
    PYTHONHASHSEED=0 .venv/bin/python benchmarks/http_modes.py --runs 8   # every run under one hash seed

`http_vs_peers.py` runs fall into two modes on the reference machine (about 110,000 requests/s at 9–10 µs
of worker CPU a request, and about 96,000 at 10.5–11.4 µs). This prints, per run, the requests/s, the
worker's CPU per request (from summary.json), and the CPU numbers that the worker, the controller and
nginx's worker ran on, sampled ten times a second: the placements a mode came with. One worker, 50 users,
nginx (one worker process) on 127.0.0.1 as in `http_vs_peers.py`; every run stops after --seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_vs_peers import Target  # noqa: E402

SAMPLE_S = 0.1
SETTLE_S = 1.5  # the run's start-up, before placements are sampled


def one_run(target: Target, workdir: Path, seconds: float, nginx: list[psutil.Process]) -> str:
    config = workdir / "modes.yaml"
    config.write_text(f"name: modes\nduration: {seconds}s\nworkers: 1\n"
                      f"targets:\n  - name: home\n    url: {target.url}\n    concurrency: 50\n")
    out = workdir / f"run-{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    placements: collections.Counter[tuple[tuple[int, ...], int, tuple[int, ...]]] = collections.Counter()
    time.sleep(SETTLE_S)
    controller = psutil.Process(proc.pid)
    children = controller.children(recursive=True)
    for _ in range(int((seconds - SETTLE_S - 0.5) / SAMPLE_S)):
        try:
            placements[(tuple(c.cpu_num() for c in children), controller.cpu_num(),
                        tuple(n.cpu_num() for n in nginx))] += 1
        except psutil.Error:
            pass
        time.sleep(SAMPLE_S)
    _, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise SystemExit(f"loadtest failed ({proc.returncode}): {err.decode().strip()}")
    summary = json.loads((out / "summary.json").read_text())
    worker = summary["workers"][0]
    requests = summary["aggregated"]["requests"]
    cpu = (worker["cpu_user_s"] or 0) + (worker["cpu_system_s"] or 0)
    common = ", ".join(f"children {c} controller {k} nginx {n}: {count}"
                       for (c, k, n), count in placements.most_common(2))
    return (f"{requests / summary['duration_s']:9,.0f} req/s  {cpu / requests * 1e6:5.2f} µs/request (worker)  "
            f"CPUs sampled: {common}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="how many runs (default 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each run's duration (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-modes-") as tmp:
        workdir = Path(tmp)
        target = Target(workdir, prefer_nginx=True)
        try:
            nginx = [p for p in psutil.process_iter(["name", "cmdline"])
                     if p.info["name"] == "nginx" and "worker" in " ".join(p.info["cmdline"] or [])]
            print(f"target: {target.name} at {target.url}; {args.runs} runs of {args.seconds:g} s, 50 users, "
                  f"1 worker", flush=True)
            for _ in range(args.runs):
                print(one_run(target, workdir, args.seconds, nginx), flush=True)
        finally:
            target.stop()


if __name__ == "__main__":
    main()
