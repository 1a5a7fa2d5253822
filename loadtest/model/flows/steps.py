"""A YAML flow's steps as validated: what each request step sends, captures and expects, and the think steps.

    flow:
      - name: login
        method: POST                       # GET unless given
        url: http://{site}/login
        json: {user: "${data.user}", password: "${data.password}"}   # or body: text
        headers: {X-Trace: "${uuid}"}
        capture: {token: "json:token"}     # json:PATH | header:NAME | regex:EXPR
        expect: {status: [200], body_contains: "token"}
        repeat: 1                          # send it this many times in a row
      - think: 500ms                       # or [200ms, 1s]: uniform in that range
      - name: me
        url: http://{site}/me
        headers: {Authorization: "Bearer ${token}"}

Steps keep their text, not compiled templates: a plan travels to the workers
pickled, so each worker compiles the templates itself (`runner.py`). Parsing
compiles them once too, which is where an unknown variable is caught.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loadtest.model.flows.extract import Capture, Expect, ExtractError, Needs, parse_capture, parse_expect
from loadtest.model.flows.template import SERVER_REF, TemplateError, compile_json, compile_template
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_REPEAT = 10_000
MAX_STEPS = 1000
_STEP_KEYS = {"name", "method", "url", "headers", "json", "body", "capture", "expect", "repeat"}
_STEP_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
MAX_THINK_S = 3600.0


class FlowError(ValueError):
    """A flow written wrongly: one sentence that starts with where (``targets[0].flow[2].capture.token``)."""


@dataclass(frozen=True)
class RequestStep:
    """One request of a flow, as written (its templates compiled in each worker)."""

    name: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None  # a text body (template)
    json: Any = None  # a JSON body (strings may be templates); sent with Content-Type: application/json
    captures: tuple[Capture, ...] = ()
    expect: Expect = Expect()
    repeat: int = 1

    @property
    def needs(self) -> Needs:
        """What of its response the step reads."""
        out = self.expect.needs
        for c in self.captures:
            out = out | c.needs
        return out


@dataclass(frozen=True)
class ThinkStep:
    """A pause between requests: `lo` to `hi` seconds, uniformly."""

    lo: float
    hi: float


Step = RequestStep | ThinkStep


def step_rows(flow: str, steps: tuple[Step, ...]) -> list[tuple[str, str]]:
    """The stats rows of a YAML flow's steps: (``flow/step``, method)."""
    return [(f"{flow}/{s.name}", s.method) for s in steps if isinstance(s, RequestStep)]


def parse_think(value: Any, where: str) -> ThinkStep:
    """``500ms``, ``2s``, 0.5 (seconds), or ``[200ms, 1s]``."""
    items = value if isinstance(value, list) else [value]
    if len(items) not in (1, 2):
        raise FlowError(f"{where}: must be a duration such as 500ms or a range such as [200ms, 1s], got {value!r}")
    seconds = []
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            s = float(item)
        else:
            m = _DURATION.match(item) if isinstance(item, str) else None
            if m is None:
                raise FlowError(f"{where}: must be a duration such as 500ms, 2s or 0.5, got {item!r}")
            s = float(m.group(1)) * _UNITS[m.group(2)]
        if not 0 <= s <= MAX_THINK_S:
            raise FlowError(f"{where}: must be from 0 to {MAX_THINK_S:g} s, got {item!r}")
        seconds.append(s)
    lo, hi = seconds[0], seconds[-1]
    if lo > hi:
        raise FlowError(f"{where}: a range goes from low to high, got {value!r}")
    return ThinkStep(lo, hi)


def parse_steps(value: Any, where: str, columns: frozenset[str] | None, servers: set[str]) -> tuple[Step, ...]:
    """Validate a flow's steps. `columns`: the data file's columns (None: no data file); `servers`: the names a
    ``{server}`` reference may use. Raises FlowError."""
    if not isinstance(value, list) or not value:
        raise FlowError(f"{where}: must be a list of steps (each a request with a url, or a think), got {value!r}")
    if len(value) > MAX_STEPS:
        raise FlowError(f"{where}: has {len(value)} steps; a flow may have at most {MAX_STEPS}")
    known = set(columns or ())
    steps: list[Step] = []
    names: set[str] = set()
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(raw, dict) and set(raw) == {"think"}:
            steps.append(parse_think(raw["think"], f"{at}.think"))
            continue
        step = _request_step(raw, at, frozenset(known), columns, servers, i)
        if step.name in names:
            raise FlowError(f"{at}.name: another step is named {step.name!r}; each step is a stats row of its own")
        names.add(step.name)
        known.update(c.name for c in step.captures)
        steps.append(step)
    if not names:
        raise FlowError(f"{where}: has no request step, only think steps")
    return tuple(steps)


