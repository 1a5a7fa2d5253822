"""Resource sampling of real child processes, the verdicts, and the server cost figures."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from loadtest.execution.resources import (
    CONTROLLER_ROLE,
    MACHINE_ROLE,
    ResourceSampler,
    ResourcesWriter,
    Sample,
    cpu_seconds_per_1000_requests,
    rss_per_connection,
    worker_role,
)
from loadtest.core.run_files import RESOURCES_HEADER
from loadtest.core.verdicts import NO_CONDITION_FOUND, Verdicts

FAST = 0.2  # sampling interval of these tests, seconds
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
IDLE = "import sys; sys.stdin.read()"  # sleeps until its stdin closes
READY = "print('ready', flush=True)\n"  # a child's start-up is over
BUSY_CPU_S = 0.4  # CPU seconds the busy child must have used while sampled
# Holds `n` loopback TCP connections (both ends), a UDP, a netlink and a unix socket pair;
# one line on stdin opens `more` connections, and says so.
SOCKETS = r"""
import socket, sys
n, more = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
netlink.bind((0, 0))
held = [udp, netlink, *socket.socketpair()]
def connect(count):
    for _ in range(count):
        held.append(socket.create_connection(listener.getsockname()))
        held.append(listener.accept()[0])
connect(n)
print("ready", flush=True)
sys.stdin.readline()
connect(more)
print("more", flush=True)
sys.stdin.read()
"""


@contextmanager
def child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        yield p
    finally:
        for stream in (p.stdin, p.stdout):
            if stream:
                stream.close()
        p.kill()
        p.wait(10)


def collect(sampler_rows: list[Sample], role: str) -> list[Sample]:
    return [r for r in sampler_rows if r.role == role]


def test_busy_child_shows_high_cpu_and_idle_child_low() -> None:
    # Judged by CPU seconds, not a fixed share of a core: on a loaded machine a spinning child gets what
    # the scheduler gives it (68% of a core with two CPU burners beside it, 5% at a load average of 11).
    # So the sampling lasts until the busy child has used BUSY_CPU_S, however long that takes; both
    # children say "ready" first, so the interpreter's start-up is not in the idle child's windows.
    rows: list[Sample] = []
    with child(READY + BUSY.format(seconds=60.0)) as busy, child(READY + IDLE) as idle:
        assert busy.stdout and idle.stdout and busy.stdout.readline() == idle.stdout.readline() == "ready\n"
        sampler = ResourceSampler(0.25, on_sample=rows.extend)
        assert sampler.register(worker_role(0), busy.pid)
        assert sampler.register(worker_role(1), idle.pid)
        sampler.start()
        deadline = time.monotonic() + 40
        while len(collect(rows, "worker-0")) < 6 or (collect(rows, "worker-0")[-1].cpu_seconds
                                                     - collect(rows, "worker-0")[0].cpu_seconds) < BUSY_CPU_S:
            assert time.monotonic() < deadline, "the busy child got less than 1% of a core for 40 s"
            time.sleep(0.1)
        sampler.stop()
    busy_rows, idle_rows = collect(rows, "worker-0"), collect(rows, "worker-1")
    for series in (busy_rows, idle_rows):  # each % is the CPU seconds of its own window, over that window
        for before, after in zip(series, series[1:]):
            assert after.cpu_percent == pytest.approx(
                100 * (after.cpu_seconds - before.cpu_seconds) / after.window_s, abs=0.5)
    busy_used = busy_rows[-1].cpu_seconds - busy_rows[0].cpu_seconds
    idle_used = idle_rows[-1].cpu_seconds - idle_rows[0].cpu_seconds
    assert busy_used >= BUSY_CPU_S and idle_used <= 0.03, (busy_used, idle_used)  # 0.03: three clock ticks
    assert max(r.cpu_percent for r in idle_rows) < 10
    busy_mean = sum(r.cpu_percent for r in busy_rows[1:]) / (len(busy_rows) - 1)
    idle_mean = sum(r.cpu_percent for r in idle_rows[1:]) / (len(idle_rows) - 1)
    assert busy_mean > 10 * idle_mean and busy_mean > 1, (busy_mean, idle_mean)
    assert sampler.callback_error is None


def test_resources_csv_header_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "resources.csv"
    writer = ResourcesWriter(path)
    with child(IDLE) as idle:
        sampler = ResourceSampler(FAST, on_sample=writer.write)
        sampler.register(CONTROLLER_ROLE, os.getpid())
        sampler.register(worker_role(0), idle.pid)
        sampler.start()
        time.sleep(0.5)
        sampler.stop()
    writer.close()
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == RESOURCES_HEADER
    rows = [dict(zip(RESOURCES_HEADER, r)) for r in table[1:]]
    assert all(len(r) == len(RESOURCES_HEADER) for r in table)
    assert {r["role"] for r in rows} == {CONTROLLER_ROLE, "worker-0", MACHINE_ROLE}
    worker = [r for r in rows if r["role"] == "worker-0"]
    assert worker and all(r["pid"] == str(idle.pid) for r in worker)
    for r in worker:
        assert int(r["rss_bytes"]) > 1_000_000 and int(r["threads"]) >= 1 and int(r["fds"]) >= 3
        assert int(r["tcp_connections"]) == 0 and float(r["elapsed_s"]) > 0
        assert float(r["cpu_user_s"]) >= 0 and int(r["ctx_switches_voluntary"]) >= 0
        assert r["cpu_per_core"] == ""
    machine = [r for r in rows if r["role"] == MACHINE_ROLE]
    assert machine and all(len(r["cpu_per_core"].split(";")) == psutil.cpu_count() for r in machine)
    assert all(0 <= float(r["cpu_percent"]) <= 100 and int(r["memory_used_bytes"]) > 0 for r in machine)
    assert all(r["pid"] == "" and r["rss_bytes"] == "" for r in machine)
    assert all(int(r["net_lo_bytes_sent"]) <= int(r["net_bytes_sent"]) for r in machine)
    last = sampler.last(MACHINE_ROLE)
    assert last is not None and len(last.cpu_per_core) == psutil.cpu_count()


def test_cpu_seconds_agree_with_the_operating_system() -> None:
    with child(BUSY.format(seconds=1.5)) as busy:
        sampler = ResourceSampler(FAST)
        sampler.register(worker_role(0), busy.pid)
        sampler.start()
        time.sleep(0.7)
        # While it runs: psutil's own accounting read just before and just after the sample brackets it
        # (a preempted test would let the child spin on between a read and the sample).
        before = psutil.Process(busy.pid).cpu_times()
        live = sampler.sample_now()
        after = psutil.Process(busy.pid).cpu_times()
        sampled = next(r for r in live if r.role == "worker-0").cpu_seconds
        assert before.user + before.system <= sampled <= after.user + after.system

        os.waitid(os.P_PID, busy.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
        sampler.unregister(busy.pid)  # its last sample: a zombie still holds its final CPU times
        last = sampler.last("worker-0")
        _, _, usage = os.wait4(busy.pid, 0)  # the kernel's account at reaping, microseconds
        sampler.stop()
    assert last is not None and last.status == "zombie"
    # /proc counts in clock ticks (10 ms), the kernel's rusage in microseconds: two ticks apart at most.
    assert sampler.cpu_seconds("worker-0") == pytest.approx(usage.ru_utime + usage.ru_stime, rel=0.05, abs=0.02)
    assert sampler.cpu_seconds("worker") == sampler.cpu_seconds("worker-0")
    assert 0 < sampler.cpu_seconds("worker-0", during=True) <= sampler.cpu_seconds("worker-0")


def test_a_process_that_exits_mid_sampling_keeps_its_last_sample() -> None:
    rows: list[Sample] = []
    sampler = ResourceSampler(FAST, on_sample=rows.extend)
    assert not sampler.register(worker_role(9), 2**22 + 12345)  # no such process
    sampler.unregister(2**22 + 12345)  # nothing to do, nothing raised
    with child(IDLE) as idle, child(BUSY.format(seconds=0.3)) as short:
        sampler.register(CONTROLLER_ROLE, os.getpid())
        sampler.register(worker_role(0), short.pid)
        sampler.register(worker_role(1), idle.pid)
        sampler.start()
        short.wait(10)  # reaped: the sampler loses sight of it between two samples
        time.sleep(0.8)
        assert sampler._thread.is_alive()
        sampler.stop()
    short_rows = collect(rows, "worker-0")
    assert short_rows and short_rows[-1].elapsed_s < collect(rows, "worker-1")[-1].elapsed_s
    assert sampler.cpu_seconds("worker-0") == short_rows[-1].cpu_seconds > 0
    assert sampler.peak_rss("worker-0") > 0
    assert len(collect(rows, MACHINE_ROLE)) >= 4 and sampler.callback_error is None


def test_tcp_connections_are_counted_exactly_then_estimated_within_the_budget() -> None:
    with child(SOCKETS, "20", "15") as holder:
        assert holder.stdout and holder.stdin
        assert holder.stdout.readline() == "ready\n"
        exact = ResourceSampler(FAST, connections_budget=1.0)
        exact.register("server-echo-0", holder.pid)
        row = exact.sample_now()[0]
        assert row.tcp_connections == len(psutil.Process(holder.pid).net_connections(kind="tcp")) == 41
        assert row.connections_age_s == 0.0

        frugal = ResourceSampler(FAST, connections_budget=0.0)  # counts once, then only estimates
        frugal.register("server-echo-0", holder.pid)
        assert frugal.sample_now()[0].tcp_connections == 41
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "more\n"
        time.sleep(0.05)
        row = frugal.sample_now()[0]
        assert row.tcp_connections == 71 and row.connections_age_s is not None and row.connections_age_s > 0
        assert exact.sample_now()[0].tcp_connections == 71
    assert frugal.peak_connections("server-echo-0") == frugal.peak_connections("server-echo") == 71


def samples(role: str, percents: list[float], start: float = 0.0) -> list[Sample]:
    return [Sample(role=role, elapsed_s=start + i + 1.0, cpu_percent=p, window_s=1.0) for i, p in enumerate(percents)]


def test_a_worker_saturated_for_4_s_is_one_verdict_said_at_once() -> None:
    v = Verdicts()
    feed = samples("worker-2", [50, 95, 95, 95, 95, 40, 60])
    said = []
    for s in feed:
        v.add([s, Sample(role="worker-0", elapsed_s=s.elapsed_s, cpu_percent=30)])
        said.append(v.new())
    assert [len(n) for n in said] == [0, 0, 0, 1, 0, 0, 0]  # at the third second above 90%
    assert said[3][0]["kind"] == "worker_saturated" and "so far" in said[3][0]["what"]
    (verdict,) = v.summary()
    assert verdict["role"] == "worker-2" and verdict["start_s"] == 1.0
    assert verdict["duration_s"] == pytest.approx(4.0) and verdict["peak"] == 95
    assert set(verdict) == {"kind", "what", "role", "start_s", "duration_s", "peak"}
    assert "worker-2 was above 90% CPU for 4.0 s" in verdict["what"]


def test_short_saturation_is_no_verdict() -> None:
    v = Verdicts()
    v.add(samples("worker-0", [95, 95, 20, 95, 95, 20]))
    v.add(samples(MACHINE_ROLE, [99, 99, 50]))
    assert v.new() == [] and v.summary() == []
    assert NO_CONDITION_FOUND.startswith("No condition found")


def test_ongoing_saturation_is_closed_at_the_end_and_machine_saturation_is_found() -> None:
    v = Verdicts()
    v.add(samples(MACHINE_ROLE, [80, 96, 99, 97, 98, 96]))
    v.add(samples("worker-1", [91, 92, 99]))  # still saturated at the last sample
    kinds = sorted(x["kind"] for x in v.summary())
    assert kinds == ["machine_saturated", "worker_saturated"]
    machine = next(x for x in v.summary() if x["kind"] == "machine_saturated")
    assert machine["role"] == MACHINE_ROLE and machine["duration_s"] == pytest.approx(5.0) and machine["peak"] == 99


def test_behind_schedule_notes_make_one_verdict_per_episode() -> None:
    v = Verdicts()
    for second in range(3, 7):
        v.note_behind(1, float(second), 0.1 * second)
    assert [x["kind"] for x in v.new()] == ["behind_schedule"]
    v.note_behind(1, 7.0, 0.0)  # on time again
    v.note_behind(1, 20.0, 0.05)
    episodes = v.summary()
    assert [(x["role"], x["start_s"], x["duration_s"]) for x in episodes] == [("worker-1", 3.0, 3.0),
                                                                              ("worker-1", 20.0, 0.0)]
    assert episodes[0]["peak"] == pytest.approx(0.6)


def test_server_cost_figures() -> None:
    assert cpu_seconds_per_1000_requests(2.5, 50_000) == pytest.approx(0.05)
    assert cpu_seconds_per_1000_requests(1.0, 0) is None
    assert rss_per_connection(60_000_000, 10_000, baseline_rss_bytes=20_000_000) == pytest.approx(4000)
    assert rss_per_connection(20_000_000, 0) is None
    assert rss_per_connection(10, 5, baseline_rss_bytes=20) == 0.0


def test_a_resources_csv_that_cannot_be_written_is_kept_as_an_error_not_raised_twice(tmp_path: Path) -> None:
    full = tmp_path / "resources.csv"
    full.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    writer = ResourcesWriter(full)  # opening it works; the header goes out with the first rows
    sampler = ResourceSampler(FAST, on_sample=writer.write)
    sampler.register(CONTROLLER_ROLE, os.getpid())
    sampler.sample_now()
    sampler.sample_now()  # the sampling goes on after a failed write; the writer does not try again
    assert sampler.samples == 2 and sampler.last(CONTROLLER_ROLE) is not None
    assert isinstance(sampler.callback_error, OSError) and sampler.callback_error.errno == errno.ENOSPC
    assert writer.error is sampler.callback_error
    writer.close()  # what the failed write left buffered is dropped, not raised at the end of the run
    assert writer.error is sampler.callback_error


def test_a_run_too_short_for_a_sample_still_writes_the_header(tmp_path: Path) -> None:
    writer = ResourcesWriter(tmp_path / "resources.csv")
    writer.close()
    writer.close()  # the controller stops its monitor again when a run fails: no error the second time
    assert (tmp_path / "resources.csv").read_text().splitlines() == [",".join(RESOURCES_HEADER)]
    assert writer.error is None
