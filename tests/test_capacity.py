"""Capacity search, the pure part: SLOs parse or are refused, steps are judged, the search finds the knee."""

from __future__ import annotations

import pytest

from loadtest.core.capacity import (
    GENERATOR,
    LIMITED_GENERATOR,
    LIMITED_MAX_RATE,
    LIMITED_TARGET,
    MET,
    MISSED,
    CapacitySearch,
    SloError,
    StepFigures,
    certain_miss,
    exit_status,
    judge_step,
    parse_slo,
    step_seconds,
    verdict_sentence,
)
from loadtest.core.recorder import TargetRecorder
from loadtest.core.stats import TargetTotals, aggregate

NAMES = ["home"]


def totals(latencies_ms: list[float], failures: int = 0, lateness_ms: list[float] = (), dropped: int = 0,
           name: str = "home", uncorrected_ms: list[float] = ()) -> TargetTotals:
    rec = TargetRecorder(0)
    for ms in uncorrected_ms:
        rec.uncorrected.record(int(ms * 1e6))
    for ms in latencies_ms:
        rec.success(int(ms * 1e6), 100, 10, 90)
    for _ in range(failures):
        rec.failure("status", "HTTP 500", None)
    for ms in lateness_ms:
        rec.lateness.record(int(ms * 1e6))
    rec.dropped = dropped
    t = TargetTotals(name=name, type="GET")
    t.add(rec.snapshot())
    return t


def figures(t: TargetTotals, rate: float = 100.0, seconds: float | None = None, cpu: dict[str, float] | None = None,
            cap: bool = False) -> StepFigures:
    arrivals = t.lateness.get_total_count() if t.lateness.get_total_count() else None
    if seconds is None:  # 1 s, or 7 s for a step of more requests than a second at the rate holds
        seconds = 1.0 if t.requests <= rate * 1.05 else 7.0
    return StepFigures(rate=rate, seconds=seconds, targets=[t], aggregated=aggregate([t]), arrivals=arrivals,
                       cpu=cpu or {}, cap_reached=cap)


@pytest.mark.parametrize("text, figure, value", [
    ("p99<50ms", "p99", 50e6), ("p99.9 <= 0.2s", "p99.9", 0.2e9), ("p50<800us", "p50", 800e3), ("max<1s", "max", 1e9),
    ("p90<20", "p90", 20e6), ("errors<1%", "error_rate", 0.01), ("errors <= 0.5%", "error_rate", 0.005),
    ("error_rate<0.02", "error_rate", 0.02), ("home: p95<10ms", "p95", 10e6),
])
def test_an_slo_uses_the_thresholds_syntax(text: str, figure: str, value: float) -> None:
    slo = parse_slo(text, NAMES)
    assert (slo.figure, slo.value) == (figure, pytest.approx(value))
    assert slo.target == ("home" if text.startswith("home") else None)


@pytest.mark.parametrize("text, says", [
    ("p99 50ms", "must look like 'p99<50ms'"),
    ("p99>50ms", "upper bound"),
    ("avg<5ms", "an SLO bounds"),
    ("rps<100", "an SLO bounds"),
    ("requests<5", "an SLO bounds"),
    ("errors<1", "give errors in %"),
    ("p99<5%", "is a latency"),
    ("nowhere: p99<5ms", "no target has that name"),
    ("fast", "must look like"),
])
def test_an_slo_that_does_not_parse_is_one_sentence(text: str, says: str) -> None:
    with pytest.raises(SloError) as e:
        parse_slo(text, NAMES)
    message = str(e.value)
    assert message.startswith(f"--slo {text!r}: ") and says in message and "\n" not in message


def search_against(capacity: float, search: CapacitySearch, generator_above: float = float("inf")) -> list[float]:
    """Run a search against a target that meets every rate up to `capacity`; returns the rates held."""
    held = []
    while (rate := search.next_rate()) is not None:
        held.append(rate)
        search.record(GENERATOR if rate > generator_above else MET if rate <= capacity else MISSED)
    return held


