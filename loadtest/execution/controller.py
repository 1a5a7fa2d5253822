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
import signal
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence


from loadtest.core import exits
from loadtest.execution.children import ChildExited, ChildFailed, ChildGroup, ReadyTimeout
from loadtest.model.config import RunConfig
from loadtest.model.kinds import kind_of
from loadtest.model.messages import (CANCEL_WAIT_S, GRACEFUL_STOP_S, WORKER_ENTRY, Done, Failed, Ready, SnapshotSent, Stopping,
                       WorkerMessage)
from loadtest.execution.monitor import RunMonitor
from loadtest.outputs.base import Callbacks, Output, RunStarted, WithEvents
from loadtest.outputs.history import HistoryOutput
from loadtest.outputs.reports import ReportsOutput
from loadtest.execution.resources import DEFAULT_SAMPLE_INTERVAL_S
from loadtest.model.run_result import Frame, RunError, RunResult, WorkerState
from loadtest.outputs.run_folder import release_run_folder
from loadtest.execution.plan import Plan, make_plan
from loadtest.core.stats import RunStats, TargetTotals
from loadtest.core.thresholds import Outcome, check, check_all

READY_TIMEOUT_S = 60.0
WAIT_S = 0.25
SILENT_WORKER_S = 5.0  # a worker that sends nothing for this long is lost (hung or stopped)
STOP_TIMEOUT_S = 15.0  # after a stop request, how long workers get before they are terminated
JOIN_TIMEOUT_S = 5.0
START_POLL_S = 0.1  # while starting, how often the run asks whether it was interrupted
# Signals this close together are one interrupt: `timeout` sends its signal to the command and then to the
# whole process group, so the controller gets it twice within microseconds. A person pressing Ctrl-C
# again, after the "interrupt again" line, takes longer than this.
SAME_INTERRUPT_S = 0.5
SECOND_INTERRUPT = "killed by a second interrupt"


