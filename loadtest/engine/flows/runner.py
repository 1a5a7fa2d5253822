"""Running flows in a worker: a virtual user's pass through its steps, and what it records.

A flow session is one virtual user. `exchange()` is one pass of the flow, from
the top: each request is recorded in its step's row (a success, or a failure
of its kind, `status`, `capture` or `check`), and the pass as a whole in the
flow's row, with its latency the whole journey (think time included) from its
start (or from when it was due, open model). The first step that fails ends
the pass -- the flow's row records that failure's kind with the step's name --
and the next pass starts again from the top, with no captured values.

A pass that the run's end interrupts between two requests is not recorded;
a request in flight when the run is cancelled is `cancelled`, in its step's
row and the flow's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from time import perf_counter_ns
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import gevent
from gevent import GreenletExit

from loadtest.core.outcome import start_ns, status_ok
from loadtest.engine.protocols import Deadlines
from loadtest.engine.protocols.channel import give_way
from loadtest.engine.protocols.http_fast import USER_AGENT
from loadtest.engine.protocols.http_flow import Address, FlowClient, Reply, parse_head, resolve_origin
from loadtest.core.recorder import TargetRecorder
from loadtest.model.flows.data import RowDealer
from loadtest.model.flows.extract import Capture, Expect
from loadtest.model.flows.steps import RequestStep, Step, ThinkStep
from loadtest.model.flows.template import Context, MissingValue, Template, compile_json, compile_template, resolve_servers

NO_ROW_WAIT_S = 0.01  # unique data: a pass that finds every row held waits this long and looks again


class PassEnded(BaseException):
    """Ends a pass early. A BaseException so that a script's `except Exception:` does not swallow it."""


class StepFailed(PassEnded):
    """Ends a pass: a step failed (already recorded in its row)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


class Pass:
    """What one pass has sent and received so far, for the flow's own row."""

    __slots__ = ("received", "sent", "content")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.content = 0


def record_reply(rec: TargetRecorder, r: Reply, row: str, expect_ok: bool, totals: Pass) -> None:
    """Record a request's reply in its step's row; raise StepFailed if it failed (no response or a bad status)."""
    totals.received += r.received
    totals.sent += r.sent
    totals.content += r.content
    if r.kind is not None:
        rec.failure(r.kind, r.message, r.latency, r.received, r.sent)  # latency None: it never connected
        raise StepFailed(r.kind, f"{row}: {r.message}")
    if not expect_ok:
        rec.failure("status", f"HTTP {r.status}", r.latency, r.received, r.sent, r.content)
        raise StepFailed("status", f"{row}: HTTP {r.status}")


class FlowRows:
    """A worker's recorders of one flow: the flow's own row and one per step (by the step's name)."""

    def __init__(self, flow: TargetRecorder, steps: Mapping[str, TargetRecorder]) -> None:
        self.flow = flow
        self.steps = dict(steps)