@pytest.mark.parametrize("capacity", [13.0, 100.0, 999.0, 1000.0, 1234.5, 70_000.0])
def test_the_search_ends_within_the_precision_below_the_knee(capacity: float) -> None:
    search = CapacitySearch(10.0, precision=0.05)
    held = search_against(capacity, search)
    result = search.result()
    assert result.limited_by == LIMITED_TARGET and result.confirmed
    assert capacity / 1.05 <= result.max_rate <= capacity
    assert held[-1] == result.max_rate and search.steps[-1][1] == "confirm"  # one more hold of the found rate
    assert held[:3] == [10.0, 20.0, 40.0] or capacity < 40  # bracketed by doubling
    assert len(held) <= 24


def test_the_search_stops_at_max_rate_and_says_so() -> None:
    search = CapacitySearch(100.0, max_rate=500.0)
    assert search_against(10_000.0, search) == [100.0, 200.0, 400.0, 500.0, 500.0]
    assert (search.result().max_rate, search.result().limited_by) == (500.0, LIMITED_MAX_RATE)


def test_a_generator_limited_step_ends_the_search_with_a_lower_bound() -> None:
    search = CapacitySearch(100.0)
    held = search_against(10_000.0, search, generator_above=1000.0)
    assert held == [100.0, 200.0, 400.0, 800.0, 1600.0, 1600.0, 1600.0]  # held again twice: it is the generator
    assert [p for _, p, _ in search.steps[-3:]] == ["bracket", "again", "again"]
    result = search.result()
    assert (result.max_rate, result.limited_by) == (800.0, LIMITED_GENERATOR)
    assert exit_status(result) == 0


def test_even_start_missing_is_no_capacity() -> None:
    search = CapacitySearch(100.0)
    assert search_against(50.0, search) == [100.0, 100.0]  # a miss is held again before it is believed
    assert search.result().max_rate == 0.0 and exit_status(search.result()) == 1


@pytest.mark.parametrize("confirm_misses", [1, 2])
def test_a_confirmation_that_misses_twice_searches_again_below(confirm_misses: int) -> None:
    search = CapacitySearch(100.0, precision=0.05)
    first_confirm, bad_left = None, confirm_misses
    while (rate := search.next_rate()) is not None:
        if search.phase == "confirm" and first_confirm is None:
            first_confirm = rate
        if rate == first_confirm and search.phase in ("confirm", "again") and bad_left:
            bad_left -= 1
            search.record(MISSED)  # it met once by luck; held again, it misses (once, or twice)
            continue
        search.record(MET if rate <= 180 else MISSED)
    result = search.result()
    assert first_confirm is not None and result.confirmed
    if confirm_misses == 1:  # missed once, met when held again: confirmed
        assert result.max_rate == first_confirm
        assert [p for _, p, _ in search.steps[-2:]] == ["confirm", "again"]
    else:  # missed twice: not sustained, searched below
        assert first_confirm / 1.05 <= result.max_rate < first_confirm
        assert [p for _, p, _ in search.steps].count("confirm") == 2


def test_one_bad_step_is_held_again_and_not_believed() -> None:
    search = CapacitySearch(100.0, precision=0.05)
    spurious = {200.0: MISSED, 400.0: GENERATOR}  # a stall at 200/s, a passing generator hiccup at 400/s
    while (rate := search.next_rate()) is not None:
        outcome = spurious.pop(rate, None) or (MET if rate <= 1000 else MISSED)
        search.record(outcome)
    result = search.result()
    assert result.limited_by == LIMITED_TARGET and 1000 / 1.05 <= result.max_rate <= 1000
    assert [(r, p, o) for r, p, o in search.steps[:5]] == [
        (100.0, "bracket", MET), (200.0, "bracket", MISSED), (200.0, "again", MET), (400.0, "bracket", GENERATOR),
        (400.0, "again", MET)]


@pytest.mark.parametrize("start, max_rate", [(0.0, None), (100.0, 50.0)])
def test_a_search_refuses_impossible_bounds(start: float, max_rate: float | None) -> None:
    with pytest.raises(ValueError):
        CapacitySearch(start, max_rate)


