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

from ..protocols.http_flow import request_bytes
from .runner import FlowShared, FlowSession, Pass, PassEnded, StepFailed, record_reply
from .source import OTHER_ROW, load_function, where_raised



class Response:
    """A response as a script sees it: `status`, `headers` (any case), `text`, `content`, `json()`."""

    __slots__ = ("status", "headers", "content", "truncated", "_text")

    def __init__(self, status: int, headers: dict[str, str], content: bytes, truncated: bool) -> None:
        self.status = status
        self.headers = _Headers(headers)
        self.content = content  # at most MAX_KEPT_BODY bytes
        self.truncated = truncated  # the body was longer than what was kept
        self._text: str | None = None

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

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Response:
        return self.request("DELETE", url, **kw)

    def head(self, url: str, **kw: Any) -> Response:
        return self.request("HEAD", url, **kw)

    def think(self, seconds: float) -> None:
        """Pause this user for `seconds`."""
        gevent.sleep(seconds)

    def check(self, condition: Any, message: str = "check failed") -> None:
        """End the pass with a `check` failure (in the flow's row) unless `condition` holds."""
        if not condition:
            raise StepFailed("check", message)


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
        if "://" not in url:
            if self.base is None:
                raise ValueError(f"{url!r} is a path, but the target has no url: to join it to")
            url = self.base + ("" if url.startswith("/") else "/") + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        target = parts.path or "/"
        query = parts.query
        if params:
            query = (query + "&" if query else "") + urlencode(params, doseq=True)
        if query:
            target += "?" + query
        rows = self.shared.rows.steps
        row = f"{self.flow}/{name or parts.path or '/'}"
        rec = rows.get(row)
        if rec is None:
            row = f"{self.flow}/{OTHER_ROW}"
            rec = rows.get(row)
            if rec is None:
                raise ValueError(f"request name {name or parts.path!r} is not in the script's source as a literal, "
                                 f"so it has no stats row; pass name=\"...\" as text")
        given = list((headers or {}).items())
        body = b""
        if json is not None:
            body = json_module.dumps(json).encode()
            if not any(k.lower() == "content-type" for k, _ in given):
                given.append(("Content-Type", "application/json"))
        elif data is not None:
            body = data.encode() if isinstance(data, str) else bytes(data)
        address = self.shared.address(parts.scheme, parts.netloc)
        request = request_bytes(method, target, address.host_header, given, body)
        r = self.send(address, request, method == "HEAD", True, rec)
        if expect is None:
            ok = 200 <= r.status < 400
        else:
            ok = r.status in (expect if isinstance(expect, (list, tuple, set, frozenset)) else (expect,))
        record_reply(rec, r, row, ok, self._totals)
        rec.success(r.latency, r.received, r.sent, r.content)  # type: ignore[arg-type]
        return Response(r.status, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(r.headers)},
                        r.body, r.truncated)


def script_flow_factory(flow: str, script: Path, function: str, base: str | None,
                        shared: FlowShared) -> Callable[[], ScriptFlowSession]:
    """A function that makes one virtual user of a Python flow; imports the script once per worker."""
    func = load_function(script, function)
    return lambda: ScriptFlowSession(shared, func, flow, base, script)


__all__ = ["FlowUser", "Response", "script_flow_factory"]
