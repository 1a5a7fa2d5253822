"""`loadtest capacity`: one run whose rate a search moves step by step, and its answer.

The config's rated targets (open-model HTTP and flow targets, paced tcp
targets) start at the search's first rate, split in proportion to their own
rates, with their stages dropped; closed-model targets, if any, keep their
load as background. The run is steered through its control inbox
(`loadtest.execution.control`): the step driver (`capacity_driver`) posts
each step's levels and, when the search is over, a Stop. A paced tcp target's
connections each keep the config's pace (its rate over its connections), so
its messages per second move with the connections the search sets.

The run folder is a run's (its stats.csv and history.csv count every request
of every step), plus capacity.json and capacity.csv; report.html is written
again with the capacity section.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtest.core.capacity import (DEFAULT_PRECISION, DEFAULT_STEP_S, DEFAULT_WARMUP_S, MAX_STEPS, CapacitySearch,
                                    SearchResult, StepResult, exit_status, step_seconds, verdict_sentence)
from loadtest.core import exits
from loadtest.core.schedule import peak_level
from loadtest.core.thresholds import Threshold
from loadtest.execution.capacity_driver import DRAIN_MOST_STEPS, CapacityDriver, RatedTarget
from loadtest.execution.control import MAX_RATE, ControlError, Inbox, SetLevel, Stop
from loadtest.model.config import ConfigError, RunConfig
from loadtest.model.kinds import kind_of
from loadtest.model.run_result import RunResult

ORIGIN = "capacity"
SLACK_S = 60.0  # the run's own duration bounds the search: its most steps and drains, and this much more


@dataclass(frozen=True)
class CapacityPlan:
    """What the search holds: its SLOs and bounds, and each rated target's share of the rate."""

    slos: tuple[Threshold, ...]
    start: float
    max_rate: float | None = None
    step_s: float = DEFAULT_STEP_S
    warmup_s: float = DEFAULT_WARMUP_S
    precision: float = DEFAULT_PRECISION
    rated: tuple[RatedTarget, ...] = ()
    paces: Mapping[str, float] = field(default_factory=dict)  # paced tcp: messages/s per connection
    unit: str = "requests"  # what the rate counts: requests, journeys or messages (per second)


@dataclass
class CapacityOutcome:
    result: SearchResult
    steps: list[StepResult]
    sentence: str
    exit_status: int
    run: RunResult
    document: dict[str, Any]


def rated_targets(config: RunConfig) -> tuple[list[RatedTarget], dict[str, float], str]:
    """The targets whose rate the search sets, each with its share; paced tcp targets' pace; the rate's unit.

    ConfigError when the config has none (closed-model targets only)."""
    found: list[tuple[int, Any, float, int | None, bool]] = []
    paces: dict[str, float] = {}
    units = set()
    for i, t in enumerate(config.targets):
        load = kind_of(t).load(t)
        if load.users <= 0:
            continue  # a flow's step rows: their flow's load is theirs
        if load.arrival is not None:
            weight = load.start if load.start > 0 else peak_level(load.stages, load.start)
            found.append((i, t, weight, load.users, True))
            units.add("journeys" if t.kind == "flow" else "requests")
        elif float(getattr(t, "rate", 0.0) or 0.0) > 0 and not load.stages:  # paced tcp: a rate over connections
            paces[t.name] = t.rate / t.peak_connections
            found.append((i, t, t.rate, None, False))
            units.add("messages")
    if not found:
        raise ConfigError("capacity needs an open-model target to search its rate (an HTTP or flow target with "
                          "rate:, or a paced tcp target with rate:); this config has closed-model targets only")
    total = sum(w for _, _, w, _, _ in found)
    rated = [RatedTarget(i, t.name, w / total, cap, counts) for i, t, w, cap, counts in found]
    unit = units.pop() if len(units) == 1 else "requests, journeys or messages"
    return rated, paces, unit


def capacity_config(config: RunConfig, plan: CapacityPlan) -> RunConfig:
    """The run's config: rated targets at the first step's rate without their stages; a duration that bounds the
    whole search; no `requests:` total."""
    targets = list(config.targets)
    levels = levels_for(plan, plan.start)
    for t in plan.rated:
        target = targets[t.index]
        if t.name in plan.paces:
            connections = int(levels[t.name])
            targets[t.index] = replace(target, connections=connections, rate=connections * plan.paces[t.name],
                                       stages=())
        else:
            targets[t.index] = replace(target, rate=levels[t.name], stages=())
    warm, judged = step_seconds(plan.step_s, plan.warmup_s)
    bound = MAX_STEPS * (1 + warm + judged) * (1 + DRAIN_MOST_STEPS) + SLACK_S
    # The SLOs are the search's criteria; the config's thresholds (an abort_on_fail among them would end the
    # search at its first overloaded step) are not checked.
    return replace(config, targets=tuple(targets), duration=bound, requests=None, thresholds=())


def levels_for(plan: CapacityPlan, rate: float) -> dict[str, float]:
    """Each rated target's level at `rate` in all: arrivals per second, or a paced tcp target's connections."""
    out = {}
    for t in plan.rated:
        share = rate * t.share
        pace = plan.paces.get(t.name)
        out[t.name] = float(max(1, round(share / pace))) if pace else share
    return out


