"""How late a request's timeout fires: users on a server that drips one byte at a time.

    .venv/bin/python benchmarks/timeout_lateness.py [--users 300] [--timeout 2s] [--duration 6s] [--burners 0]

A server on loopback answers every request with a status line and then one
header byte every 20 ms, for ever, so every request ends as `read_timeout`;
the run's latency of that target is how long each took, and the timeout
subtracted from it is how late the worker's deadline scan ended it. A healthy
target on the embedded server runs beside it. `--burners N` starts N
CPU-burning processes for the run (a busy machine). Prints the lateness at
the median and at most.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DRIP_S = 0.02


def drip_server(stop: threading.Event) -> int:
    """A loopback server that drips one byte every DRIP_S to each connection until `stop`; returns its port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    def serve() -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        conns: list[socket.socket] = []
        next_drip = time.monotonic()
        while not stop.is_set():
            for key, _ in sel.select(timeout=DRIP_S / 2):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    conns.append(conn)
                    try:
                        conn.send(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                    except OSError:
                        pass
            if time.monotonic() >= next_drip:
                next_drip += DRIP_S
                alive = []
                for conn in conns:
                    try:
                        conn.recv(65536)  # the requests: read and dropped
                    except BlockingIOError:
                        pass
                    except OSError:
                        conn.close()
                        continue
                    try:
                        conn.send(b"x")
                        alive.append(conn)
                    except OSError:
                        conn.close()
                conns = alive
        for conn in conns:
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--timeout", default="2s")
    parser.add_argument("--duration", default="6s")
    parser.add_argument("--burners", type=int, default=0, help="CPU-burning processes beside the run")
    args = parser.parse_args()
    stop = threading.Event()
    port = drip_server(stop)
    out = Path(tempfile.mkdtemp(prefix="timeout-lateness-"))
    config = out / "drip.yaml"
    config.write_text(json.dumps({
        "name": "drip", "duration": args.duration, "workers": 1,
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "targets": [{"name": "drip", "url": f"http://127.0.0.1:{port}/", "concurrency": args.users,
                     "timeout": args.timeout},
                    {"name": "healthy", "url": "http://{site}/", "concurrency": 20}],
        "thresholds": ["error_rate < 100%"],
    }))
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    try:
        done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(out / "run"), "-q"],
                              capture_output=True, text=True, timeout=300)
    finally:
        for b in burners:
            b.kill()
        stop.set()
    if done.returncode not in (0, 1):
        sys.exit(f"the run failed (exit {done.returncode}): {done.stderr.strip()}")
    summary = json.loads((out / "run" / "summary.json").read_text())
    drip = next(t for t in summary["targets"] if t["name"] == "drip")
    timeout_ms = float(args.timeout.rstrip("s")) * 1000 if not args.timeout.endswith("ms") \
        else float(args.timeout[:-2])
    latency = drip["latency_ms"]
    print(f"drip: {drip['requests']:,} requests, failures {drip['failures_by_kind']}; "
          f"timeout {timeout_ms:g} ms, {args.users} users, {args.burners} CPU burners")
    print(f"late at the median: {latency['p50'] - timeout_ms:.1f} ms; at p99: {latency['p99'] - timeout_ms:.1f} ms; "
          f"at most: {latency['max'] - timeout_ms:.1f} ms")
    print(f"reports in {out / 'run'}")


if __name__ == "__main__":
    main()
