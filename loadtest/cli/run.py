"""`loadtest run CONFIG|URL`: parses the options, starts what serves the run live, and wires the run; nothing else."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace
from typing import Any, Optional

import typer

from loadtest.cli import run_options as opt
from loadtest.cli.common import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUN_FAILED, _version_option, fail)
from loadtest.cli.run_options import DEFAULT_METRICS_LINGER_S
from loadtest.model.interrupts import check_interrupted
from loadtest.model.quick import bare_url_problem, is_url

RUN_EXAMPLES = """Examples: loadtest run configs/sites.yaml;
loadtest run http://127.0.0.1:8080/ -c 50 -d 10s (one target, no file, as wrk or hey);
loadtest run http://127.0.0.1:8080/echo --rate 2000 -m POST --body '{"a": 1}' -H 'Content-Type: application/json'."""


def run_command(
    config_path: str = opt.CONFIG,
    duration: Optional[str] = opt.DURATION,
    workers_text: Optional[str] = opt.WORKERS_TEXT,
    cluster: Optional[str] = opt.CLUSTER,
    nodes_text: Optional[str] = opt.NODES_TEXT,
    out: Optional[str] = opt.OUT,
    overwrite: bool = opt.OVERWRITE,
    quiet: bool = opt.QUIET,
    sample_interval: Optional[str] = opt.SAMPLE_INTERVAL,
    watch_pid: list[str] = opt.WATCH_PID,
    concurrency: Optional[str] = opt.CONCURRENCY,
    rate: Optional[str] = opt.RATE,
    requests_total: Optional[str] = opt.REQUESTS_TOTAL,
    method: Optional[str] = opt.METHOD,
    header: list[str] = opt.HEADER,
    body: Optional[str] = opt.BODY,
    timeout: Optional[str] = opt.TIMEOUT,
    target_name: Optional[str] = opt.TARGET_NAME,
    json_summary: bool = opt.JSON_SUMMARY,
    metrics: Optional[str] = opt.METRICS,
    metrics_linger: Optional[str] = opt.METRICS_LINGER,
    web: Optional[str] = opt.WEB,
    web_token: Optional[str] = opt.WEB_TOKEN,
    wait: bool = opt.WAIT,
    version: bool = _version_option(),
) -> None:
    """Run the load a config file describes, or one URL's, and write its reports."""
    from loadtest.model.config import ConfigError
    from loadtest.model.quick import OneLine

    check_interrupted()  # an interrupt while these imported waited for them to finish
    one_line = OneLine(config_path, concurrency, rate, requests_total, duration, method, tuple(header), body, timeout,
                       target_name)
    live = _Live()
    try:  # the options first, then the file: a mistake on the command line is named before one in the file
        config, workers, nodes, pids, interval = _run_config(config_path, one_line, duration, workers_text,
                                                             nodes_text, watch_pid, out, sample_interval)
        config, linger = live.serve_metrics(config, metrics, metrics_linger)
        live.serve_web(config, web, web_token, wait)
    except ConfigError as e:
        live.close()
        fail(str(e), EXIT_BAD_INPUT)
    _execute(config, live, dict(workers=workers, out_dir=out, overwrite=overwrite, sample_interval=interval,
                                watch_pids=pids, cluster=cluster, nodes=nodes, wait=wait), quiet, json_summary, linger)


