"""The command line: parses options and wires the library; nothing else."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import threading
from dataclasses import replace
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from loadtest import __version__
from loadtest.core import exits
from loadtest.model.interrupts import EXIT_INTERRUPTED, check_interrupted, on_interrupt
from loadtest.model.quick import DEFAULT_CONCURRENCY, DEFAULT_DURATION, bare_url_problem, is_url

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT, EXIT_RUN_FAILED = exits.OK, exits.FAILED, exits.BAD_INPUT, exits.RUN_FAILED
DEFAULT_METRICS_LINGER_S = 15.0  # Prometheus' default scrape interval: a scrape comes within it

EXIT_CODES = exits.help_text()

RUN_EXAMPLES = """Examples: loadtest run configs/sites.yaml;
loadtest run http://127.0.0.1:8080/ -c 50 -d 10s (one target, no file, as wrk or hey);
loadtest run http://127.0.0.1:8080/echo --rate 2000 -m POST --body '{"a": 1}' -H 'Content-Type: application/json'."""
_REQUIRED_ARGUMENT = re.compile(r"^\{(.*)\}(\.\.\.)?$")


def _tidy_help(params: list[Any]) -> list[Any]:
    """Help that names values as users write them: no `<bool>` after a flag, no `<str>` beside CONFIG.

    Typer prints each parameter's Python type unless it has a metavar; a flag gets an empty one, any
    other option its name in capitals unless it was given one, and an argument shows its name alone.
    """
    for param in params:
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type_rich = lambda ctx: None  # the name (CONFIG) says it; `<str>` adds nothing
        elif getattr(param, "is_flag", False):
            param.metavar = param.metavar or ""
        elif param.metavar is None and param.name:
            param.metavar = param.name.upper()
    return params


class _Command(TyperCommand):
    """A command whose help reads `run [OPTIONS] CONFIG`, not `{CONFIG}`, with no Python types."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_help(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_REQUIRED_ARGUMENT.sub(r"\1\2", piece) for piece in super().collect_usage_pieces(ctx)]


class _Group(TyperGroup):
    """A command group that says `did you mean loadtest run ok.yaml?` for a config given without a command."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_help(super().get_params(ctx))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None and "run" in self.commands and _looks_like_config(name):
            fail(f"{name!r} is not a command; did you mean `loadtest run {shlex.join(args)}`?", EXIT_BAD_INPUT)
        return super().resolve_command(ctx, args)


def _looks_like_config(text: str) -> bool:
    """A config file's path or a URL, given where a command was expected."""
    if text.startswith("-"):
        return False
    return is_url(text) or text.lower().endswith((".yaml", ".yml")) or os.path.isfile(text)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"loadtest {__version__}")
        raise typer.Exit(EXIT_OK)


def _version_option() -> Any:
    """`--version`, on the app and on every command."""
    return typer.Option(False, "--version", callback=_show_version, is_eager=True, expose_value=False,
                        help="Show the version and exit.")


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Load testing from one gevent worker process per CPU core, with exact merged statistics.",
    epilog=EXIT_CODES,
)
serve_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Run an embedded target server in the foreground.")
app.add_typer(serve_app, name="serve")


@app.callback()
def _app_options(version: bool = _version_option()) -> None:
    """Load testing from one gevent worker process per CPU core, with exact merged statistics."""


@serve_app.callback()
def _serve_options(version: bool = _version_option()) -> None:
    """Run an embedded target server in the foreground."""


