"""The run configuration: YAML in, validated frozen dataclasses out, and the JSON Schema of it.

The config is described once, by pydantic models: `RunConfigModel` here, `ServerModel` for an
embedded server, and each target kind's own model (`loadtest.model.kinds`). They validate a document and
export its JSON Schema (`config_schema`, printed by `loadtest schema`). Every mistake in the user's
input is raised once, here, as a `ConfigError` whose message is one sentence naming the field
(``targets[1].concurrency: must be a positive integer, got 'many'``). The YAML is read with its
own hardening first: size caps, no waiting on a pipe, duplicate keys refused, alias bombs refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Mapping, Union

import yaml
from pydantic import BeforeValidator, Discriminator, Field, Tag, ValidationError, WithJsonSchema, model_validator

from loadtest.model import fields
from loadtest.model.fields import (  # noqa: F401 - the names the rest of the program imports from here
    MAX_WORKERS,
    ConfigError,
    Duration,
    FieldError,
    Flag,
    Name,
    OptionalDuration,
    OptionalPositiveInt,
    Pid,
    Workers,
    check_at,
    check_ip,
    choice,
    cluster_address_problem,
    explain,
    field_error,
    ip_address,
    metrics_address,
    parse_address,
    parse_duration,
    parse_max_buffered,
    parse_metrics_address,
    parse_pid,
    parse_workers,
    path_text,
    positive_int,
    process_count,
    resolve,
    type_name,
)
from loadtest.model.config_model import ConfigModel
from loadtest.model.server_config import DEFAULT_LISTEN, SERVER_KINDS, ServerModel, ServerSpec  # noqa: F401 - read from here too
# HttpTarget and TcpTarget are imported from here by the protocols and the tests.
from loadtest.model.kinds import MODELS, HttpTarget, Target, TcpTarget, kind_of, model_for, needs  # noqa: F401
from loadtest.core.schedule import stages_duration
from loadtest.core.thresholds import Threshold, ThresholdError, parse_threshold

DEFAULT_OUT = "reports"
# A closed-model virtual user whose connect failed, or whose flow pass failed, waits before its next request:
# FIRST_BACKOFF_S, doubled after each failure in a row up to `failure_backoff:` (DEFAULT_FAILURE_BACKOFF_S; at
# most MAX_FAILURE_BACKOFF_S, `off` for none), and from the start again after a success. Without it a user aimed
# at a dead server spins: 168,000 refused requests in 10 s where a working /delay/50 user sends 200.
FIRST_BACKOFF_S = 0.01
DEFAULT_FAILURE_BACKOFF_S = 1.0
MAX_FAILURE_BACKOFF_S = 60.0
MAX_CONFIG_BYTES = 10 * 1024 * 1024
# Values in a YAML document with every alias expanded where it is used. A real config holds a few
# hundred; 536 bytes of nested aliases ("billion laughs") expand to billions and would take hours to check.
MAX_YAML_NODES = 1_000_000
MAX_TEXT_DEPTH = 50  # nesting of mappings and lists a config may have
RESERVED_NAMES = ("Aggregated",)  # the total row of every report
_DOCUMENT = "<document>"  # stands for the file's path in what the YAML loader raises; load_config puts it in


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
    cluster: str | None = None  # a Dask scheduler (tcp://HOST:PORT) or local:N: run on its nodes (loadtest.execution.cluster)
    failure_backoff: float = DEFAULT_FAILURE_BACKOFF_S  # the longest wait after failures in a row; 0: none
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)


class ThresholdModel(ConfigModel):
    """A threshold that can stop the run: ``{threshold: 'p99 < 50ms', abort_on_fail: true}``."""

    threshold: Any = None
    abort_on_fail: Flag = False


def _threshold(value: Any) -> tuple[Any, bool]:
    """A threshold as written: its text (checked once the target names are known) and abort_on_fail."""
    if isinstance(value, dict):
        try:
            item = ThresholdModel.model_validate(value)
        except ValidationError as e:
            raise field_error(e) from None
        text, abort = item.threshold, item.abort_on_fail
    else:
        text, abort = value, False
    if not isinstance(text, str):
        raise FieldError(f"must be text such as 'p99 < 50ms', got {text!r}")
    return text, abort


def _a_list(noun: str, empty: bool = True) -> Any:
    """A check that a value is a list (nothing: an empty one), worded with `noun`."""
    def check(value: Any) -> list[Any]:
        if value is None and empty:
            return []
        if not isinstance(value, list):
            raise FieldError(f"must be {noun}, got {type_name(value)}")
        return value
    return check


def _targets(value: Any) -> Any:
    if value is None:
        raise FieldError("is missing; a run needs at least one target")
    if not isinstance(value, list):
        raise FieldError(f"must be a list, got {type_name(value)}")
    if not value:
        raise FieldError("is empty; a run needs at least one target")
    return value


def _cluster(value: Any) -> str | None:
    """`cluster:`, checked as `--cluster` is (loadtest.execution.cluster owns the address's form)."""
    if value is None:
        return None

    problem = cluster_address_problem(value)
    if problem:
        raise FieldError(problem)
    return str(value).strip()


def _failure_backoff(value: Any) -> float:
    """`failure_backoff:`: a duration from FIRST_BACKOFF_S to MAX_FAILURE_BACKOFF_S, or `off`."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return 0.0
    seconds = fields.duration(value)
    if not FIRST_BACKOFF_S <= seconds <= MAX_FAILURE_BACKOFF_S:
        raise FieldError(f"must be from {FIRST_BACKOFF_S * 1000:g}ms to {MAX_FAILURE_BACKOFF_S:g}s, or off, "
                         f"got {value!r}")
    return seconds


def _out(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(f"must be a folder path, got {value!r}")
    return value


_THRESHOLD_TEXT = {"type": "string", "description": "such as 'p99 < 50ms', 'error_rate < 1%', 'home: rps > 100'"}
# A target is whichever kind's model claims it (loadtest.model.kinds.MODELS); each is tagged by its class name.
TargetModel = Annotated[Union[tuple(Annotated[m, Tag(m.__name__)] for m in MODELS)],  # type: ignore[valid-type]
                        Discriminator(model_for)]


class RunConfigModel(ConfigModel):
    """A whole run as written: what to load, how long, and what must hold."""

    name: Name = None  # type: ignore[assignment] # None (left out): the config file's name
    """Names the run and its report folder; left out, the config file's name without .yaml."""
    duration: OptionalDuration = None
    """How long the load runs (30s, 2m, 1h; at most 7 days). Left out: as long as the longest target's stages, else
    until requests have been sent."""
    requests: OptionalPositiveInt = None
    """Stop after this many requests in all (a flow counts passes, and a failed tcp connect counts too); with
    duration, whichever comes first."""
    workers: Workers = None
    """Worker processes, 1 to 256, or auto: one per CPU core (the default). On a cluster, per node."""
    out: Annotated[str, BeforeValidator(_out), WithJsonSchema({"type": "string", "minLength": 1})] = DEFAULT_OUT
    """The folder run folders are made in: each run writes OUT/NAME-YYYYmmdd-HHMMSS/."""
    servers: Annotated[tuple[ServerModel, ...], BeforeValidator(_a_list("a list"))] = ()
    """Embedded servers started before the load and stopped after it; {name} in a target's URL or address stands
    for that server's host:port."""
    targets: Annotated[tuple[TargetModel, ...], BeforeValidator(_targets),  # type: ignore[valid-type]
                       Field(validate_default=True)] = None
    """What to load: an HTTP target (url), a TCP target (tcp) or a flow (flow or script), each its own row in the
    reports; names must be unique."""
    thresholds: Annotated[tuple[tuple[Any, bool], ...], BeforeValidator(
        lambda v: [check_at(i, _threshold, x) for i, x in enumerate(_a_list(
            "a list such as ['p99 < 50ms']")(v))]),
        WithJsonSchema({"type": "array", "items": {"anyOf": [_THRESHOLD_TEXT, {
            "type": "object", "additionalProperties": False, "required": ["threshold"],
            "properties": {"threshold": _THRESHOLD_TEXT, "abort_on_fail": {
                "type": "boolean", "description": "also check it each second, and stop the run when it fails"}}}]}})] = ()
    """Conditions that decide the exit status, checked at the end: [TARGET:] FIGURE OP VALUE, such as 'p99 < 50ms'
    or 'home: error_rate < 1%'. Left out: failed == 0."""
    monitor: Annotated[tuple[Pid, ...], BeforeValidator(_a_list("a list of process ids"))] = ()
    """Process ids of processes the run did not start (such as your own server), sampled into resources.csv beside
    the run's own."""
    metrics: Annotated[tuple[str, int] | None, BeforeValidator(lambda v: None if v is None else metrics_address(v)),
                       WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
                                                 {"type": "string"}],
                                       "description": "HOST:PORT, :PORT or PORT for live Prometheus metrics"})] = None
    """Serve live Prometheus metrics while the run lasts at HOST:PORT, :PORT or PORT (on 127.0.0.1); port 0 picks a
    free port."""
    cluster: Annotated[str | None, BeforeValidator(_cluster), WithJsonSchema(
        {"type": "string", "description": "a Dask scheduler (tcp://HOST:8786) or local:N: run on its nodes"})] = None
    """Run on the nodes of this Dask scheduler (tcp://HOST:8786), or on local:N nodes started on this machine;
    --cluster overrides it."""
    failure_backoff: Annotated[float, BeforeValidator(_failure_backoff), WithJsonSchema(
        {"type": "string", "description": "the longest a closed-model virtual user waits after a failed connect "
                                          "or flow pass (10ms to 60s, or off); default 1s"})] = \
        DEFAULT_FAILURE_BACKOFF_S
    """The longest a closed-model virtual user waits after failed connects or flow passes in a row: 10 ms, doubled
    after each, up to this (10ms to 60s, or off for no wait); default 1s."""

    @model_validator(mode="after")
    def _checked_across_fields(self) -> RunConfigModel:
        self.checked  # noqa: B018 - built now, so that a mistake across fields is raised while validating
        return self

    @cached_property
    def checked(self) -> tuple[tuple[ServerSpec, ...], tuple[Target, ...], tuple[Threshold, ...], float | None]:
        """The servers, targets, thresholds and duration, checked across each other."""
        servers = tuple(s.spec for s in self.servers)
        _unique([s.name for s in servers], "servers")
        # One target per stats row: most kinds' targets stand for one, a flow for one more per step.
        targets = tuple(row for t in self.targets for row in kind_of(t.target).row_targets(t.target))
        _unique([t.name for t in targets], "targets")
        for i, t in enumerate(targets):
            if t.name in RESERVED_NAMES:
                raise FieldError(f"{t.name!r} is the name of the reports' total row; choose another",
                                 at=("targets", i, "name"))
        duration = self.duration
        if duration is None:
            staged = [stages_duration(t.stages) for t in targets if t.stages]
            if staged:
                duration = max(staged)  # a run with stages lasts as long as its longest ramp
            elif self.requests is None:
                raise FieldError("needs duration (such as 30s) or requests (a total count) to know when to stop")
        names = [t.name for t in targets]
        thresholds = []
        for i, (text, abort) in enumerate(self.thresholds):
            try:
                thresholds.append(parse_threshold(text, names, abort))
            except ThresholdError as e:
                raise FieldError(str(e), at=("thresholds", i)) from None
        return servers, targets, tuple(thresholds), duration

    def run_config(self, default_name: str, source: Mapping[str, Any]) -> RunConfig:
        servers, targets, thresholds, duration = self.checked
        return RunConfig(name=self.name if self.name is not None else default_name, targets=targets,
                         duration=duration, requests=self.requests, workers=self.workers, out=self.out,
                         servers=servers, thresholds=thresholds, monitor=self.monitor, metrics=self.metrics,
                         cluster=self.cluster, failure_backoff=self.failure_backoff, source=source)

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        schema["required"] = ["targets"]  # left out, it is refused with a sentence of its own (see _targets)
        schema["properties"]["targets"]["minItems"] = 1


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise FieldError(f"{n!r} is used twice; each must be unique", at=(where, i, "name"))
        seen.add(n)


