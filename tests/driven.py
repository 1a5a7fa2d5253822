"""Stopping a hub-callback driver (HttpHub, PacedTcp, WsDriver) run in a test as a worker stops it."""

from __future__ import annotations

import time
from typing import Any


def stop_like_a_worker(driver: Any, pool: Any, budget: Any, deadlines: Any, recorder: Any,
                       grace: float = 1.0) -> int:
    """Let what is in flight end within `grace`, kill the rest, check nothing was left open; return how many
    requests (or messages) were cancelled."""
    budget.stopping = True
    end = time.monotonic() + grace
    while deadlines.in_flight() and time.monotonic() < end:
        pool.join(timeout=0.02)
    before = recorder.failures["cancelled"]
    pool.kill(block=True, timeout=2)
    assert driver.callback_errors == 0
    assert recorder.open_connections == 0  # every connection closed on the way out
    return int(recorder.failures["cancelled"] - before)
