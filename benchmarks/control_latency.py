"""How soon a level change and a pause posted to `loadtest run --web` are followed by every worker.

A counting HTTP server in this process (asyncio, loopback) notes the arrival time of every request. A
`loadtest run` of one open-model target against it, with --web, gets in turn `POST /api/targets/hit
{"rate": HIGH}` and `{"rate": LOW}`, and `POST /api/pause` and `/api/resume`. Measured per round:

- raise: from the POST to the first moment the server's last 100 ms hold at least 90% of HIGH's share
  (so every worker has followed: one alone sends only 1/workers of it); the 100 ms window is included;
- pause: from the POST to the last request the server saw before the resume.

    python benchmarks/control_latency.py [--workers 2] [--rounds 8] [--high 600] [--cluster local:2]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WINDOW_S = 0.1


class CountingServer:
    """Answers every request with an empty 200 and notes when it came (time.monotonic)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.times.append(time.monotonic())
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def post(port: int, path: str, body: object = None) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    at = time.monotonic()
    conn.request("POST", path, body=json.dumps(body) if body is not None else b"")
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
    conn.close()
    return at


def followed_at(times: list[float], since: float, rate: float, until: float) -> float | None:
    """The first arrival after `since` whose last WINDOW_S hold at least 90% of `rate`'s share of it."""
    need = int(0.9 * rate * WINDOW_S)
    start = bisect.bisect_left(times, since)
    for i in range(start, len(times)):
        t = times[i]
        if t > until:
            return None
        if i - bisect.bisect_left(times, t - WINDOW_S) + 1 >= need and t - WINDOW_S >= since - 1e-3:
            return t
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--low", type=float, default=20.0)
    parser.add_argument("--high", type=float, default=600.0)
    parser.add_argument("--cluster", default=None)
    args = parser.parse_args()
    server = CountingServer()
    seconds = 4 + args.rounds * 4
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "run.yaml"
        config.write_text(f"name: control-latency\nduration: {seconds}s\nworkers: {args.workers}\n"
                          f"targets: [{{name: hit, url: 'http://127.0.0.1:{server.port}/', rate: {args.low}}}]\n")
        command = [sys.executable, "-m", "loadtest", "run", str(config), "--out", str(Path(tmp) / "r"), "--quiet",
                   "--web", "127.0.0.1:0", *(["--cluster", args.cluster] if args.cluster else [])]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            m = re.search(r"live page on http://127.0.0.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        while not server.times:
            time.sleep(0.1)
        time.sleep(1.5)
        raises, pauses = [], []
        for _ in range(args.rounds):
            at = post(port, "/api/targets/hit", {"rate": args.high})
            time.sleep(1.5)
            seen = followed_at(server.times, at, args.high, at + 1.5)
            raises.append(seen - at if seen is not None else float("inf"))
            post(port, "/api/targets/hit", {"rate": args.low})
            time.sleep(0.5)
            at = post(port, "/api/pause")
            time.sleep(1.2)
            last = [t for t in server.times if t < at + 1.2]
            pauses.append(max(0.0, last[-1] - at))
            post(port, "/api/resume")
            time.sleep(0.5)
        post(port, "/api/stop")
        proc.communicate(timeout=60)
    where = f"--cluster {args.cluster}" if args.cluster else "local"
    print(f"{where}, {args.workers} workers, rate {args.low:g} -> {args.high:g}/s, {args.rounds} rounds")
    print(f"  level change followed by every worker: median {statistics.median(raises):.3f} s, "
          f"max {max(raises):.3f} s (each includes the {WINDOW_S:g} s window)")
    print(f"  pause: last request after the POST: median {statistics.median(pauses):.3f} s, max {max(pauses):.3f} s")


if __name__ == "__main__":
    main()
