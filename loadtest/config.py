"""The run configuration: YAML in, validated frozen dataclasses out.

Every mistake in the user's input is raised once, here, as a `ConfigError`
whose message is one sentence naming the field
(``targets[1].concurrency: must be a positive integer, got 'many'``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from .schedule import Stage, peak_level, peak_level_until, stages_duration
from .thresholds import Threshold, ThresholdError, parse_threshold

DEFAULT_OUT = "reports"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ENGINE = "fast"
DEFAULT_METHOD = "GET"
DEFAULT_TCP_EXPECT = "echo"
DEFAULT_TCP_SIZE = 64
STAGE_LAG_S = 1.0  # a staged tcp target has this long to open the connections a ramp asks for
DEFAULT_MAX_CONCURRENCY = 5000
ARRIVALS = ("constant", "poisson")
ENGINES = ("fast", "requests")
TCP_EXPECTS = ("echo", "upper", "any")
SERVER_KINDS = ("http", "echo")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_DURATION_S = 7 * 24 * 3600.0  # a run's length, whether from duration, --duration or its stages added up
MAX_DURATION_TEXT = "7 days"
MAX_LEVEL = 10_000_000.0  # a rate (per second) or a stage's target, at most
MAX_WORKERS = 256  # processes of one kind a run or server may start (each is ~30 MiB)
MAX_CONFIG_BYTES = 10 * 1024 * 1024
MAX_BUFFERED_MIB = 1024 * 1024  # an HTTP server's max_buffered, at most (1 TiB)
# Values in a YAML document with every alias expanded where it is used. A real config holds a few
# hundred; 536 bytes of nested aliases ("billion laughs") expand to billions and would take hours to check.
MAX_YAML_NODES = 1_000_000
MAX_PID = 2**31 - 1  # a pid_t: a larger number is no process and overflows the system calls that take one
RESERVED_NAMES = ("Aggregated",)  # the total row of every report
DEFAULT_METRICS_HOST = "127.0.0.1"  # live metrics listen on loopback unless a host is given

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_BARE_NUMBER = re.compile(r"^\s*[-+]?\d+(?:\.\d*)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DOCUMENT = "<document>"  # stands for the file's path in what the YAML loader raises; load_config puts it in
# "{site}" in a URL or tcp address stands for the host:port of the server named "site".
_SERVER_REF = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


class ConfigError(ValueError):
    """A mistake in the user's input: one sentence naming the field."""


@dataclass(frozen=True)
class ServerSpec:
    """An embedded server the run starts before the load and stops after."""

    name: str
    kind: str  # "http" | "echo"
    host: str
    port: int  # 0: a free port, chosen when the server starts
    workers: int
    upper: bool = False
    max_connections: int = 0  # 0: the server's own default
    idle_timeout: float = 0.0  # 0: the server's own default
    max_buffered: int = 0  # http: bytes one process holds for its clients in all; 0: the server's own default


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP target driven by virtual users (closed model)."""

    name: str
    urls: tuple[str, ...]
    method: str = DEFAULT_METHOD
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float = DEFAULT_TIMEOUT_S
    expect_status: tuple[int, ...] = ()  # empty: 2xx and 3xx succeed
    engine: str = DEFAULT_ENGINE
    concurrency: int = 1  # closed model: virtual users in all (a config must give it, rate or stages)
    verify_tls: bool = True
    model: str = "closed"  # closed: virtual users; open: arrivals on a schedule
    rate: float = 0.0  # open model: arrivals per second in all (the start of the stages, if any)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # open model: requests in flight in all, at most
    arrival: str = "constant"  # open model: constant | poisson
    stages: tuple[Stage, ...] = ()  # ramps of concurrency (closed) or rate (open)
    think: tuple[float, float] = (0.0, 0.0)  # closed model: pause between requests, uniform in [lo, hi]

    kind = "http"

    @property
    def level(self) -> float:
        """Where the stages start: the rate (open) or the concurrency (closed)."""
        return self.rate if self.model == "open" else float(self.concurrency)

    @property
    def peak_users(self) -> int:
        """The most virtual users (closed) or requests in flight (open) this target may have."""
        if self.model == "open":
            return self.max_concurrency
        return int(round(peak_level(self.stages, self.concurrency)))

    @property
    def row_type(self) -> str:
        return self.method


@dataclass(frozen=True)
class TcpTarget:
    """A TCP target: persistent connections sending a message and checking the reply."""

    name: str
    address: str  # "host:port", possibly with a "{server}" reference
    connections: int
    message: bytes
    expect: str = DEFAULT_TCP_EXPECT
    rate: float = 0.0  # messages/s in all; 0: back to back
    connect_rate: float = 0.0  # new connections/s in all; 0: as fast as possible
    source_ips: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_S
    stages: tuple[Stage, ...] = ()  # ramps of the connections held, from `connections`

    kind = "tcp"

    @property
    def peak_connections(self) -> int:
        """The most connections this target holds at once: `connections`, or the stages' highest."""
        return int(round(peak_level(self.stages, self.connections)))

    def asked_at_peak(self, elapsed: float) -> int:
        """The connections to have held at the peak of a run whose load lasted `elapsed` seconds.

        With stages, the highest level they reached up to `STAGE_LAG_S` before the load stopped.
        """
        if not self.stages:
            return self.connections
        return int(round(peak_level_until(self.stages, self.connections, elapsed - STAGE_LAG_S)))

    @property
    def row_type(self) -> str:
        return "TCP"


