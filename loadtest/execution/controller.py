"""The controller: starts servers and workers, merges their snapshots, ends the run.

Runs in the parent process, which is never monkey-patched and uses plain
threads. Workers are started, handshaken and stopped by `loadtest.execution.children`
(each reports on its own pipe, in the typed messages of `loadtest.model.messages`).
Waiting on every pipe and every process sentinel at once tells the parent the
moment a worker dies.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any, Callable, Sequence


from loadtest.core import exits
from loadtest.execution.children import ChildExited, ChildFailed, ChildGroup, ReadyTimeout
from loadtest.model.config import RunConfig
from loadtest.execution.control import Abort, Inbox, Steering
from loadtest.model.kinds import kind_of
from loadtest.model.messages import (WORKER_ENTRY)
from loadtest.execution.monitor import RunMonitor
from loadtest.outputs.base import Callbacks, Output, Outputs, RunStarted
from loadtest.outputs.history import HistoryOutput
from loadtest.outputs.reports import ReportsOutput
from loadtest.execution.resources import DEFAULT_SAMPLE_INTERVAL_S
from loadtest.model.run_result import Frame, RunError, RunResult, WorkerState
from loadtest.outputs.run_folder import release_run_folder
from loadtest.execution.plan import Plan, make_plan
from loadtest.execution.interrupts import Interrupts
from loadtest.execution.collection import await_exit, Collection, ServerWatch, terminate
from loadtest.core.run_files import NOT_AGGREGATED_TYPES
from loadtest.core.stats import RunStats, TargetTotals
from loadtest.core.thresholds import Outcome, check, check_all

READY_TIMEOUT_S = 60.0
START_POLL_S = 0.1  # while starting, how often the run asks whether it was interrupted


def run(config: RunConfig, *, workers: int | None = None, out_dir: str | os.PathLike[str] | None = None,
        overwrite: bool = False, outputs: Sequence[Output] = (), on_interval: Callable[[Frame], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL_S, watch_pids: tuple[int, ...] = (),
        cluster: str | None = None, nodes: int | None = None, inbox: Inbox | None = None,
        wait: bool = False) -> RunResult:
    """Run a load test as configured and write its reports.

    The run's own outputs (history.csv; the report files at the end) come first, then `outputs` in
    their order, then `on_interval` / `on_event` for a library caller who wants just those. Every
    output is stopped once, with the result or with None if the run failed before it had one.

    `cluster` (or the config's `cluster:`, or DASK_SCHEDULER_ADDRESS) runs it on `nodes` Dask workers
    (default: all), `workers` per node (see loadtest.execution.cluster). `inbox` steers the running test (level
    changes, pause, resume, stop: see loadtest.execution.control); with `wait` the load starts only when the
    inbox gets Resume (or Stop). Raises RunError if it cannot start,
    KeyboardInterrupt if interrupted (Ctrl-C, SIGTERM) before the load started; an interrupt after
    that ends the run early, with its reports.
    """
    interrupts = Interrupts()
    interrupts.install()
    fed = Outputs([HistoryOutput(), ReportsOutput(config), *outputs, Callbacks(on_interval, on_event)])
    result: RunResult | None = None
    plan: Plan | None = None
    try:
        plan = make_plan(config, workers=workers, out_dir=out_dir, overwrite=overwrite, watch_pids=watch_pids,
                         cluster=cluster, nodes=nodes, interrupted=interrupts.check)
        try:
            interrupts.check()
            result = _run(plan, fed, sample_interval, interrupts, inbox, wait)
            return result
        except BaseException:
            release_run_folder(plan.run_dir, plan.made)  # a run that failed before it began leaves no folder
            raise
    finally:
        if plan is not None and plan.cluster is not None:
            plan.cluster.close()
        fed.stop(result)  # the report files first; a late Ctrl-C must not cut them short:
        interrupts.restore()  # only now are the handlers put back


def _run(plan: Plan, fed: Outputs, sample_interval: float, interrupts: Interrupts, inbox: Inbox | None = None,
         wait: bool = False) -> RunResult:
    config, event = plan.config, fed.event
    steered = inbox is not None  # levels may change from outside: the workers keep every target steerable
    inbox = inbox if inbox is not None else Inbox(config)  # the run's own notices (interrupts, aborts) come here
    groups: list[Any] = []
    states: list[WorkerState] = []
    monitor: RunMonitor | None = None
    server_watch = ServerWatch(groups, event)
    try:
        addresses = _start_servers(config, groups, interrupts, event)
        start, stop, children = _start_workers(plan, addresses, states, interrupts, event, steered, wait)
        stats = RunStats([(t.name, kind_of(t).row_type(t)) for t in config.targets], len(states))
        steering = Steering(config, inbox, children.command, event)
        _await_ready(children, states, interrupts)
        interrupts.check()  # the last moment with nothing to save; from here an interrupt ends the run in order
        monitor = _start_monitor(plan, groups, states, sample_interval, event)
        if wait:  # --wait: the load, its clock and its sampling start on Resume
            steering.hold(interrupts.pending)
        monitor.start()
        started = time.time()
        interrupts.start_running(inbox)
        start.set()
        started = getattr(start, "at", None) or started  # a cluster's nodes start together a moment from now
        fed.start(RunStarted(config, plan.run_dir, started, len(states)))
        event(f"{len(states)} worker{'s' if len(states) > 1 else ''} started "
              f"(pids {', '.join(str(w.pid) for w in states)})")
        abort = _AbortCheck(config, stats, inbox, event)
        steering.status.started = started
        interrupted = Collection(states, stats, stop, fed, event, abort, monitor, interrupts, server_watch,
                                 steering).collect()
        await_exit(states, monitor)
        server_watch.check()  # up to the moment they are stopped: the run's last requests needed them
        monitor.stop()
    except BaseException:
        if monitor is not None:
            monitor.stop()
        terminate(states)
        for g in groups:
            g.stop()
        raise
    terminate(states)
    servers = [_served(g, monitor) for g in groups]
    problems = ([f"worker {w.index} was lost: {w.error}" for w in states if w.lost] + server_watch.problems
                + monitor.problems())
    outcomes = check_thresholds(config, stats)
    # Connections are held to the end of a timed run; a run that ended by spending its `requests:`
    # total, or was interrupted, let them go early on purpose; a target whose level was changed, or a run
    # that was paused, asked for other connections than the config.
    spent = bool(states) and all(w.exit is not None and w.exit.spent for w in states)
    shortfalls = [] if interrupted or spent or steering.paused_ever else \
        connection_shortfalls(config, stats, set(steering.set))
    failed = any(not o.passed for o in outcomes) or bool(abort.reason) or bool(shortfalls)
    status = exits.run_status(bool(problems), interrupted, failed)
    result = RunResult(plan.run_dir, stats, states, servers, started, interrupted, status, problems, outcomes,
                       abort.reason, monitor.verdicts.summary(), [monitor.worker(w.index) for w in states],
                       shortfalls, plan.cluster.summaries(states) if plan.cluster is not None else [],
                       steering.stopped_summary(), [c.as_dict() for c in steering.status.changes])
    steering.finish()
    return result


def _start_servers(config: RunConfig, groups: list[Any], interrupts: Interrupts,
                   event: Callable[[str], None]) -> dict[str, str]:
    """Start the config's embedded servers into `groups`; their addresses by name."""
    if config.servers:
        from loadtest.execution.servers import ServerError, ServerGroup
    try:
        for spec in config.servers:
            interrupts.check()
            groups.append(ServerGroup.start(spec, interrupted=interrupts.pending))
            event(f"server {spec.name} ({spec.kind}) listening on {groups[-1].address}")
    except ServerError as e:
        raise RunError(str(e)) from None
    return {g.spec.name: g.address for g in groups}


def _start_workers(plan: Plan, addresses: dict[str, str], states: list[WorkerState], interrupts: Interrupts,
                   event: Callable[[str], None], steered: bool, wait: bool) -> tuple[Any, Any, Any]:
    """Start the plan's workers, here or on the cluster's nodes, into `states`: (start, stop, children)."""
    cluster = plan.cluster
    if cluster is not None:  # each node starts its own workers; their messages come to local pipes
        reachable = cluster.reachable(addresses)
        start, stop, children = cluster.launch(lambda k, total: plan.worker_plan(reachable, k, total, steered, wait))
        states.extend(WorkerState(c.index, c, role=c.role) for c in children.children)
        for node in cluster.nodes:
            event(f"{node.name} ({node.host}, {node.address}, pid {node.pid}): {len(node.workers)} worker"
                  f"{'s' if len(node.workers) > 1 else ''}, clock offset {node.clock_offset_s * 1000:+.1f} ms")
        return start, stop, children
    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    plans = [plan.worker_plan(addresses, k, plan.workers, steered, wait) for k in range(plan.workers)]
    children = ChildGroup.start(WORKER_ENTRY, [(p, start, stop) for p in plans], "loadtest-worker",
                                interrupts.pending)
    states.extend(WorkerState(c.index, c) for c in children.children)
    return start, stop, children


def _start_monitor(plan: Plan, groups: list[Any], states: list[WorkerState], sample_interval: float,
                   event: Callable[[str], None]) -> RunMonitor:
    """Make the report folder and set up the sampling of every process of the run (started with the load)."""
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot make the report folder {plan.run_dir}: {e.strerror}") from None
    cluster = plan.cluster
    monitor = RunMonitor(plan.run_dir, sample_interval, event)
    monitor.watch_servers(groups)
    # A node on another machine samples its own workers (their pids are that machine's) and sends the rows.
    monitor.watch_workers([w.pid if cluster is None or cluster.same_host(w.index) else 0 for w in states],
                          [w.name for w in states])
    monitor.watch_pids(plan.watched)
    if cluster is not None:
        cluster.on_resources = monitor.add_samples
    return monitor


def _served(group: Any, monitor: RunMonitor) -> dict[str, Any]:
    """summary.json's entry of an embedded server, stopped now: what it served and what that cost."""
    served = group.stop()
    return {"name": group.spec.name, "kind": group.spec.kind, "address": group.address,
            "workers": group.spec.workers, "pids": list(group.pids), "served": served,
            "cost": monitor.server_cost(group.spec.name, served)}


def totals_for(stats: RunStats, target: str | None) -> TargetTotals:
    return stats.aggregated() if target is None else stats.totals[stats.names.index(target)]


def connection_shortfalls(config: RunConfig, stats: RunStats, skip: set[str] | None = None) -> list[str]:
    """How the run fell short of what each target asked for, as its kind judges it (a tcp target that did not
    hold all its connections); the targets named in `skip` (their level was changed mid-run) are not judged."""
    return [text for i, t in enumerate(config.targets)
            if t.name not in (skip or ()) and (text := kind_of(t).shortfall(t, stats, i))]


def check_thresholds(config: RunConfig, stats: RunStats) -> list[Outcome]:
    """The config's thresholds, or with none the default: no failed requests and no failed flow passes
    (thresholds.DEFAULT_THRESHOLD)."""
    unaggregated = [t.name for t in stats.totals if t.type in NOT_AGGREGATED_TYPES]
    return check_all(config.thresholds, lambda target: totals_for(stats, target), stats.elapsed, unaggregated)


class _AbortCheck:
    """Checks the abort_on_fail thresholds on the totals so far; stops the run when one fails."""

    def __init__(self, config: RunConfig, stats: RunStats, inbox: Inbox, event: Callable[[str], None]) -> None:
        self.thresholds = [t for t in config.thresholds if t.abort_on_fail]
        self.stats, self.inbox, self.event = stats, inbox, event
        self.reason = ""

    def __call__(self) -> None:
        if self.reason:
            return
        for t in self.thresholds:
            outcome = check(t, totals_for(self.stats, t.target), self.stats.elapsed, final=False)
            if not outcome.passed:
                self.reason = (f"threshold {t.text!r} failed at {self.stats.elapsed:.1f} s "
                               f"(measured {outcome.measured_text})")
                self.event(f"stopping: {self.reason}")
                self.inbox.notify(Abort(self.reason))
                return


def _await_ready(children: ChildGroup, states: list[WorkerState], interrupts: Interrupts) -> None:
    """Wait for every worker's ready message (it resolved its targets); RunError naming the first that failed."""
    try:
        readies = children.ready(READY_TIMEOUT_S, interrupts.pending)
    except ChildFailed as e:
        raise RunError(e.error) from None
    except ChildExited as e:
        raise RunError(f"worker {e.child.index} exited before it started (exit code {e.exitcode})") from None
    except ReadyTimeout:
        raise RunError(f"workers did not start within {READY_TIMEOUT_S:g} s") from None
    for w, ready in zip(states, readies):
        w.ready, w.pid = True, ready.pid


