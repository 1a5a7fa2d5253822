"""The control inbox: what changes a running test, posted from any thread, carried out by the controller.

A producer (the web API, a capacity search, a test) posts typed commands to an
`Inbox`:

    SetLevel(target, users=N | rate=R, origin)   a target's level from now on, instead of its stages
    Pause(origin), Resume(origin)               start no requests or arrivals; start them again
    Stop(origin, reason)                        end the run as its duration would: reports written,
                                                exit status by the thresholds

`Inbox.post` checks a command against the run's targets and raises
`ControlError` (a status, 404 or 400, and one sentence) for one that cannot
be carried out, so a producer can answer its caller at once. The controller's
main loop drains the inbox each pass (`Steering.take`): it sends the workers
(and every cluster node) the matching `messages.Command`, records each level
change (its time, old and new value, origin), and publishes what the run is
doing (`Inbox.status`) for producers to read.

    inbox = Inbox(config)
    result = controller.run(config, inbox=inbox)    # in one thread
    inbox.post(SetLevel("api", rate=200.0, origin="capacity"))   # from any other (or from on_interval)

Nothing here imports gevent: the controller's process imports it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Union

from loadtest.core.schedule import level_at
from loadtest.model.config import RunConfig
from loadtest.model.kinds import kind_of
from loadtest.model.messages import ChangeLevel, Command, EndLoad, PauseLoad, ResumeLoad
from loadtest.outputs.live_page import steerable_targets, target_model

ORIGIN_API = "api"
MAX_USERS = 100_000  # the most virtual users (or connections) a level change may ask of one target, in all
MAX_RATE = 1_000_000.0  # the highest arrival rate (per second) a level change may ask of one target
MAX_PENDING = 1_000  # commands waiting in the inbox; a producer that posts faster than the run drains is refused
WAIT_POLL_S = 0.1  # while a run waits to start (--wait), how often it looks at the inbox


class ControlError(Exception):
    """A command that cannot be carried out: `status` (404: no such target, 400: a bad level, 409: the run is
    stopping or over, 503: too many waiting) and one sentence naming what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SetLevel:
    """Set target `target`'s level from now on: `users` (closed model: virtual users or connections) or
    `rate` (open model: arrivals per second), in all; its stages no longer apply."""

    target: str
    users: int | None = None
    rate: float | None = None
    origin: str = ORIGIN_API


@dataclass(frozen=True)
class Pause:
    """Start no requests or arrivals until `Resume` (a run held with --wait starts on `Resume`)."""

    origin: str = ORIGIN_API


@dataclass(frozen=True)
class Resume:
    origin: str = ORIGIN_API


@dataclass(frozen=True)
class Stop:
    """End the run as its duration would: in-flight requests may finish, reports are written, the exit
    status follows the thresholds."""

    origin: str = ORIGIN_API
    reason: str = ""


