"""Captures and checks: what a flow step reads from its response, and only that.

    capture: {token: "json:token", next: "header:Location", csrf: 'regex:csrf" value="([a-z0-9]+)'}
    expect:  {status: [200, 201], body_contains: "token"}

`json:PATH` reads a dotted path (`a.b[0].c`) of the JSON body; `header:NAME` a
response header (the first of that name, any case); `regex:EXPR` the body's
first match (its first group if it has one). A step that captures or checks
nothing from the body does not keep the body, and one that reads no header
does not collect headers (`Needs`); the body kept is capped at
`MAX_KEPT_BODY` bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from loadtest.core.outcome import status_ok

MAX_KEPT_BODY = 1024 * 1024  # a response body kept for a capture, check or script is cut here
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class ExtractError(ValueError):
    """A capture or check written wrongly: one sentence (without the field's location)."""


@dataclass(frozen=True)
class Needs:
    """What of a response must be kept: its body, and which headers (lower-case names)."""

    body: bool = False
    headers: frozenset[str] = frozenset()

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.body or other.body, self.headers | other.headers)


@dataclass(frozen=True)
class Capture:
    """One value a step takes from its response into a variable."""

    name: str
    source: str  # json | header | regex
    expr: str
    path: tuple[str | int, ...] = ()  # json: the keys and indexes
    pattern: re.Pattern[str] | None = None  # regex

    @property
    def needs(self) -> Needs:
        return Needs(headers=frozenset([self.expr.lower()])) if self.source == "header" else Needs(body=True)

    def take(self, body: str | None, parsed: list[Any], headers: Mapping[str, str]) -> str | None:
        """The captured value, or None if the response does not have it. `parsed` caches the JSON body: [] or [it]."""
        if self.source == "header":
            return headers.get(self.expr.lower())
        if body is None:
            return None
        if self.source == "regex":
            assert self.pattern is not None
            m = self.pattern.search(body)
            if m is None:
                return None
            return m.group(1) if self.pattern.groups else m.group(0)
        if not parsed:
            try:
                parsed.append(json.loads(body))
            except ValueError:
                return None
        value = parsed[0]
        for key in self.path:
            if isinstance(key, int) and isinstance(value, list) and key < len(value):
                value = value[key]
            elif isinstance(key, str) and isinstance(value, dict) and key in value:
                value = value[key]
            else:
                return None
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def parse_capture(name: str, spec: Any) -> Capture:
    """A capture from its config text: ``json:PATH``, ``header:NAME`` or ``regex:EXPR``."""
    if not isinstance(spec, str):
        raise ExtractError(f"must be text such as \"json:token\", \"header:Location\" or \"regex:id=(\\d+)\", "
                           f"got {spec!r}")
    source, sep, expr = spec.partition(":")
    source = source.strip()
    if not sep or source not in ("json", "header", "regex") or not expr:
        raise ExtractError(f"must be json:PATH, header:NAME or regex:EXPR, got {spec!r}")
    if source == "json":
        path: list[str | int] = []
        at = 0
        for m in _PATH_PART.finditer(expr):
            if m.start() != at and expr[at:m.start()] != ".":
                raise ExtractError(f"json:{expr} is not a path such as items[0].id")
            path.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
            at = m.end()
        if at != len(expr) or not path:
            raise ExtractError(f"json:{expr} is not a path such as items[0].id")
        return Capture(name, source, expr, tuple(path))
    if source == "regex":
        try:
            return Capture(name, source, expr, pattern=re.compile(expr))
        except re.error as e:
            raise ExtractError(f"regex:{expr} is not a regular expression: {e}") from None
    return Capture(name, source, expr.strip())


@dataclass(frozen=True)
class Expect:
    """What a step's response must be: a status among `status` (empty: 2xx or 3xx), and a body that contains
    `body_contains` (if given)."""

    status: tuple[int, ...] = ()
    body_contains: str | None = None

    @property
    def needs(self) -> Needs:
        return Needs(body=self.body_contains is not None)

    def status_ok(self, status: int) -> bool:
        return status_ok(status, self.status)

    def body_problem(self, body: str | None, truncated: bool, needle: str | None = None) -> str | None:
        """Why the body fails the check (a sentence), or None. `needle`: `body_contains` with its placeholders
        filled in, when it has any."""
        wanted = needle if needle is not None else self.body_contains
        if wanted is None or (body is not None and wanted in body):
            return None
        cut = f" (in its first {MAX_KEPT_BODY // 1024} KiB)" if truncated else ""
        return f"the response body does not contain {wanted!r}{cut}"


def parse_expect(spec: Any) -> Expect:
    """An expect block: {status: [200] or 200, body_contains: "text"}."""
    if spec is None:
        return Expect()
    if not isinstance(spec, dict):
        raise ExtractError(f"must be a mapping such as {{status: [200], body_contains: \"token\"}}, got {spec!r}")
    unknown = set(spec) - {"status", "body_contains"}
    if unknown:
        raise ExtractError(f"has unknown key {sorted(unknown)[0]!r} (it takes status and body_contains)")
    raw = spec.get("status", [])
    codes = raw if isinstance(raw, list) else [raw]
    if any(isinstance(c, bool) or not isinstance(c, int) or not 100 <= c <= 599 for c in codes):
        raise ExtractError(f"status must be HTTP status codes (100 to 599), got {raw!r}")
    contains = spec.get("body_contains")
    if contains is not None and (not isinstance(contains, str) or not contains):
        raise ExtractError(f"body_contains must be non-empty text, got {contains!r}")
    return Expect(tuple(codes), contains)
