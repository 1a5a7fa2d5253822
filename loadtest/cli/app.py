"""The command line: parses options and wires the library; nothing else."""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import typer

from loadtest.model.interrupts import EXIT_INTERRUPTED, check_interrupted, on_interrupt
from loadtest.cli.common import (DAMAGE, EXIT_BAD_INPUT, EXIT_CODES, EXIT_OK, EXIT_RUN_FAILED, EXIT_THRESHOLD, _Command,
                                 _Group, _version_option, damaged, fail)
from loadtest.cli.capacity import CAPACITY_EPILOG, capacity_command
from loadtest.cli.run import RUN_EXAMPLES, run_command

app = typer.Typer(
    cls=_Group,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Load testing from one gevent worker process per CPU core, with exact merged statistics.",
    epilog=EXIT_CODES,
)
app.command("run", cls=_Command, epilog=f"{RUN_EXAMPLES}\n\n{EXIT_CODES}")(run_command)
app.command("capacity", cls=_Command, epilog=CAPACITY_EPILOG)(capacity_command)
serve_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Run an embedded target server in the foreground.")
app.add_typer(serve_app, name="serve")


@app.callback()
def _app_options(version: bool = _version_option()) -> None:
    """Load testing from one gevent worker process per CPU core, with exact merged statistics."""


@serve_app.callback()
def _serve_options(version: bool = _version_option()) -> None:
    """Run an embedded target server in the foreground."""


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

    from loadtest.outputs.compare import compare_runs, parse_tolerance
    from loadtest.outputs.compare_views import format_csv, format_json, format_table, write_compare_html
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
           idle_timeout: Optional[str] = None, max_buffered: int = 0, ws: bool = False) -> None:
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
                      max_connections=max_connections, idle_timeout=idle, max_buffered=buffered, ws=ws)
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
    ws: bool = typer.Option(False, "--ws", help="Speak WebSocket: an upgrade, then every message echoed in frames."),
    max_connections: int = typer.Option(0, "--max-connections", min=0, metavar="N", show_default=False, help=MAX_CONNECTIONS_HELP),
    idle_timeout: Optional[str] = typer.Option(None, "--idle-timeout", metavar="DURATION", help="Close connections idle this long (10s, 2m)."),
    max_buffered: int = typer.Option(0, "--max-buffered", min=0, metavar="MIB", show_default=False, help="MiB of unsent echoes a process holds in all; past it, the connections longest without reading theirs are closed (default: 256)."),
    version: bool = _version_option(),
) -> None:
    """The embedded echo server (TCP, or WebSocket with --ws), one process per core sharing the port."""
    _serve("echo", listen, workers, upper=upper, max_connections=max_connections, idle_timeout=idle_timeout,
           max_buffered=max_buffered, ws=ws)


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
