"""Python flows: a plain function of one argument, the virtual user, run in a greenlet.

    def shop(user):
        r = user.post("/login", json={"user": user.data["user"], "password": "x"}, name="login")
        token = r.json()["token"]
        user.get("/me", headers={"Authorization": f"Bearer {token}"}, name="me")
        user.think(0.5)

`user.get/post/put/patch/delete/head/request` send through the flow client
(the fast engine's sockets, parser, timeouts and failure kinds); an absolute
URL is used as given, a path is joined to the target's `url:`. Each request
is a stats row named by its `name=` (else its path). A request that fails --
no response, or a status outside `expect` (default 2xx and 3xx) -- is
recorded in its row and ends the pass, as a failed YAML step does;
`user.check(condition, message)` ends it with a `check` failure; an
exception the script raises ends it with a `script` failure carrying its
message. None of them ends the virtual user: the next pass starts from the top.

Rows must be known before the run, so they are read from the script's
source: every call ``<x>.get(...)``, ``.post(...)``, ... ``.request(...)`` with
a literal ``name=`` (or a literal path) gives a row. A request whose name the
source does not show literally is counted in the row ``<flow>/other``, which
exists when the source has such a call.
"""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import gevent

from loadtest.core.outcome import status_ok
from loadtest.engine.protocols.http_fast import USER_AGENT
from loadtest.engine.protocols.http_flow import Address, parse_head
from loadtest.core.recorder import TargetRecorder
from loadtest.engine.flows.runner import FlowShared, FlowSession, Pass, PassEnded, StepFailed, RunStopping, record_reply
from loadtest.model.flows.source import OTHER_ROW, load_function, where_raised



class Response:
    """A response as a script sees it: `status`, `headers` (any case), `text`, `content`, `json()`."""

    __slots__ = ("status", "content", "truncated", "_head", "_headers", "_text")

    def __init__(self, status: int, head: bytes, content: bytes, truncated: bool) -> None:
        self.status = status
        self.content = content  # at most MAX_KEPT_BODY bytes
        self.truncated = truncated  # the body was longer than what was kept
        self._head = head
        self._headers: _Headers | None = None
        self._text: str | None = None

    @property
    def headers(self) -> _Headers:
        """The response's headers, read from its head when first asked for."""
        if self._headers is None:
            self._headers = _Headers(parse_head(self._head))
        return self._headers

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.content.decode("utf-8", "replace")
        return self._text

    def json(self) -> Any:
        return json_module.loads(self.content)

    @property
    def status_code(self) -> int:
        """The same as `status`, under the name `requests` uses."""
        return self.status