def parse_config(data: Any, default_name: str = "run", base: str | os.PathLike[str] | None = None) -> RunConfig:
    """Validate an already-parsed YAML document; files it names (a flow's script and data) are relative to the
    folder `base` (the config file's; None: the working directory)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a mapping of fields, got {type_name(data)}")
    _check_text(data, "config")
    servers = data.get("servers")
    names = {str(s.get("name", s.get("kind"))) for s in servers if isinstance(s, dict)} \
        if isinstance(servers, list) else set()
    try:
        model = RunConfigModel.model_validate(data, context={"servers": names, "base": base})
    except ValidationError as e:
        raise _worded(e) from None
    return model.run_config(default_name, data)


def _worded(error: ValidationError) -> ConfigError:
    """pydantic's first error as the sentence `explain` words, with the target's kind tag left out of its path
    and a target that no kind claims told what it needs."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    if len(loc) > 2 and loc[0] == "targets" and isinstance(loc[1], int):
        loc = loc[:2] + loc[3:]  # ("targets", 0, "HttpTargetModel", "rate"): the tag is no field
    if first["type"] == "union_tag_not_found":
        if not isinstance(first["input"], dict):
            return ConfigError(f"{path_text(loc)}: must be a mapping, got {type_name(first['input'])}")
        return ConfigError(f"{path_text(loc)}: needs {needs()}")
    first = {**first, "loc": loc}
    return explain(ValidationError.from_exception_data(error.title, [first]))  # type: ignore[list-item]


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config file, as editors and `loadtest schema` use it."""
    schema = RunConfigModel.model_json_schema()
    del schema["title"]  # the model's class name
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "loadtest config", **schema}


def _check_text(data: Any, where: str, depth: int = 0) -> None:
    """Every string anywhere in the document must be encodable text (YAML lets "\\ud800" through)."""
    if depth > MAX_TEXT_DEPTH:
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


def load_config(path: str | os.PathLike[str], defaults: Mapping[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML config file; `defaults` fill top-level keys it leaves out (a capacity search
    runs until its search ends, so it needs no `duration:` of the file's)."""
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
        if not raw and stat.S_ISFIFO(mode):
            raise ConfigError(f"{path}: is a named pipe, not a regular file, and nothing was written to it")
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
    if defaults and isinstance(data, dict):
        data = {**defaults, **data}
    return parse_config(data, default_name=default_name, base=os.path.dirname(os.path.abspath(path)))


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
