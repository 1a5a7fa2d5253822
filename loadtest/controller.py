"""The controller: starts servers and workers, merges their snapshots, ends the run.

Runs in the parent process, which is never monkey-patched and uses plain
threads. Workers are started with the ``spawn`` context: the parent may have
threads, and a fork would copy them half-way. Each worker has its own pipe
rather than a share of one queue: a queue is one pipe written under a shared
lock, and a worker killed while holding that lock would wedge every other
worker. Waiting on every pipe and every process sentinel at once also tells
the parent the moment a worker dies.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

import psutil

from .config import ConfigError, RunConfig
from .kinds import kind_of
from .limits import check_limits
from .monitor import RunMonitor
from .reports import HistoryWriter, write_reports
from .resources import DEFAULT_SAMPLE_INTERVAL_S, RoleTotals
from .run_folder import RunFolderError, make_run_folder, release_run_folder
from .schedule import worker_share
from .spawn import start_child
from .stats import Interval, RunStats, TargetTotals
from .thresholds import Outcome, check, check_all
from .worker import CANCEL_WAIT_S, GRACEFUL_STOP_S, WorkerExit, WorkerPlan
from .worker import main as worker_main

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


class RunError(Exception):
    """The run itself failed: a server could not start, no worker could run."""


@dataclass
class WorkerState:
    index: int
    process: Any
    conn: Connection
    pid: int = 0
    ready: bool = False
    done: bool = False
    lost: bool = False
    exit: WorkerExit | None = None
    last_heard: float = 0.0
    stopping: bool = False  # it said the load stopped: it may be quiet while it lets requests end
    killed: bool = False  # stopped at once by a second interrupt, as asked: not a failure
    error: str = ""
    exitcode: int | None = None

    @property
    def ended(self) -> str:
        """How it ended, as workers.csv and summary.json say: ok, lost, killed (a second interrupt) or unknown."""
        return "lost" if self.lost else "ok" if self.done else "killed" if self.killed else "unknown"


@dataclass
class RunResult:
    """What a run produced: where the reports are, the merged stats, how it ended."""

    run_dir: Path
    stats: RunStats
    workers: list[WorkerState]
    servers: list[dict[str, Any]]
    started: float  # wall clock
    interrupted: bool
    exit_status: int
    problems: list[str] = field(default_factory=list)
    thresholds: list[Outcome] = field(default_factory=list)
    aborted: str = ""  # the abort_on_fail threshold that stopped the run, if one did
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    worker_resources: list[RoleTotals] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)  # tcp targets that held fewer connections than asked

    @property
    def lost(self) -> list[int]:
        return [w.index for w in self.workers if w.lost]


@dataclass
class Frame:
    """What the live view shows each second."""

    interval: Interval
    stats: RunStats
    worker_cpu: list[float | None]  # % of one core, per worker, at the latest sample
    machine_cpu: float | None  # % over all cores


class _Interrupts:
    """Ctrl-C and SIGTERM, counted by a signal handler rather than raised at whatever line is running.

    Before the load starts, the start-up asks (`check`) between steps and while it waits, and an
    interrupt raises KeyboardInterrupt there, where every process started so far is known and is
    stopped: there is nothing to save. Once the load runs, the main loop reads the count: the first
    interrupt asks the workers to stop (in-flight requests end as cancelled), the second (at least
    SAME_INTERRUPT_S later) stops them at once, and the reports are written either way. The children
    ignore both signals (see `loadtest.spawn`), so a signal sent to the whole process group (a
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


def auto_workers(config: RunConfig) -> int:
    """One worker per core, but no more than an open target's `max_concurrency` can be shared by."""
    caps = [cap for t in config.targets if (cap := kind_of(t).most_workers(t)) is not None]
    return max(1, min([os.cpu_count() or 1, *caps]))


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


def run(config: RunConfig, *, workers: int | None = None, out_dir: str | os.PathLike[str] | None = None,
        overwrite: bool = False, on_interval: Callable[[Frame], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL_S, watch_pids: tuple[int, ...] = ()) -> RunResult:
    """Run a load test as configured and write its reports.

    Raises RunError if it cannot start, KeyboardInterrupt if interrupted (Ctrl-C, SIGTERM) before the
    load started; an interrupt after that ends the run early, with its reports.
    """
    interrupts = _Interrupts()
    interrupts.install()
    try:
        count = workers or config.workers or auto_workers(config)
        check_limits(config, count)
        watched = tuple(dict.fromkeys((*config.monitor, *watch_pids)))
        for pid in watched:
            if not psutil.pid_exists(pid):
                raise ConfigError(f"monitor: there is no process {pid} to watch (from monitor: or --watch-pid)")
        event = on_event or (lambda text: None)
        now = datetime.now()
        run_dir = run_dir_for(config, out_dir, now)
        check_writable(run_dir, "--out" if out_dir is not None else "out")
        try:  # made now, exclusively, so that a second run started in the same second gets a folder of its own
            run_dir, made = make_run_folder(run_dir, exact=out_dir is not None, overwrite=overwrite)
        except RunFolderError as e:
            raise ConfigError(f"{'--out' if out_dir is not None else 'out'}: {e}") from None
        try:
            interrupts.check()
            return _run(config, count, run_dir, watched, event, on_interval, sample_interval, interrupts)
        except BaseException:
            release_run_folder(run_dir, made)  # if the run failed before it began, leave the folder as it was
            raise
    finally:
        interrupts.restore()  # only once the reports are written: a late Ctrl-C must not cut them short


def _run(config: RunConfig, count: int, run_dir: Path, watched: tuple[int, ...], event: Callable[[str], None],
         on_interval: Callable[[Frame], None] | None, sample_interval: float,
         interrupts: _Interrupts) -> RunResult:
    groups: list[Any] = []
    states: list[WorkerState] = []
    monitor: RunMonitor | None = None
    server_watch = _ServerWatch(groups, event)
    try:
        if config.servers:
            from .servers import ServerError, ServerGroup
        try:
            for spec in config.servers:
                interrupts.check()
                groups.append(ServerGroup.start(spec, interrupted=interrupts.pending))
                event(f"server {spec.name} ({spec.kind}) listening on {groups[-1].address}")
        except ServerError as e:
            raise RunError(str(e)) from None
        addresses = {g.spec.name: g.address for g in groups}

        ctx = multiprocessing.get_context("spawn")
        start, stop = ctx.Event(), ctx.Event()
        for k in range(count):
            interrupts.check()
            plan = WorkerPlan(
                index=k,
                workers=count,
                config=config,
                addresses=addresses,
                shares=tuple(worker_share(_users(t), count, k) for t in config.targets),
                requests=worker_share(config.requests, count, k) if config.requests is not None else None,
                duration=config.duration,
            )
            reader, writer = ctx.Pipe(duplex=False)
            process = ctx.Process(target=worker_main, args=(plan, writer, start, stop),
                                  name=f"loadtest-worker-{k}", daemon=True)
            start_child(process)
            writer.close()
            states.append(WorkerState(k, process, reader))

        stats = RunStats([(t.name, kind_of(t).row_type(t)) for t in config.targets], count)
        _await_ready(states, interrupts)
        interrupts.check()  # the last moment with nothing to save; from here an interrupt ends the run in order
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot make the report folder {run_dir}: {e.strerror}") from None
        history = HistoryWriter(run_dir / "history.csv", config)
        monitor = RunMonitor(run_dir, sample_interval, event)
        monitor.watch_servers(groups)
        monitor.watch_workers(w.pid for w in states)
        monitor.watch_pids(watched)
        monitor.start()
        started = time.time()
        interrupts.running = True
        start.set()
        event(f"{count} worker{'s' if count > 1 else ''} started (pids {', '.join(str(w.pid) for w in states)})")
        abort = _AbortCheck(config, stats, stop, event)
        collection = _Collection(states, stats, stop, history, started, on_interval, event, abort, monitor,
                                 interrupts, server_watch)
        interrupted = collection.collect()
        history.close()
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
    status = 3 if problems else (130 if interrupted else (1 if failed else 0))
    result = RunResult(run_dir, stats, states, servers, started, interrupted, status, problems, outcomes,
                       abort.reason, monitor.verdicts.summary(), [monitor.worker(w.index) for w in states],
                       shortfalls)
    write_reports(result, config)
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


def _users(target: Any) -> int:
    """Virtual users (closed), the cap on requests in flight (open) or connections (tcp) in all."""
    return kind_of(target).load(target).users


def _await_ready(states: list[WorkerState], interrupts: _Interrupts) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(w.ready for w in states):
        interrupts.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunError(f"workers did not start within {READY_TIMEOUT_S:g} s")
        waiting = {w.conn: w for w in states if not w.ready}
        handles = list(waiting) + [w.process.sentinel for w in waiting.values()]
        for conn in wait(handles, timeout=min(left, START_POLL_S)):
            w = waiting.get(conn) if isinstance(conn, Connection) else None
            if w is None:  # a sentinel: that process ended before it was ready
                dead = next(s for s in waiting.values() if s.process.sentinel == conn)
                if dead.conn.poll():
                    _receive(dead)
                if not dead.ready:
                    raise RunError(dead.error or f"worker {dead.index} exited before it started "
                                   f"(exit code {dead.process.exitcode})")
                continue
            _receive(w)
            if w.error:
                raise RunError(w.error)


def _receive(w: WorkerState, stats: RunStats | None = None) -> tuple[Any, ...] | None:
    """Read one message from a worker; None if its pipe is closed."""
    try:
        message: tuple[Any, ...] = w.conn.recv()
    except (EOFError, OSError):
        return None
    w.last_heard = time.monotonic()
    kind = message[0]
    if kind == "snapshot" and stats is not None:
        stats.add(message[1])
    elif kind == "ready":
        w.ready, w.pid = True, message[2]
    elif kind == "done":
        w.exit, w.done = message[1], True
    elif kind == "stopping":
        w.stopping = True
    elif kind == "error":
        w.error = message[2]
    return message


class _Collection:
    """The main loop of a run: read snapshots until every worker is done or lost."""

    def __init__(self, states: list[WorkerState], stats: RunStats, stop: Any, history: HistoryWriter,
                 started: float, on_interval: Callable[[Frame], None] | None, event: Callable[[str], None],
                 abort: Callable[[], None], monitor: RunMonitor, interrupts: _Interrupts,
                 servers: _ServerWatch) -> None:
        self.states, self.stats, self.stop, self.history = states, stats, stop, history
        self.started, self.on_interval, self.event, self.abort = started, on_interval, event, abort
        self.monitor, self.interrupts, self.servers = monitor, interrupts, servers

    def flush(self, final: bool = False) -> None:
        lost = [w.index for w in self.states if w.lost or w.killed]
        for interval in self.stats.ready_intervals(lost, flush=final):
            self.history.write(interval, self.started)
            if self.on_interval is not None:
                self.on_interval(Frame(interval, self.stats, self.monitor.worker_cpu(len(self.states)),
                                       self.monitor.machine_cpu()))
            self.abort()
        self.monitor.say_new_verdicts()

    def receive(self, w: WorkerState) -> bool:
        message = _receive(w, self.stats)
        if message is not None and message[0] == "snapshot":
            self.monitor.note_snapshot(message[1])
        return message is not None

    def lose(self, w: WorkerState, error: str = "", kill: bool = False) -> None:
        if kill:
            w.process.kill()
        if error:
            w.error = error
        self.monitor.worker_gone(w.pid)
        _mark_lost(w, self.stats, self.event)

    def kill_now(self, w: WorkerState) -> None:
        """Stop a worker at once, as a second interrupt asks; keep what it sent before it died."""
        w.process.kill()
        w.process.join(JOIN_TIMEOUT_S)
        while not w.done and w.conn.poll() and self.receive(w):
            pass
        if not w.done:
            w.killed, w.error, w.exitcode = True, SECOND_INTERRUPT, w.process.exitcode
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
                by_handle[w.conn] = w
                by_handle[w.process.sentinel] = w
            for handle in wait(list(by_handle), timeout=WAIT_S):
                w = by_handle[handle]
                if w.done or w.lost:
                    continue
                if handle is w.conn:
                    if not self.receive(w):
                        self.lose(w)
                else:  # the process ended: read what it sent before it did
                    while not w.done and w.conn.poll() and self.receive(w):
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
    waiting = {w.process.sentinel: w for w in states if not w.lost}
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for sentinel in wait(list(waiting), timeout=max(0.0, deadline - time.monotonic())):
            monitor.worker_gone(waiting.pop(sentinel).pid)


def _mark_lost(w: WorkerState, stats: RunStats, event: Callable[[str], None]) -> None:
    w.lost = True
    w.process.join(0.5)
    w.exitcode = w.process.exitcode
    if not w.error:
        code = w.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        w.error = f"ended without finishing ({how}); counts up to its last snapshot are kept"
    event(f"worker {w.index} (pid {w.pid}) lost: {w.error}")


def _terminate(states: list[WorkerState]) -> None:
    for w in states:
        w.process.join(JOIN_TIMEOUT_S if w.done else 0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(JOIN_TIMEOUT_S)
        if w.exitcode is None:
            w.exitcode = w.process.exitcode
        w.conn.close()