def _request_step(raw: Any, at: str, known: frozenset[str], columns: frozenset[str] | None, servers: set[str],
                  index: int) -> RequestStep:
    if not isinstance(raw, dict):
        raise FlowError(f"{at}: must be a mapping with a url (a request) or think (a pause), got {raw!r}")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        extra = sorted(map(str, unknown))[0]
        hint = " (a think step has no other keys)" if extra == "think" else ""
        raise FlowError(f"{at}: unknown key {extra!r}{hint}; a step takes {', '.join(sorted(_STEP_KEYS))}")
    name = raw.get("name", f"step{index + 1}")
    if not isinstance(name, str) or not _STEP_NAME.match(name):
        raise FlowError(f"{at}.name: must be letters, digits, and . _ : -, got {name!r}")
    method = raw.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise FlowError(f"{at}.method: must be one of {', '.join(METHODS)}, got {method!r}")
    url = _step_url(raw.get("url"), at, known, columns, servers)
    headers = _step_headers(raw.get("headers", {}), at, known, columns)
    _step_body(raw, at, known, columns)
    captures = _step_captures(raw.get("capture", {}), at)
    expect = _check(lambda: parse_expect(raw.get("expect")), f"{at}.expect")
    if expect.body_contains is not None:  # checked after this step's captures: they may fill it in too
        here = known | {c.name for c in captures}
        _check(lambda: compile_template(expect.body_contains, here, columns), f"{at}.expect.body_contains")
    repeat = raw.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
        raise FlowError(f"{at}.repeat: must be a whole number from 1 to {MAX_REPEAT}, got {repeat!r}")
    return RequestStep(name, method.upper(), url, headers, raw.get("body"), raw.get("json"), captures, expect,
                       repeat)


def _step_url(url: Any, at: str, known: frozenset[str], columns: frozenset[str] | None, servers: set[str]) -> str:
    if not isinstance(url, str) or not url:
        raise FlowError(f"{at}.url: a request step needs a URL such as http://{{server}}/path, got {url!r}")
    probe = SERVER_REF.sub("127.0.0.1:1", url)
    if not re.match(r"^https?://[^/\s]+", probe):
        raise FlowError(f"{at}.url: must start with http:// or https:// and a host, got {url!r}")
    host = re.match(r"^https?://([^/?#]*)", url)
    if host and "${" in host.group(1):
        raise FlowError(f"{at}.url: the host:port may not hold a ${{...}} placeholder (it is resolved once), "
                        f"got {url!r}")
    _check(lambda: compile_template(url, known, columns), f"{at}.url")
    for ref in SERVER_REF.findall(url):
        if ref not in servers:
            names = ", ".join(sorted(servers)) or "none are configured"
            raise FlowError(f"{at}.url: refers to server {{{ref}}}, but no server has that name ({names})")
    return url


def _step_headers(headers_raw: Any, at: str, known: frozenset[str],
                  columns: frozenset[str] | None) -> tuple[tuple[str, str], ...]:
    if not isinstance(headers_raw, dict):
        raise FlowError(f"{at}.headers: must be a mapping of header names to values, got {headers_raw!r}")
    headers = []
    for k, v in headers_raw.items():
        if not isinstance(k, str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", k):
            raise FlowError(f"{at}.headers: {k!r} is not a header name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or any(c in str(v) for c in "\r\n"):
            raise FlowError(f"{at}.headers.{k}: must be one line of text, got {v!r}")
        _check(lambda v=v: compile_template(str(v), known, columns), f"{at}.headers.{k}")
        headers.append((k, str(v)))
    return tuple(headers)


def _step_body(raw: dict[str, Any], at: str, known: frozenset[str], columns: frozenset[str] | None) -> None:
    if "json" in raw and "body" in raw:
        raise FlowError(f"{at}: give json or body, not both")
    body = raw.get("body")
    if body is not None:
        if not isinstance(body, str):
            raise FlowError(f"{at}.body: must be text (use json: for a JSON body), got {body!r}")
        _check(lambda: compile_template(body, known, columns), f"{at}.body")
    if "json" in raw:
        _check(lambda: compile_json(raw["json"], known, columns), f"{at}.json")


def _step_captures(captures_raw: Any, at: str) -> tuple[Capture, ...]:
    if not isinstance(captures_raw, dict):
        raise FlowError(f"{at}.capture: must be a mapping of variable names to json:PATH, header:NAME or regex:EXPR, "
                        f"got {captures_raw!r}")
    captures = []
    for k, v in captures_raw.items():
        if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) or k in ("uuid", "user",
                                                                                           "iteration", "data"):
            raise FlowError(f"{at}.capture: {k!r} cannot name a variable (letters, digits and _; not uuid, user, "
                            f"iteration or data)")
        captures.append(_check(lambda k=k, v=v: parse_capture(k, v), f"{at}.capture.{k}"))
    return tuple(captures)


def _check(make: Any, where: str) -> Any:
    try:
        return make()
    except (TemplateError, ExtractError) as e:
        raise FlowError(f"{where}: {e}") from None
