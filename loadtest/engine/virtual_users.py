"""The closed model in a worker: a virtual user's request loop, and the ramp that moves a staged level.

A virtual user sends one request after another on its own session (`virtual_user`); `ramp` moves a
staged target's `Level` along its stages, for closed and open targets alike. Both run as greenlets in
the worker's pool (`loadtest.engine.workload.start_target` spawns them).
"""

from __future__ import annotations

import random
import time
from typing import Callable

import gevent

from loadtest.core.recorder import TargetRecorder
from loadtest.core.schedule import Stage, level_at, stages_duration
from loadtest.engine.budget import LEVEL_POLL_S, Budget, Level
from loadtest.engine.protocols import Session
from loadtest.model.config import DEFAULT_FAILURE_BACKOFF_S, FIRST_BACKOFF_S


def virtual_user(make_session: Callable[[], Session], budget: Budget, index: int = 0,
                 level: Level | None = None, think: tuple[float, float] = (0.0, 0.0),
                 backoff: float = DEFAULT_FAILURE_BACKOFF_S, recorder: TargetRecorder | None = None) -> None:
    """Send requests one after another until the budget says stop (closed model).

    With stages, user `index` works only while the level is above it, and
    closes its connection while it waits, as a user who left would; with
    think time it pauses between requests. After an exchange that failed at
    once (a failed connect, a failed flow pass: the session's `back_off`) it
    waits FIRST_BACKOFF_S, twice that after the next failure in a row, and so
    on up to `backoff` seconds (0: never), counted in `recorder`; a success
    starts it over. A person aimed at a struggling server expects no less:
    a failing user must not loop faster than a working one.
    """
    session: Session | None = None
    lo, hi = think
    wait = 0.0
    try:
        while True:
            if level is not None and (index >= level.value or level.paused):
                if budget.stopping or budget.left == 0:
                    break
                if session is not None:
                    session.close()
                    session = None
                gevent.sleep(LEVEL_POLL_S)
                continue
            if not budget.take():
                break
            if session is None:
                session = make_session()
            session.exchange()
            if session.back_off:
                session.back_off = False
                if backoff:
                    wait = min(backoff, wait * 2 if wait else FIRST_BACKOFF_S)
                    if recorder is not None:
                        recorder.backoffs += 1
                        recorder.backoff_s += wait
                    gevent.sleep(wait)
                    continue
            elif wait:
                wait = 0.0
            if hi:
                gevent.sleep(lo if lo == hi else random.uniform(lo, hi))
    finally:
        if session is not None:
            session.close()


def ramp(level: Level, stages: tuple[Stage, ...], start: float, t0: float, scale: Callable[[float], float],
         budget: Budget) -> None:
    """Move a staged target's level along its stages, ten times a second, until the last stage ends
    or the load stops (a spent `requests:` budget stops it too)."""
    end = stages_duration(stages)
    while True:
        if level.held:  # the controller set the level: its value stands from now on
            return
        t = time.monotonic() - t0
        level.value = scale(level_at(stages, start, t))
        if t >= end or budget.stopping or budget.left == 0:
            return
        gevent.sleep(LEVEL_POLL_S)