class FlowSession:
    """One virtual user of a flow; `run_pass(ctx, totals)` is what differs between YAML and Python flows."""

    back_off = False  # set by a failed pass (see protocols.Session): the next starts after a back-off

    def __init__(self, shared: FlowShared) -> None:
        self.shared = shared
        flow_rec = shared.rows.flow
        self.client = FlowClient(shared.timeout, shared.deadlines, shared.tls, flow_rec.connected,
                                 flow_rec.disconnected)
        self.ctx = Context(shared.next_user(), shared.rng)
        self.cancelled_in_flight = False

    def exchange(self, scheduled_ns: int = 0) -> None:
        shared = self.shared
        rec = shared.rows.flow
        began = perf_counter_ns()
        started = start_ns(scheduled_ns, began)
        ctx = self.ctx
        ctx.values = {}
        dealer = shared.dealer
        row = None
        if dealer is not None:
            row = dealer.take()
            while row is None:  # every row of this worker's slice is held (unique mode): wait for one
                gevent.sleep(NO_ROW_WAIT_S)
                if shared.budget.stopping:
                    return
                row = dealer.take()
            ctx.data = row
        totals = Pass()
        try:
            self.run_pass(totals)
        except StepFailed as failed:
            ended = perf_counter_ns()
            if scheduled_ns:  # open model: also what a closed-loop tool would have measured
                rec.uncorrected.record(ended - began)
            rec.failure(failed.kind, failed.message, ended - started, totals.received, totals.sent,
                        totals.content)
            self.back_off = True
            give_way()  # a pass that fails at once must not keep the worker's clock from running
        except RunStopping:
            pass
        except GreenletExit:
            if self.cancelled_in_flight:  # killed in think time or between requests: the pass is not recorded
                rec.failure("cancelled", "the run stopped while this flow was under way", None)
            raise
        else:
            ended = perf_counter_ns()
            if scheduled_ns:
                rec.uncorrected.record(ended - began)
            rec.success(ended - started, totals.received, totals.sent, totals.content)
        finally:
            ctx.iteration += 1
            if row is not None:
                dealer.give_back(row)  # type: ignore[union-attr]

    def run_pass(self, totals: Pass) -> None:
        raise NotImplementedError

    def send(self, address: Address, request: bytes, head: bool, keep: bool, rec: TargetRecorder) -> Reply:
        """Send one request of a step (whose row is `rec`); the run stopping records it as cancelled there."""
        if self.shared.budget.stopping:
            raise RunStopping
        try:
            return self.client.send(address, request, head, keep)
        except GreenletExit:
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            self.cancelled_in_flight = True
            raise

    def close(self) -> None:
        self.client.close()


class RunStopping(PassEnded):
    """The run is stopping: the pass ends between two requests, unrecorded."""


class FlowShared:
    """What a worker's virtual users of one flow share: rows, addresses, data, timeouts."""

    def __init__(self, rows: FlowRows, timeout: float, deadlines: Deadlines | None, budget: Any,
                 tls: Callable[[], Any], dealer: RowDealer | None, first_user: int, user_step: int,
                 seed: int) -> None:
        self.rows = rows
        self.timeout = timeout
        self.deadlines = deadlines
        self.budget = budget
        self.tls = tls
        self.dealer = dealer
        self._next_user = first_user
        self._user_step = user_step
        self.rng = random.Random(seed)
        self._addresses: dict[tuple[str, str], Address] = {}
        self.routes: dict[str, Any] = {}  # a Python flow's URLs as given, and where they go (see script.py)

    def next_user(self) -> int:
        """The next virtual user's number: worker k of W numbers its users k, k + W, ... so they differ over workers."""
        n = self._next_user
        self._next_user += self._user_step
        return n

    def address(self, scheme: str, netloc: str) -> Address:
        """The resolved address of an origin (resolved once per worker); raises OSError."""
        key = (scheme, netloc)
        a = self._addresses.get(key)
        if a is None:
            parts = urlsplit(f"{scheme}://{netloc}/")
            a = self._addresses[key] = resolve_origin(scheme, parts.hostname or "",
                                                      parts.port or (443 if scheme == "https" else 80),
                                                      netloc.rpartition("@")[2])
        return a


@dataclass(frozen=True)
class CompiledStep:
    """A request step ready to send: its address, its request (prebuilt when nothing in it varies)."""

    name: str
    row: str
    rec: TargetRecorder
    method: str
    address: Address
    path: Template
    head_lines: str  # Host, User-Agent and the static headers, each ending in CRLF
    headers: tuple[tuple[str, Template], ...]  # headers filled in per request
    body: Template | None
    content_type: str | None
    request: bytes | None  # the whole request when nothing in it varies
    head: bool  # a HEAD request: its response has no body
    keep: bool
    captures: tuple[Capture, ...]
    expect: Expect
    repeat: int
    contains: Template | None = None  # expect.body_contains when it has placeholders, filled in per response

    def build(self, ctx: Context) -> bytes:
        """The request bytes, filled in from `ctx`; raises MissingValue."""
        if self.request is not None:
            return self.request
        lines = [f"{self.method} {self.path.render(ctx)} HTTP/1.1\r\n", self.head_lines]
        lines.extend(f"{k}: {v.render(ctx)}\r\n" for k, v in self.headers)
        body = self.body.render(ctx).encode() if self.body is not None else b""
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}\r\n")
        if body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + body


