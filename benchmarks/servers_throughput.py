"""How fast are the embedded servers at one process, and how much memory does an idle connection take?

    .venv/bin/python benchmarks/servers_throughput.py [--seconds 5] [--idle 10000]

Measures, each against one server process on loopback:

- echo: 1 KiB round trips/s over 100 connections, driven by 1 and then 2 client
  processes (plain non-blocking sockets and epoll, one message in flight per
  connection), with the server's CPU use over the run;
- echo: RSS growth per idle connection, with --idle connections held open;
- http: requests/s with wrk (/usr/bin/wrk) when it is installed, else with a
  Python client, for /, /bytes/1024 and /site/3.

On a machine with few cores the clients share them with the server: the CPU
column says whether the server was the bottleneck (near 100%) or not.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import time
from typing import Any

import psutil

from loadtest.model.config import ServerSpec
from loadtest.execution.servers import ServerGroup

MESSAGE_SIZE = 1024
ECHO_CONNECTIONS = 100
HTTP_CONNECTIONS = 50
HTTP_PATHS = ("/", "/bytes/1024", "/site/3")
IDLE_BATCH = 500


def echo_client(host: str, port: int, connections: int, seconds: float, results: Any) -> None:
    """Round trips of MESSAGE_SIZE bytes, one in flight per connection, for `seconds`."""
    message = b"x" * MESSAGE_SIZE
    selector = selectors.EpollSelector()
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ, (sock, [0]))
    for sock in socks:
        sock.send(message)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock, pending = key.data
            pending[0] += len(sock.recv(65536))
            while pending[0] >= MESSAGE_SIZE:
                pending[0] -= MESSAGE_SIZE
                done += 1
                sock.send(message)
    for sock in socks:
        sock.close()
    selector.close()
    results.put(done)


def cpu_percent_during(pid: int, action: Any) -> tuple[Any, float]:
    process = psutil.Process(pid)
    before = process.cpu_times()
    started = time.monotonic()
    result = action()
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return result, 100 * used / (time.monotonic() - started)


def per_cpu_second(total: float, seconds: float, cpu_percent: float) -> str:
    """The server's CPU use, and what it did per CPU-second: robust when clients or others share the cores."""
    cpu_seconds = seconds * cpu_percent / 100
    return f"(server cpu {cpu_percent:.0f}%, {total / cpu_seconds if cpu_seconds else 0:,.0f} per server cpu-second)"


def echo_throughput(group: ServerGroup, client_processes: int, seconds: float) -> None:
    context = mp.get_context("spawn")
    results = context.Queue()
    clients = [context.Process(target=echo_client,
                               args=(group.host, group.port, ECHO_CONNECTIONS // client_processes, seconds, results))
               for _ in range(client_processes)]

    def run() -> int:
        for client in clients:
            client.start()
        total: int = sum(results.get(timeout=seconds + 30) for _ in clients)
        for client in clients:
            client.join(10)
        return total

    total, cpu = cpu_percent_during(group.pids[0], run)
    print(f"echo   1 KiB round trips/s, {ECHO_CONNECTIONS} connections, {client_processes} client "
          f"process(es): {total / seconds:>9,.0f}   {per_cpu_second(total, seconds, cpu)}", flush=True)


def echo_idle_memory(group: ServerGroup, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(count, hard - 200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = psutil.Process(group.pids[0])
    time.sleep(0.5)
    rss_before = server.memory_info().rss
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection((group.host, group.port), timeout=10))
        deadline = time.monotonic() + 30
        while group.served()["connections"] < count and time.monotonic() < deadline:
            time.sleep(0.05)
        accepted = group.served()["connections"]
        rss_accepted = server.memory_info().rss
        for sock in socks:  # one round trip each: the connection has now been read from and written to
            sock.sendall(b"p")
        for sock in socks:
            sock.recv(1)
        rss_used = server.memory_info().rss
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"echo   idle connections held: {accepted:,}; RSS {rss_before / 2**20:.1f} MiB -> "
          f"{rss_accepted / 2**20:.1f} MiB accepted -> {rss_used / 2**20:.1f} MiB after one round trip each: "
          f"{(rss_accepted - rss_before) / accepted:,.0f} B / {(rss_used - rss_before) / accepted:,.0f} B "
          f"per connection", flush=True)


def http_with_wrk(group: ServerGroup, path: str, seconds: float) -> None:
    command = ["wrk", "-t1", f"-c{HTTP_CONNECTIONS}", f"-d{seconds:g}s", f"http://{group.address}{path}"]
    output, cpu = cpu_percent_during(
        group.pids[0], lambda: subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", output)
    per_second = float(rate.group(1)) if rate else float("nan")
    print(f"http   requests/s {path:<12} wrk -t1 -c{HTTP_CONNECTIONS}: {per_second:>9,.0f}   "
          f"{per_cpu_second(per_second * seconds, seconds, cpu)}{'   ' + errors.group(0) if errors else ''}",
          flush=True)


def http_client(host: str, port: int, path: str, connections: int, seconds: float, results: Any) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    selector = selectors.EpollSelector()
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, (sock, [b""]))
        sock.send(request)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock, state = key.data
            state[0] += sock.recv(262144)
            head, sep, rest = state[0].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            if len(rest) >= length:
                state[0] = rest[length:]
                done += 1
                sock.send(request)
    for key in list(selector.get_map().values()):
        key.data[0].close()
    selector.close()
    results.put(done)


def http_with_python(group: ServerGroup, path: str, seconds: float) -> None:
    context = mp.get_context("spawn")
    results = context.Queue()
    clients = [context.Process(target=http_client,
                               args=(group.host, group.port, path, HTTP_CONNECTIONS // 2, seconds, results))
               for _ in range(2)]

    def run() -> int:
        for client in clients:
            client.start()
        total: int = sum(results.get(timeout=seconds + 30) for _ in clients)
        for client in clients:
            client.join(10)
        return total

    total, cpu = cpu_percent_during(group.pids[0], run)
    print(f"http   requests/s {path:<12} python client x2: {total / seconds:>9,.0f}   "
          f"{per_cpu_second(total, seconds, cpu)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections for the memory figure")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 60.0)
    print(f"{os.cpu_count()} cores; one server process each; loopback", flush=True)

    echo = ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1))
    try:
        for client_processes in (1, 2):
            echo_throughput(echo, client_processes, seconds)
    finally:
        echo.stop()
    echo = ServerGroup.start(ServerSpec(name="echo", kind="echo", host="127.0.0.1", port=0, workers=1))
    try:
        echo_idle_memory(echo, min(args.idle, 50_000))
    finally:
        echo.stop()

    http = ServerGroup.start(ServerSpec(name="http", kind="http", host="127.0.0.1", port=0, workers=1))
    try:
        for path in HTTP_PATHS:
            if shutil.which("wrk"):
                http_with_wrk(http, path, seconds)
            else:
                http_with_python(http, path, seconds)
    finally:
        counts = http.stop()
    print(f"http   server counted {counts['requests']:,} requests", flush=True)


if __name__ == "__main__":
    main()