Target = HttpTarget | TcpTarget


@dataclass(frozen=True)
class RunConfig:
    """A whole run, as validated."""

    name: str
    targets: tuple[Target, ...]
    duration: float | None = None  # seconds
    requests: int | None = None  # stop after this many requests in all
    workers: int | None = None  # None: one per CPU core
    out: str = DEFAULT_OUT
    servers: tuple[ServerSpec, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    monitor: tuple[int, ...] = ()  # pids of processes the run did not start, sampled too
    metrics: tuple[str, int] | None = None  # (host, port) to serve live Prometheus metrics on; port 0: any free
    cluster: str | None = None  # a Dask scheduler (tcp://HOST:PORT) or local:N: run on its nodes (loadtest.cluster)
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``10s``, ``2m``, ``1h`` or ``250ms``.

    A bare number is refused, not read as seconds: ``think: 100`` meant 100 ms as often as 100 s.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: must be a duration such as 10s, 2m or 1h, got {value!r}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and _BARE_NUMBER.match(value)):
        raise ConfigError(f"{where}: a duration needs a unit (100ms, 2s, 5m, 1h), got {value!r}")
    if not (isinstance(value, str) and (m := _DURATION.match(value))):
        raise ConfigError(f"{where}: must be a duration such as 10s, 2m or 1h, got {value!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise ConfigError(f"{where}: must be more than 0 and at most {MAX_DURATION_TEXT}, got {value!r}")
    return seconds


def parse_workers(value: Any, where: str) -> int | None:
    """A worker count from the config or the command line: a positive whole number, or ``auto`` (None)."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return check_workers(_positive_int(value, where, noun="a positive integer or auto"), where)


def parse_pid(value: Any, where: str) -> int:
    """A process id from the config or the command line: a whole number from 1 to `MAX_PID`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PID:
        raise ConfigError(f"{where}: must be a process id (a whole number from 1 to {MAX_PID}), got {value!r}")
    return value


def parse_address(value: Any, where: str, allow_refs: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a (host, port) pair."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: must be HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{where}: must be HOST:PORT with a host, got {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port must be between 0 and 65535, got {port}")
    return host, port


def parse_metrics_address(value: Any, where: str) -> tuple[str, int]:
    """Where to serve live metrics: ``HOST:PORT``, or ``PORT`` / ``:PORT`` on loopback."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and (text.isdigit() or text.startswith(":")):
        text = f"{DEFAULT_METRICS_HOST}:{text.lstrip(':')}"
    host, port = parse_address(text, where)
    check_ip(host, where)
    return host, port


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a YAML config file."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a file, or a pipe (`run /dev/stdin`, `<(...)`)
            raise ConfigError(f"{path}: is not a regular file or a pipe")
        # Opened without waiting: a named pipe that nobody writes to reads as empty instead of hanging.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        with open(fd, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; not a config file")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as e:
        raise ConfigError(str(e).replace(_DOCUMENT, str(path), 1)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: is not valid YAML{where} ({problem})") from None
    except Exception:  # noqa: BLE001 - yaml raises odd types on odd bytes
        raise ConfigError(f"{path}: is not valid YAML") from None
    default_name = os.path.splitext(os.path.basename(str(path)))[0] or "run"
    return parse_config(data, default_name=default_name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not "last wins",
    and a document whose aliases expand past `MAX_YAML_NODES` values is refused before it is built."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()  # type: ignore[no-untyped-call]
        if node is not None:
            _count_expanded(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the mapping itself reports it
                continue
            if duplicate:
                raise ConfigError(f"config: the field {key!r} is given twice (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


def _count_expanded(root: yaml.Node) -> int:
    """The values of a composed document with each alias counted every time it is used.

    An alias is the very node of its anchor, so the document is a graph; each node's expanded
    size is worked out once (memoised), which makes counting a billion laughs take microseconds.
    Raises ConfigError past `MAX_YAML_NODES`, or on an alias used inside its own anchor.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if children_done:
            open_nodes.discard(id(node))
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > MAX_YAML_NODES:
                raise ConfigError(f"{_DOCUMENT}: holds more than {MAX_YAML_NODES:,} values once its YAML aliases "
                                  f"(*name) are expanded; not a config file")
            sizes[id(node)] = size
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for c in children:
            if id(c) in open_nodes:
                raise ConfigError(f"{_DOCUMENT}: a YAML alias (*name) is used inside its own anchor "
                                  f"(line {c.start_mark.line + 1}); a config cannot contain itself")
            if id(c) not in sizes:
                stack.append((c, False))
    return sizes[id(root)]


def _check_text(data: Any, where: str, depth: int = 0) -> None:
    """Every string anywhere in the document must be encodable text (YAML lets "\ud800" through)."""
    if depth > 50:
        raise ConfigError(f"{where}: is nested too deeply")
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: must be valid text, got {data!r}") from None
    elif isinstance(data, dict):
        for key, value in data.items():
            _check_text(key, where, depth + 1)
            _check_text(value, f"{where}.{key}" if where != "config" else str(key), depth + 1)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _check_text(item, f"{where}[{i}]", depth + 1)


def parse_config(data: Any, default_name: str = "run") -> RunConfig:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a mapping of fields, got {_type_name(data)}")
    _check_text(data, "config")
    _check_keys(data, "config", {"name", "duration", "requests", "workers", "out", "servers", "targets",
                                 "thresholds", "monitor", "metrics", "cluster"})
    name = _name(data.get("name", default_name), "name")
    duration = parse_duration(data["duration"], "duration") if data.get("duration") is not None else None
    requests = _positive_int(data["requests"], "requests") if data.get("requests") is not None else None
    workers = parse_workers(data.get("workers", "auto"), "workers")
    out = data.get("out", DEFAULT_OUT)
    if not isinstance(out, str) or not out:
        raise ConfigError(f"out: must be a folder path, got {out!r}")

    servers_raw = data.get("servers") or []
    if not isinstance(servers_raw, list):
        raise ConfigError(f"servers: must be a list, got {_type_name(servers_raw)}")
    servers = tuple(_server(s, f"servers[{i}]") for i, s in enumerate(servers_raw))
    _unique([s.name for s in servers], "servers", "name")

    targets_raw = data.get("targets")
    if targets_raw is None:
        raise ConfigError("targets: is missing; a run needs at least one target")
    if not isinstance(targets_raw, list):
        raise ConfigError(f"targets: must be a list, got {_type_name(targets_raw)}")
    if not targets_raw:
        raise ConfigError("targets: is empty; a run needs at least one target")
    server_names = {s.name for s in servers}
    targets = tuple(_target(t, f"targets[{i}]", server_names) for i, t in enumerate(targets_raw))
    _unique([t.name for t in targets], "targets", "name")
    for i, t in enumerate(targets):
        if t.name in RESERVED_NAMES:
            raise ConfigError(f"targets[{i}].name: {t.name!r} is the name of the reports' total row; choose another")
    if duration is None:
        staged = [stages_duration(t.stages) for t in targets if t.stages]
        if staged:
            duration = max(staged)  # a run with stages lasts as long as its longest ramp
        elif requests is None:
            raise ConfigError("config: needs duration (such as 30s) or requests (a total count) to know when to stop")
    thresholds = _thresholds(data.get("thresholds"), [t.name for t in targets])
    monitor = data.get("monitor") or []
    if not isinstance(monitor, list):
        raise ConfigError(f"monitor: must be a list of process ids, got {_type_name(monitor)}")
    pids = tuple(parse_pid(pid, f"monitor[{i}]") for i, pid in enumerate(monitor))
    cluster = data.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not cluster.strip()):
        raise ConfigError(f"cluster: must be a Dask scheduler address such as tcp://HOST:8786, or local:N, "
                          f"got {cluster!r}")
    return RunConfig(
        name=name,
        targets=targets,
        duration=duration,
        requests=requests,
        workers=workers,
        out=out,
        servers=servers,
        thresholds=thresholds,
        monitor=pids,
        metrics=parse_metrics_address(data["metrics"], "metrics") if data.get("metrics") is not None else None,
        cluster=cluster.strip() if cluster is not None else None,
        source=data,
    )


