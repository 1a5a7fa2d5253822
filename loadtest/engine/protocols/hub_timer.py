"""A one-shot timer finer than the event loop's millisecond: a Linux timerfd watched by the gevent hub.

libev hands its timers to `epoll_wait`, whose timeout is whole milliseconds, so
a send scheduled on a loop timer leaves up to ~1.1 ms late (a uniform 0–1 ms
plus the wake-up). A timerfd keeps nanoseconds: the kernel makes its descriptor
readable at the armed time, and the hub's read watcher on it calls back like any
socket's. A wake-up still takes tens of microseconds (the poll's return, the
hub's turn, Python), so the timer is armed `ARM_EARLY_NS` before the time
asked for and the callback's owner spins the rest (`spin_until`): at most that
long, measured to cost next to nothing (`benchmarks/rate_accuracy.py`).

Where timerfd is missing (not Linux, or no libc to call), a libev timer stands
in, with its millisecond resolution.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from time import perf_counter_ns
from typing import Any, Callable

READ = 1
CLOCK_MONOTONIC = 1  # perf_counter_ns's clock on Linux: armed times are perf_counter_ns values
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
ARM_EARLY_NS = 30_000  # about one wake-up's latency on a 2-core machine: the rest is spun
_FAR_NS = 1 << 62


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.timerfd_create  # noqa: B018 - a libc without it raises AttributeError here
        lib.timerfd_settime  # noqa: B018
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()


def spin_until(when_ns: int) -> int:
    """Busy-wait until `when_ns` (a perf_counter_ns time, at most ~`ARM_EARLY_NS` ahead); return the time then."""
    now = perf_counter_ns()
    while now < when_ns:
        now = perf_counter_ns()
    return now


class HubTimer:
    """A re-armable one-shot timer whose callback runs on the hub at (just before) the time it was armed for.

    `arm(when_ns)` sets it for a `perf_counter_ns` time (a past time fires at the next turn of the loop);
    arming again replaces the time; `disarm` stops it. Arming costs one system call and no allocation, so a
    driver may re-arm it on every event. The callback gets no arguments and should call `spin_until` for
    the time it wanted if it needs it exactly: the timer fires up to `ARM_EARLY_NS` early.
    """

    __slots__ = ("armed_ns", "_loop", "_callback", "_fd", "_watcher", "_spec", "_spec_ref", "_timer", "precise")

    def __init__(self, loop: Any, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self.armed_ns = _FAR_NS
        self._timer: Any = None
        self._fd = -1
        self._watcher: Any = None
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        if _LIBC is not None:
            fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                # Started for the timer's life: an io watcher that stays started costs no epoll_ctl per arm.
                self._watcher = loop.io(fd, READ)
                self._watcher.start(self._fired)
        self.precise = self._fd >= 0

    def arm(self, when_ns: int) -> None:
        """Fire at `when_ns` (a perf_counter_ns time), up to `ARM_EARLY_NS` before it; replaces any earlier arming."""
        self.armed_ns = when_ns
        if self._fd >= 0:
            at = when_ns - ARM_EARLY_NS
            if at <= 0:
                at = 1  # 0 would disarm it
            spec = self._spec.it_value
            spec.tv_sec, spec.tv_nsec = divmod(at, 1_000_000_000)
            _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, self._spec_ref, None)
            return
        if self._timer is not None:
            self._timer.close()
        delay = when_ns - perf_counter_ns()
        self._timer = self._loop.timer(delay / 1e9 if delay > 0 else 0.0)
        self._timer.start(self._fired_libev, update=True)  # from the real now, not the loop's cached time

    def disarm(self) -> None:
        self.armed_ns = _FAR_NS
        if self._fd >= 0:
            spec = self._spec.it_value
            spec.tv_sec = spec.tv_nsec = 0
            _LIBC.timerfd_settime(self._fd, 0, self._spec_ref, None)
        elif self._timer is not None:
            self._timer.close()
            self._timer = None

    def _fired(self) -> None:
        if perf_counter_ns() < self.armed_ns - 2 * ARM_EARLY_NS:
            return  # re-armed for later since it expired (the poll had already seen it): not due yet
        self.armed_ns = _FAR_NS
        self._callback()
        if self.armed_ns == _FAR_NS:
            # Not armed again: disarming clears the expiry, else the descriptor stays readable. (Arming again
            # clears it too, which saves reading the expiry count on every firing: a system call.)
            self.disarm()

    def _fired_libev(self) -> None:
        self.armed_ns = _FAR_NS
        self._callback()

    def close(self) -> None:
        self.armed_ns = _FAR_NS
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._timer is not None:
            self._timer.close()
            self._timer = None
