"""Resource sampling: every process of a run, and the machine, once a second.

`ResourceSampler` is a plain thread in the controller (never gevent). Each
`interval` it reads, for every registered process, CPU (user and system
seconds as the OS accounts them, and % of one core over the last interval),
RSS, threads, open fds, TCP connections and context switches, plus one
`machine` row: CPU per core, memory in use, network bytes. Rows go to an
`on_sample` callback as they come (the controller appends resources.csv);
the sampler keeps only running aggregates, so memory stays flat. An error
raised by the callback (a full disk) does not stop the sampling: the first
one is kept in `callback_error` for the run to report.

Cost. Everything but the connection count is O(processes): a few /proc reads
each (the fd count is the size of /proc/<pid>/fd, O(1) on Linux >= 6.2).
Counting a process's TCP connections means a stat per open fd, so its cost
grows with the sockets the process holds: `benchmarks/sampling_cost.py
--sockets 14000 --workers 2` measured 59 ms of CPU for a first sample whose
server held 14,000 sockets, and 177 ms for one psutil `net_connections` of
that server (2 cores). So exact counts run under a CPU budget
(`connections_budget`, a share of one core, measured with `thread_time`):
the stalest process is counted first, and a process not counted in a sample
is estimated as its last count plus the change in its open fds since, which
in a load test are sockets. `connections_age_s` says how old the exact count
behind each figure is (0 when counted in that sample).

    sampler = ResourceSampler(on_sample=writer.write)
    sampler.register(CONTROLLER_ROLE, os.getpid())
    sampler.start()
    ...
    sampler.stop()                      # joins, takes one final sample
    sampler.cpu_seconds("worker")       # all workers; "worker-0" for one
"""

from __future__ import annotations

import csv
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtest.core.run_files import RESOURCES_HEADER
from loadtest.core.samples import (  # noqa: F401 - the sampler's rows and roles, imported from here too
    CONTROLLER_ROLE, DEFAULT_SAMPLE_INTERVAL_S, MACHINE_ROLE, MIN_SAMPLE_INTERVAL_S, RoleTotals, Sample, _keys,
    server_role, watch_role, worker_role)

DEFAULT_CONNECTIONS_BUDGET = 0.003  # share of one core for exact connection counts
CONNECTIONS_CREDIT_CAP_S = 0.05  # unused budget saved up, at most (CPU seconds)

@dataclass
class _Tracked:
    role: str
    pid: int
    process: psutil.Process
    cpu_at_register: float
    last_at: float  # monotonic time of the previous CPU reading
    last_cpu: float
    active: bool = True
    last: Sample | None = None
    first_rss: int | None = None
    peak_rss: int = 0
    peak_connections: int = 0
    connections: int | None = None  # last exact count ...
    counted_at: float = 0.0  # ... when (monotonic) ...
    fds_at_count: int | None = None  # ... and the open fds then


