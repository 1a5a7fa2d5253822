"""Thresholds: each form parses, passes and fails; nonsense is a config error."""

from __future__ import annotations

import pytest

from loadtest.model.config import ConfigError, parse_config
from loadtest.core.stats import TargetTotals
from loadtest.core.recorder import TargetRecorder
from loadtest.core.thresholds import (
    DEFAULT_THRESHOLD,
    ThresholdError,
    check,
    check_all,
    failures_text,
    outcome_line,
    parse_threshold,
)

TARGETS = ["home", "echo", "http://127.0.0.1:8080/"]


def totals(latencies_ms: list[float], failures: dict[str, int] | None = None, dropped: int = 0) -> TargetTotals:
    rec = TargetRecorder(0)
    for ms in latencies_ms:
        rec.success(int(ms * 1e6), 100, 10, 90)
    for kind, n in (failures or {}).items():
        for _ in range(n):
            rec.failure(kind, kind, None)
    rec.dropped = dropped
    t = TargetTotals(name="home", type="GET")
    t.add(rec.snapshot())
    return t


@pytest.mark.parametrize("text, passes, fails", [
    ("p99 < 50ms", [10.0] * 100, [10.0] * 98 + [80.0] * 2),
    ("p50 <= 2000us", [1.0] * 10, [3.0] * 10),
    ("p99.9 < 1s", [100.0] * 10, [1500.0] * 10),
    ("avg < 20", [10.0, 20.0], [30.0, 40.0]),
    ("max < 100ms", [99.0], [101.0]),
    ("min > 0.5ms", [1.0], [0.1]),
])
def test_latency_forms(text: str, passes: list[float], fails: list[float]) -> None:
    t = parse_threshold(text, TARGETS)
    assert check(t, totals(passes), 10.0).passed
    outcome = check(t, totals(fails), 10.0)
    assert not outcome.passed and outcome.measured > 0


def test_rates_and_counts() -> None:
    clean = totals([1.0] * 99)
    dirty = totals([1.0] * 97, {"status": 2, "mismatch": 1})
    assert check(parse_threshold("error_rate < 1%", TARGETS), clean, 1).passed
    outcome = check(parse_threshold("error_rate < 1%", TARGETS), dirty, 1)
    assert not outcome.passed and outcome.measured == pytest.approx(0.03)
    assert not check(parse_threshold("error_rate < 0.02", TARGETS), dirty, 1).passed
    assert check(parse_threshold("rps > 90", TARGETS), clean, 1.0).passed
    assert not check(parse_threshold("rps > 1000", TARGETS), clean, 1.0).passed
    assert check(parse_threshold("echo: mismatch == 0", TARGETS), clean, 1).passed
    assert not check(parse_threshold("echo: mismatch == 0", TARGETS), dirty, 1).passed
    assert check(parse_threshold("requests >= 99", TARGETS), clean, 1).passed
    assert not check(parse_threshold("failures == 0", TARGETS), dirty, 1).passed
    assert not check(parse_threshold("dropped == 0", TARGETS), totals([1.0], dropped=3), 1).passed


def test_target_prefix_even_when_the_name_has_colons() -> None:
    t = parse_threshold("http://127.0.0.1:8080/: p95 < 20ms", TARGETS)
    assert (t.target, t.figure, t.op, t.value) == ("http://127.0.0.1:8080/", "p95", "<", 20e6)
    assert parse_threshold("home: p95 < 20ms", TARGETS).target == "home"
    assert parse_threshold("p95 < 20ms", TARGETS).target is None


@pytest.mark.parametrize("text, message", [
    ("p99 is small", "must look like"),
    ("nosuch: p99 < 5ms", "names target 'nosuch'"),
    ("latency < 5ms", "has no figure 'latency'"),
    ("p99 < 5%", "is a latency"),
    ("error_rate < 5ms", "is a fraction or a percentage"),
    ("error_rate < 5", "must be a fraction"),
    ("rps > 5%", "takes a plain number"),
    ("p200 < 5ms", "between p0 and p100"),
])
def test_nonsense_is_refused(text: str, message: str) -> None:
    with pytest.raises(ThresholdError, match=message):
        parse_threshold(text, TARGETS)