def compile_step(step: RequestStep, row: str, rec: TargetRecorder, shared: FlowShared,
                 addresses: Mapping[str, str]) -> CompiledStep:
    """Compile a step's templates and resolve its origin, in a worker; raises OSError if its host does not resolve."""
    url = resolve_servers(step.url, addresses)
    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, target = rest[:cut], rest[cut:] or "/"
    if target.startswith("?"):
        target = "/" + target
    address = shared.address(scheme, netloc)
    path = compile_template(target)
    static_headers = [(k, v) for k, v in step.headers if "${" not in v]
    varying = tuple((k, compile_template(v)) for k, v in step.headers if "${" in v)
    names = {k.lower() for k, _ in step.headers}
    head = [f"Host: {address.host_header}\r\n"]
    if "user-agent" not in names:
        head.append(f"User-Agent: {USER_AGENT}\r\n")
    head.extend(f"{k}: {v}\r\n" for k, v in static_headers)
    body = None
    content_type = None
    if step.json is not None:
        body = compile_json(step.json)
        if "content-type" not in names:
            content_type = "application/json"
    elif step.body is not None:
        body = compile_template(step.body)
    compiled = CompiledStep(step.name, row, rec, step.method, address, path, "".join(head), varying, body,
                            content_type, None, step.method == "HEAD", step.needs.body or bool(step.needs.headers),
                            step.captures, step.expect, step.repeat,
                            compile_template(step.expect.body_contains)
                            if step.expect.body_contains is not None and "${" in step.expect.body_contains else None)
    if path.static is not None and not varying and (body is None or body.static is not None):
        ctx = Context(0, random.Random(0))
        compiled = replace(compiled, request=compiled.build(ctx))
    return compiled