class _Interrupts:
    """Ctrl-C and SIGTERM, counted by a signal handler rather than raised at whatever line is running.

    Before the load starts, the start-up asks (`check`) between steps and while it waits, and an
    interrupt raises KeyboardInterrupt there, where every process started so far is known and is
    stopped: there is nothing to save. Once the load runs, the main loop reads the count: the first
    interrupt asks the workers to stop (in-flight requests end as cancelled), the second (at least
    SAME_INTERRUPT_S later) stops them at once, and the reports are written either way. The children
    ignore both signals (see `loadtest.execution.children`), so a signal sent to the whole process group (a
    terminal's Ctrl-C, `timeout`, systemd) acts exactly as one sent to this process.
    """

    def __init__(self) -> None:
        self.count = 0
        self.running = False
        self._previous: dict[int, Any] = {}
        self._last = -SAME_INTERRUPT_S

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: a library caller keeps its own handling
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if now - self._last >= SAME_INTERRUPT_S:
            self.count += 1
        self._last = now

    def pending(self) -> bool:
        """True if an interrupt came before the load started."""
        return bool(self.count) and not self.running

    def check(self) -> None:
        """Raise KeyboardInterrupt if an interrupt came before the load started."""
        if self.pending():
            raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _Outputs:
    """The run's outputs, fed in their order: started once, each interval added, stopped once."""

    def __init__(self, outputs: Sequence[Output]) -> None:
        self.outputs = list(outputs)
        self._stopped = False

    def start(self, run: RunStarted) -> None:
        for output in self.outputs:
            output.start(run)

    def add(self, frame: Frame) -> None:
        for output in self.outputs:
            output.add(frame)

    def event(self, text: str) -> None:
        for output in self.outputs:
            if isinstance(output, WithEvents):
                output.event(text)

    def stop(self, result: RunResult | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        for output in self.outputs:
            output.stop(result)


def run(config: RunConfig, *, workers: int | None = None, out_dir: str | os.PathLike[str] | None = None,
        overwrite: bool = False, outputs: Sequence[Output] = (), on_interval: Callable[[Frame], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL_S, watch_pids: tuple[int, ...] = (),
        cluster: str | None = None, nodes: int | None = None) -> RunResult:
    """Run a load test as configured and write its reports.

    The run's own outputs (history.csv; the report files at the end) come first, then `outputs` in
    their order, then `on_interval` / `on_event` for a library caller who wants just those. Every
    output is stopped once, with the result or with None if the run failed before it had one.

    `cluster` (or the config's `cluster:`, or DASK_SCHEDULER_ADDRESS) runs it on `nodes` Dask workers
    (default: all), `workers` per node (see loadtest.execution.cluster). Raises RunError if it cannot start,
    KeyboardInterrupt if interrupted (Ctrl-C, SIGTERM) before the load started; an interrupt after
    that ends the run early, with its reports.
    """
    interrupts = _Interrupts()
    interrupts.install()
    fed = _Outputs([HistoryOutput(), ReportsOutput(config), *outputs, Callbacks(on_interval, on_event)])
    result: RunResult | None = None
    plan: Plan | None = None
    try:
        plan = make_plan(config, workers=workers, out_dir=out_dir, overwrite=overwrite, watch_pids=watch_pids,
                         cluster=cluster, nodes=nodes, interrupted=interrupts.check)
        try:
            interrupts.check()
            result = _run(plan, fed, sample_interval, interrupts)
            return result
        except BaseException:
            release_run_folder(plan.run_dir, plan.made)  # a run that failed before it began leaves no folder
            raise
    finally:
        if plan is not None and plan.cluster is not None:
            plan.cluster.close()
        fed.stop(result)  # the report files first; a late Ctrl-C must not cut them short:
        interrupts.restore()  # only now are the handlers put back


def _run(plan: Plan, fed: _Outputs, sample_interval: float, interrupts: _Interrupts) -> RunResult:
    config, count, run_dir, watched, cluster = plan.config, plan.workers, plan.run_dir, plan.watched, plan.cluster
    event = fed.event
    groups: list[Any] = []
    states: list[WorkerState] = []
    monitor: RunMonitor | None = None
    server_watch = _ServerWatch(groups, event)
    try:
        if config.servers:
            from loadtest.execution.servers import ServerError, ServerGroup
        try:
            for spec in config.servers:
                interrupts.check()
                groups.append(ServerGroup.start(spec, interrupted=interrupts.pending))
                event(f"server {spec.name} ({spec.kind}) listening on {groups[-1].address}")
        except ServerError as e:
            raise RunError(str(e)) from None
        addresses = {g.spec.name: g.address for g in groups}

        if cluster is not None:  # each node starts its own workers; their messages come to local pipes
            reachable = cluster.reachable(addresses)
            start, stop, children = cluster.launch(lambda k, total: plan.worker_plan(reachable, k, total))
            states.extend(WorkerState(c.index, c, role=c.role) for c in children.children)
            for node in cluster.nodes:
                event(f"{node.name} ({node.host}, {node.address}, pid {node.pid}): {len(node.workers)} worker"
                      f"{'s' if len(node.workers) > 1 else ''}, clock offset {node.clock_offset_s * 1000:+.1f} ms")
        else:
            ctx = multiprocessing.get_context("spawn")
            start, stop = ctx.Event(), ctx.Event()
            plans = [plan.worker_plan(addresses, k, count) for k in range(count)]
            children = ChildGroup.start(WORKER_ENTRY, [(plan, start, stop) for plan in plans], "loadtest-worker",
                                        interrupts.pending)
            states.extend(WorkerState(c.index, c) for c in children.children)

        stats = RunStats([(t.name, kind_of(t).row_type(t)) for t in config.targets], len(states))
        _await_ready(children, states, interrupts)
        interrupts.check()  # the last moment with nothing to save; from here an interrupt ends the run in order
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot make the report folder {run_dir}: {e.strerror}") from None
        monitor = RunMonitor(run_dir, sample_interval, event)
        monitor.watch_servers(groups)
        # A node on another machine samples its own workers (their pids are that machine's) and sends the rows.
        monitor.watch_workers([w.pid if cluster is None or cluster.same_host(w.index) else 0 for w in states],
                              [w.name for w in states])
        monitor.watch_pids(watched)
        if cluster is not None:
            cluster.on_resources = monitor.add_samples
        monitor.start()
        started = time.time()
        interrupts.running = True
        start.set()
        started = getattr(start, "at", None) or started  # a cluster's nodes start together a moment from now
        fed.start(RunStarted(config, run_dir, started, len(states)))
        total = len(states)
        event(f"{total} worker{'s' if total > 1 else ''} started (pids {', '.join(str(w.pid) for w in states)})")
        abort = _AbortCheck(config, stats, stop, event)
        collection = _Collection(states, stats, stop, fed, event, abort, monitor, interrupts, server_watch)
        interrupted = collection.collect()
        _await_exit(states, monitor)
        server_watch.check()  # up to the moment they are stopped: the run's last requests needed them
        monitor.stop()
    except BaseException:
        if monitor is not None:
            monitor.stop()
        _terminate(states)
        for g in groups:
            g.stop()
        raise

    _terminate(states)
    servers = []
    for g in groups:
        served = g.stop()
        servers.append({"name": g.spec.name, "kind": g.spec.kind, "address": g.address,
                        "workers": g.spec.workers, "pids": list(g.pids), "served": served,
                        "cost": monitor.server_cost(g.spec.name, served)})
    problems = ([f"worker {w.index} was lost: {w.error}" for w in states if w.lost] + server_watch.problems
                + monitor.problems())
    outcomes = check_thresholds(config, stats)
    # Connections are held to the end of a timed run; a run that ended by spending its `requests:`
    # total, or was interrupted, let them go early on purpose.
    spent = bool(states) and all(w.exit is not None and w.exit.spent for w in states)
    shortfalls = [] if interrupted or spent else connection_shortfalls(config, stats)
    failed = any(not o.passed for o in outcomes) or bool(abort.reason) or bool(shortfalls)
    status = exits.run_status(bool(problems), interrupted, failed)
    result = RunResult(run_dir, stats, states, servers, started, interrupted, status, problems, outcomes,
                       abort.reason, monitor.verdicts.summary(), [monitor.worker(w.index) for w in states],
                       shortfalls, cluster.summaries(states) if cluster is not None else [])
    return result


def totals_for(stats: RunStats, target: str | None) -> TargetTotals:
    return stats.aggregated() if target is None else stats.totals[stats.names.index(target)]


def connection_shortfalls(config: RunConfig, stats: RunStats) -> list[str]:
    """How the run fell short of what each target asked for, as its kind judges it (a tcp target that did not
    hold all its connections)."""
    return [text for i, t in enumerate(config.targets) if (text := kind_of(t).shortfall(t, stats, i))]


def check_thresholds(config: RunConfig, stats: RunStats) -> list[Outcome]:
    """The config's thresholds, or with none the default: no failed requests (thresholds.DEFAULT_THRESHOLD)."""
    return check_all(config.thresholds, lambda target: totals_for(stats, target), stats.elapsed)


class _AbortCheck:
    """Checks the abort_on_fail thresholds on the totals so far; stops the run when one fails."""

    def __init__(self, config: RunConfig, stats: RunStats, stop: Any, event: Callable[[str], None]) -> None:
        self.thresholds = [t for t in config.thresholds if t.abort_on_fail]
        self.stats, self.stop, self.event = stats, stop, event
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
                self.stop.set()
                return


class _ServerWatch:
    """The run's embedded servers: a process of one that ends before the run does fails the run.

    The load goes on (the server's other processes, if any, still share its port), but its figures
    are no longer the server's, and the exit status says so.
    """

    def __init__(self, groups: list[Any], event: Callable[[str], None]) -> None:
        self.groups, self.event = groups, event
        self.problems: list[str] = []
        self._seen: set[int] = set()

    def check(self) -> None:
        for g in self.groups:
            for pid, code in g.ended():
                if pid in self._seen:
                    continue
                self._seen.add(pid)
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                problem = (f"server {g.spec.name} ({g.spec.kind}) process {pid} exited during the run ({how}); "
                           f"requests to it failed from then on")
                self.problems.append(problem)
                self.event(f"error: {problem}")


def _await_ready(children: ChildGroup, states: list[WorkerState], interrupts: _Interrupts) -> None:
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


def _receive(w: WorkerState, stats: RunStats | None = None) -> WorkerMessage | None:
    """Read one message from a worker; None if its pipe is closed."""
    try:
        message: WorkerMessage = w.child.conn.recv()
    except (EOFError, OSError):
        return None
    w.last_heard = time.monotonic()
    if isinstance(message, SnapshotSent):
        if stats is not None:
            stats.add(message.snapshot)
    elif isinstance(message, Done):
        w.exit, w.done = message.exit, True
    elif isinstance(message, Stopping):
        w.stopping = True
    elif isinstance(message, Ready):
        w.ready, w.pid = True, message.pid
    elif isinstance(message, Failed):
        w.error = message.error
    return message


class _Collection:
    """The main loop of a run: read snapshots until every worker is done or lost."""

    def __init__(self, states: list[WorkerState], stats: RunStats, stop: Any, outputs: _Outputs,
                 event: Callable[[str], None], abort: Callable[[], None], monitor: RunMonitor,
                 interrupts: _Interrupts, servers: _ServerWatch) -> None:
        self.states, self.stats, self.stop, self.outputs = states, stats, stop, outputs
        self.event, self.abort = event, abort
        self.monitor, self.interrupts, self.servers = monitor, interrupts, servers

    def flush(self, final: bool = False) -> None:
        lost = [w.index for w in self.states if w.lost or w.killed]
        for interval in self.stats.ready_intervals(lost, flush=final):
            self.outputs.add(Frame(interval, self.stats, self.monitor.worker_cpu(len(self.states)),
                                   self.monitor.machine_cpu()))
            self.abort()
        self.monitor.say_new_verdicts()

    def receive(self, w: WorkerState) -> bool:
        message = _receive(w, self.stats)
        if isinstance(message, SnapshotSent):
            self.monitor.note_snapshot(message.snapshot)
        return message is not None

    def lose(self, w: WorkerState, error: str = "", kill: bool = False) -> None:
        if kill:
            w.child.kill()
        if error:
            w.error = error
        self.monitor.worker_gone(w.pid)
        _mark_lost(w, self.stats, self.event)

    def kill_now(self, w: WorkerState) -> None:
        """Stop a worker at once, as a second interrupt asks; keep what it sent before it died."""
        w.child.kill()
        w.child.join(JOIN_TIMEOUT_S)
        while not w.done and w.child.conn.poll() and self.receive(w):
            pass
        if not w.done:
            w.killed, w.error, w.exitcode = True, SECOND_INTERRUPT, w.child.exitcode
            self.event(f"worker {w.index} (pid {w.pid}) {SECOND_INTERRUPT}; counts up to its last snapshot are kept")
        self.monitor.worker_gone(w.pid)

    def collect(self) -> bool:
        """True if the run was interrupted."""
        interrupted = False
        stop_deadline = float("inf")
        for w in self.states:
            w.last_heard = time.monotonic()
        while True:
            active = [w for w in self.states if not w.done and not w.lost]
            if not active:
                break
            if self.interrupts.count >= 2:  # a second Ctrl-C: stop at once, as asked; not a failure
                interrupted = True
                for w in active:
                    self.kill_now(w)
                break
            if self.interrupts.count and not interrupted:
                interrupted = True
                self.stop.set()
                stop_deadline = time.monotonic() + STOP_TIMEOUT_S
                self.event("stopping: in-flight requests are cancelled, reports will be written "
                           "(interrupt again to stop at once)")
            by_handle: dict[Any, WorkerState] = {}
            for w in active:
                by_handle[w.child.conn] = w
                by_handle[w.child.sentinel] = w
            for handle in wait(list(by_handle), timeout=WAIT_S):
                w = by_handle[handle]
                if w.done or w.lost:
                    continue
                if handle is w.child.conn:
                    if not self.receive(w):
                        self.lose(w)
                else:  # the process ended: read what it sent before it did
                    while not w.done and w.child.conn.poll() and self.receive(w):
                        pass
                    if not w.done:
                        self.lose(w)
            self.servers.check()
            now = time.monotonic()
            for w in active:
                allowed = SILENT_WORKER_S + (GRACEFUL_STOP_S + CANCEL_WAIT_S if w.stopping else 0.0)
                if not w.done and not w.lost and now - w.last_heard > allowed:
                    self.lose(w, f"sent nothing for {allowed:g} s (hung or stopped); killed", kill=True)
            if now > stop_deadline:
                for w in active:
                    if not w.done and not w.lost:
                        self.lose(w, "did not stop in time after the run was stopped; killed", kill=True)
            self.flush()
        self.flush(final=True)
        return interrupted


def _await_exit(states: list[WorkerState], monitor: RunMonitor) -> None:
    """Wait for finished workers to exit, without reaping them, so their last sample has exact CPU times."""
    waiting = {w.child.sentinel: w for w in states if not w.lost}
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for sentinel in wait(list(waiting), timeout=max(0.0, deadline - time.monotonic())):
            monitor.worker_gone(waiting.pop(sentinel).pid)


def _mark_lost(w: WorkerState, stats: RunStats, event: Callable[[str], None]) -> None:
    w.lost = True
    w.child.join(0.5)
    w.exitcode = w.child.exitcode
    if not w.error:
        code = w.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        w.error = f"ended without finishing ({how}); counts up to its last snapshot are kept"
    event(f"worker {w.index} (pid {w.pid}) lost: {w.error}")


def _terminate(states: list[WorkerState]) -> None:
    """Let finished workers exit (up to JOIN_TIMEOUT_S), kill the others at once, and close their pipes."""
    for w in states:
        w.child.stop(JOIN_TIMEOUT_S if w.done else 0)
        if w.exitcode is None:
            w.exitcode = w.child.exitcode
        w.child.close()
