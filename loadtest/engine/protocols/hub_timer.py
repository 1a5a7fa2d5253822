"""A one-shot timer finer than the event loop's millisecond: a Linux timerfd watched by the gevent hub.

libev hands its timers to `epoll_wait`, whose timeout is whole milliseconds, so
a send scheduled on a loop timer leaves up to ~1.1 ms late (a uniform 0–1 ms
plus the wake-up). A timerfd keeps nanoseconds: the kernel makes its descriptor
readable at the armed time, and the hub's read watcher on it calls back like any
socket's. A wake-up still takes tens of microseconds (the poll's return, the
hub's turn, Python), so the timer is armed `ARM_EARLY_NS` before the time
asked for, the loop is then polled until `CALL_EARLY_NS` before it, and the
callback's owner spins the rest (`spin_until`).

Arming a timerfd is a system call that programs the machine's timer, which in a
virtual machine is an exit to the hypervisor: measured here at 15-20 µs of
system time an arming, 30% of a worker's CPU at 20,000 arrivals a second. So a
time less than `POLL_WINDOW_NS` away is not armed: the descriptor, which has
fired and is still readable, is left so, and the loop's poll returns at once,
runs whatever else is ready (answers to read) and calls back here, until the
time is near. That spends the gap's CPU (when arrivals come faster than one
every `POLL_WINDOW_NS`, a core's worth) instead of a system call's, and reads
answers between sends instead of spinning past them.

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
ARM_EARLY_NS = 30_000  # about one wake-up's latency on a 2-core machine: the rest is polled, then spun
CALL_EARLY_NS = 5_000  # the callback runs this close to its time, or closer: its owner spins the rest
POLL_WINDOW_NS = 60_000  # a time this close is awaited by polling the loop, not by arming the timerfd
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

    __slots__ = ("armed_ns", "_loop", "_callback", "_fd", "_watcher", "_spec", "_spec_ref", "_timer", "precise",
                 "_set_ns")

    def __init__(self, loop: Any, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self.armed_ns = _FAR_NS
        self._timer: Any = None
        self._fd = -1
        self._watcher: Any = None
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._set_ns = 0  # when the timerfd expires, as last set (0: disarmed); readable from then on
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
            if self._set_ns and when_ns - POLL_WINDOW_NS < perf_counter_ns() >= self._set_ns:
                return  # it has fired and is still readable: the loop polls it until the time is near
            self._set(max(when_ns - ARM_EARLY_NS, 1))
            return
        if self._timer is not None:
            self._timer.close()
        delay = when_ns - perf_counter_ns()
        self._timer = self._loop.timer(delay / 1e9 if delay > 0 else 0.0)
        self._timer.start(self._fired_libev, update=True)  # from the real now, not the loop's cached time

    def _set(self, at_ns: int) -> None:
        """Set the timerfd to expire at `at_ns` (> 0; a past time: at once), or disarm it (0); either clears
        its expiry, so it is no longer readable until then (no read of the expiry count needed)."""
        spec = self._spec.it_value
        spec.tv_sec, spec.tv_nsec = divmod(at_ns, 1_000_000_000)
        _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, self._spec_ref, None)
        self._set_ns = at_ns

    def disarm(self) -> None:
        self.armed_ns = _FAR_NS
        if self._fd >= 0:
            if self._set_ns:
                self._set(0)
        elif self._timer is not None:
            self._timer.close()
            self._timer = None

    def _fired(self) -> None:
        now = perf_counter_ns()
        if not self._set_ns or now < self._set_ns:
            return  # set again since it expired (the poll had already seen it): not readable now
        armed = self.armed_ns
        if now < armed - CALL_EARLY_NS:
            if armed - now > POLL_WINDOW_NS:
                self._set(max(armed - ARM_EARLY_NS, 1))  # armed for later while it was readable
            return  # still readable: the loop comes back at once, after whatever else is ready
        self.armed_ns = _FAR_NS
        self._callback()
        if self.armed_ns == _FAR_NS:
            # Not armed again: disarming clears the expiry, else the descriptor stays readable (and the loop
            # would poll it for nothing).
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