def test_a_step_is_met_when_every_slo_holds() -> None:
    slos = [parse_slo("p99<50ms"), parse_slo("errors<1%")]
    step = judge_step(slos, figures(totals([5.0] * 995 + [60.0] * 5, failures=5, lateness_ms=[0.5] * 1000), 1000.0),
                      NAMES)
    assert step.met and step.outcome == MET and step.why == ""
    assert step.p50_ms == pytest.approx(5.0, rel=0.01) and step.error_rate == pytest.approx(5 / 1005)
    assert step.achieved_rate == 1000.0
    assert step.as_dict().keys() == {"rate", "achieved_rate", "p50_ms", "p99_ms", "error_rate", "generator_cpu",
                                     "met", "why"}


def test_a_step_misses_on_the_slo_it_breaks() -> None:
    slos = [parse_slo("p99<50ms"), parse_slo("errors<1%")]
    step = judge_step(slos, figures(totals([5.0] * 90 + [80.0] * 10, lateness_ms=[0.5] * 100)), NAMES)
    assert not step.met and step.outcome == MISSED
    assert step.why.startswith("p99<50ms (measured 80") and "errors" not in step.why
    step = judge_step(slos, figures(totals([5.0] * 90, failures=10, lateness_ms=[0.5] * 100)), NAMES)
    assert step.outcome == MISSED and step.why.startswith("errors<1% (measured 10.00%)")


@pytest.mark.parametrize("t, cpu, says", [
    (totals([5.0] * 100, lateness_ms=[0.5] * 100), {"worker-0": 50.0, "worker-1": 97.0}, "worker-1 at 97% CPU"),
    (totals([5.0] * 100, lateness_ms=[0.5] * 100, dropped=3), {}, "3 arrivals dropped"),
    (totals([60.0] * 100, lateness_ms=[30.0] * 100, uncorrected_ms=[30.0] * 100), {},
     "arrivals started late (p99 30.0 ms); from the actual sends the target's p99 was 30.0 ms"),
    (totals([5.0] * 80, lateness_ms=[0.5] * 80), {}, "arrivals started at 80.0/s of 100.0/s"),
    (totals([5.0] * 600, lateness_ms=[0.5] * 600), {}, "arrivals started at 85.7/s of 100.0/s"),
])
def test_a_step_the_generator_did_not_deliver_is_never_an_slo_miss(t: TargetTotals, cpu: dict[str, float],
                                                                    says: str) -> None:
    step = judge_step([parse_slo("p99<50ms")], figures(t, cpu=cpu), NAMES)
    assert not step.met and step.outcome == GENERATOR
    assert step.why.startswith("generator: ") and says in step.why


def test_late_arrivals_do_not_spoil_a_step_that_met_the_slo_anyway() -> None:
    # the latency counts from each arrival's intended start, so it carries the lateness: a met SLO stands
    step = judge_step([parse_slo("p99<50ms")], figures(totals([40.0] * 100, lateness_ms=[30.0] * 100)), NAMES)
    assert step.outcome == MET


def test_late_arrivals_do_not_excuse_a_target_slow_on_its_own() -> None:
    t = totals([890.0] * 100, lateness_ms=[395.0] * 100, uncorrected_ms=[495.0] * 100)
    step = judge_step([parse_slo("p99<50ms")], figures(t), NAMES)
    assert step.outcome == MISSED and step.why.startswith("p99<50ms (measured 890")
    # nor a miss of the error rate
    t = totals([40.0] * 90, failures=10, lateness_ms=[395.0] * 100, uncorrected_ms=[5.0] * 90)
    assert judge_step([parse_slo("p99<50ms"), parse_slo("errors<1%")], figures(t), NAMES).outcome == MISSED


def test_late_arrivals_behind_a_full_max_concurrency_are_the_targets_doing() -> None:
    t = totals([900.0] * 80, lateness_ms=[400.0] * 80, dropped=20)
    step = judge_step([parse_slo("p99<50ms")], figures(t, cap=True), NAMES)
    assert step.outcome == MISSED and step.why.startswith("p99<50ms")
    # a saturated worker still counts: its latencies measure the generator
    step = judge_step([parse_slo("p99<50ms")], figures(t, cap=True, cpu={"worker-0": 99.0}), NAMES)
    assert step.outcome == GENERATOR