class ResourceSampler:
    """Samples every registered process and the machine each `interval`, in a daemon thread.

    See the module doc. Every method is safe to call from the controller's thread.
    """

    def __init__(self, interval: float = DEFAULT_SAMPLE_INTERVAL_S,
                 on_sample: Callable[[list[Sample]], None] | None = None,
                 connections_budget: float = DEFAULT_CONNECTIONS_BUDGET) -> None:
        self.interval = interval
        self.on_sample = on_sample
        self.connections_budget = connections_budget
        self.own_cpu_s = 0.0  # CPU time spent sampling, callbacks included
        self.samples = 0  # rounds of every process and the machine
        self.callback_error: BaseException | None = None  # the first error on_sample raised; read by RunMonitor
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._tracked: dict[int, _Tracked] = {}
        self._group_peaks: dict[str, tuple[int, int]] = {}  # group: (peak rss sum, peak connections sum)
        self._last_machine: Sample | None = None
        self._credit = 0.0
        self._credit_at = time.monotonic()
        self._fd_dir_size = _fd_dir_size_counts()
        self._t0 = time.monotonic()
        self._last_tick = self._t0
        self._thread = threading.Thread(target=self._run, name="loadtest-resources", daemon=True)
        self._last_cores: list[Any] = psutil.cpu_times(percpu=True)
        self._net_base = _net_bytes()

    # -- registry ---------------------------------------------------------------------------------

    def register(self, role: str, pid: int) -> bool:
        """Sample `pid` as `role` from now on; False if there is no such process."""
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        now = time.monotonic()
        cpu = times.user + times.system
        with self._lock:
            self._tracked[pid] = _Tracked(role, pid, process, cpu, now, cpu)
        return True

    def unregister(self, pid: int) -> None:
        """Take `pid`'s last sample now, then stop sampling it.

        Call it once the process has exited but before it is reaped (joined):
        the OS still holds the exact final CPU times of a zombie.
        """
        with self._lock:
            t = self._tracked.get(pid)
            if t is None or not t.active:
                return
            self._tick([t], machine=False)
            t.active = False

    def start(self) -> None:
        """Start sampling; elapsed seconds count from here."""
        with self._lock:
            self._t0 = self._last_tick = self._credit_at = time.monotonic()
            self._last_cores = psutil.cpu_times(percpu=True)
            self._net_base = _net_bytes()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one final sample of every process still sampled."""
        self._stop_event.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        k = 1
        while not self._stop_event.wait(max(0.0, self._t0 + k * self.interval - time.monotonic())):
            self.sample_now()
            k = max(k + 1, int((time.monotonic() - self._t0) / self.interval) + 1)  # skip missed slots
        self.sample_now()

    def sample_now(self) -> list[Sample]:
        """Sample every process and the machine once (the thread calls this each interval)."""
        with self._lock:
            return self._tick([t for t in self._tracked.values() if t.active], machine=True)

    # -- aggregates ---------------------------------------------------------------------------------

    def totals(self, role: str) -> RoleTotals:
        """Figures of a role ("worker-0"), or of a group ("worker": every "worker-N")."""
        out = RoleTotals(role)
        with self._lock:
            members = [t for t in self._tracked.values() if role in _keys(t.role)]
            for t in members:
                out.pids.append(t.pid)
                out.cpu_at_register_s += t.cpu_at_register
                if t.last is not None:
                    out.cpu_user_s += t.last.cpu_user_s
                    out.cpu_system_s += t.last.cpu_system_s
                out.first_rss_bytes += t.first_rss or 0
            if len(members) == 1 and members[0].role == role:
                out.peak_rss_bytes, out.peak_connections = members[0].peak_rss, members[0].peak_connections
            else:
                out.peak_rss_bytes, out.peak_connections = self._group_peaks.get(role, (0, 0))
        return out

    def cpu_seconds(self, role: str, *, during: bool = False) -> float:
        """User + system CPU seconds at the last sample; `during`: only since the process was registered."""
        t = self.totals(role)
        return t.cpu_seconds - (t.cpu_at_register_s if during else 0.0)

    def peak_rss(self, role: str) -> int:
        return self.totals(role).peak_rss_bytes

    def peak_connections(self, role: str) -> int:
        return self.totals(role).peak_connections

    def last(self, role: str) -> Sample | None:
        """The latest sample of a role (of its newest process), or of the machine."""
        with self._lock:
            if role == MACHINE_ROLE:
                return self._last_machine
            found = [t.last for t in self._tracked.values() if t.role == role and t.last is not None]
        return found[-1] if found else None

    # -- one sample ---------------------------------------------------------------------------------

    def _tick(self, tracked: list[_Tracked], machine: bool) -> list[Sample]:
        began = time.thread_time()
        now = time.monotonic()
        stamp = time.time()
        elapsed = now - self._t0
        read = [(t, _read_process(t.process, self._fd_dir_size)) for t in tracked]
        self._count_connections([(t, r) for t, r in read if r is not None and r["status"] != "zombie"], now)
        rows: list[Sample] = []
        sums: dict[str, list[int]] = {}
        for t, r in read:
            if r is None:  # gone: its last sample stays
                t.active = False
                continue
            cpu = r["cpu_user"] + r["cpu_system"]
            window = max(now - t.last_at, 1e-9)
            connections, age = _connections_now(t, r["fds"], now)
            row = Sample(
                role=t.role, elapsed_s=elapsed, cpu_percent=max(0.0, 100.0 * (cpu - t.last_cpu) / window),
                window_s=window, timestamp=stamp, pid=t.pid, status=r["status"],
                cpu_user_s=r["cpu_user"], cpu_system_s=r["cpu_system"], rss_bytes=r["rss"], threads=r["threads"],
                fds=r["fds"], tcp_connections=connections, connections_age_s=age,
                ctx_switches_voluntary=r["ctx_voluntary"], ctx_switches_involuntary=r["ctx_involuntary"])
            t.last, t.last_at, t.last_cpu = row, now, cpu
            if r["status"] != "zombie":  # a zombie's memory and fds read as zero
                if t.first_rss is None and r["rss"] is not None:
                    t.first_rss = r["rss"]
                t.peak_rss = max(t.peak_rss, r["rss"] or 0)
                t.peak_connections = max(t.peak_connections, connections or 0)
                for key in _keys(t.role)[1:]:
                    s = sums.setdefault(key, [0, 0])
                    s[0] += r["rss"] or 0
                    s[1] += connections or 0
            rows.append(row)
        for key, (rss, conns) in sums.items():
            peak_rss, peak_conns = self._group_peaks.get(key, (0, 0))
            self._group_peaks[key] = (max(peak_rss, rss), max(peak_conns, conns))
        if machine:
            self._last_machine = self._machine(elapsed, stamp, now)
            rows.append(self._last_machine)
            self._last_tick = now
            self.samples += 1
        if self.on_sample is not None and rows:
            try:
                self.on_sample(rows)
            except Exception as error:  # noqa: BLE001 -- a full disk must not stop the sampling; kept for the controller
                self.callback_error = self.callback_error or error
        self.own_cpu_s += time.thread_time() - began
        return rows

    def _count_connections(self, candidates: list[tuple[_Tracked, dict[str, Any]]], now: float) -> None:
        """Exact counts within the budget, stalest process first; a never-counted one always."""
        self._credit = min(self._credit + (now - self._credit_at) * self.connections_budget,
                           max(CONNECTIONS_CREDIT_CAP_S, self.connections_budget * self.interval))
        self._credit_at = now
        order = sorted(candidates, key=lambda c: (c[0].connections is not None, c[0].counted_at))
        not_tcp: set[int] | None = None
        for t, r in order:
            if t.connections is not None and self._credit <= 0:
                break
            began = time.thread_time()
            sockets = _socket_inodes(t.pid)
            if sockets is not None:
                if sockets and not_tcp is None:
                    not_tcp = _non_tcp_inodes()
                t.connections = len(sockets - (not_tcp or set()))
                t.counted_at, t.fds_at_count = now, r["fds"]
            self._credit -= time.thread_time() - began

    def _machine(self, elapsed: float, stamp: float, now: float) -> Sample:
        cores = psutil.cpu_times(percpu=True)
        per_core = [_busy_percent(a, b) for a, b in zip(self._last_cores, cores)]
        self._last_cores = cores
        vm = psutil.virtual_memory()
        lo_sent, lo_recv, sent, recv = (a - b for a, b in zip(_net_bytes(), self._net_base))
        return Sample(role=MACHINE_ROLE, elapsed_s=elapsed, window_s=now - self._last_tick, timestamp=stamp,
                      cpu_percent=sum(per_core) / len(per_core) if per_core else 0.0,
                      cpu_per_core=tuple(per_core), memory_used_bytes=vm.total - vm.available,
                      net_lo_bytes_sent=lo_sent, net_lo_bytes_recv=lo_recv, net_bytes_sent=sent, net_bytes_recv=recv)


def _read_process(process: psutil.Process, fd_dir_size: bool) -> dict[str, Any] | None:
    """One process's figures, None if it is gone; fields it may not read are None.

    A zombie (exited, not yet reaped) still has its final CPU times: that is
    what makes a last sample taken between exit and reaping exact.
    """
    out: dict[str, Any] = {}
    try:
        with process.oneshot():
            times = process.cpu_times()
            out.update(cpu_user=times.user, cpu_system=times.system, status=process.status())
            for name, read in (("rss", lambda: process.memory_info().rss), ("threads", process.num_threads),
                               ("ctx", process.num_ctx_switches), ("fds", lambda: _open_fds(process, fd_dir_size))):
                try:
                    out[name] = read()
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    out[name] = None
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None
    ctx = out.pop("ctx")
    out["ctx_voluntary"], out["ctx_involuntary"] = (ctx.voluntary, ctx.involuntary) if ctx else (None, None)
    return out


def _open_fds(process: psutil.Process, fd_dir_size: bool) -> int:
    if not fd_dir_size:
        return int(process.num_fds())
    try:  # Linux >= 6.2: the directory's size is the count, no listing
        return os.stat(f"/proc/{process.pid}/fd").st_size
    except PermissionError:
        raise psutil.AccessDenied(process.pid) from None
    except FileNotFoundError:
        raise psutil.NoSuchProcess(process.pid) from None


def _fd_dir_size_counts() -> bool:
    try:
        return os.stat("/proc/self/fd").st_size > 0
    except OSError:
        return False


def _socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets `pid` holds open; None if they cannot be read."""
    try:
        dir_fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        inodes = set()
        for name in os.listdir(dir_fd):
            try:
                st = os.stat(name, dir_fd=dir_fd)
            except OSError:  # closed meanwhile
                continue
            if stat.S_ISSOCK(st.st_mode):
                inodes.add(st.st_ino)
        return inodes
    except OSError:
        return None
    finally:
        os.close(dir_fd)


