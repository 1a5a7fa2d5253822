"""Operating-system limits, checked before the load starts.

A run whose connections cannot fit is refused up front with one sentence
naming the limit and what to change, instead of ending as a flood of
connect errors.
"""

from __future__ import annotations

import ipaddress
import math
import os
import resource
import socket
from collections import defaultdict

from loadtest.model.config import MAX_WORKERS, ConfigError, RunConfig
from loadtest.model.kinds import HeldConnections, kind_of

FD_RESERVE = 64  # descriptors a process needs besides its connections
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_PORT_RANGE = (32768, 60999)
NR_OPEN_FILE = "/proc/sys/fs/nr_open"  # the kernel's ceiling for any process's open-file limit
DEFAULT_NR_OPEN = 1 << 20


def nofile_hard_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def nofile_ceiling() -> int:
    """The highest open-file limit root could give a process on this machine."""
    try:
        with open(NR_OPEN_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return DEFAULT_NR_OPEN


def ephemeral_ports() -> int:
    """How many local ports one source address has towards one destination."""
    try:
        with open(PORT_RANGE_FILE) as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = DEFAULT_PORT_RANGE
    return hi - lo + 1


def check_limits(config: RunConfig, workers: int) -> None:
    """Raise ConfigError if the run's connections cannot fit this machine's limits, or its
    requests in flight cannot be shared by its workers."""
    for t in config.targets:
        problem = kind_of(t).check_workers(t, workers)
        if problem:
            raise ConfigError(f"targets: {problem}")
    hard = nofile_hard_limit()
    per_worker = 0
    for t in config.targets:
        kind = kind_of(t)
        per_worker += math.ceil(kind.load(t).users / workers) * kind.descriptors_per_user(t)
    if per_worker + FD_RESERVE > hard:
        advice = _descriptor_advice(per_worker * workers, per_worker, hard, "use at least {n} workers (--workers {n})")
        raise ConfigError(f"targets: each worker would hold {per_worker} connections but the open-file limit is "
                          f"{hard} per process; {advice}")

    ports = ephemeral_ports()
    by_destination: dict[str, int] = defaultdict(int)
    sources: dict[str, int] = {}
    for held in _held_connections(config):
        by_destination[held.address] += held.count
        sources[held.address] = max(sources.get(held.address, 1), len(held.sources) or 1)
    for address, connections in by_destination.items():
        if connections > ports * sources[address]:
            need = math.ceil(connections / ports)
            raise ConfigError(
                f"targets: {connections} connections to {address} need more than the {ports} ephemeral ports "
                f"one source address has; set source_ips to at least {need} addresses "
                f"(for example 127.0.0.1-{ipaddress.IPv4Address('127.0.0.1') + need - 1})")

    for spec in config.servers:
        load = sum(held.count for held in _held_connections(config) if held.address == "{" + spec.name + "}")
        per_process = math.ceil(load / spec.workers)
        if load and per_process + FD_RESERVE > hard:
            advice = _descriptor_advice(load, per_process, hard, "give it at least {n} workers")
            raise ConfigError(f"servers: {spec.name} would hold {per_process} connections per process but the "
                              f"open-file limit is {hard}; {advice}")

    check_source_ips(config)


def _held_connections(config: RunConfig) -> list[HeldConnections]:
    """The connections every target holds to fixed addresses (a tcp target's), as its kind says."""
    return [held for t in config.targets for held in kind_of(t).held_connections(t)]


def _descriptor_advice(connections: int, per_process: int, hard: int, more_processes: str) -> str:
    """What the user can change when `connections` in all do not fit `hard` descriptors per process:
    more processes (`more_processes`, with {n} for how many) while they stay within `MAX_WORKERS`,
    fewer connections, or a higher hard limit while the kernel allows it."""
    room = hard - FD_RESERVE
    need = math.ceil(connections / room)
    wanted = per_process + FD_RESERVE
    raise_limit = f"raise the hard limit to {wanted} (ulimit -Hn, as root)" if wanted <= nofile_ceiling() else ""
    if need <= MAX_WORKERS:
        more = more_processes.format(n=need)
        return f"{more}, fewer connections, or {raise_limit}" if raise_limit else f"{more} or fewer connections"
    most = f"even the most processes ({MAX_WORKERS}) hold only {room * MAX_WORKERS} connections"
    return f"{most}, so use fewer connections or {raise_limit}" if raise_limit else f"{most}, so use fewer connections"


def check_source_ips(config: RunConfig) -> None:
    """Raise ConfigError naming the first `source_ips` address this machine cannot bind.

    Connections from an address that is not this machine's would all fail at connect time; trying
    bind((ip, 0)) on each address up front costs microseconds and names the address instead.
    """
    for i, t in enumerate(config.targets):
        for ip in dict.fromkeys(ip for held in kind_of(t).held_connections(t) for ip in held.sources):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((ip, 0))
                except OSError as e:
                    raise ConfigError(
                        f"targets[{i}].source_ips: {ip} is not an address of this machine, so no connection "
                        f"can start from it ({e.strerror}); give addresses of its own interfaces "
                        f"(127.0.0.1-127.0.0.4 towards loopback)") from None


def auto_workers(config: RunConfig, cores: int | None = None, nodes: int = 1) -> int:
    """One worker per core (of this machine, or `cores` of a node), but no more than an open target's
    `max_concurrency` can be shared by over `nodes` nodes."""
    caps = [cap // nodes for t in config.targets if (cap := kind_of(t).most_workers(t)) is not None]
    return max(1, min([cores or os.cpu_count() or 1, *caps]))