ControlCommand = Union[SetLevel, Pause, Resume, Stop]


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C or SIGTERM once the load runs, posted by the signal handler: the first ends the run with what is
    in flight cancelled (exit status 130, reports written), a second stops the workers at once."""

    origin: str = "signal"


@dataclass(frozen=True)
class Abort:
    """A threshold marked abort_on_fail failed: the run ends now, what is in flight cancelled (exit status 1)."""

    reason: str
    origin: str = "threshold"


Notice = Union[Interrupt, Abort]  # posted from inside the run, carried out by the controller's main loop itself


@dataclass(frozen=True)
class LevelChange:
    """One change of a target's level: when (seconds into the run), from what to what, and who asked."""

    at_s: float
    target: str
    unit: str  # "users" or "rate"
    old: float
    new: float
    origin: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStatus:
    """What the run is doing, as the controller publishes it for producers (the web page) to read."""

    state: str = "starting"  # starting, paused, running, stopping, done
    levels: dict[str, float] = field(default_factory=dict)  # each steerable target's level now
    changes: list[LevelChange] = field(default_factory=list)
    stopped: dict[str, Any] | None = None  # who stopped the run, when, why (a Stop command)
    started: float | None = None  # wall clock, when the load started
    ended: float | None = None  # monotonic, when the load ended


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(400, f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ControlError(400, f"{what} must be a finite number, got {value!r}")
    if value < 0:
        raise ControlError(400, f"{what} must not be negative, got {value!r}")
    return float(value)


def level_command(config: RunConfig, name: str, body: Any, origin: str = ORIGIN_API) -> SetLevel:
    """The SetLevel a JSON body (`{"users": N}` or `{"rate": R}`) asks for target `name`; ControlError else."""
    targets = {t.name: t for t in steerable_targets(config)}
    if name not in targets:
        raise ControlError(404, f"there is no target named {name!r} (targets: {', '.join(targets) or 'none'})")
    if not isinstance(body, dict):
        raise ControlError(400, 'the body must be a JSON object: {"users": N} or {"rate": R}')
    arrivals = target_model(targets[name]) == "open"  # its level is a rate, not users
    keys = set(body)
    if keys not in ({"users"}, {"rate"}):
        want = '{"rate": R}' if arrivals else '{"users": N}'
        raise ControlError(400, f"target {name} takes {want}, got keys {sorted(keys)}")
    if "users" in keys:
        if arrivals:
            raise ControlError(400, f"target {name} is an open-model target: set its rate, not users")
        users = _number(body["users"], "users")
        if users != int(users):
            raise ControlError(400, f"users must be a whole number, got {body['users']!r}")
        if users > MAX_USERS:
            raise ControlError(400, f"users must be at most {MAX_USERS}, got {body['users']!r}")
        return SetLevel(name, users=int(users), origin=origin)
    if not arrivals:
        raise ControlError(400, f"target {name} is a closed-model target: set its users, not rate")
    rate = _number(body["rate"], "rate")
    if rate > MAX_RATE:
        raise ControlError(400, f"rate must be at most {MAX_RATE:g} per second, got {body['rate']!r}")
    return SetLevel(name, rate=rate, origin=origin)


class Inbox:
    """Commands for a running test, posted from any thread and drained by the controller's main loop."""

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config
        self.status = RunStatus()
        self._lock = threading.Lock()
        self._commands: deque[ControlCommand] = deque()
        self._notices: deque[Notice] = deque()  # no lock: a signal handler posts here (see `notify`)
        self.wake = threading.Event()  # set on every post: a run waiting to start looks at once

    def check(self, command: ControlCommand) -> ControlCommand:
        """The command as it will be carried out, or ControlError naming what is wrong with it."""
        if self.status.state == "done":
            raise ControlError(409, "the run is over")
        if self.status.state == "stopping":
            raise ControlError(409, "the run is stopping; it takes no more commands")
        if isinstance(command, SetLevel) and self.config is not None:
            level = command.users if command.users is not None else command.rate
            key = "users" if command.users is not None else "rate"
            if (command.users is None) == (command.rate is None):
                raise ControlError(400, "a level change sets exactly one of users or rate")
            return level_command(self.config, command.target, {key: level}, command.origin)
        return command

    def post(self, command: ControlCommand) -> None:
        """Queue a command for the run's next pass (within a fraction of a second); ControlError if it is bad."""
        command = self.check(command)
        with self._lock:
            if len(self._commands) >= MAX_PENDING:
                raise ControlError(503, "too many commands are waiting; try again in a moment")
            self._commands.append(command)
        self.wake.set()

    def notify(self, notice: Notice) -> None:
        """Post what happened inside the run (an interrupt, a failed abort_on_fail threshold) for the next pass.

        Takes no lock and wakes nothing, so a signal handler may call it whatever the thread it interrupted
        holds: appending to a deque is atomic, and the main loop looks at least every quarter second."""
        self._notices.append(notice)

    def drain(self) -> list[ControlCommand | Notice]:
        """Every notice, then every command, posted since the last drain, each oldest first."""
        notices: list[ControlCommand | Notice] = []
        while self._notices:
            notices.append(self._notices.popleft())
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
            self.wake.clear()
        return notices + commands


class Steering:
    """The controller's side of the inbox: carries out its commands on the workers and keeps the record.

    `send(command)` reaches every worker (a `children.ChildGroup`'s `command`, which fans out to every
    cluster node too). `take(elapsed)` is called on each pass of the controller's main loop.
    """

    def __init__(self, config: RunConfig, inbox: Inbox, send: Callable[[Command], None],
                 event: Callable[[str], None]) -> None:
        self.config, self.inbox, self.send, self.event = config, inbox, send, event
        if inbox.config is None:
            inbox.config = config
        self.index = {t.name: i for i, t in enumerate(config.targets)}
        self.loads = {t.name: kind_of(t).load(t) for t in steerable_targets(config)}
        self.set: dict[str, float] = {}  # levels set by commands
        self.paused = False
        self.paused_ever = False
        self.stopped: Stop | None = None
        self.stopped_at = 0.0
        self.status = inbox.status
        self.status.levels = {name: self.level(name, 0.0) for name in self.loads}

    def level(self, name: str, elapsed: float) -> float:
        """A target's level `elapsed` seconds in: the last one set, else its stages'."""
        if name in self.set:
            return self.set[name]
        load = self.loads[name]
        return level_at(load.stages, load.start, elapsed)

    def publish(self, elapsed: float, state: str | None = None) -> None:
        self.status.levels = {name: self.level(name, elapsed) for name in self.loads}
        if state is not None:
            self.status.state = state

    def take(self, elapsed: float, ending: bool = False) -> list[Notice]:
        """Carry out every command waiting; publish the levels and the state (`ending`: the load is stopping).

        The notices (interrupts, aborts) are the controller's to carry out: they are returned, in order."""
        notices: list[Notice] = []
        for command in self.inbox.drain():
            if isinstance(command, (Interrupt, Abort)):
                notices.append(command)
            elif self.stopped is not None:
                continue  # the run is ending: nothing more to change
            elif isinstance(command, SetLevel):
                new = float(command.users) if command.users is not None else float(command.rate or 0.0)
                old = self.level(command.target, elapsed)
                self.set[command.target] = new
                self.send(ChangeLevel(self.index[command.target], new))
                unit = "users" if command.users is not None else "rate"
                self.status.changes.append(LevelChange(round(elapsed, 3), command.target, unit, old, new,
                                                       command.origin))
                self.event(f"{command.target}: {unit} {old:g} -> {new:g} (from {command.origin})")
            elif isinstance(command, Pause) and not self.paused:
                self.paused = self.paused_ever = True
                self.send(PauseLoad())
                self.event(f"paused (from {command.origin})")
            elif isinstance(command, Resume) and self.paused:
                self.paused = False
                self.send(ResumeLoad())
                self.event(f"resumed (from {command.origin})")
            elif isinstance(command, Stop):
                self.stopped, self.stopped_at = command, elapsed
                self.status.stopped = self.stopped_summary()
                self.send(EndLoad())
                who = "from the API" if command.origin == ORIGIN_API else f"by {command.origin}"
                self.event(f"stopping: stopped {who}" + (f" ({command.reason})" if command.reason else "")
                           + "; reports will be written")
        state = "stopping" if self.stopped is not None or ending else "paused" if self.paused else "running"
        if self.status.state in ("stopping", "done"):
            state = self.status.state
        self.publish(elapsed, state)
        return notices

    def hold(self, interrupted: Callable[[], bool]) -> None:
        """Before the load starts (--wait): wait for Resume (or Stop), carrying out level changes meanwhile.

        Raises KeyboardInterrupt as soon as `interrupted()` is true: nothing has run, nothing is saved."""
        self.paused = True
        self.publish(0.0, "paused")
        self.event("waiting: press Start on the page (or POST /api/resume) to start the load")
        while self.paused and self.stopped is None:
            if interrupted():
                raise KeyboardInterrupt
            self.inbox.wake.wait(WAIT_POLL_S)
            self.take(0.0)
        self.paused = False  # the workers never paused: the load starts now

    def stopped_summary(self) -> dict[str, Any] | None:
        """summary.json's `stopped`: who stopped the run, when and why; None if nothing did."""
        if self.stopped is None:
            return None
        return {"origin": self.stopped.origin, "at_s": round(self.stopped_at, 3),
                "reason": self.stopped.reason or None}

    def finish(self) -> None:
        self.status.state = "done"
        self.status.ended = time.monotonic()
