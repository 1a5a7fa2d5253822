"""Flow targets: virtual users that run several requests in order (YAML `flow:` steps or a Python `script:`).

    - name: shop
      concurrency: 20               # or rate: passes started per second (open model), or stages
      data: users.csv               # optional, relative to the config file; data_mode: unique (default) | cycle
      flow:                         # YAML steps (see loadtest.model.flows.steps) ...
        - {name: login, method: POST, url: "http://{site}/login", json: {user: "${data.user}", password: x},
           capture: {token: "json:token"}}
    - name: shop2
      concurrency: 20
      url: http://{site}            # ... or a Python function, its paths joined to url
      script: flows.py:shop         # relative to the config file

A flow target stands for several stats rows, each a target of the run: the flow
itself (kind `flow`, Type FLOW: one request is one pass, its latency the whole
journey) and then one per step (kind `flow-step`, named ``shop/login``, Type
the step's method), which have no users of their own: the flow's users record
into them. The flow's row is left out of Aggregated, which adds up requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, PrivateAttr, ValidationInfo, WithJsonSchema, model_validator

from loadtest.model.fields import (
    DEFAULT_TIMEOUT_S,
    Duration,
    FieldError,
    Flag,
    Name,
    Stages,
    check_at,
    choice,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
)
from loadtest.model.config_model import ConfigModel
from loadtest.model.flows.data import DATA_MODES, DEFAULT_DATA_MODE, DataError, check_unique, read_data
from loadtest.model.flows.source import ScriptError, load_function
from loadtest.model.flows.spec import FlowSpec, flow_rows, scan_script
from loadtest.model.flows.steps import FlowError, parse_steps
from loadtest.core.run_files import FLOW_TYPE
from loadtest.core.schedule import Stage, peak_level
from loadtest.model.kinds.base import ExtraRow, Load, TargetKind
from loadtest.model.kinds.http import (ARRIVALS, DEFAULT_ARRIVAL, DEFAULT_MAX_CONCURRENCY, open_model_rows, open_model_summary,
                   think_range, url_text)

if TYPE_CHECKING:
    from loadtest.core.stats import RunStats, TargetTotals

SCRIPT_DESCRIPTORS = 2  # a Python flow's user may talk to any origins: assume two connections at once


@dataclass(frozen=True)
class FlowTarget:
    """A flow target, as validated: its steps or script, its data, and its load (closed or open, as HTTP's)."""

    name: str
    spec: FlowSpec
    concurrency: int = 1
    model: str = "closed"
    rate: float = 0.0
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    arrival: str = DEFAULT_ARRIVAL
    stages: tuple[Stage, ...] = ()
    think: tuple[float, float] = (0.0, 0.0)  # closed model: pause between passes

    @property
    def kind(self) -> str:
        return FlowKind.name

    @property
    def peak_users(self) -> int:
        if self.model == "open":
            return self.max_concurrency
        return int(round(peak_level(self.stages, self.concurrency)))

    @property
    def rows(self) -> list[tuple[str, str]]:
        """Its stats rows: the flow's own, then its steps' (name, Type)."""
        return flow_rows(self.name, self.spec)


@dataclass(frozen=True)
class FlowStepRow:
    """One step's stats row of a flow: a target of the run with no users of its own (its flow's users record
    into it)."""

    name: str  # flow/step
    method: str  # the Type column
    flow: str
    stages: tuple[Stage, ...] = ()  # none: the run's length is its flow's business

    @property
    def kind(self) -> str:
        return FlowStepKind.name


_TEXT = {"type": "string"}


def _text(description: str) -> dict[str, str]:
    return {**_TEXT, "description": description}


_THINK = {"anyOf": [_TEXT, {"type": "number", "minimum": 0},
                    {"type": "array", "minItems": 2, "maxItems": 2, "items": {"anyOf": [_TEXT, {"type": "number"}]}}],
          "description": "a pause: one duration, or [shortest, longest] drawn uniformly"}
_STATUS = {"type": "integer", "minimum": 100, "maximum": 599}
_STEP_SCHEMA = {"anyOf": [
    {"type": "object", "additionalProperties": False, "required": ["think"], "properties": {"think": _THINK}},
    {"type": "object", "additionalProperties": False, "required": ["url"], "properties": {
        "name": _text("the step's row name (FLOW/NAME); left out, stepN"),
        "method": _text("the HTTP method; left out, GET"),
        "url": {"type": "string", "description": "http:// or https:// URL; {server} is a server's host:port, "
                                                 "${name} a captured value or data column"},
        "headers": {"type": "object", "additionalProperties": {"type": ["string", "number"]},
                    "description": "request headers; values may hold ${...} placeholders"},
        "json": {"description": "a JSON body; its strings may hold ${...} placeholders"},
        "body": _text("the request body as text; it may hold ${...} placeholders"),
        "capture": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^(json|header|regex):"},
                    "description": "values taken from the response for later steps, variable: json:PATH | "
                                   "header:NAME | regex:EXPR"},
        "expect": {"type": "object", "additionalProperties": False, "description": "what the response must be",
                   "properties": {
            "status": {"anyOf": [_STATUS, {"type": "array", "items": _STATUS}],
                       "description": "the status, or list of statuses, that succeed; left out, any 2xx or 3xx"},
            "body_contains": {"type": "string", "minLength": 1,
                              "description": "text the body must hold, else a check failure"}}},
        "repeat": {"type": "integer", "minimum": 1, "description": "send the step this many times in a row"},
    }}]}


