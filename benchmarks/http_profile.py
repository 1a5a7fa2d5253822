"""Generator CPU per HTTP request, and where a worker's user time goes.

    .venv/bin/python benchmarks/http_profile.py [--requests 200000] [--concurrency 50] [--profile]

Runs the fast engine exactly as a worker does (patched process, one gevent
pool of closed-model virtual users, one `Deadlines` scan, every request
recorded in the target's histogram) for a fixed number of requests against
nginx on loopback (the embedded HTTP server without nginx), in this one
process. It prints this process's user and system CPU per request, which is
far less sensitive than requests/s to other work on the machine. `--parts`
then times each piece of a request on its own (parsing, recording, the
request timer, a recv that finds nothing, a park on the hub) and leaves the
rest of the user time to the Python glue and the hub's loop. `--profile` runs
the same load under cProfile (CPU clock) and prints its top rows. The server
runs in its own process and is not counted.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from http_vs_peers import Target  # noqa: E402
from loadtest.model.config import HttpTarget  # noqa: E402
from loadtest.engine.protocols import Deadlines  # noqa: E402
from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints  # noqa: E402
from loadtest.engine.protocols.http_hub import HttpHub  # noqa: E402
from loadtest.core.recorder import TargetRecorder  # noqa: E402
from loadtest.engine.budget import Budget  # noqa: E402
from loadtest.engine.virtual_users import virtual_user  # noqa: E402

def http_target(url: str) -> HttpTarget:
    from loadtest.model.config import parse_config

    cfg = parse_config({"duration": "1s", "workers": 1, "targets": [{"name": "home", "url": url, "concurrency": 1}]})
    return cfg.targets[0]  # type: ignore[return-value]


faults = [0]  # minor page faults in the last run: a buffer mapped and unmapped per read shows here


def run(url: str, requests: int, concurrency: int, engine: str = "hub") -> tuple[int, float, float, float,
                                                                             TargetRecorder]:
    """Send `requests` requests with `concurrency` users; (ended, user s, system s, wall s, recorder).
    `engine` "hub": the hub-callback driver (`HttpHub`, what a worker runs for a plain http:// target);
    "greenlets": a greenlet per user on `HttpSession` (HTTPS, think time, several origins)."""
    target = http_target(url)
    recorder = TargetRecorder(0)
    deadlines = Deadlines()
    endpoints = build_endpoints(target, [url])
    budget = Budget(requests)

    def make() -> HttpSession:
        return HttpSession(target, endpoints, recorder, None, None, deadlines)

    pool = Pool()
    scan = gevent.spawn(deadlines.scan)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if engine == "hub":
        pool.spawn(HttpHub(target, endpoints, recorder, budget, deadlines).drive, pool, concurrency, None)
    else:
        for _ in range(concurrency):
            pool.spawn(virtual_user, make, budget)
    pool.join(timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    scan.kill()
    faults[0] = after.ru_minflt - before.ru_minflt
    return (recorder.requests, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, wall, recorder)


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """CPU µs (user + system) per call of `fn`, over `n` calls."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def parts(url: str, n: int = 200_000) -> list[tuple[str, float]]:
    """What each piece of a request costs on its own, in CPU µs, measured in isolation in this process."""
    import socket

    import httptools
    from gevent import getcurrent
    from gevent.hub import get_hub

    from loadtest.engine.protocols import RequestTimer
    from loadtest.engine.protocols.http_fast import BodyCounter

    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(build_endpoints(http_target(url), [url])[0].request)
        time.sleep(0.2)
        reply = s.recv(65536)  # one real response of the target, head and body
    response = BodyCounter()

    def parse() -> None:
        response.parser = httptools.HttpResponseParser(response)
        response.parser.feed_data(reply)

    parser_alloc = cpu_us(lambda: httptools.HttpResponseParser(response), n)
    recorder = TargetRecorder(0)
    deadlines = Deadlines()
    timer = RequestTimer(deadlines)

    def timing() -> None:
        timer.start(time.perf_counter_ns() + 1_000_000_000)
        timer.stop()
        time.perf_counter_ns()

    a, b = socket.socketpair()
    a.setblocking(False)

    def empty_recv() -> None:
        try:
            a.recv(65536)
        except BlockingIOError:
            pass

    hub = get_hub()
    me = getcurrent()

    def park() -> None:
        hub.loop.run_callback(me.switch)
        hub.switch()

    out = [
        ("parse one response (httptools, 3 callbacks)", cpu_us(parse, n) - parser_alloc),
        ("record a success (counters + histogram)", cpu_us(lambda: recorder.success(123_456, 200, 60, 12), n)),
        ("request timer start/stop + clock reads", cpu_us(timing, n)),
        ("a recv that finds nothing (syscall + BlockingIOError)", cpu_us(empty_recv, n)),
        ("park on the hub and be switched back (no I/O)", cpu_us(park, n)),
    ]
    a.close()
    b.close()
    timer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="requests in all (default 200000)")
    parser.add_argument("--concurrency", type=int, default=50, help="virtual users (default 50)")
    parser.add_argument("--embedded", action="store_true", help="the embedded server even if nginx is installed")
    parser.add_argument("--profile", action="store_true", help="run under cProfile and print the breakdown")
    parser.add_argument("--parts", action="store_true", help="time each piece of a request on its own")
    parser.add_argument("--top", type=int, default=25, help="profile rows to print (default 25)")
    parser.add_argument("--unique", action="store_true",
                        help="nginx answers each request with its own id: no two responses are the same bytes")
    parser.add_argument("--engine", choices=("hub", "greenlets"), default="hub",
                        help="hub: the hub-callback driver (default); greenlets: a greenlet per user")
    args = parser.parse_args()
    if not 1_000 <= args.requests <= 50_000_000:
        parser.error("--requests must be between 1000 and 50000000")
    if not 1 <= args.concurrency <= 10_000:
        parser.error("--concurrency must be between 1 and 10000")
    with tempfile.TemporaryDirectory(prefix="http-profile-") as tmp:
        target = Target(Path(tmp), prefer_nginx=not args.embedded, unique=args.unique)
        try:
            run(target.url, 2_000, args.concurrency, args.engine)  # warm up: connections, caches
            prof = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall: the machine is shared
            if prof is not None:
                prof.enable()
            ended, user, system, wall, recorder = run(target.url, args.requests, args.concurrency, args.engine)
            if prof is not None:
                prof.disable()
            pieces = parts(target.url) if args.parts else []
        finally:
            target.stop()
    failed = sum(recorder.failures.values())
    print(f"target: {target.name}; {ended} requests ({failed} failed, {recorder.latency.count} in the histogram), "
          f"{args.concurrency} users ({args.engine}), {wall:.2f} s, {ended / wall:,.0f} req/s{' (under cProfile)' if prof else ''}")
    print(f"generator CPU per request: {(user + system) / ended * 1e6:.2f} µs "
          f"(user {user / ended * 1e6:.2f} µs, system {system / ended * 1e6:.2f} µs); "
          f"{faults[0] / ended:.2f} page faults per request; pid {os.getpid()}")
    if pieces:
        print("\nwhat each piece costs on its own (CPU µs, in isolation):")
        for name, us in pieces:
            print(f"  {us:6.2f}  {name}")
        if prof is None:  # under cProfile the user time is mostly the profiler's
            print(f"  {user / ended * 1e6 - sum(us for n, us in pieces if 'recv' not in n):6.2f}  the rest of the "
                  f"user time: Python glue (exchange, the read loop, the user loop), the hub's loop and epoll "
                  f"bookkeeping")

    if prof is not None:
        print("\ncProfile, own CPU time (it cannot see greenlet switches or the hub's C loop: their time lands in "
              "whichever Python frame was running; --parts is the fairer breakdown)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