# What reading a damaged run folder raises once its files parse but hold the wrong things; the
# loaders refuse what they can name (RunFolderError), this catches the rest at the command's edge.
DAMAGE = (TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def damaged(where: str, e: BaseException) -> str:
    return f"{where}: a report file is damaged and cannot be read ({type(e).__name__}: {e})"


def fail(message: str, status: int) -> None:
    typer.echo(f"loadtest: {message}", err=True)
    raise typer.Exit(status)


@app.command("run", cls=_Command, epilog=f"{RUN_EXAMPLES}\n\n{EXIT_CODES}")
def run_command(
    config_path: str = typer.Argument(..., metavar="CONFIG",
                                      help="The run's YAML config file, or a URL to load one target without a file."),
    duration: Optional[str] = typer.Option(None, "--duration", "-d", metavar="DURATION",
                                           help=f"How long to run: 10s, 2m, 1h (with a URL, default {DEFAULT_DURATION})."),
    # --workers and --watch-pid are taken as text and checked by the config's own rules, so a bad value is
    # one sentence with exit status 2 like any other bad input, not click's usage box.
    workers_text: Optional[str] = typer.Option(None, "--workers", "-w", metavar="N",
                                               help="Worker processes (default: one per core; per node on a cluster)."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", metavar="ADDRESS",
        help="Run on the nodes of this Dask scheduler (tcp://HOST:8786), or on local:N nodes started here "
             "(default: the config's cluster:, then DASK_SCHEDULER_ADDRESS). Needs Dask: install loadtest's "
             "cluster extra."),
    nodes_text: Optional[str] = typer.Option(None, "--nodes", metavar="N",
                                             help="With --cluster: use N of its nodes (default: all)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="DIR",
                                      help="Write the report folder exactly here (a new or empty folder)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Let --out name a folder that holds files: a run's own files in it are replaced."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live output; only the final report path."),
    sample_interval: Optional[str] = typer.Option(None, "--sample-interval", metavar="DURATION", help="Resource sampling period (default 1s)."),
    watch_pid: list[str] = typer.Option([], "--watch-pid", metavar="PID",
                                        help="Also sample this process (repeatable)."),
    concurrency: Optional[str] = typer.Option(
        None, "--concurrency", "-c", metavar="N",
        help=f"URL only: virtual users, closed model (default {DEFAULT_CONCURRENCY})."),
    rate: Optional[str] = typer.Option(None, "--rate", metavar="R", help="URL only: arrivals per second, open model."),
    requests_total: Optional[str] = typer.Option(None, "--requests", "-n", metavar="N",
                                                 help="URL only: stop after N requests in all."),
    method: Optional[str] = typer.Option(None, "--method", "-m", metavar="METHOD",
                                         help="URL only: GET (default), POST, ..."),
    header: list[str] = typer.Option([], "--header", "-H", metavar="'NAME: VALUE'",
                                     help="URL only: a request header (repeatable)."),
    body: Optional[str] = typer.Option(None, "--body", metavar="TEXT",
                                       help="URL only: the request body (a POST unless -m says otherwise)."),
    timeout: Optional[str] = typer.Option(None, "--timeout", metavar="DURATION",
                                          help="URL only: per request (default 10s, as in a config)."),
    target_name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                              help="URL only: the target's name and the run's (default: the URL; "
                                                   "two runs of different URLs named alike can be compared)."),
    json_summary: bool = typer.Option(False, "--json",
                                      help="Print summary.json on stdout and nothing else (progress goes to stderr)."),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", metavar="HOST:PORT",
        help="Serve live Prometheus metrics here (PORT alone: on 127.0.0.1; port 0: any free port)."),
    metrics_linger: Optional[str] = typer.Option(
        None, "--metrics-linger", metavar="DURATION",
        help=f"After the run, serve the final metrics until a scrape reads them, at most this long "
             f"(default {DEFAULT_METRICS_LINGER_S:g}s; 0: stop at once)."),
    web: Optional[str] = typer.Option(
        None, "--web", metavar="HOST:PORT",
        help="Serve a live page and a JSON control API here: watch the run, change each target's users or rate, "
             "pause, resume, stop (PORT alone: on 127.0.0.1; any other address than loopback needs a token)."),
    web_token: Optional[str] = typer.Option(
        None, "--web-token", metavar="TOKEN",
        help="--web: the token every request must carry (?token= or Authorization: Bearer); made and printed "
             "if a non-loopback address is given without one."),
    wait: bool = typer.Option(False, "--wait", help="--web: start the run paused, until Start is pressed on the "
                                                    "page (or POST /api/resume)."),
    version: bool = _version_option(),
) -> None:
    """Run the load a config file describes, or one URL's, and write its reports."""
    from loadtest.model.config import ConfigError, load_config, parse_duration, parse_metrics_address, parse_pid, parse_workers
    from loadtest.execution.controller import RunError, run
    from loadtest.outputs.json_summary import JsonSummary
    from loadtest.outputs.live import TerminalOutput
    from loadtest.outputs.metrics import MetricsEndpoint
    from loadtest.model.quick import OneLine, one_line_config
    from loadtest.execution.resources import DEFAULT_SAMPLE_INTERVAL_S, MIN_SAMPLE_INTERVAL_S
    from loadtest.execution.control import Inbox
    from loadtest.execution.web import WebServer, check_token
    from loadtest.outputs.live_page import LivePage

    check_interrupted()  # an interrupt while these imported waited for them to finish
    one_line = OneLine(config_path, concurrency, rate, requests_total, duration, method, tuple(header), body, timeout,
                       target_name)
    endpoint: MetricsEndpoint | None = None
    server: WebServer | None = None
    page: LivePage | None = None
    inbox: Inbox | None = None
    try:  # the options first, then the file: a mistake on the command line is named before one in the file
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
            config = one_line_config(one_line)
        else:
            if bare_url_problem(config_path):
                raise ConfigError(bare_url_problem(config_path))
            if one_line.given():
                raise ConfigError(f"{one_line.given()[0]}: applies only to a URL (loadtest run http://HOST:PORT/ "
                                  f"-c 50); a config file sets it per target")
            config = load_config(config_path)
            if run_length is not None:
                config = replace(config, duration=run_length)
        if metrics is not None:
            config = replace(config, metrics=parse_metrics_address(metrics, "--metrics"))
        linger = parse_linger(metrics_linger, DEFAULT_METRICS_LINGER_S)
        if metrics_linger is not None and config.metrics is None:
            raise ConfigError("--metrics-linger: applies only with --metrics (or metrics: in the config)")
        if config.metrics is not None:
            endpoint = MetricsEndpoint(config.name, [t.name for t in config.targets])
            url = endpoint.listen(*config.metrics, where="--metrics" if metrics is not None else "metrics")
            typer.echo(f"metrics on {url}", err=True)
        token = check_token(web_token)
        if web is None and (token is not None or wait):
            raise ConfigError(f"{'--web-token' if token is not None else '--wait'}: applies only with --web HOST:PORT")
        if web is not None:
            host, port = parse_metrics_address(web, "--web")
            inbox = Inbox(config)
            page = LivePage(config, inbox.status)
            server = WebServer(page, inbox, token)
            url = server.start(host, port)
            typer.echo(f"live page on {url}" + (" (keep the token: every request needs it)" if server.token else ""),
                       err=True)
    except ConfigError as e:
        if endpoint is not None:
            endpoint.stop()
        if server is not None:
            server.stop()
        fail(str(e), EXIT_BAD_INPUT)
    # With --json, stdout carries summary.json alone: the live view and the summary table go to stderr.
    shown = sys.stderr if json_summary else sys.stdout
    outputs: list[Any] = [output for output in (endpoint, TerminalOutput(config, shown, quiet, path=not json_summary),
                                                JsonSummary() if json_summary else None, page) if output is not None]
    # run() counts interrupts while it runs and puts back what it found when it returns. What it finds is
    # "ignore": once the reports are written a late Ctrl-C must not kill the exit half-way, which it would
    # during interpreter shutdown (Python resets handled signals to the default there) with status -2.
    check_interrupted()  # a Ctrl-C while the config loaded whose exit compile() swallowed: start nothing
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    result = None
    try:
        result = run(config, workers=workers, out_dir=out, overwrite=overwrite, sample_interval=interval,
                     watch_pids=pids, outputs=outputs, cluster=cluster, nodes=nodes, inbox=inbox, wait=wait)
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except RunError as e:
        fail(f"the run failed: {e}", EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        fail("interrupted before the load started; no reports written", EXIT_INTERRUPTED)
    finally:
        if server is not None and result is None:  # no run to show: stop serving now
            server.stop()
    if endpoint is not None:
        linger_for_scrape(endpoint, linger)
    if server is not None:
        linger_for_page(server)
    assert result is not None
    raise typer.Exit(result.exit_status)


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


@app.command("report", cls=_Command)
def report_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="A run's report folder."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the HTML here (default RUN_DIR/report.html)."),
    version: bool = _version_option(),
) -> None:
    """Write report.html again from a run folder's files alone."""
    from pathlib import Path

    from loadtest.outputs.html_report import RunFolderError, write_html_report

    check_interrupted()
    try:
        path = write_html_report(Path(run_dir), Path(out) if out else None)
    except RunFolderError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except DAMAGE as e:
        fail(damaged(run_dir, e), EXIT_BAD_INPUT)
    typer.echo(str(path))


