"""Operating-system limits, checked before the load starts.

A run whose connections cannot fit is refused up front with one sentence
naming the limit and what to change, instead of ending as a flood of
connect errors.
"""

from __future__ import annotations

import math
import resource
from collections import defaultdict

from .config import ConfigError, HttpTarget, RunConfig, TcpTarget

FD_RESERVE = 64  # descriptors a process needs besides its connections
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_PORT_RANGE = (32768, 60999)


def nofile_hard_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def raise_nofile_limit() -> None:
    """Lift this process's soft limit on open files to the hard limit: each connection is a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit: the process still runs, with fewer connections


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
        if isinstance(t, HttpTarget) and t.model == "open" and t.max_concurrency < workers:
            raise ConfigError(
                f"targets: {t.name} has max_concurrency {t.max_concurrency}, fewer than the {workers} workers "
                f"that share it (each needs at least one request in flight); use --workers {t.max_concurrency} "
                f"or a larger max_concurrency")
    hard = nofile_hard_limit()
    per_worker = 0
    for t in config.targets:
        if isinstance(t, TcpTarget):
            per_worker += math.ceil(t.peak_connections / workers)
        elif isinstance(t, HttpTarget):
            origins = len({u.split("/")[2] for u in t.urls})
            per_worker += math.ceil(t.peak_users / workers) * origins
    if per_worker + FD_RESERVE > hard:
        need = math.ceil(per_worker * workers / (hard - FD_RESERVE))
        raise ConfigError(
            f"targets: each worker would hold {per_worker} connections but the open-file limit is {hard} "
            f"per process; use at least {need} workers (--workers) or fewer connections")

    ports = ephemeral_ports()
    by_destination: dict[str, int] = defaultdict(int)
    sources: dict[str, int] = {}
    for t in config.targets:
        if isinstance(t, TcpTarget):
            by_destination[t.address] += t.peak_connections
            sources[t.address] = max(sources.get(t.address, 1), len(t.source_ips) or 1)
    for address, connections in by_destination.items():
        if connections > ports * sources[address]:
            need = math.ceil(connections / ports)
            raise ConfigError(
                f"targets: {connections} connections to {address} need more than the {ports} ephemeral ports "
                f"one source address has; set source_ips to at least {need} addresses "
                f"(for example 127.0.0.1-127.0.0.{need})")

    for spec in config.servers:
        load = sum(t.peak_connections for t in config.targets
                   if isinstance(t, TcpTarget) and t.address == "{" + spec.name + "}")
        if load and math.ceil(load / spec.workers) + FD_RESERVE > hard:
            need = math.ceil(load / (hard - FD_RESERVE))
            raise ConfigError(
                f"servers: {spec.name} would hold {math.ceil(load / spec.workers)} connections per process but the "
                f"open-file limit is {hard}; give it at least {need} workers")