def _non_tcp_inodes() -> set[int]:
    """Inodes of the sockets that are not TCP: short lists, unlike the TCP tables.

    A socket that no table lists (a UDP socket never bound) would count as TCP.
    """
    inodes: set[int] = set()
    for path, column in (("/proc/net/unix", 6), ("/proc/net/udp", 9), ("/proc/net/udp6", 9),
                         ("/proc/net/raw", 9), ("/proc/net/raw6", 9), ("/proc/net/netlink", 9)):
        try:
            with open(path, "rb") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > column:
                        inodes.add(int(fields[column]))
        except (OSError, ValueError):
            continue
    return inodes


def _connections_now(t: _Tracked, fds: int | None, now: float) -> tuple[int | None, float | None]:
    """The exact count if taken now, else the last one moved by the change in open fds."""
    if t.connections is None:
        return None, None
    if t.counted_at == now:
        return t.connections, 0.0
    moved = fds - t.fds_at_count if fds is not None and t.fds_at_count is not None else 0
    return max(0, t.connections + moved), now - t.counted_at


def _busy_percent(before: Any, after: Any) -> float:
    """A core's busy share between two psutil cpu_times readings (guest time is inside user)."""
    def split(c: Any) -> tuple[float, float]:
        total = sum(c) - getattr(c, "guest", 0.0) - getattr(c, "guest_nice", 0.0)
        return total, c.idle + getattr(c, "iowait", 0.0)

    total_a, idle_a = split(before)
    total_b, idle_b = split(after)
    span = total_b - total_a
    return 0.0 if span <= 0 else max(0.0, min(100.0, 100.0 * (span - (idle_b - idle_a)) / span))