@app.command("schema", cls=_Command, epilog="Example: loadtest schema > loadtest.schema.json, then start a config "
                                              "with # yaml-language-server: $schema=loadtest.schema.json")
def schema_command(version: bool = _version_option()) -> None:
    """Print the JSON Schema of a config file (draft 2020-12), for editors and other tools."""
    import json

    from loadtest.model.config import config_schema

    check_interrupted()
    typer.echo(json.dumps(config_schema(), indent=2))


@app.command("compare", cls=_Command,
             epilog="Exit status: 0 nothing got worse beyond the tolerance and the runs' noise; "
                    "1 something did, or a target of A is missing from B; 2 bad input.")
def compare_command(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="The baseline run folder."),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="The run to compare with it."),
    tolerance: str = typer.Option("5%", "--tolerance", "-t", metavar="TOLERANCE",
                                  help="How much worse counts as worse, in percent: 5 and 5% both mean 5%."),
    output: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table, csv or json."),
    html: Optional[str] = typer.Option(None, "--html", metavar="FILE", help="Also write the side by side as an HTML page here."),
    version: bool = _version_option(),
) -> None:
    """Compare two runs target by target; exit status 1 when B is worse than A beyond the tolerance and
    beyond the runs' own second-to-second noise."""
    from pathlib import Path

    from loadtest.outputs.compare import (
        compare_runs,
        format_csv,
        format_json,
        format_table,
        parse_tolerance,
        write_compare_html,
    )
    from loadtest.outputs.run_folder import RunFolderError

    check_interrupted()
    formats = {"table": format_table, "csv": format_csv, "json": format_json}
    if output not in formats:
        fail(f"--format: must be one of table, csv, json, got {output!r}", EXIT_BAD_INPUT)
    try:
        fraction = parse_tolerance(tolerance, "--tolerance")
        comparison = compare_runs(Path(run_a), Path(run_b), fraction, histograms=html is not None)
        if html:
            written = write_compare_html(comparison, Path(html))
            typer.echo(f"compare page: {written}", err=True)  # stderr: stdout holds the table, csv or json
    except (RunFolderError, ValueError) as e:
        fail(str(e), EXIT_BAD_INPUT)
    except DAMAGE as e:
        fail(damaged(f"{run_a} or {run_b}", e), EXIT_BAD_INPUT)
    typer.echo(formats[output](comparison).rstrip("\n"))
    raise typer.Exit(EXIT_THRESHOLD if comparison.worse else EXIT_OK)


