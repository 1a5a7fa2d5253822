"""A resource sample and the roles of the processes sampled: resources.csv's rows, pure data.

The sampler (`loadtest.execution.resources`) makes them; the verdicts, the run's result and the
reports read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SAMPLE_INTERVAL_S = 1.0
# --sample-interval's floor: each sample reads every process of the run (a 1 ms interval wrote 3,220
# resources.csv rows for a 1 s run and took the controller's CPU from the run it measures)
MIN_SAMPLE_INTERVAL_S = 0.1

CONTROLLER_ROLE = "controller"
MACHINE_ROLE = "machine"
_GROUP = re.compile(r"(.+)-\d+")


def worker_role(index: int) -> str:
    return f"worker-{index}"


def server_role(name: str, index: int) -> str:
    return f"server-{name}-{index}"


def watch_role(pid: int) -> str:
    return f"watch-{pid}"


def _keys(role: str) -> tuple[str, ...]:
    """A role and its groups: "worker-3" counts for "worker-3" and "worker"; a node's "node-1/worker-0"
    for itself, "worker" and "node-1"."""
    node, _, own = role.rpartition("/")
    if node:
        m = _GROUP.fullmatch(own)
        return (role, m.group(1), node) if m else (role, node)
    m = _GROUP.fullmatch(role)
    return (role, m.group(1)) if m else (role,)


@dataclass(frozen=True)
class Sample:
    """One row of resources.csv: a process, or the machine (role "machine"), at one moment.

    `cpu_percent` is % of one core over `window_s` for a process (above 100
    for a multi-threaded one), and the average over all cores for the machine.
    Network bytes are counted from the sampler's start. None is "not readable".
    """

    role: str
    elapsed_s: float
    cpu_percent: float = 0.0
    window_s: float = DEFAULT_SAMPLE_INTERVAL_S
    timestamp: float = 0.0
    pid: int | None = None
    status: str = ""
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    rss_bytes: int | None = None
    threads: int | None = None
    fds: int | None = None
    tcp_connections: int | None = None
    connections_age_s: float | None = None
    ctx_switches_voluntary: int | None = None
    ctx_switches_involuntary: int | None = None
    cpu_per_core: tuple[float, ...] = ()
    memory_used_bytes: int | None = None
    net_lo_bytes_sent: int | None = None
    net_lo_bytes_recv: int | None = None
    net_bytes_sent: int | None = None
    net_bytes_recv: int | None = None

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_s + self.cpu_system_s

    def csv_row(self) -> list[str]:
        def text(v: Any) -> str:
            return "" if v is None else str(v)

        machine = self.role == MACHINE_ROLE
        return [
            f"{self.timestamp:.3f}", f"{self.elapsed_s:.3f}", self.role, text(self.pid), self.status,
            f"{self.cpu_percent:.1f}",
            "" if machine else f"{self.cpu_user_s:.2f}", "" if machine else f"{self.cpu_system_s:.2f}",
            text(self.rss_bytes), text(self.threads), text(self.fds), text(self.tcp_connections),
            "" if self.connections_age_s is None else f"{self.connections_age_s:.1f}",
            text(self.ctx_switches_voluntary), text(self.ctx_switches_involuntary),
            ";".join(f"{c:.1f}" for c in self.cpu_per_core), text(self.memory_used_bytes),
            text(self.net_lo_bytes_sent), text(self.net_lo_bytes_recv),
            text(self.net_bytes_sent), text(self.net_bytes_recv),
        ]


@dataclass
class RoleTotals:
    """A role's (or a group's, "worker" for every "worker-N") figures over the samples so far."""

    role: str
    pids: list[int] = field(default_factory=list)
    cpu_user_s: float = 0.0  # at each process's last sample, as the OS accounts it
    cpu_system_s: float = 0.0
    cpu_at_register_s: float = 0.0  # CPU the processes had used before sampling began
    first_rss_bytes: int = 0  # at each process's first sample
    peak_rss_bytes: int = 0  # a group's peak is of its sum at one sample
    peak_connections: int = 0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_s + self.cpu_system_s
