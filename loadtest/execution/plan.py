"""The plan of a run, made once from its config: what the controller then executes.

`make_plan` does every check that can refuse a run before anything starts (options that do not
fit, limits of this machine or of each node, processes to watch, the report folder) and settles the
numbers: how many workers, each worker's exact share of every target's load and of the `requests:`
total (`Plan.worker_plan`), where the reports go, and whether the run goes to the nodes of a
cluster. Nothing after it derives a share or a limit from the raw config.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest.core.schedule import worker_share
from loadtest.execution.limits import auto_workers, check_limits
from loadtest.model.config import ConfigError, RunConfig
from loadtest.model.fields import ADDRESS_ENV
from loadtest.model.kinds import kind_of
from loadtest.model.messages import WorkerPlan
from loadtest.outputs.run_folder import RunFolderError, make_run_folder


@dataclass(frozen=True)
class Plan:
    """A run as it will be executed: its config, its workers (per node on a cluster), where its reports go."""

    config: RunConfig
    workers: int
    run_dir: Path
    made: bool  # the report folder was made for this run (so a run that fails to start removes it)
    watched: tuple[int, ...]  # other processes to sample
    cluster: Any = None  # the connected Cluster of a cluster run (loadtest.execution.cluster), or None

    def worker_plan(self, addresses: dict[str, str], index: int, count: int, steered: bool = False,
                    wait: bool = False) -> WorkerPlan:
        """Worker `index` of `count` (count: this plan's workers, or all of a cluster's); `steered`: the run has
        a control inbox; `wait`: its start may be held (--wait)."""
        return worker_plan(self.config, addresses, index, count, steered, wait)


def make_plan(config: RunConfig, *, workers: int | None = None, out_dir: str | os.PathLike[str] | None = None,
              overwrite: bool = False, watch_pids: tuple[int, ...] = (), cluster: str | None = None,
              nodes: int | None = None, interrupted: Any = None) -> Plan:
    """Check everything that can refuse the run and settle its numbers; ConfigError names the first problem.

    A cluster run connects to its scheduler here (the caller closes `plan.cluster`); `interrupted()`
    raises KeyboardInterrupt between the slow steps if the run was interrupted meanwhile.
    """
    check = interrupted or (lambda: None)
    count = workers or config.workers or auto_workers(config)  # a cluster's nodes: each its own cores
    if nodes is not None and cluster is None and not config.cluster:
        raise ConfigError("--nodes: applies only to a cluster run (--cluster tcp://HOST:PORT or local:N)")
    nodes_cluster = None
    try:
        if (given := _cluster_address(cluster, config)) is not None:
            from loadtest.execution.cluster import Cluster

            nodes_cluster = Cluster.connect(*given)  # each node's limits are checked there, for its share
            check()
            nodes_cluster.choose(nodes)
            nodes_cluster.check(config, workers or config.workers)
        else:
            check_limits(config, count)
        watched = tuple(dict.fromkeys((*config.monitor, *watch_pids)))
        for pid in watched:
            if not psutil.pid_exists(pid):
                raise ConfigError(f"monitor: there is no process {pid} to watch (from monitor: or --watch-pid)")
        where = "--out" if out_dir is not None else "out"
        run_dir = run_dir_for(config, out_dir, datetime.now())
        check_writable(run_dir, where)
        try:  # made now, exclusively, so that a second run started in the same second gets a folder of its own
            run_dir, made = make_run_folder(run_dir, exact=out_dir is not None, overwrite=overwrite)
        except RunFolderError as e:
            raise ConfigError(f"{where}: {e}") from None
    except BaseException:
        if nodes_cluster is not None:
            nodes_cluster.close()
        raise
    return Plan(config, count, run_dir, made, watched, nodes_cluster)


def check_writable(run_dir: Path, where: str) -> None:
    """Raise ConfigError unless the report folder can be made: its nearest existing parent is a writable folder."""
    ancestor = run_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor == run_dir.absolute() and not ancestor.is_dir():
        raise ConfigError(f"{where}: {run_dir} exists and is not a folder")
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot write reports under {ancestor} (not a writable folder)")
    try:  # os.access says yes to root everywhere, /proc included: make and remove a folder to be sure
        os.rmdir(tempfile.mkdtemp(prefix=".loadtest-probe-", dir=ancestor))
    except OSError as e:
        raise ConfigError(f"{where}: cannot write reports under {ancestor} ({e.strerror})") from None


def run_dir_for(config: RunConfig, out_dir: str | os.PathLike[str] | None, now: datetime) -> Path:
    """`--out DIR` exactly, or `<out>/<name>-<YYYYmmdd-HHMMSS>/`."""
    if out_dir is not None:
        return Path(out_dir)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.name).strip("-.") or "run"
    return Path(config.out) / f"{safe}-{now:%Y%m%d-%H%M%S}"


def _cluster_address(option: str | None, config: RunConfig) -> tuple[str, str] | None:
    """Where a cluster run's scheduler was given, without importing the cluster code (nor Dask) for a local run."""
    if option is None and not config.cluster and not os.environ.get(ADDRESS_ENV, "").strip():
        return None
    from loadtest.execution.cluster import cluster_address

    return cluster_address(option, config)


def worker_plan(config: RunConfig, addresses: dict[str, str], index: int, count: int, steered: bool = False,
                wait: bool = False) -> WorkerPlan:
    """Worker `index` of `count`: its exact share of every target's load and of the `requests:` total."""
    return WorkerPlan(
        index=index,
        workers=count,
        config=config,
        addresses=addresses,
        shares=tuple(worker_share(_users(t), count, index) for t in config.targets),
        requests=worker_share(config.requests, count, index) if config.requests is not None else None,
        duration=config.duration,
        steered=steered,
        wait_for_start=wait,
    )


def _users(target: Any) -> int:
    """Virtual users (closed), the cap on requests in flight (open) or connections (tcp) in all."""
    return kind_of(target).load(target).users
