"""A worker's shared state of its load: the requests it may still start, and a staged target's level.

The load loops (`loadtest.engine.workload`), the kinds' worker halves and the protocol drivers all
read them; they live here, below all three.
"""

from __future__ import annotations


class Budget:
    """The requests this worker may still start: a count, or unlimited, until stopped."""

    __slots__ = ("left", "stopping")

    def __init__(self, total: int | None) -> None:
        self.left = -1 if total is None else total
        self.stopping = False

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
    """This worker's current level of a staged target: virtual users (closed) or arrivals/s (open)."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value