class _Headers(dict[str, str]):
    """Response headers looked up in any case (stored lower-case)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class FlowUser:
    """The `user` a script function is given: its number, its data row, its pass, and its requests."""

    def __init__(self, session: ScriptFlowSession) -> None:
        self._session = session

    @property
    def index(self) -> int:
        """This virtual user's number (0, 1, ... over every worker)."""
        return self._session.ctx.user

    @property
    def data(self) -> Mapping[str, str]:
        """This pass's data row, by column ({} without a data file)."""
        return self._session.ctx.data

    @property
    def iteration(self) -> int:
        """How many passes this user started before this one."""
        return self._session.ctx.iteration

    def request(self, method: str, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None,
                json: Any = None, data: str | bytes | None = None, params: Mapping[str, Any] | None = None,
                expect: Any = None) -> Response:
        """Send one request and return its response; a failure ends the pass (see the module's docstring)."""
        return self._session.request(method.upper(), url, name, headers, json, data, params, expect)

    # Each calls the session itself, not request(): a call less per request on the hot path.
    def get(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("GET", url, name, headers, json, data, params, expect)

    def post(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("POST", url, name, headers, json, data, params, expect)

    def put(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("PUT", url, name, headers, json, data, params, expect)

    def patch(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("PATCH", url, name, headers, json, data, params, expect)

    def delete(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("DELETE", url, name, headers, json, data, params, expect)

    def head(self, url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
            data: str | bytes | None = None, params: Mapping[str, Any] | None = None, expect: Any = None) -> Response:
        return self._session.request("HEAD", url, name, headers, json, data, params, expect)

    def think(self, seconds: float) -> None:
        """Pause this user for `seconds`."""
        gevent.sleep(seconds)

    def check(self, condition: Any, message: str = "check failed") -> None:
        """End the pass with a `check` failure (in the flow's row) unless `condition` holds."""
        if not condition:
            raise StepFailed("check", message)


MAX_ROUTES = 10_000  # URLs a worker remembers the address and request line of
_AGENT_LINE = f"User-Agent: {USER_AGENT}\r\n"
_BODY_METHODS = ("POST", "PUT", "PATCH")
_dumps = json_module.JSONEncoder(separators=(", ", ": ")).encode


class ScriptFlowSession(FlowSession):
    """A virtual user of a Python flow."""

    def __init__(self, shared: FlowShared, func: Callable[[Any], Any], flow: str, base: str | None,
                 script: Path) -> None:
        super().__init__(shared)
        self.func = func
        self.flow = flow
        self.base = base.rstrip("/") if base else None
        self.script = script
        self.user = FlowUser(self)
        self._totals = Pass()
        self._rows: dict[str, TargetRecorder] = {}  # by request name

    def run_pass(self, totals: Pass) -> None:
        self._totals = totals
        try:
            self.func(self.user)
        except (PassEnded, gevent.GreenletExit):
            raise
        except Exception as e:  # noqa: BLE001 - the script's own error is a failure of kind script, not a dead user
            raise StepFailed("script", f"{type(e).__name__}: {e}{where_raised(e, self.script)}") from None

    def request(self, method: str, url: str, name: str | None, headers: Mapping[str, str] | None, json: Any,
                data: str | bytes | None, params: Mapping[str, Any] | None, expect: Any) -> Response:
        routes = self.shared.routes
        route = routes.get(url)
        if route is None:
            if len(routes) >= MAX_ROUTES:  # URLs made up per request: keep memory flat
                routes.clear()
            route = routes[url] = self._route(url)
        address, line_rest, path = route
        if params:
            line_rest = self._with_query(url, params)
        rec = self._rows.get(name or path)
        if rec is None:
            rec = self._row(name or path)
        parts = [method, line_rest]
        body = b""
        typed = agent = False
        if headers:
            for k, v in headers.items():
                parts.append(f"{k}: {v}\r\n")
                low = k.lower()
                typed = typed or low == "content-type"
                agent = agent or low == "user-agent"
        if not agent:
            parts.append(_AGENT_LINE)
        if json is not None:
            body = _dumps(json).encode()
            if not typed:
                parts.append("Content-Type: application/json\r\n")
        elif data is not None:
            body = data.encode() if isinstance(data, str) else bytes(data)
        if body or method in _BODY_METHODS:
            parts.append(f"Content-Length: {len(body)}\r\n")
        parts.append("\r\n")
        request = "".join(parts).encode("latin-1")
        if body:
            request += body
        if self.shared.budget.stopping:
            raise RunStopping
        try:
            r = self.client.send(address, request, method == "HEAD", True)
        except gevent.GreenletExit:
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            self.cancelled_in_flight = True
            raise
        status = r.status
        ok = status_ok(status, None if expect is None else
                       expect if isinstance(expect, (list, tuple, set, frozenset)) else (expect,))
        if r.kind is not None or not ok:
            record_reply(rec, r, f"{self.flow}/{name or path}", ok, self._totals)
        totals = self._totals
        totals.received += r.received
        totals.sent += r.sent
        totals.content += r.content
        rec.success(r.latency, r.received, r.sent, r.content)  # type: ignore[arg-type]
        return Response(status, r.head, r.body, r.truncated)

    def _route(self, url: str) -> tuple[Address, str, str]:
        """Where a URL goes, what follows the method on the request line (and the Host line), and its path."""
        if "://" not in url:
            if self.base is None:
                raise ValueError(f"{url!r} is a path, but the target has no url: to join it to")
            url = self.base + ("" if url.startswith("/") else "/") + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        address = self.shared.address(parts.scheme, parts.netloc)
        return address, f" {target} HTTP/1.1\r\nHost: {address.host_header}\r\n", parts.path or "/"

    def _with_query(self, url: str, params: Mapping[str, Any]) -> str:
        address, line_rest, _ = self.shared.routes[url]
        target = line_rest[1:line_rest.index(" HTTP/1.1")]
        target += ("&" if "?" in target else "?") + urlencode(params, doseq=True)
        return f" {target} HTTP/1.1\r\nHost: {address.host_header}\r\n"

    def _row(self, name: str) -> TargetRecorder:
        """The recorder of the row named `name` (``<flow>/<name>``), else of ``<flow>/other``."""
        steps = self.shared.rows.steps
        rec = steps.get(f"{self.flow}/{name}") or steps.get(f"{self.flow}/{OTHER_ROW}")
        if rec is None:
            raise ValueError(f"request name {name!r} is not in the script's source as a literal, so it has no stats "
                             f"row; pass name=\"...\" as text")
        self._rows[name] = rec
        return rec


def script_flow_factory(flow: str, script: Path, function: str, base: str | None,
                        shared: FlowShared) -> Callable[[], ScriptFlowSession]:
    """A function that makes one virtual user of a Python flow; imports the script once per worker."""
    func = load_function(script, function)
    return lambda: ScriptFlowSession(shared, func, flow, base, script)


__all__ = ["FlowUser", "Response", "script_flow_factory"]
