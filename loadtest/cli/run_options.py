"""The `run` command's options: each one's flag, metavar and help, in the order --help lists them.

--workers and --watch-pid (like every number) are taken as text and checked by the config's own rules, so a
bad value is one sentence with exit status 2 like any other bad input, not click's usage box.
"""

from __future__ import annotations

import typer

from loadtest.model.quick import DEFAULT_CONCURRENCY, DEFAULT_DURATION

DEFAULT_METRICS_LINGER_S = 15.0  # Prometheus' default scrape interval: a scrape comes within it

CONFIG = typer.Argument(..., metavar="CONFIG",
    help="The run's YAML config file, or a URL to load one target without a file.")
DURATION = typer.Option(None, "--duration", "-d", metavar="DURATION",
    help=f"How long to run: 10s, 2m, 1h (with a URL, default {DEFAULT_DURATION}).")
WORKERS_TEXT = typer.Option(None, "--workers", "-w", metavar="N",
    help="Worker processes (default: one per core; per node on a cluster).")
CLUSTER = typer.Option(
    None, "--cluster", metavar="ADDRESS",
    help="Run on the nodes of this Dask scheduler (tcp://HOST:8786), or on local:N nodes started here "
    "(default: the config's cluster:, then DASK_SCHEDULER_ADDRESS). Needs Dask: install loadtest's "
    "cluster extra.")
NODES_TEXT = typer.Option(None, "--nodes", metavar="N",
    help="With --cluster: use N of its nodes (default: all).")
OUT = typer.Option(None, "--out", "-o", metavar="DIR",
    help="Write the report folder exactly here (a new or empty folder).")
OVERWRITE = typer.Option(False, "--overwrite",
    help="Let --out name a folder that holds files: a run's own files in it are replaced.")
QUIET = typer.Option(False, "--quiet", "-q", help="No live output; only the final report path.")
SAMPLE_INTERVAL = typer.Option(None, "--sample-interval", metavar="DURATION", help="Resource sampling period (default 1s).")
WATCH_PID = typer.Option([], "--watch-pid", metavar="PID",
    help="Also sample this process (repeatable).")
CONCURRENCY = typer.Option(
    None, "--concurrency", "-c", metavar="N",
    help=f"URL only: virtual users, closed model (default {DEFAULT_CONCURRENCY}).")
RATE = typer.Option(None, "--rate", metavar="R", help="URL only: arrivals per second, open model.")
REQUESTS_TOTAL = typer.Option(None, "--requests", "-n", metavar="N",
    help="URL only: stop after N requests in all.")
METHOD = typer.Option(None, "--method", "-m", metavar="METHOD",
    help="URL only: GET (default), POST, ...")
HEADER = typer.Option([], "--header", "-H", metavar="'NAME: VALUE'",
    help="URL only: a request header (repeatable).")
BODY = typer.Option(None, "--body", metavar="TEXT",
    help="URL only: the request body (a POST unless -m says otherwise).")
TIMEOUT = typer.Option(None, "--timeout", metavar="DURATION",
    help="URL only: per request (default 10s, as in a config).")
TARGET_NAME = typer.Option(None, "--name", metavar="NAME",
    help="URL only: the target's name and the run's (default: the URL; "
    "two runs of different URLs named alike can be compared).")
JSON_SUMMARY = typer.Option(False, "--json",
    help="Print summary.json on stdout and nothing else (progress goes to stderr).")
METRICS = typer.Option(
    None, "--metrics", metavar="HOST:PORT",
    help="Serve live Prometheus metrics here (PORT alone: on 127.0.0.1; port 0: any free port).")
METRICS_LINGER = typer.Option(
    None, "--metrics-linger", metavar="DURATION",
    help=f"After the run, serve the final metrics until a scrape reads them, at most this long "
    f"(default {DEFAULT_METRICS_LINGER_S:g}s; 0: stop at once).")
WEB = typer.Option(
    None, "--web", metavar="HOST:PORT",
    help="Serve a live page and a JSON control API here: watch the run, change each target's users or rate, "
    "pause, resume, stop (PORT alone: on 127.0.0.1; any other address than loopback needs a token).")
WEB_TOKEN = typer.Option(
    None, "--web-token", metavar="TOKEN",
    help="--web: the token every request must carry (?token= or Authorization: Bearer); made and printed "
    "if a non-loopback address is given without one.")
WAIT = typer.Option(False, "--wait", help="--web: start the run paused, until Start is pressed on the "
    "page (or POST /api/resume).")
