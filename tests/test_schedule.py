"""Stages and arrivals: the pure schedule arithmetic."""

from __future__ import annotations

import pytest

from loadtest.model.config import ConfigError, parse_config
from loadtest.core.schedule import (
    Arrivals,
    ArrivalSchedule,
    Stage,
    level_at,
    peak_level,
    stages_duration,
    sustained_level_until,
    worker_share,
    zero_until,
)

RAMP = (Stage(10.0, 100.0), Stage(5.0, 100.0), Stage(5.0, 0.0))


@pytest.mark.parametrize("t, level", [(0, 20), (5, 60), (10, 100), (12, 100), (17.5, 50), (20, 0), (99, 0)])
def test_levels_ramp_linearly_from_the_previous_value(t: float, level: float) -> None:
    assert level_at(RAMP, 20.0, t) == pytest.approx(level)


def test_duration_and_peak() -> None:
    assert stages_duration(RAMP) == 20.0
    assert peak_level(RAMP, 20.0) == 100.0 and peak_level(RAMP, 300.0) == 300.0


@pytest.mark.parametrize("t, peak", [(0, 20), (5, 60), (10, 100), (18, 100), (99, 100)])
def test_the_level_held_a_while_so_far(t: float, peak: float) -> None:
    # a ramp up is held to where a window starting by `t` starts; a plateau to its level
    assert sustained_level_until(RAMP, 20.0, t, 0.25) == pytest.approx(peak)
    # a ramp down from 40 to 0 in 4 s: at or above 37.5 for the first quarter second, no higher for longer
    assert sustained_level_until((Stage(4.0, 0.0),), 40.0, t, 0.25) == pytest.approx(37.5)


def test_a_ramp_that_turns_at_once_is_held_to_less_than_its_tip() -> None:
    # Up from 10 to 200 in 1 s, then straight down to 50 in 1 s: 200 lasts an instant. The best quarter
    # second straddles the turn where both sides are equal: 200 - 190x = 200 - 150(0.25 - x), about 179.
    triangle = (Stage(1.0, 200.0), Stage(1.0, 50.0))
    held = sustained_level_until(triangle, 10.0, 1.0, 0.25)
    assert 178.5 <= held <= 179.05
    assert sustained_level_until(triangle, 10.0, 0.5, 0.25) == pytest.approx(105.0)  # ramping up: 10 + 190 * 0.5


def test_tcp_stages_ramp_the_connections_held() -> None:
    config = parse_config({"targets": [
        {"name": "conns", "tcp": "127.0.0.1:9", "rate": 100,
         "stages": [{"duration": "2s", "target": 50}, {"duration": "3s", "target": 5}]}]})
    (conns,) = config.targets
    assert config.duration == 5.0
    assert conns.connections == 0 and conns.peak_connections == 50
    assert conns.asked_at_peak(2.5) == 38  # the level at 1.5 s: the ramp has a second to be held
    # 50 lasts an instant (up at 25/s, then down at 15/s): held to the most it keeps for a quarter second,
    # 50 - 25x = 50 - 15(0.25 - x) at x = 0.094 s, 47.7
    assert conns.asked_at_peak(60.0) == 48
    fixed = parse_config({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "connections": 7}]}).targets[0]
    assert fixed.peak_connections == fixed.asked_at_peak(0.5) == 7


@pytest.mark.parametrize("target, message", [
    ({"stages": [{"duration": "1s", "target": 0}]}, "stages: never reach a connection"),
    ({"connections": 0}, "connections: must be a positive integer"),
    ({"stages": [{"duration": "1s", "target": 5}], "think": "1s"}, "unknown field 'think'"),
])
def test_tcp_stage_mistakes(target: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", **target}]})


def test_worker_shares_add_up_to_the_whole() -> None:
    for total in (0, 1, 7, 10, 101):
        for workers in (1, 2, 3, 16):
            assert sum(worker_share(total, workers, k) for k in range(workers)) == total


def test_constant_and_poisson_gaps() -> None:
    assert Arrivals("constant").unit() == 1.0
    poisson = Arrivals("poisson", seed=1)
    gaps = [poisson.unit() for _ in range(20000)]
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, rel=0.03)
    assert min(gaps) < 0.1 and max(gaps) > 4  # exponential, not constant


def test_stage_and_model_config() -> None:
    config = parse_config({"targets": [
        {"name": "users", "url": "http://127.0.0.1:1/", "stages": [{"duration": "3s", "target": 10}],
         "think": ["10ms", "20ms"]},
        {"name": "paced", "url": "http://127.0.0.1:1/", "rate": 0, "arrival": "poisson",
         "stages": [{"duration": "5s", "target": 300}]}]})
    users, paced = config.targets
    assert config.duration == 5.0  # the longest ramp
    assert users.model == "closed" and users.concurrency == 0 and users.peak_users == 10
    assert users.think == (0.01, 0.02)
    assert paced.model == "open" and paced.arrival == "poisson" and paced.stages == (Stage(5.0, 300.0),)