def _execute(config: Any, live: _Live, how: dict[str, Any], quiet: bool, json_summary: bool, linger: float) -> None:
    """Run `config` with its outputs (`how`: run()'s options), then exit with the run's status."""
    from loadtest.execution.controller import RunError, run
    from loadtest.model.config import ConfigError
    from loadtest.outputs.json_summary import JsonSummary
    from loadtest.outputs.live import TerminalOutput

    # With --json, stdout carries summary.json alone: the live view and the summary table go to stderr.
    shown = sys.stderr if json_summary else sys.stdout
    outputs: list[Any] = [output for output in (live.endpoint, TerminalOutput(config, shown, quiet, path=not json_summary),
                                                JsonSummary() if json_summary else None, live.page)
                          if output is not None]
    # run() counts interrupts while it runs and puts back what it found when it returns. What it finds is
    # "ignore": once the reports are written a late Ctrl-C must not kill the exit half-way, which it would
    # during interpreter shutdown (Python resets handled signals to the default there) with status -2.
    check_interrupted()  # a Ctrl-C while the config loaded whose exit compile() swallowed: start nothing
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    result = None
    try:
        result = run(config, outputs=outputs, inbox=live.inbox, **how)
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except RunError as e:
        fail(f"the run failed: {e}", EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        fail("interrupted before the load started; no reports written", EXIT_INTERRUPTED)
    finally:
        if live.server is not None and result is None:  # no run to show: stop serving now
            live.server.stop()
    if live.endpoint is not None:
        linger_for_scrape(live.endpoint, linger)
    if live.server is not None:
        linger_for_page(live.server)
    assert result is not None
    raise typer.Exit(result.exit_status)


def _run_config(config_path: str, one_line: Any, duration: Optional[str], workers_text: Optional[str],
                nodes_text: Optional[str], watch_pid: list[str], out: Optional[str],
                sample_interval: Optional[str]) -> tuple[Any, int | None, int | None, tuple[int, ...], float]:
    """The run's config (a file's, or one URL's) and its options checked: (config, workers, nodes, pids, interval).

    ConfigError names the first thing wrong."""
    from loadtest.execution.resources import DEFAULT_SAMPLE_INTERVAL_S, MIN_SAMPLE_INTERVAL_S
    from loadtest.model.config import ConfigError, load_config, parse_duration, parse_pid, parse_workers
    from loadtest.model.quick import one_line_config

    workers = parse_workers(workers_text, "--workers") if workers_text is not None else None
    nodes = _positive_count(nodes_text, "--nodes") if nodes_text is not None else None
    pids = tuple(parse_pid(pid, "--watch-pid") for pid in watch_pid)
    if out is not None and not out.strip():
        raise ConfigError("--out: must be a folder path, got ''")
    run_length = parse_duration(duration, "--duration") if duration is not None else None
    interval = parse_duration(sample_interval, "--sample-interval") if sample_interval is not None \
        else DEFAULT_SAMPLE_INTERVAL_S
    if interval < MIN_SAMPLE_INTERVAL_S:
        raise ConfigError(f"--sample-interval: must be at least {MIN_SAMPLE_INTERVAL_S * 1000:g}ms (each sample "
                          f"reads every process of the run), got {sample_interval!r}")
    if is_url(config_path):
        return one_line_config(one_line), workers, nodes, pids, interval
    if bare_url_problem(config_path):
        raise ConfigError(bare_url_problem(config_path))
    if one_line.given():
        raise ConfigError(f"{one_line.given()[0]}: applies only to a URL (loadtest run http://HOST:PORT/ "
                          f"-c 50); a config file sets it per target")
    config = load_config(config_path)
    if run_length is not None:
        config = replace(config, duration=run_length)
    return config, workers, nodes, pids, interval


class _Live:
    """What serves a run while it lasts, started before it: the Prometheus endpoint, the live page and its API."""

    def __init__(self) -> None:
        self.endpoint: Any = None
        self.server: Any = None
        self.page: Any = None
        self.inbox: Any = None

    def serve_metrics(self, config: Any, metrics: Optional[str], metrics_linger: Optional[str]) -> tuple[Any, float]:
        """--metrics (or the config's metrics:): listen now; the config as run, and how long to linger after."""
        from loadtest.model.config import ConfigError, parse_metrics_address
        from loadtest.outputs.metrics import MetricsEndpoint

        if metrics is not None:
            config = replace(config, metrics=parse_metrics_address(metrics, "--metrics"))
        linger = parse_linger(metrics_linger, DEFAULT_METRICS_LINGER_S)
        if metrics_linger is not None and config.metrics is None:
            raise ConfigError("--metrics-linger: applies only with --metrics (or metrics: in the config)")
        if config.metrics is not None:
            self.endpoint = MetricsEndpoint(config.name, [t.name for t in config.targets])
            url = self.endpoint.listen(*config.metrics, where="--metrics" if metrics is not None else "metrics")
            typer.echo(f"metrics on {url}", err=True)
        return config, linger

    def serve_web(self, config: Any, web: Optional[str], web_token: Optional[str], wait: bool) -> None:
        """--web: the live page and the control API, listening now."""
        from loadtest.execution.control import Inbox
        from loadtest.execution.web import WebServer, check_token
        from loadtest.model.config import ConfigError, parse_metrics_address
        from loadtest.outputs.live_page import LivePage

        token = check_token(web_token)
        if web is None and (token is not None or wait):
            raise ConfigError(f"{'--web-token' if token is not None else '--wait'}: applies only with --web HOST:PORT")
        if web is None:
            return
        host, port = parse_metrics_address(web, "--web")
        self.inbox = Inbox(config)
        self.page = LivePage(config, self.inbox.status)
        self.server = WebServer(self.page, self.inbox, token)
        url = self.server.start(host, port)
        typer.echo(f"live page on {url}" + (" (keep the token: every request needs it)" if self.server.token else ""),
                   err=True)

    def close(self) -> None:
        """Stop serving (the run will not start)."""
        if self.endpoint is not None:
            self.endpoint.close()
        if self.server is not None:
            self.server.stop()


def linger_for_page(server: Any) -> None:
    """While the live page is open, keep serving it (and the run's files it links to), at most
    WEB_LINGER_S or until Ctrl-C; then stop serving."""
    from loadtest.execution.web import WEB_LINGER_S

    if server.watching:
        typer.echo(f"live page: serving the finished run's page and files while it is open (at most "
                   f"{WEB_LINGER_S:g} s; Ctrl-C to stop now)", err=True)
        released = threading.Event()
        previous = {s: signal.signal(s, lambda signum, frame: released.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.linger(WEB_LINGER_S, released)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    server.stop()


def _positive_count(text: str, where: str) -> int:
    """A whole number of at least 1, given as text (--nodes)."""
    from loadtest.model.config import ConfigError

    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{where}: must be a whole number of at least 1, got {text!r}")
    return int(text)


def linger_for_scrape(endpoint: Any, seconds: float) -> None:
    """Serve the final metrics until a scrape reads them, Ctrl-C, or `seconds`; then stop serving."""
    if seconds > 0 and not endpoint.final_scraped:
        typer.echo(f"metrics: serving the final figures until a scrape reads them (at most {seconds:g} s; "
                   f"Ctrl-C to stop now)", err=True)
        previous = {s: signal.signal(s, lambda signum, frame: endpoint.release())
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not endpoint.wait_for_final_scrape(seconds):
                typer.echo(f"metrics: no scrape read the final figures within {seconds:g} s", err=True)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    endpoint.close()


def parse_linger(text: Optional[str], default: float) -> float:
    """--metrics-linger: a duration, or 0 for no linger at all."""
    from loadtest.model.config import parse_duration

    if text is None:
        return default
    if text.strip() in ("0", "0s"):
        return 0.0
    return parse_duration(text, "--metrics-linger")


def summary_text(run_dir: Any) -> str:
    """summary.json's content as written, ending with a newline."""
    from pathlib import Path

    text = (Path(run_dir) / "summary.json").read_text(encoding="utf-8")
    return text if text.endswith("\n") else text + "\n"