def test_a_step_with_no_response_is_missed() -> None:
    step = judge_step([parse_slo("errors<1%")], figures(totals([], lateness_ms=[0.1] * 100)), NAMES)
    assert step.outcome == MISSED and step.p99_ms is None


def test_a_miss_is_certain_once_more_requests_are_above_the_bound_than_the_step_could_allow() -> None:
    slo = [parse_slo("p99<50ms")]
    # 1 s of 8: 100 requests so far, at most ~1,000 in all; 10 above is 1%, not yet more than 1% of 1,000
    assert certain_miss(slo, figures(totals([5.0] * 90 + [80.0] * 10)), NAMES, 8.0) == ""
    assert "requests above it" in certain_miss(slo, figures(totals([5.0] * 80 + [80.0] * 20)), NAMES, 8.0)
    assert "1 requests above" in certain_miss([parse_slo("max<50ms")], figures(totals([5.0] * 99 + [80.0])),
                                              NAMES, 8.0)
    assert "failed already" in certain_miss([parse_slo("errors<1%")], figures(totals([5.0] * 80, failures=20)),
                                            NAMES, 8.0)


def test_the_verdict_is_one_sentence_for_each_ending() -> None:
    met = judge_step([parse_slo("p99<50ms")], figures(totals([5.0] * 100, lateness_ms=[0.1] * 100)), NAMES)
    missed = judge_step([parse_slo("p99<50ms")], figures(totals([80.0] * 200, lateness_ms=[0.1] * 200), 200.0),
                        NAMES)
    search = CapacitySearch(100.0, precision=0.5)
    search_against(150.0, search)
    text = verdict_sentence(search.result(), ["p99<50ms"], [met, missed])
    assert text.startswith("Capacity: 150/s (requests) within p99<50ms") and "200/s missed" in text
    assert text.count(". ") == 0 and text.endswith(".")


@pytest.mark.parametrize("step, warmup, expected", [(10, 2, (2, 7)), (3, 1, (1, 1)), (2, 5, (0, 1)), (10, 0, (0, 9))])
def test_a_step_is_the_mixed_second_then_the_warm_up_then_judged_seconds(step: float, warmup: float,
                                                                           expected: tuple[int, int]) -> None:
    assert step_seconds(step, warmup) == expected


# -- the step driver, on simulated seconds ---------------------------------------------------------------------

class FifoSeconds:
    """Seconds of a simulated FIFO target of `capacity`/s: a backlog grows by (rate - capacity) a second; the
    second in which the rate changes is poisoned (10 s latencies), so a driver that judged it would miss."""

    def __init__(self, capacity: float, start: float) -> None:
        self.capacity, self.rate, self.backlog, self.seq = capacity, start, 0.0, 0
        self.changed = True  # the run's first second: workers starting
        self.rates: list[float] = []
        self.stopped = False

    def set_rate(self, rate: float) -> None:
        self.rate, self.changed = rate, True
        self.rates.append(rate)

    def frame(self) -> object:
        from types import SimpleNamespace

        from loadtest.core.stats import Interval

        n = int(round(self.rate))
        self.backlog = max(0.0, self.backlog + self.rate - self.capacity)
        late_ms = 10_000.0 if self.changed else 2.0 + self.backlog / self.capacity * 1000
        second = totals([late_ms] * n, lateness_ms=[0.1] * n, uncorrected_ms=[late_ms] * n)
        self.changed = False
        interval = Interval(self.seq, float(self.seq), self.seq + 1.0, [second])
        self.seq += 1
        return SimpleNamespace(interval=interval, stats=SimpleNamespace(elapsed=float(self.seq)),
                               worker_cpu=[20.0, 25.0], machine_cpu=50.0)


