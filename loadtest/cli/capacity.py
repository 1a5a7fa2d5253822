"""`loadtest capacity URL|CONFIG --slo 'p99<50ms'`: parses the options and wires the search; nothing else.

`loadtest.cli.app` registers `capacity_command` as the `capacity` command, with CAPACITY_EPILOG.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from typing import Any, Optional

import typer

from loadtest.cli.common import _version_option, fail
from loadtest.cli.run import _positive_count
from loadtest.core import exits
from loadtest.model.interrupts import check_interrupted

CAPACITY_EXIT_CODES = (
    f"Exit status: {exits.OK} a capacity was found (limited by the target or by --max-rate, or a lower bound where "
    f"the generator limited the search, which the verdict says); {exits.FAILED} even the first step (--start) missed "
    f"the SLO; {exits.BAD_INPUT} bad input (an SLO that does not parse, a config with closed-model targets only, "
    f"--max-rate below --start); {exits.RUN_FAILED} the run failed; {exits.INTERRUPTED} interrupted (the steps so "
    "far are written).")
# core.capacity.DEFAULT_START, written out: `loadtest --help` must not wait for the stats core to import
DEFAULT_START_TEXT = "100"
CAPACITY_EXAMPLES = """Examples: loadtest capacity http://127.0.0.1:8080/ --slo 'p99<50ms';
loadtest capacity configs/sites.yaml --slo 'p99<20ms' --slo 'errors<1%' --start 100 --max-rate 20000."""


def _rate(text: str, where: str) -> float:
    from loadtest.model.config import ConfigError

    try:
        value = float(text.strip().removesuffix("/s"))
    except ValueError:
        raise ConfigError(f"{where}: must be a rate per second such as 100, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{where}: must be a positive rate per second, got {text!r}")
    return value


def _precision(text: str) -> float:
    from loadtest.model.config import ConfigError

    try:
        value = float(text.strip().removesuffix("%")) / 100.0
    except ValueError:
        raise ConfigError(f"--precision: must be a percentage such as 5%, got {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"--precision: must be between 0% and 100%, got {text!r}")
    return value


CAPACITY_EPILOG = f"{CAPACITY_EXAMPLES}\n\n{CAPACITY_EXIT_CODES}"


def capacity_command(
    target: str = typer.Argument(..., metavar="URL|CONFIG",
                                 help="A URL (one open-model target), or a config with open-model or paced "
                                      "tcp targets."),
    slo: list[str] = typer.Option([], "--slo", metavar="SLO",
                                  help="What must hold at each rate: p50/p90/p95/p99/p99.9/max in ms or s, or "
                                       "errors in % (p99<50ms, errors<1%); repeatable, all must hold."),
    start: str = typer.Option(DEFAULT_START_TEXT, "--start", metavar="R", help="The first step's rate, per second in all."),
    max_rate: Optional[str] = typer.Option(None, "--max-rate", metavar="R",
                                           help="Search no higher than this rate (default: no bound)."),
    step: str = typer.Option("10s", "--step", metavar="DURATION", help="How long each step holds its rate."),
    warmup: str = typer.Option("2s", "--warmup", metavar="DURATION",
                               help="The start of each step left out of its judgement."),
    precision: str = typer.Option("5%", "--precision", metavar="PERCENT",
                                  help="Bisect until the lowest missed rate is within this of the highest "
                                       "met one."),
    workers_text: Optional[str] = typer.Option(None, "--workers", "-w", metavar="N",
                                               help="Worker processes (default: one per core)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", metavar="ADDRESS",
                                          help="Run on the nodes of this Dask scheduler, or on local:N nodes."),
    nodes_text: Optional[str] = typer.Option(None, "--nodes", metavar="N",
                                             help="With --cluster: use N of its nodes."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="DIR",
                                      help="Write the run folder exactly here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Let --out name a folder that holds a run's files."),
    json_out: bool = typer.Option(False, "--json", help="Print capacity.json on stdout (the steps go to stderr)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No step lines; only the verdict."),
    version: bool = _version_option(),
) -> None:
    """Find the highest open-model rate the target sustains within the SLO: steps of rising rate, bracketed by
    doubling, bisected to --precision, the answer held once more."""
    check_interrupted()
    given = Given(target, tuple(slo), start, max_rate, step, warmup, precision, workers_text, cluster, nodes_text,
                  out, overwrite, json_out, quiet)
    raise typer.Exit(search(given))


@dataclass(frozen=True)
class Given:
    """The command's options, as typed."""

    target: str
    slo: tuple[str, ...]
    start: str
    max_rate: str | None
    step: str
    warmup: str
    precision: str
    workers: str | None
    cluster: str | None
    nodes: str | None
    out: str | None
    overwrite: bool
    json_out: bool
    quiet: bool