def _script_ref(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise FieldError(f"must be FILE.py:FUNCTION, such as flows.py:shop, got {value!r}")
    path, function = value.rsplit(":", 1)
    if not path or not function.isidentifier():
        raise FieldError(f"must be FILE.py:FUNCTION, such as flows.py:shop, got {value!r}")
    return path, function


def _base_url(value: Any, info: ValidationInfo) -> str:
    return str(url_text(value, info))


def _relative(info: ValidationInfo, path: str) -> Path:
    """`path` as written in the config, relative to the config file's folder (the context's "base")."""
    base = (info.context or {}).get("base")
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else Path(base) / p


class FlowTargetModel(ConfigModel):
    """A flow target as written: `flow:` steps or `script: FILE.py:FUNCTION`, and concurrency, rate or stages."""

    name: Name
    """The flow's row name; each step's row is NAME/STEP."""
    flow: Annotated[Any, WithJsonSchema({"type": "array", "minItems": 1, "items": _STEP_SCHEMA,
                                         "description": "steps in order: requests, or {think: DURATION}"})] = None
    """YAML steps run in order by each virtual user: requests, or pauses written {think: DURATION}."""
    script: Annotated[tuple[str, str] | None, BeforeValidator(lambda v: None if v is None else _script_ref(v)),
                      WithJsonSchema({"type": "string", "pattern": r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$",
                                      "description": "FILE.py:FUNCTION, the file relative to the config"})] = None
    """A Python flow instead of steps: FILE.py:FUNCTION, the file relative to the config; the function is given the
    virtual user."""
    url: Annotated[str | None, BeforeValidator(_base_url), WithJsonSchema({
        "type": "string", "description": "a Python flow's base URL: its paths are joined to it"})] = None
    """A Python flow's base URL: the paths it requests are joined to it."""
    data: Annotated[str | None, WithJsonSchema({"type": "string", "description": "a CSV file with a header row, "
                                                                                 "relative to the config"})] = None
    """A UTF-8 CSV file with a header row, relative to the config; its columns are ${data.COLUMN} in templates."""
    data_mode: choice(DATA_MODES) = DEFAULT_DATA_MODE  # type: ignore[valid-type]
    """unique: a row is held by one user at a time, for one pass; cycle: each pass takes the next row, shared or not."""
    timeout: Duration = DEFAULT_TIMEOUT_S
    """Each request's, as for an HTTP target: the whole response from its first byte written."""
    verify_tls: Flag = True
    """Check https servers' certificates."""
    stages: Stages = ()
    """A ramp, as k6's stages: of virtual users (closed model) or of passes started per second (open model, from
    rate)."""
    concurrency: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 0,
                                                "description": "virtual users (closed model)"})] = None
    """Closed model: virtual users in all, each running passes through the flow one after another."""
    rate: Annotated[Any, WithJsonSchema({"type": "number", "minimum": 0, "maximum": 10_000_000,
                                         "description": "passes started per second in all (open model)"})] = None
    """Open model: passes started per second in all; a pass's latency counts from its scheduled start."""
    max_concurrency: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 1})] = None
    """Open model: passes in flight in all, at most (left out: 5,000)."""
    arrival: choice(ARRIVALS) = DEFAULT_ARRIVAL  # type: ignore[valid-type]
    """Open model: constant gaps between passes, or poisson."""
    think: Annotated[tuple[float, float] | None, BeforeValidator(think_range), WithJsonSchema({"anyOf": [
        {"type": "string"}, {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string"}}]})] = None
    """Closed model: a user's pause between passes, one duration or [shortest, longest] drawn uniformly."""

    needs: ClassVar[str] = "flow or script for a flow"
    _target: FlowTarget | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _built(self, info: ValidationInfo) -> FlowTargetModel:
        self.built(info)
        return self

    def built(self, info: ValidationInfo | None = None) -> FlowTarget:
        """The validated target (the config file's folder comes from the validation context)."""
        if self._target is not None:
            return self._target
        assert info is not None
        spec = self._spec(info)
        given = self.model_fields_set
        if "rate" in given:
            if "concurrency" in given:
                raise FieldError("give concurrency (closed model) or rate (open model), not both")
            if "think" in given:
                raise FieldError("only the closed model (concurrency) has think time", at=("think",))
            model, concurrency = "open", 1
            rate = check_at("rate", non_negative_number if self.stages else positive_number, self.rate)
        else:
            for key in ("max_concurrency", "arrival"):
                if key in given:
                    raise FieldError(f"only the open model (rate) has {key}", at=(key,))
            model, rate = "closed", 0.0
            users = self.concurrency if "concurrency" in given else (0 if self.stages else 1)
            concurrency = check_at("concurrency", non_negative_int if self.stages else positive_int, users)
        if not {"concurrency", "rate", "stages"} & given:
            raise FieldError("needs concurrency (virtual users, closed model) or rate (passes per second, "
                             "open model), such as concurrency: 10")
        cap = self.max_concurrency if "max_concurrency" in given else DEFAULT_MAX_CONCURRENCY
        target = FlowTarget(self.name, spec, concurrency, model, rate, check_at("max_concurrency", positive_int, cap),
                            self.arrival, self.stages, self.think or (0.0, 0.0))
        self._target = target  # built once (a private attribute: the frozen fields stay frozen)
        return target

    def _spec(self, info: ValidationInfo) -> FlowSpec:
        """What the flow runs: its data file, and its Python function or its YAML steps, checked."""
        given = self.model_fields_set
        table = None
        if self.data is not None:
            if not isinstance(self.data, str) or not self.data:
                raise FieldError(f"must be the path of a CSV file, got {self.data!r}", at=("data",))
            try:
                table = read_data(_relative(info, self.data))
            except DataError as e:
                raise FieldError(str(e), at=("data",)) from None
        elif "data_mode" in given:
            raise FieldError("has no data file to deal rows from", at=("data_mode",))
        if self.script is not None:
            if "flow" in given:
                raise FieldError("give flow (YAML steps) or script (a Python function), not both")
            path = _relative(info, self.script[0])
            try:
                load_function(path, self.script[1])
            except ScriptError as e:
                raise FieldError(str(e), at=("script",)) from None
            return FlowSpec(script=str(path.resolve()), function=self.script[1], base_url=self.url, data=table,
                            data_mode=self.data_mode, timeout=self.timeout, verify_tls=self.verify_tls,
                            script_rows=scan_script(path))
        if "url" in given:
            raise FieldError("only a Python flow (script) has a base url; each YAML step has its own", at=("url",))
        servers = set((info.context or {}).get("servers", set()))
        columns = frozenset(table.columns) if table is not None else None
        try:
            steps = parse_steps(self.flow, "flow", columns, servers)
        except FlowError as e:
            where, _, message = str(e).partition(": ")
            raise FieldError(message, at=tuple(_path(where))) from None
        return FlowSpec(steps=steps, data=table, data_mode=self.data_mode, timeout=self.timeout,
                        verify_tls=self.verify_tls)

    @property
    def target(self) -> FlowTarget:
        return self.built()

    @classmethod
    def claims(cls, data: dict[str, Any]) -> bool:
        """A target as written is a flow if it has flow (steps) or script."""
        return "flow" in data or "script" in data

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        schema["allOf"] = [{"anyOf": [{"required": ["flow"]}, {"required": ["script"]}]},
                           {"anyOf": [{"required": ["concurrency"]}, {"required": ["rate"]}, {"required": ["stages"]}]}]


def _path(where: str) -> list[str | int]:
    """``flow[2].capture.token`` as a field path: ["flow", 2, "capture", "token"]."""
    out: list[str | int] = []
    for part in where.replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        elif part:
            out.append(part)
    return out


class FlowKind(TargetKind):
    """A flow's virtual users (closed) or passes on a schedule (open), each a pass through the steps."""

    name = "flow"
    model = FlowTargetModel
    worker = "loadtest.engine.kinds.flow:FlowWorker"

    def row_type(self, target: FlowTarget) -> str:
        return FLOW_TYPE

    def row_targets(self, target: FlowTarget) -> tuple[Any, ...]:
        return (target, *(FlowStepRow(name, method, target.name) for name, method in target.rows[1:]))

    def load(self, target: FlowTarget) -> Load:
        if target.model == "open":
            return Load(users=target.max_concurrency, start=target.rate, stages=target.stages, arrival=target.arrival)
        return Load(users=target.peak_users, start=float(target.concurrency), stages=target.stages,
                    think=target.think)

    def descriptors_per_user(self, target: FlowTarget) -> int:
        if target.spec.script is not None:
            return SCRIPT_DESCRIPTORS
        return len({s.url.split("/")[2] for s in target.spec.steps if hasattr(s, "url")})

    def most_workers(self, target: FlowTarget) -> int | None:
        return target.max_concurrency if target.model == "open" else None

    def check_workers(self, target: FlowTarget, workers: int) -> str | None:
        if target.model == "open" and target.max_concurrency < workers:
            return (f"{target.name} has max_concurrency {target.max_concurrency}, fewer than the {workers} workers "
                    f"that share it; use --workers {target.max_concurrency} or a larger max_concurrency")
        data = target.spec.data
        # Open model: a pass that finds every row of its worker held waits for one, late (and measured so).
        if data is not None and target.spec.data_mode == "unique" and target.model == "closed":
            problem = check_unique(data, target.peak_users, workers)
            if problem is not None:
                return f"{target.name}: {problem}"
        return None

    def extra_rows(self, target: FlowTarget, totals: TargetTotals) -> list[ExtraRow]:
        """Open model: LATENESS, how late passes started against their schedule (Failure Count: the dropped
        ones), and UNCORRECTED, each pass's time from its actual start rather than its scheduled one."""
        return open_model_rows(totals) if target.model == "open" else []

    def summary(self, target: FlowTarget, totals: TargetTotals, stats: RunStats, index: int) -> dict[str, Any]:
        return open_model_summary(target, totals) if target.model == "open" else {}


class FlowStepKind(TargetKind):
    """A step's row of a flow: no users, no connections of its own; the flow's users record into it."""

    name = "flow-step"
    worker = "loadtest.engine.kinds.flow:FlowStepWorker"
    model = FlowTargetModel  # a step row is never written in a config; its flow's model makes it

    def row_type(self, target: FlowStepRow) -> str:
        return target.method

    def load(self, target: FlowStepRow) -> Load:
        return Load(users=0, start=0.0)

    def descriptors_per_user(self, target: FlowStepRow) -> int:
        return 0