def test_thresholds_are_checked_when_the_config_loads() -> None:
    base = {"duration": "1s", "targets": [{"name": "home", "url": "http://127.0.0.1:1/", "concurrency": 1}]}
    config = parse_config({**base, "thresholds": ["p99 < 50ms", {"threshold": "home: rps > 1", "abort_on_fail": True}]})
    assert [t.abort_on_fail for t in config.thresholds] == [False, True]
    with pytest.raises(ConfigError, match=r"thresholds\[0\]: names target 'shop'"):
        parse_config({**base, "thresholds": ["shop: p99 < 50ms"]})
    with pytest.raises(ConfigError, match=r"thresholds\[0\]: has no figure"):
        parse_config({**base, "thresholds": ["speed > 3"]})
    with pytest.raises(ConfigError, match=r"thresholds: must be a list"):
        parse_config({**base, "thresholds": "p99 < 5ms"})
    with pytest.raises(ConfigError, match=r"thresholds\[0\].abort_on_fail: must be true or false"):
        parse_config({**base, "thresholds": [{"threshold": "p99 < 5ms", "abort_on_fail": "yes"}]})


def test_without_thresholds_a_failed_request_fails_the_run_but_a_cancelled_one_does_not() -> None:
    (clean,) = check_all((), lambda target: totals([1.0] * 10, {"cancelled": 4}), 1.0)
    assert clean.default and clean.passed and clean.measured == 0  # stopped by the run, not failed by the target
    (dirty,) = check_all((), lambda target: totals([1.0] * 10, {"cancelled": 4, "refused": 1}), 1.0)
    assert dirty.default and not dirty.passed and dirty.measured == 1
    assert dirty.threshold is DEFAULT_THRESHOLD and dirty.as_dict()["default"] is True
    connects = totals([1.0])
    connects.connect_failures.update(refused=2)
    assert not check(DEFAULT_THRESHOLD, connects, 1.0).passed  # a tcp connect that failed is a failure too
    accepting = parse_threshold("error_rate < 100%", TARGETS)
    (given,) = check_all((accepting,), lambda target: totals([1.0] * 10, {"status": 5}), 1.0)
    assert given.passed and not given.default  # a config's thresholds replace the default
    assert check(parse_threshold("failed == 4", TARGETS), totals([1.0], {"cancelled": 3, "status": 4}), 1).passed


def test_a_latency_threshold_without_latency_samples_fails_at_the_end_only() -> None:
    refused = totals([], {"refused": 50})
    final = check(parse_threshold("p99 < 50ms", TARGETS), refused, 1.0)
    assert not final.passed and final.measured is None
    assert final.measured_text.startswith("—") and final.as_dict()["measured"] is None
    assert check(parse_threshold("p99 < 50ms", TARGETS), refused, 1.0, final=False).passed  # responses may come
    assert not check(parse_threshold("max < 1s", TARGETS), refused, 1.0).passed


def test_the_outcome_line_says_what_failed() -> None:
    assert failures_text(147_722, {"refused": 147_722}) == "147,722 of 147,722 requests failed: refused"
    assert failures_text(10, {"cancelled": 3}) == ""
    assert failures_text(100, {"status": 50, "reset": 7, "refused": 7, "tls": 1, "closed": 1, "cancelled": 9}) == \
        "66 of 100 requests failed: 50 status, 7 refused, 7 reset and 2 more kinds"
    assert failures_text(0, {}, {"refused": 3}) == "3 connects failed: refused"
    assert outcome_line(1, failures_text(5, {"refused": 5}), []) == "FAILED: 5 of 5 requests failed: refused"
    assert outcome_line(0, "", []) == "PASSED"
    assert outcome_line(0, "1 of 9 requests failed: status", []) == \
        "PASSED (1 of 9 requests failed: status; the thresholds allow it)"
    assert outcome_line(1, "", ["threshold 'p99 < 5ms' failed (measured 7 ms)"]) == \
        "FAILED: threshold 'p99 < 5ms' failed (measured 7 ms)"
    assert outcome_line(3, "", [], ["worker 1 was lost: killed"]) == "FAILED: worker 1 was lost: killed"
    assert outcome_line(130, "", []) == "INTERRUPTED"
