"""Live metrics for Prometheus and Grafana: the run's merged figures, served in Prometheus' text format.

`loadtest run ... --metrics 127.0.0.1:9464` (or `metrics:` in the config) serves them from the parent
process while the run lasts, with `prometheus_client`'s own HTTP server in a thread. A custom collector
reads one immutable `RunView`, replaced each second from the controller's live-view callback (a
`Frame`), so a scrape never reads a histogram while the main thread adds to it.

Exposed, per target (label `target`):

- `loadtest_requests_total`, `loadtest_failures_total{kind}`, `loadtest_connect_failures_total{kind}`,
  `loadtest_dropped_total`, `loadtest_received_bytes_total`, `loadtest_sent_bytes_total` (counters);
- `loadtest_in_flight` (virtual users active, requests in flight in the open model, tcp connections)
  and `loadtest_open_connections` (gauges);
- `loadtest_interval_latency_seconds{quantile}`: the last second's latency at 0.5, 0.9, 0.95, 0.99,
  0.999 and 1 (its maximum), a gauge;
- `loadtest_latency_seconds`: a cumulative histogram, its buckets counted from the merged HdrHistogram;

and for the run: `loadtest_worker_cpu_percent{worker}`, `loadtest_machine_cpu_percent`,
`loadtest_elapsed_seconds`, `loadtest_run_finished` (1 once the final figures are in) and
`loadtest_run_info{name}`.

When the run ends, the command line keeps the endpoint serving the final figures until one scrape has
read them (`wait_for_final_scrape`), for at most `--metrics-linger`, so the last counts reach
Prometheus: a short run would otherwise end between two scrapes.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from loadtest.model.config import ConfigError
from loadtest.core.stats import RunStats, TargetTotals, counts_at_or_below, mean_ns, percentiles_ns

from loadtest.outputs.base import Output

if TYPE_CHECKING:
    from loadtest.model.run_result import Frame, RunResult

INTERVAL_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BUCKETS_NS = [int(round(b * 1e9)) for b in LATENCY_BUCKETS_S]


@dataclass(frozen=True)
class TargetView:
    """One target's figures as a scrape shows them: totals so far, and the last second's quantiles."""

    name: str
    requests: int = 0
    failures: tuple[tuple[str, int], ...] = ()
    connect_failures: tuple[tuple[str, int], ...] = ()
    dropped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    in_flight: int = 0
    open_connections: int = 0
    quantiles_s: tuple[float, ...] = ()  # the last second's latency at INTERVAL_QUANTILES; empty before one
    buckets: tuple[int, ...] = ()  # cumulative counts at LATENCY_BUCKETS_S
    latency_count: int = 0
    latency_sum_s: float = 0.0


@dataclass(frozen=True)
class RunView:
    """Everything one scrape shows, replaced whole each second."""

    name: str
    targets: tuple[TargetView, ...]
    worker_cpu: tuple[float | None, ...] = ()
    machine_cpu: float | None = None
    elapsed: float = 0.0
    final: bool = False


def target_view(totals: TargetTotals, last_second: TargetTotals | None, previous: TargetView) -> TargetView:
    """A target's view from its totals so far and the second just merged (None: keep the last quantiles)."""
    hist = totals.latency
    count = hist.get_total_count()
    quantiles = previous.quantiles_s
    if last_second is not None:
        points = [q * 100.0 for q in INTERVAL_QUANTILES]
        quantiles = tuple(ns / 1e9 for ns in percentiles_ns(last_second.latency, points))
    return TargetView(
        name=totals.name, requests=totals.requests, failures=tuple(sorted(totals.failures.items())),
        connect_failures=tuple(sorted(totals.connect_failures.items())), dropped=totals.dropped,
        bytes_in=totals.bytes_in, bytes_out=totals.bytes_out, in_flight=totals.users,
        open_connections=totals.open_connections, quantiles_s=quantiles,
        buckets=tuple(counts_at_or_below(hist, _BUCKETS_NS)), latency_count=count,
        latency_sum_s=mean_ns(hist) * count / 1e9,
    )