def _net_bytes() -> tuple[int, int, int, int]:
    nics = psutil.net_io_counters(pernic=True)
    lo = nics.get("lo")
    return (lo.bytes_sent if lo else 0, lo.bytes_recv if lo else 0,
            sum(n.bytes_sent for n in nics.values()), sum(n.bytes_recv for n in nics.values()))


class ResourcesWriter:
    """resources.csv: appended and flushed at each sample; its `write` is an `on_sample` callback.

    The header goes out with the first rows, so a file that cannot be written fails in `write` (which
    raises, for the sampler to keep) rather than while the run is being set up. After a failed write the
    file is left as it is: later rows are not appended after a gap. `error` is the first failure.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 -- open for the whole run
        self._csv = csv.writer(self._file)
        self._header_due = True

    def write(self, samples: list[Sample]) -> None:
        if self.error is not None:
            return
        try:
            if self._header_due:
                self._csv.writerow(RESOURCES_HEADER)
                self._header_due = False
            self._csv.writerows(s.csv_row() for s in samples)
            self._file.flush()
        except OSError as e:
            self.error = e
            raise

    def close(self) -> None:
        if self._file.closed:  # the controller stops its monitor again when the run fails
            return
        try:
            if self._header_due and self.error is None:  # a run too short for one sample still gets its header
                self._csv.writerow(RESOURCES_HEADER)
            self._file.close()
        except OSError as e:  # flushing what a failed write left buffered; the file is closed all the same
            self.error = self.error or e


# -- server cost ---------------------------------------------------------------------------------


def cpu_seconds_per_1000_requests(cpu_seconds: float, requests: int) -> float | None:
    """A server's CPU seconds per 1,000 requests served; None when it served none."""
    return 1000.0 * cpu_seconds / requests if requests > 0 else None


def rss_per_connection(rss_bytes: float, connections: int, baseline_rss_bytes: float = 0.0) -> float | None:
    """Bytes of resident memory per connection held, above an idle baseline; None without connections."""
    return max(0.0, rss_bytes - baseline_rss_bytes) / connections if connections > 0 else None