def _server(data: Any, where: str) -> ServerSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {_type_name(data)}")
    _check_keys(data, where, {"name", "kind", "listen", "workers", "upper", "max_connections", "idle_timeout",
                              "max_buffered"})
    kind = data.get("kind")
    if kind not in SERVER_KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(SERVER_KINDS)}, got {kind!r}")
    host, port = parse_address(data.get("listen", "127.0.0.1:0"), f"{where}.listen")
    check_ip(host, f"{where}.listen")
    workers = check_workers(_positive_int(data.get("workers", 1), f"{where}.workers"), f"{where}.workers")
    upper = data.get("upper", False)
    if not isinstance(upper, bool):
        raise ConfigError(f"{where}.upper: must be true or false, got {upper!r}")
    if kind != "echo" and upper:
        raise ConfigError(f"{where}.upper: only an echo server can upper-case")
    max_connections = _positive_int(data["max_connections"], f"{where}.max_connections") if "max_connections" in data else 0
    idle_timeout = parse_duration(data["idle_timeout"], f"{where}.idle_timeout") if "idle_timeout" in data else 0.0
    if kind != "http" and "max_buffered" in data:
        raise ConfigError(f"{where}.max_buffered: only an http server buffers requests")
    max_buffered = parse_max_buffered(data["max_buffered"], f"{where}.max_buffered") if "max_buffered" in data else 0
    return ServerSpec(
        name=_name(data.get("name", kind), f"{where}.name"),
        kind=kind,
        host=host,
        port=port,
        workers=workers,
        upper=upper,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        max_buffered=max_buffered,
    )


