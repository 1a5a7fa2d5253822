"""The command line: parses options and wires the library; nothing else."""

from __future__ import annotations

import signal
import sys
from dataclasses import replace
from typing import Optional

import typer

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""Exit status: {EXIT_OK} the run completed and every threshold passed;
{EXIT_THRESHOLD} a threshold failed (or a tcp target held fewer connections than asked);
{EXIT_BAD_INPUT} bad input (config file or options);
{EXIT_RUN_FAILED} the run itself failed (a worker was lost, a server could not start or died);
{EXIT_INTERRUPTED} stopped by Ctrl-C or SIGTERM (once the load started, reports are still written)."""

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Load testing from one gevent worker process per CPU core, with exact merged statistics.",
    epilog=EXIT_CODES,
)
serve_app = typer.Typer(no_args_is_help=True, help="Run an embedded target server in the foreground.")
app.add_typer(serve_app, name="serve")


# What reading a damaged run folder raises once its files parse but hold the wrong things; the
# loaders refuse what they can name (RunFolderError), this catches the rest at the command's edge.
DAMAGE = (TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def damaged(where: str, e: BaseException) -> str:
    return f"{where}: a report file is damaged and cannot be read ({type(e).__name__}: {e})"


def on_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while a command has nothing to save (loading, reading): one line, status 130."""
    sys.stderr.write("loadtest: interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


def fail(message: str, status: int) -> None:
    typer.echo(f"loadtest: {message}", err=True)
    raise typer.Exit(status)


@app.command("run", epilog=EXIT_CODES)
def run_command(
    config_path: str = typer.Argument(..., metavar="CONFIG", help="The run's YAML config file."),
    duration: Optional[str] = typer.Option(None, "--duration", "-d", help="How long to run: 10s, 2m, 1h."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Worker processes (default: one per core)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the report folder exactly here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live output; only the final report path."),
    sample_interval: Optional[str] = typer.Option(None, "--sample-interval", help="Resource sampling period (default 1s)."),
    watch_pid: list[int] = typer.Option([], "--watch-pid", help="Also sample this process (repeatable)."),
) -> None:
    """Run the load a config describes and write its reports."""
    from .config import ConfigError, check_workers, load_config, parse_duration
    from .controller import RunError, run
    from .live import PlainLive, RichLive, print_summary
    from .resources import DEFAULT_SAMPLE_INTERVAL_S

    try:
        if workers is not None:
            check_workers(workers, "--workers")
        if out is not None and not out.strip():
            raise ConfigError("--out: must be a folder path, got ''")
        config = load_config(config_path)
        if duration is not None:
            config = replace(config, duration=parse_duration(duration, "--duration"))
        interval = parse_duration(sample_interval, "--sample-interval") if sample_interval is not None \
            else DEFAULT_SAMPLE_INTERVAL_S
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    live: PlainLive | RichLive | None = None
    if not quiet:
        live = RichLive(config, config.duration) if sys.stdout.isatty() else PlainLive(sys.stdout, config.duration)
    # run() counts interrupts while it runs and puts back what it found when it returns. What it finds is
    # "ignore": once the reports are written a late Ctrl-C must not kill the exit half-way, which it would
    # during interpreter shutdown (Python resets handled signals to the default there) with status -2.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)

    def on_event(text: str) -> None:
        if text.startswith("error:"):  # the run has failed (a server died): said on stderr at once
            typer.echo(f"loadtest: {text}", err=True)
        elif live is not None:
            live.event(text)

    try:
        result = run(config, workers=workers, out_dir=out, sample_interval=interval, watch_pids=tuple(watch_pid),
                     on_interval=live.interval if live else None, on_event=on_event)
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except RunError as e:
        fail(f"the run failed: {e}", EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        fail("interrupted before the load started; no reports written", EXIT_INTERRUPTED)
    finally:
        if live is not None:
            live.close()
    if quiet:
        typer.echo(str(result.run_dir))
        for problem in result.problems:
            typer.echo(f"problem: {problem}", err=True)
    else:
        print_summary(result, config, sys.stdout)
    raise typer.Exit(result.exit_status)


@app.command("report")
def report_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="A run's report folder."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the HTML here (default RUN_DIR/report.html)."),
) -> None:
    """Write report.html again from a run folder's files alone."""
    from pathlib import Path

    from .html_report import RunFolderError, write_html_report

    try:
        path = write_html_report(Path(run_dir), Path(out) if out else None)
    except RunFolderError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except DAMAGE as e:
        fail(damaged(run_dir, e), EXIT_BAD_INPUT)
    typer.echo(str(path))


@app.command("compare", epilog="Exit status: 0 nothing got worse beyond the tolerance; 1 something did; 2 bad input.")
def compare_command(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="The baseline run folder."),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="The run to compare with it."),
    tolerance: str = typer.Option("5%", "--tolerance", "-t", help="How much worse counts as worse: 5% or 0.05."),
    output: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write the side by side as an HTML page here."),
) -> None:
    """Compare two runs target by target; exit status 1 when B is worse than A beyond the tolerance."""
    from pathlib import Path

    from .compare import (
        compare_runs,
        format_csv,
        format_json,
        format_table,
        write_compare_html,
    )
    from .run_folder import RunFolderError

    formats = {"table": format_table, "csv": format_csv, "json": format_json}
    if output not in formats:
        fail(f"--format: must be one of table, csv, json, got {output!r}", EXIT_BAD_INPUT)
    try:
        text = tolerance.strip()
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        if not 0 <= fraction < 100:
            raise ValueError
    except ValueError:
        fail(f"--tolerance: must be a percentage such as 5% or a fraction such as 0.05, got {tolerance!r}",
             EXIT_BAD_INPUT)
    try:
        comparison = compare_runs(Path(run_a), Path(run_b), fraction)
        if html:
            write_compare_html(comparison, Path(html))
    except (RunFolderError, ValueError) as e:
        fail(str(e), EXIT_BAD_INPUT)
    except DAMAGE as e:
        fail(damaged(f"{run_a} or {run_b}", e), EXIT_BAD_INPUT)
    typer.echo(formats[output](comparison).rstrip("\n"))
    raise typer.Exit(EXIT_THRESHOLD if comparison.worse else EXIT_OK)