def asked_rate(plan: CapacityPlan, rate: float) -> float:
    """The rate the levels at `rate` actually ask (paced tcp connections are whole)."""
    levels = levels_for(plan, rate)
    return sum(levels[t.name] * plan.paces[t.name] if t.name in plan.paces else levels[t.name] for t in plan.rated)


def check_plan(plan: CapacityPlan) -> None:
    """Bad bounds as one sentence each (ConfigError)."""
    if not plan.slos:
        raise ConfigError("--slo: give at least one, such as --slo 'p99<50ms'")
    if not plan.start > 0 or not math.isfinite(plan.start):
        raise ConfigError(f"--start: must be a positive rate, got {plan.start:g}")
    if plan.max_rate is not None and plan.max_rate < plan.start:
        raise ConfigError(f"--max-rate ({plan.max_rate:g}/s) is below --start ({plan.start:g}/s); "
                          f"give a --max-rate at or above it")
    if not 0 < plan.precision < 1:
        raise ConfigError(f"--precision: must be between 0% and 100%, got {plan.precision * 100:g}%")
    if plan.step_s < 2:
        raise ConfigError(f"--step: must be at least 2s (a second of warm-up and one judged), got {plan.step_s:g}s")
    if plan.warmup_s < 0:
        raise ConfigError(f"--warmup: must not be negative, got {plan.warmup_s:g}s")


def run_capacity(config: RunConfig, plan: CapacityPlan, run: Callable[..., RunResult],
                 on_step: Callable[[int, StepResult], None] = lambda n, step: None,
                 on_event: Callable[[str], None] | None = None, **run_options: Any) -> CapacityOutcome:
    """Search `config`'s capacity within `plan.slos`, in one run (`run` is the controller's), and write its files."""
    from loadtest.outputs.capacity_files import capacity_document, write_capacity_files
    from loadtest.outputs.html_report import write_html_report

    check_plan(plan)
    steered = capacity_config(config, plan)
    inbox = Inbox(steered)
    # Unbounded, the search stops at the highest level the control inbox takes (a generator saturates long before).
    search = CapacitySearch(plan.start, plan.max_rate if plan.max_rate is not None else max(plan.start, MAX_RATE),
                            plan.precision)
    refused: list[str] = []
    warm, judged = step_seconds(plan.step_s, plan.warmup_s)

    def set_rate(rate: float) -> None:
        try:
            for name, level in levels_for(plan, rate).items():
                if name in plan.paces:
                    inbox.post(SetLevel(name, users=int(level), origin=ORIGIN))
                else:
                    inbox.post(SetLevel(name, rate=level, origin=ORIGIN))
        except ControlError as e:  # a level past what the inbox takes (100,000 paced connections, say)
            refused.append(f"the level for {rate:,.1f}/s was refused ({e.message})")
            stop()

    def stop() -> None:
        inbox.post(Stop(ORIGIN, "the capacity search is over"))

    rows = [(t.name, kind_of(t).row_type(t)) for t in steered.targets]
    driver = CapacityDriver(plan.slos, rows, plan.rated, search, warm, judged, set_rate, stop, on_step,
                            on_event or (lambda text: None), asked=lambda rate: asked_rate(plan, rate))
    driver.start()  # (the run starts it again as its load starts: the same first step)
    outputs = [driver, *run_options.pop("outputs", ())]
    result = run(steered, inbox=inbox, outputs=outputs, on_event=on_event, **run_options)
    answer = search.result()
    steps = driver.steps
    sentence = verdict_sentence(answer, [s.text for s in plan.slos], steps, plan.unit)
    if driver.stopped_why or refused:
        sentence = sentence[:-1] + f" (the search ended early: {(refused or [driver.stopped_why])[0]})."
    elif result.interrupted:
        sentence = (f"Interrupted after {len(steps)} step{'s' if len(steps) != 1 else ''}: the search did not end; "
                    f"the highest rate met so far is {answer.max_rate:,.1f}/s ({plan.unit}).")
    elif not search.done:
        sentence = sentence[:-1] + " (the run ended before the search did)."
    document = capacity_document(answer, plan.slos, steps)
    write_capacity_files(Path(result.run_dir), document)
    try:
        write_html_report(Path(result.run_dir))
    except Exception as e:  # noqa: BLE001 - the files stand without the page, as after any run
        result.problems.append(f"report.html could not be written: {type(e).__name__}: {e}")
    status = result.exit_status if result.exit_status in (exits.RUN_FAILED, exits.INTERRUPTED) else exit_status(answer)
    if not search.done and status == exits.OK and not result.interrupted and not refused and not driver.stopped_why:
        status = exits.RUN_FAILED  # the run ended under the search (the duration bound): no answer to stand on
    return CapacityOutcome(answer, steps, sentence, status, result, document)


def step_line(number: int, step: StepResult) -> str:
    """A step as the terminal shows it when it ends."""
    p99 = f"{step.p99_ms:,.2f} ms" if step.p99_ms is not None else "—"
    cpu = f", worker CPU {step.generator_cpu:.0f}%" if step.generator_cpu is not None else ""
    what = "met" if step.met else step.why
    return (f"step {number:>2} {step.phase:<8} {step.rate:>10,.1f}/s  achieved {step.achieved_rate:>10,.1f}/s  "
            f"p99 {p99:>11}{cpu}  {what}")