def parse_max_buffered(value: Any, where: str) -> int:
    """An HTTP server's `max_buffered`, given in MiB (a whole number), in bytes."""
    mib = _positive_int(value, where, "a whole number of MiB")
    if mib > MAX_BUFFERED_MIB:
        raise ConfigError(f"{where}: must be at most {MAX_BUFFERED_MIB} MiB, got {mib}")
    return mib * 1024 * 1024


_HTTP_KEYS = {"name", "url", "urls", "method", "headers", "body", "timeout", "expect_status", "engine",
              "concurrency", "verify_tls", "rate", "max_concurrency", "arrival", "stages", "think"}
_TCP_KEYS = {"name", "tcp", "connections", "message", "size", "expect", "rate", "connect_rate", "source_ips",
             "timeout", "stages"}


def _target(data: Any, where: str, servers: set[str]) -> Target:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {_type_name(data)}")
    if "tcp" in data:
        return _tcp_target(data, where, servers)
    if "url" not in data and "urls" not in data:
        raise ConfigError(f"{where}: needs url (or urls) for an HTTP target, or tcp for a TCP target")
    return _http_target(data, where, servers)


def _http_target(data: dict[str, Any], where: str, servers: set[str]) -> HttpTarget:
    _check_keys(data, where, _HTTP_KEYS)
    if "url" in data and "urls" in data:
        raise ConfigError(f"{where}: give url or urls, not both")
    if "url" in data:
        urls = [(data["url"], f"{where}.url")]
    else:
        raw = data["urls"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}.urls: must be a non-empty list of URLs, got {raw!r}")
        urls = [(u, f"{where}.urls[{i}]") for i, u in enumerate(raw)]
    checked = tuple(_url(u, w, servers) for u, w in urls)
    method = data.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ConfigError(f"{where}.method: must be one of {', '.join(HTTP_METHODS)}, got {method!r}")
    headers_raw = data.get("headers") or {}
    if not isinstance(headers_raw, dict):
        raise ConfigError(f"{where}.headers: must be a mapping of header names to values, got {_type_name(headers_raw)}")
    headers: list[tuple[str, str]] = []
    for k, v in headers_raw.items():
        if not isinstance(k, str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", k):
            raise ConfigError(f"{where}.headers: {k!r} is not a valid header name")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or not _latin1_line(str(v)):
            raise ConfigError(f"{where}.headers.{k}: must be one line of Latin-1 text without control "
                              f"characters, got {v!r}")
        headers.append((k, str(v)))
    body = data.get("body", "")
    if not isinstance(body, str):
        raise ConfigError(f"{where}.body: must be text, got {_type_name(body)}")
    engine = data.get("engine", DEFAULT_ENGINE)
    if engine not in ENGINES:
        raise ConfigError(f"{where}.engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    verify_tls = data.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        raise ConfigError(f"{where}.verify_tls: must be true or false, got {verify_tls!r}")
    stages = _stages(data.get("stages"), f"{where}.stages")
    model = "open" if "rate" in data else "closed"
    if model == "open":
        if "concurrency" in data:
            raise ConfigError(f"{where}: give concurrency (closed model) or rate (open model), not both")
        if "think" in data:
            raise ConfigError(f"{where}.think: only the closed model (concurrency) has think time")
        rate = _non_negative_number(data["rate"], f"{where}.rate") if stages else \
            _positive_number(data["rate"], f"{where}.rate")
        concurrency = 1
    else:
        for key in ("max_concurrency", "arrival"):
            if key in data:
                raise ConfigError(f"{where}.{key}: only the open model (rate) has {key}")
        rate = 0.0
        concurrency = _non_negative_int(data.get("concurrency", 0), f"{where}.concurrency") if stages \
            else _positive_int(data.get("concurrency", 1), f"{where}.concurrency")
    arrival = data.get("arrival", "constant")
    if arrival not in ARRIVALS:
        raise ConfigError(f"{where}.arrival: must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    target = HttpTarget(
        name=_name(data.get("name", checked[0]), f"{where}.name"),
        urls=checked,
        method=method.upper(),
        headers=tuple(headers),
        body=body.encode("utf-8"),
        timeout=_timeout(data, where),
        expect_status=_statuses(data.get("expect_status"), f"{where}.expect_status"),
        engine=engine,
        concurrency=concurrency,
        verify_tls=verify_tls,
        model=model,
        rate=rate,
        max_concurrency=_positive_int(data.get("max_concurrency", DEFAULT_MAX_CONCURRENCY),
                                      f"{where}.max_concurrency"),
        arrival=arrival,
        stages=stages,
        think=_think(data.get("think"), f"{where}.think"),
    )
    # Checked once every field is valid, so a mistake in one is named first. There is no silent default
    # of one user: a forgotten concurrency would measure one user's pace and look like the server's.
    if not {"concurrency", "rate", "stages"} & set(data):
        raise ConfigError(f"{where}: needs concurrency (virtual users, closed model) or rate (arrivals per "
                          f"second, open model), such as concurrency: 10")
    return target


def _tcp_target(data: dict[str, Any], where: str, servers: set[str]) -> TcpTarget:
    _check_keys(data, where, _TCP_KEYS)
    address = data["tcp"]
    if not isinstance(address, str):
        raise ConfigError(f"{where}.tcp: must be HOST:PORT, got {address!r}")
    _check_refs(address, f"{where}.tcp", servers)
    if not _SERVER_REF.fullmatch(address):
        host, port = parse_address(address, f"{where}.tcp")
        if port == 0:
            raise ConfigError(f"{where}.tcp: port must be between 1 and 65535, got 0")
        check_ip(host, f"{where}.tcp")
    if "message" in data and "size" in data:
        raise ConfigError(f"{where}: give message or size, not both")
    if "message" in data:
        message = data["message"]
        if not isinstance(message, str) or not message:
            raise ConfigError(f"{where}.message: must be non-empty text, got {message!r}")
        payload = message.encode("utf-8")
    else:
        size = _positive_int(data.get("size", DEFAULT_TCP_SIZE), f"{where}.size")
        if size > 16 * 1024 * 1024:
            raise ConfigError(f"{where}.size: must be at most 16 MiB, got {size}")
        payload = bytes(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(size))
    expect = data.get("expect", DEFAULT_TCP_EXPECT)
    if expect not in TCP_EXPECTS:
        raise ConfigError(f"{where}.expect: must be one of {', '.join(TCP_EXPECTS)}, got {expect!r}")
    stages = _stages(data.get("stages"), f"{where}.stages")
    if stages:  # connections is where the ramp starts, and may be 0
        connections = _non_negative_int(data.get("connections", 0), f"{where}.connections")
        if peak_level(stages, connections) < 0.5:
            raise ConfigError(f"{where}.stages: never reach a connection; give a stage a target of 1 or more")
    else:
        connections = _positive_int(data.get("connections", 1), f"{where}.connections")
    return TcpTarget(
        name=_name(data.get("name", address), f"{where}.name"),
        address=address,
        connections=connections,
        message=payload,
        expect=expect,
        rate=_positive_number(data["rate"], f"{where}.rate") if "rate" in data else 0.0,
        connect_rate=_positive_number(data["connect_rate"], f"{where}.connect_rate") if "connect_rate" in data else 0.0,
        source_ips=_source_ips(data.get("source_ips"), f"{where}.source_ips"),
        timeout=_timeout(data, where),
        stages=stages,
    )


def _timeout(data: dict[str, Any], where: str) -> float:
    return parse_duration(data["timeout"], f"{where}.timeout") if "timeout" in data else DEFAULT_TIMEOUT_S


def _url(value: Any, where: str, servers: set[str]) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a URL such as http://127.0.0.1:8080/, got {value!r}")
    _check_refs(value, where, servers)
    try:
        netloc = urlsplit(value).netloc.rpartition("@")[2] if "://" in value else ""
    except ValueError:  # an unclosed "[" of an IPv6 host
        raise ConfigError(f"{where}: is not a valid URL, got {value!r}") from None
    if _SERVER_REF.search(netloc) and not _SERVER_REF.fullmatch(netloc):
        raise ConfigError(f"{where}: a {{server}} reference stands for the whole host:port, as in "
                          f"http://{{name}}/path, got {value!r}")
    probe = _SERVER_REF.sub("127.0.0.1:1", value)
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: is not a valid URL, got {value!r}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: must start with http:// or https://, got {value!r}")
    if not parts.hostname:
        raise ConfigError(f"{where}: has no host, got {value!r}")
    if port == 0:
        raise ConfigError(f"{where}: port must be between 1 and 65535, got {value!r}")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        raise ConfigError(f"{where}: must not contain spaces or control characters, got {value!r}")
    if not value.isascii():
        raise ConfigError(f"{where}: must be ASCII; percent-encode other characters (é as %C3%A9), got {value!r}")
    return value


def _check_refs(text: str, where: str, servers: set[str]) -> None:
    for ref in _SERVER_REF.findall(text):
        if ref not in servers:
            known = ", ".join(sorted(servers)) or "none are configured"
            raise ConfigError(f"{where}: refers to server {{{ref}}}, but no server has that name ({known})")


def check_ip(host: str, where: str) -> None:
    """Raise ConfigError unless `host` is an IP address or localhost."""
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: host must be an IP address or localhost, got {host!r}") from None


def _source_ips(value: Any, where: str) -> tuple[str, ...]:
    """``127.0.0.1-127.0.0.4``, one address, or a list of addresses."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}")
        first, dash, last = item.partition("-")
        if dash and not last.strip():
            raise ConfigError(f"{where}: must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}")
        try:
            lo = ipaddress.IPv4Address(first.strip())
            hi = ipaddress.IPv4Address(last.strip()) if last else lo
        except ValueError:
            raise ConfigError(f"{where}: must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}") from None
        if hi < lo or int(hi) - int(lo) > 255:
            raise ConfigError(f"{where}: range {item!r} must run upwards and span at most 256 addresses")
        out.extend(str(ipaddress.IPv4Address(i)) for i in range(int(lo), int(hi) + 1))
    return tuple(dict.fromkeys(out))


def _statuses(value: Any, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            raise ConfigError(f"{where}: must be HTTP status codes between 100 and 599, got {item!r}")
        out.append(item)
    if not out:
        raise ConfigError(f"{where}: must list at least one status code")
    return tuple(out)


def _stages(value: Any, where: str) -> tuple[Stage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a list such as [{{duration: 30s, target: 200}}], got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"duration", "target"}:
            raise ConfigError(f"{where}[{i}]: must have exactly duration and target, got {item!r}")
        out.append(Stage(parse_duration(item["duration"], f"{where}[{i}].duration"),
                         _non_negative_number(item["target"], f"{where}[{i}].target")))
    total = stages_duration(tuple(out))
    if total > MAX_DURATION_S:  # the same cap as duration: the stages are the run's length
        raise ConfigError(f"{where}: add up to {total / 86400:.1f} days; a run lasts at most {MAX_DURATION_TEXT}")
    return tuple(out)


def _think(value: Any, where: str) -> tuple[float, float]:
    if value is None:
        return (0.0, 0.0)
    if isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: must be a duration or [shortest, longest], got {value!r}")
        lo, hi = (parse_duration(v, where) for v in value)
        if hi < lo:
            raise ConfigError(f"{where}: [shortest, longest] must not run backwards, got {value!r}")
        return (lo, hi)
    seconds = parse_duration(value, where)
    return (seconds, seconds)


def _thresholds(value: Any, targets: list[str]) -> tuple[Threshold, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"thresholds: must be a list such as ['p99 < 50ms'], got {_type_name(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"thresholds[{i}]"
        abort = False
        if isinstance(item, dict):
            _check_keys(item, where, {"threshold", "abort_on_fail"})
            abort = item.get("abort_on_fail", False)
            if not isinstance(abort, bool):
                raise ConfigError(f"{where}.abort_on_fail: must be true or false, got {abort!r}")
            item = item.get("threshold")
        if not isinstance(item, str):
            raise ConfigError(f"{where}: must be text such as 'p99 < 50ms', got {item!r}")
        try:
            out.append(parse_threshold(item, targets, abort))
        except ThresholdError as e:
            raise ConfigError(f"{where}: {e}") from None
    return tuple(out)


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: must be a whole number, 0 or more, got {value!r}")
    return value


def _non_negative_number(value: Any, where: str, most: float = MAX_LEVEL) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ConfigError(f"{where}: must be a number, 0 or more, got {value!r}")
    if value > most:
        raise ConfigError(f"{where}: must be at most {most:,.0f}, got {value!r}")
    return float(value)


def check_workers(count: int, where: str) -> int:
    """A process count a machine can start: at most `MAX_WORKERS`."""
    if count > MAX_WORKERS:
        raise ConfigError(f"{where}: must be at most {MAX_WORKERS} processes, got {count}")
    return count


def _positive_int(value: Any, where: str, noun: str = "a positive integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: must be {noun}, got {value!r}")
    return value


def _positive_number(value: Any, where: str, most: float = MAX_LEVEL) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{where}: must be a positive number, got {value!r}")
    if value > most:
        raise ConfigError(f"{where}: must be at most {most:,.0f}, got {value!r}")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be non-empty text, got {value!r}")
    if len(value) > 200 or any(unicodedata.category(c) == "Cc" for c in value):
        raise ConfigError(f"{where}: must be one line of at most 200 characters, without control characters, "
                          f"got {value!r}")
    return value


def _latin1_line(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(c) == "Cc" and c != "\t" for c in text)


def _check_keys(data: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(allowed))})")


def _unique(names: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ConfigError(f"{where}[{i}].{key}: {n!r} is used twice; each must be unique")
        seen.add(n)


def _type_name(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "text", int: "a number", float: "a number",
            bool: "true/false", type(None): "nothing"}.get(type(value), type(value).__name__)


def resolve(text: str, addresses: Mapping[str, str]) -> str:
    """Replace ``{server}`` references by that server's ``host:port``."""
    return _SERVER_REF.sub(lambda m: addresses[m.group(1)], text)