def _serve(kind: str, listen: str, workers: int, upper: bool = False, max_connections: int = 0,
           idle_timeout: Optional[str] = None) -> None:
    from .config import ConfigError, ServerSpec, check_ip, check_workers, parse_address, parse_duration
    from .servers import ServerError, serve_foreground

    try:
        host, port = parse_address(listen, "--listen")
        check_ip(host, "--listen")
        check_workers(workers, "--workers")
        idle = parse_duration(idle_timeout, "--idle-timeout") if idle_timeout is not None else 0.0
    except ConfigError as e:
        fail(str(e), EXIT_BAD_INPUT)
    spec = ServerSpec(name=kind, kind=kind, host=host, port=port, workers=workers, upper=upper,
                      max_connections=max_connections, idle_timeout=idle)
    try:
        status = serve_foreground(spec)
    except ServerError as e:
        fail(str(e), EXIT_RUN_FAILED)
    raise typer.Exit(status)


def _default_workers() -> int:
    import os

    return os.cpu_count() or 1


@serve_app.command("http")
def serve_http(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", "-l", help="HOST:PORT to listen on (port 0: any free port)."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Server processes sharing the port (default: one per core)."),
    max_connections: int = typer.Option(0, "--max-connections", min=0, help="Connections per process (0: default)."),
    idle_timeout: Optional[str] = typer.Option(None, "--idle-timeout", help="Close connections idle this long (10s, 2m)."),
) -> None:
    """The embedded HTTP "sites" server: /, /bytes/N, /delay/MS, /status/CODE, /echo, /site/K."""
    _serve("http", listen, workers or _default_workers(), max_connections=max_connections, idle_timeout=idle_timeout)


@serve_app.command("echo")
def serve_echo(
    listen: str = typer.Option("127.0.0.1:9000", "--listen", "-l", help="HOST:PORT to listen on (port 0: any free port)."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Server processes sharing the port (default: one per core)."),
    upper: bool = typer.Option(False, "--upper", help="Reply upper-cased instead of unchanged."),
    max_connections: int = typer.Option(0, "--max-connections", min=0, help="Connections per process (0: default)."),
    idle_timeout: Optional[str] = typer.Option(None, "--idle-timeout", help="Close connections idle this long (10s, 2m)."),
) -> None:
    """The embedded TCP echo server, one process per core sharing the port."""
    _serve("echo", listen, workers or _default_workers(), upper=upper, max_connections=max_connections,
           idle_timeout=idle_timeout)


def main() -> None:
    """The console script: Ctrl-C and SIGTERM exit 130 without a traceback, then the commands run."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_interrupt)
    app()