def read_plan(given: Given) -> tuple[Any, Any]:
    """The config and the search's plan the options ask for; ConfigError or SloError naming what is wrong."""
    from loadtest.core.capacity import parse_slo
    from loadtest.execution.capacity_run import CapacityPlan, check_plan, rated_targets
    from loadtest.model.config import ConfigError, load_config, parse_duration
    from loadtest.model.quick import OneLine, is_url, one_line_config

    if given.out is not None and not given.out.strip():
        raise ConfigError("--out: must be a folder path, got ''")
    first = _rate(given.start, "--start")
    highest = _rate(given.max_rate, "--max-rate") if given.max_rate is not None else None
    step_s = parse_duration(given.step, "--step")
    warmup_s = parse_duration(given.warmup, "--warmup") if given.warmup.strip() not in ("0", "0s") else 0.0
    fraction = _precision(given.precision)
    if is_url(given.target):
        config = one_line_config(OneLine(given.target, rate=given.start, duration="1s"))
    else:
        config = load_config(given.target, defaults={"duration": "1s"})  # the search sets the run's length
    slos = tuple(parse_slo(text, [t.name for t in config.targets]) for text in given.slo)
    rated, paces, unit = rated_targets(config)
    plan = CapacityPlan(slos, first, highest, step_s, warmup_s, fraction, tuple(rated), paces, unit)
    check_plan(plan)
    return config, plan


class Terminal:
    """What the search shows: a header, a line per step as it ends, warnings, the verdict (stderr with --json)."""

    def __init__(self, json_out: bool, quiet: bool) -> None:
        self.shown, self.quiet = (sys.stderr if json_out else sys.stdout), quiet

    def say(self, text: str, always: bool = False) -> None:
        if always or not self.quiet:
            self.shown.write(text + "\n")
            self.shown.flush()

    def step(self, number: int, result: Any) -> None:
        from loadtest.execution.capacity_run import step_line

        self.say(step_line(number, result))

    def event(self, text: str) -> None:
        if text.startswith("error:"):
            typer.echo(f"loadtest: {text}", err=True)
        elif text.startswith(("warning:", "capacity:")) or "listening on" in text:
            self.say(text)


def search(given: Given) -> int:
    """Run the search the options ask for; its exit status."""
    from loadtest.core.capacity import SloError
    from loadtest.execution.capacity_run import run_capacity
    from loadtest.execution.controller import RunError, run
    from loadtest.model.config import ConfigError, parse_workers

    try:
        workers = parse_workers(given.workers, "--workers") if given.workers is not None else None
        nodes = _positive_count(given.nodes, "--nodes") if given.nodes is not None else None
        config, plan = read_plan(given)
    except (ConfigError, SloError) as e:
        fail(str(e), exits.BAD_INPUT)
    terminal = Terminal(given.json_out, given.quiet)
    check_interrupted()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # run() counts them while it runs (as `loadtest run` does)
    terminal.say(f"capacity search: {' and '.join(s.text for s in plan.slos)}; from {plan.start:g}/s"
                 f"{f' up to {plan.max_rate:g}/s' if plan.max_rate else ''}, steps of {plan.step_s:g} s")
    try:
        outcome = run_capacity(config, plan, run, terminal.step, terminal.event, workers=workers, out_dir=given.out,
                               overwrite=given.overwrite, cluster=given.cluster, nodes=nodes)
    except ConfigError as e:
        fail(str(e), exits.BAD_INPUT)
    except RunError as e:
        fail(f"the run failed: {e}", exits.RUN_FAILED)
    except KeyboardInterrupt:
        fail("interrupted before the load started; no reports written", exits.INTERRUPTED)
    for problem in outcome.run.problems:
        typer.echo(f"problem: {problem}", err=True)
    if given.json_out:
        sys.stdout.write(json.dumps(outcome.document, indent=2) + "\n")
        sys.stdout.flush()
    terminal.say(f"reports in {outcome.run.run_dir}")
    terminal.say(outcome.sentence, always=True)
    return outcome.exit_status
