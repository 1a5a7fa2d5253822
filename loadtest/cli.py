"""The command line: parses options and wires the library; nothing else."""

from __future__ import annotations

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
{EXIT_THRESHOLD} a threshold failed; {EXIT_BAD_INPUT} bad input (config file or options);
{EXIT_RUN_FAILED} the run itself failed (a worker was lost, a server could not start);
{EXIT_INTERRUPTED} stopped by Ctrl-C (reports are still written)."""

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Load testing from one gevent worker process per CPU core, with exact merged statistics.",
    epilog=EXIT_CODES,
)
serve_app = typer.Typer(no_args_is_help=True, help="Run an embedded target server in the foreground.")
app.add_typer(serve_app, name="serve")


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
    from .config import ConfigError, load_config, parse_duration
    from .controller import RunError, run
    from .live import PlainLive, RichLive, print_summary
    from .resources import DEFAULT_SAMPLE_INTERVAL_S

    try:
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
    try:
        result = run(config, workers=workers, out_dir=out, sample_interval=interval, watch_pids=tuple(watch_pid),
                     on_interval=live.interval if live else None, on_event=live.event if live else None)
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


def _serve(kind: str, listen: str, workers: int, upper: bool = False, max_connections: int = 0,
           idle_timeout: Optional[str] = None) -> None:
    from .config import ConfigError, ServerSpec, parse_address, parse_duration
    from .servers import ServerError, serve_foreground

    try:
        host, port = parse_address(listen, "--listen")
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
    app()
