"""Worker memory per held HTTP connection: many users each holding a request in flight on its connection.

    .venv/bin/python benchmarks/http_held.py [--users 5000] [--seconds 8] [--before DIR]

Two runs of one worker against the embedded HTTP server's /delay route (a reply later than the run
lasts, so every user holds its connection, a request in flight, until the stop cancels it): 100 users,
then --users. The difference of the worker's peak RSS (summary.json), divided by the difference of
users, is what one held connection costs in the worker: its socket, watcher, parser and record on
hub callbacks, or its greenlet and session on the greenlet path. --before DIR measures the loadtest
package found in DIR (a checkout's root) the same way, in the same run. All on 127.0.0.1.
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

BASE_USERS = 100


def held_run(users: int, seconds: float, workdir: Path, package_dir: Path | None) -> tuple[int, int]:
    """(worker peak RSS in bytes, connections held when the load stopped) of one run with `users` users."""
    config = workdir / f"held{users}.yaml"
    config.write_text(
        f"name: held{users}\nduration: {seconds}s\nworkers: 1\n"
        "servers: [{name: s, kind: http, workers: 1}]\n"
        f"targets: [{{name: held, url: 'http://{{s}}/delay/60000', concurrency: {users}, timeout: 120s}}]\n")
    out = workdir / f"held{users}-{time.time_ns()}"
    env = dict(os.environ)
    if package_dir is not None:
        env["PYTHONPATH"] = str(package_dir) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=seconds + 180, env=env, cwd=workdir)
    if not (out / "summary.json").exists():
        raise SystemExit(f"{users} users: loadtest failed ({done.returncode}): {done.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    worker = summary["workers"][0]
    cancelled = summary["targets"][0]["failures_by_kind"].get("cancelled", 0)
    return int(worker["peak_rss_bytes"]), int(cancelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--before", default=None, metavar="DIR")
    args = parser.parse_args()
    if not BASE_USERS < args.users <= 20_000 or not 3 <= args.seconds <= 60:
        parser.error(f"--users must be in ({BASE_USERS}, 20000] and --seconds in [3, 60]")
    builds = [("before", Path(args.before).resolve()), ("after", None)] if args.before else [("", None)]
    with tempfile.TemporaryDirectory(prefix="http-held-") as tmp:
        for label, package in builds:
            base, base_held = held_run(BASE_USERS, args.seconds, Path(tmp), package)
            many, many_held = held_run(args.users, args.seconds, Path(tmp), package)
            per = (many - base) / (args.users - BASE_USERS)
            print(f"{label:7} worker peak RSS {base / 2**20:7.1f} MiB with {BASE_USERS} users ({base_held} held), "
                  f"{many / 2**20:7.1f} MiB with {args.users} ({many_held} held): "
                  f"{per / 1024:.2f} KiB per held connection", flush=True)


if __name__ == "__main__":
    main()