def test_the_driver_judges_whole_seconds_after_each_change_and_drains_after_a_miss() -> None:
    from loadtest.execution.capacity_driver import CapacityDriver, RatedTarget

    target = FifoSeconds(100.0, 20.0)
    search = CapacitySearch(20.0, precision=0.05)
    steps: list[tuple[int, object]] = []
    driver = CapacityDriver([parse_slo("p99<50ms")], [("home", "GET")], [RatedTarget(0, "home", 1.0, cap=5000)],
                            search, warm=0, judged=3, set_rate=target.set_rate,
                            stop=lambda: setattr(target, "stopped", True), on_step=lambda n, s: steps.append((n, s)))
    driver.start()
    for _ in range(300):
        if target.stopped:
            break
        driver.add(target.frame())
    assert target.stopped and search.done
    result = search.result()
    assert result.limited_by == LIMITED_TARGET and 100 / 1.05 <= result.max_rate <= 100
    assert all(s.met == (s.rate <= 100) for _, s in steps)  # the poisoned seconds were never judged
    assert [n for n, _ in steps] == list(range(1, len(steps) + 1))
    assert steps[0][1].generator_cpu == 25.0 and steps[0][1].achieved_rate == 20.0
    # after the first miss (at 160/s, held again) the rate drops to half the highest met (80/s) to drain
    first_miss = next(k for k, (_, s) in enumerate(steps) if not s.met)
    assert steps[first_miss][1].rate == 160.0 and 40.0 in target.rates
    # a hopeless step ends as soon as its miss is certain: before its judged seconds are up
    assert any("ended early" in s.why for _, s in steps if s.rate >= 160)


def test_the_rated_targets_share_the_rate_and_paced_tcp_moves_by_connections() -> None:
    from loadtest.execution.capacity_run import CapacityPlan, asked_rate, capacity_config, levels_for, rated_targets
    from loadtest.model.config import ConfigError, parse_config

    config = parse_config({"duration": "5s", "thresholds": [{"threshold": "p99 < 1ms", "abort_on_fail": True}],
                           "targets": [
                               {"name": "a", "url": "http://127.0.0.1:9/", "rate": 100},
                               {"name": "b", "url": "http://127.0.0.1:9/", "rate": 0,
                                "stages": [{"duration": "5s", "target": 300}]},
                               {"name": "c", "url": "http://127.0.0.1:9/", "concurrency": 4},
                               {"name": "t", "tcp": "127.0.0.1:9", "connections": 20, "rate": 200}]})
    rated, paces, unit = rated_targets(config)
    assert [(t.name, t.share) for t in rated] == [("a", 100 / 600), ("b", 300 / 600), ("t", 200 / 600)]
    assert paces == {"t": 10.0} and unit == "requests, journeys or messages"
    plan = CapacityPlan((parse_slo("p99<5ms"),), 60.0, rated=tuple(rated), paces=paces)
    assert levels_for(plan, 1200.0) == {"a": 200.0, "b": 600.0, "t": 40.0}  # 40 connections of 10 messages/s
    assert asked_rate(plan, 1210.0) == pytest.approx(1210.0 * 4 / 6 + 40 * 10.0)  # whole connections
    steered = capacity_config(config, plan)
    a, b, c, t = steered.targets
    assert (a.rate, b.rate, b.stages, c.concurrency) == (10.0, 30.0, (), 4)  # the closed target is background
    assert (t.connections, t.rate) == (2, 20.0) and steered.thresholds == () and steered.requests is None
    with pytest.raises(ConfigError, match="closed-model targets only"):
        rated_targets(parse_config({"duration": "1s", "targets": [{"url": "http://127.0.0.1:9/", "concurrency": 1}]}))


def test_the_command_lines_default_start_is_the_searchs() -> None:
    from loadtest.cli.capacity import DEFAULT_START_TEXT
    from loadtest.core.capacity import DEFAULT_START

    assert float(DEFAULT_START_TEXT) == DEFAULT_START


def test_a_few_arrivals_short_at_a_low_rate_are_not_a_failed_delivery() -> None:
    # 66 of 70 at 10/s over 7 s: 4 late ones landed in the next second, not a generator that cannot keep up
    step = judge_step([parse_slo("p99<50ms")], figures(totals([5.0] * 66, lateness_ms=[0.5] * 66), 10.0, 7.0),
                      NAMES)
    assert step.outcome == MET