class YamlFlowSession(FlowSession):
    """A virtual user of a YAML flow."""

    def __init__(self, shared: FlowShared, steps: tuple[CompiledStep | ThinkStep, ...]) -> None:
        super().__init__(shared)
        self.steps = steps
        # A flow with nothing to fill in, read or wait for -- no data, no placeholders, no captures or checks of
        # the body, no think -- runs each pass on the short path: it costs what a plain target's requests do.
        self.plain = shared.dealer is None and all(
            isinstance(s, CompiledStep) and s.request is not None and not s.keep for s in steps)
        # the short path's steps, each sent `repeat` times: (row, recorder, statuses, address, request, HEAD?)
        self._sends = tuple((s.row, s.rec, s.expect.status, s.address, s.request, s.head)
                            for s in steps if isinstance(s, CompiledStep) for _ in range(s.repeat))
        self._budget = shared.budget
        self._flow = shared.rows.flow
        if self.plain and len(self._sends) == 1:
            # One request a pass (the flow as a named single request): no totals to add up, no loop.
            self._row, self._rec, self._ok, self._address, self._request, self._head = self._sends[0]
            self.exchange = self._exchange_one  # type: ignore[method-assign]

    def exchange(self, scheduled_ns: int = 0) -> None:
        if not self.plain:
            return super().exchange(scheduled_ns)
        started = start_ns(scheduled_ns, perf_counter_ns())
        client = self.client
        budget = self.shared.budget
        flow = self.shared.rows.flow
        received = sent = content = 0
        self.ctx.iteration += 1
        for row, rec, ok, address, request, head in self._sends:
            if budget.stopping:
                return
            try:
                r = client.send(address, request, head, False)  # type: ignore[arg-type]
            except GreenletExit:
                rec.failure("cancelled", "the run stopped while this request was in flight", None)
                flow.failure("cancelled", "the run stopped while this flow was under way", None)
                raise
            received += r.received
            sent += r.sent
            content += r.content
            status = r.status
            if r.kind is not None or not status_ok(status, ok):
                kind, message = (r.kind, r.message) if r.kind is not None else ("status", f"HTTP {status}")
                rec.failure(kind, message, r.latency, r.received, r.sent, r.content)
                flow.failure(kind, f"{row}: {message}", perf_counter_ns() - started, received, sent, content)
                give_way()
                return
            rec.success(r.latency, r.received, r.sent, r.content)  # type: ignore[arg-type]
        flow.success(perf_counter_ns() - started, received, sent, content)

    def _exchange_one(self, scheduled_ns: int = 0) -> None:
        """A pass of a plain flow of one request: `exchange`'s short path without its loop. The step's row and
        the flow's each record it, as they would on the long path."""
        started = start_ns(scheduled_ns, perf_counter_ns())
        self.ctx.iteration += 1
        if self._budget.stopping:
            return
        rec = self._rec
        flow = self._flow
        try:
            r = self.client.send(self._address, self._request, self._head, False)  # type: ignore[arg-type]
        except GreenletExit:
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            flow.failure("cancelled", "the run stopped while this flow was under way", None)
            raise
        status = r.status
        ok = self._ok
        if r.kind is not None or not status_ok(status, ok):
            kind, message = (r.kind, r.message) if r.kind is not None else ("status", f"HTTP {status}")
            rec.failure(kind, message, r.latency, r.received, r.sent, r.content)
            flow.failure(kind, f"{self._row}: {message}", perf_counter_ns() - started, r.received, r.sent,
                         r.content)
            give_way()
            return
        rec.success(r.latency, r.received, r.sent, r.content)  # type: ignore[arg-type]
        flow.success(perf_counter_ns() - started, r.received, r.sent, r.content)

    def run_pass(self, totals: Pass) -> None:
        ctx = self.ctx
        rng = self.shared.rng
        for step in self.steps:
            if step.__class__ is ThinkStep:
                lo, hi = step.lo, step.hi  # type: ignore[union-attr]
                if self.shared.budget.stopping:
                    raise RunStopping
                gevent.sleep(lo if lo == hi else rng.uniform(lo, hi))
                continue
            s: CompiledStep = step  # type: ignore[assignment]
            rec = s.rec
            for _ in range(s.repeat):
                try:
                    request = s.build(ctx)
                except MissingValue as missing:
                    raise StepFailed("capture", f"{s.row}: no value for ${{{missing.args[0]}}}") from None
                r = self.send(s.address, request, s.head, s.keep, rec)
                record_reply(rec, r, s.row, s.expect.status_ok(r.status), totals)
                if s.keep:
                    self._read(s, r)
                rec.success(r.latency, r.received, r.sent, r.content)  # type: ignore[arg-type]

    def _read(self, s: CompiledStep, r: Reply) -> None:
        """Take the step's captures and run its body check; a miss is recorded in the step's row and ends the pass."""
        body = r.body.decode("utf-8", "replace") if s.expect.body_contains is not None or any(
            c.source != "header" for c in s.captures) else None
        headers = parse_head(r.head) if any(c.source == "header" for c in s.captures) else {}
        parsed: list[Any] = []
        for c in s.captures:
            value = c.take(body, parsed, headers)
            if value is None:
                cut = " (the body kept was cut at 1 MiB)" if r.truncated and c.source != "header" else ""
                message = f"{c.name}: {c.source}:{c.expr} found nothing in the response{cut}"
                s.rec.failure("capture", message, r.latency, r.received, r.sent, r.content)
                raise StepFailed("capture", f"{s.row}: {message}")
            self.ctx.values[c.name] = value
        needle = None
        if s.contains is not None:
            try:
                needle = s.contains.render(self.ctx)
            except MissingValue as missing:
                message = f"no value for ${{{missing.args[0]}}} in expect.body_contains"
                s.rec.failure("capture", message, r.latency, r.received, r.sent, r.content)
                raise StepFailed("capture", f"{s.row}: {message}") from None
        problem = s.expect.body_problem(body, r.truncated, needle)
        if problem is not None:
            s.rec.failure("check", problem, r.latency, r.received, r.sent, r.content)
            raise StepFailed("check", f"{s.row}: {problem}")


def yaml_flow_factory(flow: str, steps: tuple[Step, ...], rows: FlowRows, addresses: Mapping[str, str],
                      shared: FlowShared) -> Callable[[], YamlFlowSession]:
    """A function that makes one virtual user of a YAML flow; compiles and resolves once per worker."""
    compiled: list[CompiledStep | ThinkStep] = []
    for step in steps:
        if isinstance(step, ThinkStep):
            compiled.append(step)
        else:
            row = f"{flow}/{step.name}"
            compiled.append(compile_step(step, row, rows.steps[row], shared, addresses))
    done = tuple(compiled)
    return lambda: YamlFlowSession(shared, done)