@pytest.mark.parametrize("target, message", [
    ({"rate": 10, "concurrency": 5}, "not both"),
    ({"rate": 10, "think": "1s"}, "only the closed model"),
    ({"rate": 0}, "rate: must be a positive number"),
    ({"concurrency": 5, "max_concurrency": 10}, "only the open model"),
    ({"rate": 5, "arrival": "bursty"}, "arrival: must be one of constant, poisson"),
    ({"stages": [{"duration": "1s"}]}, "must have exactly duration and target"),
    ({"stages": [{"duration": "1s", "target": -1}]}, "target: must be a number, 0 or more"),
    ({"stages": []}, "must be a list"),
    ({"think": ["2s", "1s"]}, "must not run backwards"),
    ({"think": "soon"}, "think: must be a duration"),
])
def test_model_mistakes(target: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", **target}]})


def per_second(schedule: ArrivalSchedule, first: int, seconds: int) -> list[int]:
    counts = [0] * seconds
    due = first
    while due < schedule.until_ns:
        counts[int(due // 1e9)] += 1
        due = schedule.next_due(due)
    return counts


def staged(stages: tuple[Stage, ...], start: float) -> ArrivalSchedule:
    end = stages_duration(stages)
    return ArrivalSchedule("constant", 1, lambda t: level_at(stages, start, t / 1e9), True, end * 1e9)


def test_a_rate_that_climbs_from_one_a_second_is_followed_at_once() -> None:
    schedule = staged((Stage(1.0, 1000.0), Stage(3.0, 1000.0)), 1.0)
    counts = per_second(schedule, schedule.next_due(0, 0.0), 4)
    assert abs(counts[0] - 500) <= 5 and counts[1:] == [1000, 1000, 1000]


def test_a_stage_at_zero_has_no_arrivals_and_the_climb_after_it_is_followed() -> None:
    schedule = staged((Stage(2.0, 0.0), Stage(2.0, 0.0), Stage(2.0, 100.0), Stage(2.0, 100.0)), 100.0)
    counts = per_second(schedule, schedule.next_due(0, 0.0), 8)
    expected = [75, 25, 0, 0, 25, 75, 100, 100]
    assert all(abs(c - e) <= 2 for c, e in zip(counts, expected)), counts


def test_constant_arrivals_of_several_workers_interleave() -> None:
    # two workers at 10/s each (20/s in all): one starts half a gap after the other
    schedules = [ArrivalSchedule("constant", k, lambda t: 10.0, False, 1e9) for k in range(2)]
    dues = sorted(d for k, sch in enumerate(schedules) for d in [sch.next_due(0, k / 2)]
                  + [sch.next_due(sch.next_due(0, k / 2))])
    assert dues == [0, 50_000_000, 100_000_000, 150_000_000]


def test_a_long_stretch_at_rate_zero_is_jumped_over_not_stepped_through() -> None:
    week = 7 * 24 * 3600.0
    stages = (Stage(1.0, 50.0), Stage(1.0, 0.0), Stage(week, 0.0), Stage(1.0, 50.0))
    assert zero_until(stages, 50.0, 2.5) == 2.0 + week and zero_until(stages, 50.0, 0.5) == 0.5
    assert zero_until((Stage(1.0, 0.0),), 50.0, 3.0) == float("inf")  # held at 0 after the last stage
    end = stages_duration(stages) * 1e9
    schedule = ArrivalSchedule("constant", 1, lambda t: level_at(stages, 50.0, t / 1e9), True, end,
                               lambda t: zero_until(stages, 50.0, t / 1e9) * 1e9)
    dues, due = [], schedule.next_due(0, 0.0)
    while due < end:
        dues.append(due)
        due = schedule.next_due(due)
    assert 99 <= len(dues) <= 102  # 50 + 25 in the first two seconds, 25 in the last, none in the week between
    assert 24 <= sum(1 for d in dues if d > 2e9) <= 26 and not [d for d in dues if 2.1e9 < d < end - 1.1e9]


def test_constant_gaps_stay_exact_over_many_arrivals() -> None:
    # 3/s: gaps of 333,333,333.3 ns; truncating each would put a seventh arrival a few ns before 2 s
    schedule = ArrivalSchedule("constant", 1, lambda t: 3.0, False, 2e9)
    dues, due = [], schedule.next_due(0, 0.0)
    while due < 2e9:
        dues.append(due)
        due = schedule.next_due(due)
    assert dues == [0, 333_333_333, 666_666_667, 1_000_000_000, 1_333_333_333, 1_666_666_667]