def _serve(kind: str, listen: str, workers_text: Optional[str], upper: bool = False, max_connections: int = 0,
           idle_timeout: Optional[str] = None, max_buffered: int = 0) -> None:
    from loadtest.model.config import (ConfigError, ServerSpec, check_ip, parse_address, parse_duration, parse_max_buffered,
                         parse_workers)
    from loadtest.execution.servers import ServerError, serve_foreground

    try:
        host, port = parse_address(listen, "--listen")
        check_ip(host, "--listen")
        workers = parse_workers(workers_text, "--workers") or _default_workers()
        idle = parse_duration(idle_timeout, "--idle-timeout") if idle_timeout is not None else 0.0
        buffered = parse_max_buffered(max_buffered, "--max-buffered") if max_buffered else 0
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    spec = ServerSpec(name=kind, kind=kind, host=host, port=port, workers=workers, upper=upper,
                      max_connections=max_connections, idle_timeout=idle, max_buffered=buffered)
    check_interrupted()
    try:
        status = serve_foreground(spec)
    except ServerError as e:
        fail(str(e), EXIT_RUN_FAILED)
    raise typer.Exit(status)


def _default_workers() -> int:
    return os.cpu_count() or 1


SERVER_WORKERS_HELP = "Server processes sharing the port (default: auto, one per core)."
MAX_CONNECTIONS_HELP = "Connections per process (default: the server's own cap)."


