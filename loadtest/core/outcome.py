"""A request's timing and outcome, decided in one place for every protocol.

Where its latency counts from: its scheduled time when it had one (the open model, so a stalled
server shows in the percentiles: coordinated omission corrected, as in wrk2), else the moment its
first byte was written. And whether its answer is a success: an HTTP status the target expects
(`expect_status`), or without one any 2xx or 3xx. Pure functions, called once per request.
"""

from __future__ import annotations

from collections.abc import Collection


def start_ns(scheduled_ns: int, sent_ns: int) -> int:
    """Where a request's latency counts from: `scheduled_ns` if it had one (open model), else `sent_ns`."""
    return scheduled_ns or sent_ns


def status_ok(status: int, expected: Collection[int] | None) -> bool:
    """An HTTP answer is a success: one of `expected` when the target names some, else 200-399."""
    return status in expected if expected else 200 <= status < 400