class RunCollector:
    """A prometheus_client collector over the latest `RunView`."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        self.view = RunView(name, tuple(TargetView(t) for t in targets))

    def collect(self) -> Iterator[Metric]:
        view = self.view  # one read: the main thread replaces it whole
        by_target = [(t, [t.name]) for t in view.targets]
        requests = CounterMetricFamily("loadtest_requests", "Requests ended (successes and failures).",
                                       labels=["target"])
        failures = CounterMetricFamily("loadtest_failures", "Failed requests by kind.", labels=["target", "kind"])
        connect = CounterMetricFamily("loadtest_connect_failures", "Connections that could not be opened, by kind.",
                                      labels=["target", "kind"])
        dropped = CounterMetricFamily("loadtest_dropped", "Open model: arrivals that could not start.",
                                      labels=["target"])
        received = CounterMetricFamily("loadtest_received_bytes", "Bytes received.", labels=["target"])
        sent = CounterMetricFamily("loadtest_sent_bytes", "Bytes sent.", labels=["target"])
        in_flight = GaugeMetricFamily("loadtest_in_flight", "Virtual users active (closed model), requests in "
                                      "flight (open model) or connections held (tcp).", labels=["target"])
        open_connections = GaugeMetricFamily("loadtest_open_connections", "Connections open.", labels=["target"])
        quantiles = GaugeMetricFamily("loadtest_interval_latency_seconds",
                                      "Latency of the last second at this quantile (1: its maximum).",
                                      labels=["target", "quantile"])
        latency = HistogramMetricFamily("loadtest_latency_seconds", "Latency of every request so far.",
                                        labels=["target"])
        for t, labels in by_target:
            requests.add_metric(labels, t.requests)
            for kind, count in t.failures:
                failures.add_metric([*labels, kind], count)
            for kind, count in t.connect_failures:
                connect.add_metric([*labels, kind], count)
            dropped.add_metric(labels, t.dropped)
            received.add_metric(labels, t.bytes_in)
            sent.add_metric(labels, t.bytes_out)
            in_flight.add_metric(labels, t.in_flight)
            open_connections.add_metric(labels, t.open_connections)
            for q, seconds in zip(INTERVAL_QUANTILES, t.quantiles_s):
                quantiles.add_metric([*labels, f"{q:g}"], seconds)
            buckets = [(f"{b:g}", float(c)) for b, c in zip(LATENCY_BUCKETS_S, t.buckets or [0] * len(_BUCKETS_NS))]
            latency.add_metric(labels, [*buckets, ("+Inf", float(t.latency_count))], t.latency_sum_s)
        yield from (requests, failures, connect, dropped, received, sent, in_flight, open_connections,
                    quantiles, latency)
        cpu = GaugeMetricFamily("loadtest_worker_cpu_percent", "A worker process's CPU, % of one core.",
                                labels=["worker"])
        for k, value in enumerate(view.worker_cpu):
            if value is not None:
                cpu.add_metric([str(k)], value)
        yield cpu
        if view.machine_cpu is not None:
            yield GaugeMetricFamily("loadtest_machine_cpu_percent", "The machine's CPU, % over all cores.",
                                    value=view.machine_cpu)
        yield GaugeMetricFamily("loadtest_elapsed_seconds", "Seconds of load merged so far.", value=view.elapsed)
        yield GaugeMetricFamily("loadtest_run_finished", "1 once the run's final figures are in.",
                                value=1.0 if view.final else 0.0)
        info = GaugeMetricFamily("loadtest_run_info", "The run, by name.", labels=["name"])
        info.add_metric([view.name], 1.0)
        yield info


class _Answer(list[bytes]):
    """A WSGI response body that calls back once the server has written it (WSGI calls `close()` then)."""

    def __init__(self, chunks: Iterable[bytes], on_sent: Callable[[], None] | None) -> None:
        super().__init__(chunks)
        self.on_sent = on_sent

    def close(self) -> None:
        if self.on_sent is not None:
            self.on_sent()


class _QuietHandler(WSGIRequestHandler):
    """No access log line on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsEndpoint(Output):
    """The HTTP endpoint Prometheus scrapes during a run: an output fed one `Frame` a second.

    It listens from `listen(host, port, where)` (before the run, so that a port in use is bad input);
    the run's end shows the final totals (`finish`) and it keeps serving them for the caller's
    linger (`wait_for_final_scrape`, then `stop`). A run that failed stops it at once.
    """

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        self.collector = RunCollector(name, targets)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]  # a duck-typed collector
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.final_scraped = False  # a scrape has read the final figures, whole
        self._released = threading.Event()  # set by that scrape, or by `release()`

    def listen(self, host: str, port: int, where: str) -> str:
        """Listen on host:port (0: a free port); the URL to scrape. ConfigError if it cannot listen."""
        metrics_app = make_wsgi_app(self.registry)
        collector = self.collector

        def app(environ: dict[str, Any], start_response: Any) -> _Answer:
            # A response begun once the view is final carries the final figures: when it has been sent
            # whole, the run may stop serving (stopping earlier could cut the last scrape short).
            final = collector.view.final
            return _Answer(metrics_app(environ, start_response), self._sent_final if final else None)

        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"{where}: cannot listen on {host}:{port} ({e.strerror or e})") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="loadtest-metrics", daemon=True)
        self._thread.start()
        bound = self._server.server_port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics"
        return self.url

    def add(self, frame: Frame) -> None:
        """The controller merged one more second: show its totals and quantiles."""
        self._show(frame.stats, frame.interval.targets, frame.worker_cpu, frame.machine_cpu, final=False)

    def stop(self, result: RunResult | None) -> None:
        """The run ended: show its final totals and keep serving them (the caller lingers, then `close`s);
        a run that failed before it had a result stops serving at once."""
        if result is None:
            self.close()
        else:
            self.finish(result.stats)

    def finish(self, stats: RunStats) -> None:
        """The run ended and its reports are written: show the final totals, exactly those of stats.csv."""
        view = self.collector.view
        self._show(stats, None, list(view.worker_cpu), view.machine_cpu, final=True)

    def _show(self, stats: RunStats, last_second: Sequence[TargetTotals] | None,
              worker_cpu: Sequence[float | None], machine_cpu: float | None, final: bool) -> None:
        old = self.collector.view
        targets = tuple(target_view(t, last_second[i] if last_second is not None else None, old.targets[i])
                        for i, t in enumerate(stats.totals))
        self.collector.view = RunView(old.name, targets, tuple(worker_cpu), machine_cpu, stats.elapsed, final)

    def _sent_final(self) -> None:
        self.final_scraped = True
        self._released.set()

    def wait_for_final_scrape(self, timeout: float) -> bool:
        """Keep serving until a scrape has read the final figures, `release()` or `timeout` seconds.

        True if a scrape did read them.
        """
        if timeout > 0:
            self._released.wait(timeout)
        return self.final_scraped

    def release(self) -> None:
        """Stop waiting for the final scrape (Ctrl-C while it waits)."""
        self._released.set()

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