@serve_app.command("http", cls=_Command)
def serve_http(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", "-l", metavar="HOST:PORT", help="HOST:PORT to listen on (port 0: any free port)."),
    workers: Optional[str] = typer.Option(None, "--workers", "-w", metavar="N", show_default=False, help=SERVER_WORKERS_HELP),
    max_connections: int = typer.Option(0, "--max-connections", min=0, metavar="N", show_default=False, help=MAX_CONNECTIONS_HELP),
    idle_timeout: Optional[str] = typer.Option(None, "--idle-timeout", metavar="DURATION", help="Close connections idle this long (10s, 2m)."),
    max_buffered: int = typer.Option(0, "--max-buffered", min=0, metavar="MIB", show_default=False, help="MiB a process holds for its clients in all; past it, 503 (default: 256)."),
    version: bool = _version_option(),
) -> None:
    """The embedded HTTP "sites" server: /, /bytes/N, /delay/MS, /status/CODE, /stall/P/S, /echo, /site/K.

    /stall/P/S freezes the first S ms of every P ms, as in wrk2's coordinated-omission demonstration.
    """
    _serve("http", listen, workers, max_connections=max_connections, idle_timeout=idle_timeout,
           max_buffered=max_buffered)


@serve_app.command("echo", cls=_Command)
def serve_echo(
    listen: str = typer.Option("127.0.0.1:9000", "--listen", "-l", metavar="HOST:PORT", help="HOST:PORT to listen on (port 0: any free port)."),
    workers: Optional[str] = typer.Option(None, "--workers", "-w", metavar="N", show_default=False, help=SERVER_WORKERS_HELP),
    upper: bool = typer.Option(False, "--upper", help="Reply upper-cased instead of unchanged."),
    max_connections: int = typer.Option(0, "--max-connections", min=0, metavar="N", show_default=False, help=MAX_CONNECTIONS_HELP),
    idle_timeout: Optional[str] = typer.Option(None, "--idle-timeout", metavar="DURATION", help="Close connections idle this long (10s, 2m)."),
    max_buffered: int = typer.Option(0, "--max-buffered", min=0, metavar="MIB", show_default=False, help="MiB of unsent echoes a process holds in all; past it, the connections longest without reading theirs are closed (default: 256)."),
    version: bool = _version_option(),
) -> None:
    """The embedded TCP echo server, one process per core sharing the port."""
    _serve("echo", listen, workers, upper=upper, max_connections=max_connections, idle_timeout=idle_timeout,
           max_buffered=max_buffered)


def main() -> None:
    """The command line: Ctrl-C and SIGTERM exit 130 without a traceback (`interrupts.on_interrupt`, installed
    again here for callers that import this module first), then the commands run."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_interrupt)
    try:  # typer from 0.2x carries its own copy of click; before, it used click itself
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors  # type: ignore[no-redef]

    try:
        try:
            code = app(standalone_mode=False, prog_name="loadtest")
        except click_errors.NoArgsIsHelpError as e:  # `loadtest` alone: its help, as typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(e)
            code = e.exit_code
        except click_errors.ClickException as e:
            # An unknown option, a missing argument, a bad command: one line, as every other error, not a box
            ctx = getattr(e, "ctx", None)
            hint = f"; see `{ctx.command_path} -h`" if ctx is not None else ""
            typer.echo(f"loadtest: {e.format_message().rstrip('.')}{hint}", err=True)
            code = e.exit_code
        except typer.Abort:
            code = EXIT_INTERRUPTED
        sys.exit(code if isinstance(code, int) else 0)
    finally:
        # An interrupt that typer's own late imports deferred (help, a usage error) ends as 130 too; one in
        # the last instant, as the interpreter shuts down, would print "Exception ignored": none is taken now.
        check_interrupted()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
