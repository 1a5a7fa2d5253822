"""A worker's shared state of its load: the requests it may still start, and a staged target's level.

The load loops (`loadtest.engine.virtual_users`, `.arrivals`, `.workload`), the kinds' worker halves and
the protocol drivers all read them; they live here, below all three.
"""

from __future__ import annotations

from typing import Callable

LEVEL_POLL_S = 0.1  # stages move the level this often; a loop waiting on a level looks this often


class Budget:
    """The requests this worker may still start: a count, or unlimited, until stopped."""

    __slots__ = ("left", "stopping", "end_ns")

    def __init__(self, total: int | None) -> None:
        self.left = -1 if total is None else total
        self.stopping = False
        self.end_ns = float("inf")  # the controller ended the load at this perf_counter_ns time (EndLoad)

    def take(self) -> bool:
        if self.stopping or self.left == 0:
            return False
        if self.left > 0:
            self.left -= 1
        return True

    def give_back(self) -> None:
        """Return a unit taken for a request that was never started (a counted budget only)."""
        if self.left >= 0:
            self.left += 1


class Level:
    """This worker's current level of a target: virtual users or connections (closed) or arrivals/s (open).

    Stages move `value` (`ramp`) until the controller sets it (`held`): from then on the controller's value
    stands. While `paused`, no request or arrival starts. `version` counts the controller's commands, so a
    loop that sleeps on a schedule sees one; `grow` (closed model) spawns users up to a new level, and
    `spawned` is how many there are.
    """

    __slots__ = ("value", "held", "paused", "version", "reported", "spawned", "grow")

    def __init__(self, value: float, reported: bool = True, spawned: int = 1 << 30) -> None:
        self.value = value
        self.held = False
        self.paused = False
        self.version = 0
        self.reported = reported  # the level goes into snapshots (staged, open or set by the controller)
        self.spawned = spawned
        self.grow: Callable[[int], None] | None = None
