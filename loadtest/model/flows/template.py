"""Templates of flow steps: text with ``${...}`` placeholders, filled in for each request.

    ${token}            a value captured by an earlier step, else a column of the user's data row
    ${data.user}        a column of the user's data row
    ${random(1, 100)}   a whole number from 1 to 100 (both included), drawn per request
    ${uuid}             a random UUID (version 4)
    ${user}             the virtual user's number (0, 1, ... over every worker)
    ${iteration}        how many times this user has started the flow before (0 on its first pass)

``{server}`` references (no ``$``) are not placeholders: they name an embedded
server's ``host:port`` and are resolved once per worker (`resolve_servers`).

A template is compiled once: literal text and the parts that are filled in.
Which variables it reads is known then, so a variable no earlier step captures
and no data column names is bad input before the run (`compile_template`
raises `TemplateError`). A value that is missing when the request is built
anyway raises `MissingValue` (a `capture` failure of the flow).
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
SERVER_REF = re.compile(r"(?<!\$)\{([A-Za-z0-9_.-]+)\}")  # {server}, not ${variable}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATA = re.compile(r"^data\.([^\s.]+)$")
_RANDOM = re.compile(r"^random\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)$")
BUILTINS = ("uuid", "user", "iteration")  # names that are not variables
MAX_RANDOM_BOUND = 10**15


class TemplateError(ValueError):
    """A placeholder that cannot be filled: one sentence (without the field's location)."""


class MissingValue(Exception):
    """A variable had no value when a request was built; `args[0]` is its name."""


class Context:
    """What a virtual user's templates are filled from: its captures, its data row, its number, its pass."""

    __slots__ = ("values", "data", "user", "iteration", "rng")

    def __init__(self, user: int, rng: random.Random) -> None:
        self.values: dict[str, str] = {}  # captured values, by name
        self.data: Mapping[str, str] = {}  # the data row of this pass, by column
        self.user = user
        self.iteration = 0
        self.rng = rng


Part = Callable[[Context], str]


def _variable(name: str) -> Part:
    def fill(ctx: Context) -> str:
        value = ctx.values.get(name)
        if value is None:
            value = ctx.data.get(name)
            if value is None:
                raise MissingValue(name)
        return value
    return fill


def _column(column: str) -> Part:
    def fill(ctx: Context) -> str:
        value = ctx.data.get(column)
        if value is None:
            raise MissingValue(f"data.{column}")
        return value
    return fill


def _random(lo: int, hi: int) -> Part:
    return lambda ctx: str(ctx.rng.randint(lo, hi))


def _uuid(ctx: Context) -> str:
    return str(uuid.UUID(int=ctx.rng.getrandbits(128), version=4))


_BUILTIN_PARTS: dict[str, Part] = {
    "uuid": _uuid,
    "user": lambda ctx: str(ctx.user),
    "iteration": lambda ctx: str(ctx.iteration),
}


@dataclass(frozen=True)
class Template:
    """Text compiled into literal pieces and fill-ins; `static` is the text itself when it has no placeholder."""

    text: str
    pieces: tuple[str | Part, ...]
    names: frozenset[str]  # the variables it reads (captures or columns; "data.col" for explicit columns)
    escape: Callable[[str], str] | None = None  # applied to every filled-in value (JSON string escaping)

    @property
    def static(self) -> str | None:
        return self.text if not self.names and all(isinstance(p, str) for p in self.pieces) else None

    def render(self, ctx: Context) -> str:
        escape = self.escape
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                value = piece(ctx)
                out.append(escape(value) if escape is not None else value)
        return "".join(out)


def compile_template(text: str, known: frozenset[str] | None = None, columns: frozenset[str] | None = None,
                     escape: Callable[[str], str] | None = None) -> Template:
    """Compile `text`. With `known` (the names earlier steps capture or data columns give) and `columns` (the data
    file's columns; None: no data file), a variable that is neither raises TemplateError."""
    pieces: list[str | Part] = []
    names: set[str] = set()
    at = 0
    for m in PLACEHOLDER.finditer(text):
        if m.start() > at:
            pieces.append(text[at:m.start()])
        at = m.end()
        expr = m.group(1).strip()
        if expr in _BUILTIN_PARTS:
            pieces.append(_BUILTIN_PARTS[expr])
            continue
        r = _RANDOM.match(expr)
        if r:
            lo, hi = int(r.group(1)), int(r.group(2))
            if lo > hi or max(abs(lo), abs(hi)) > MAX_RANDOM_BOUND:
                raise TemplateError(f"${{{expr}}} needs random(a, b) with a <= b, whole numbers of at most "
                                    f"15 digits")
            pieces.append(_random(lo, hi))
            continue
        d = _DATA.match(expr)
        if d:
            column = d.group(1)
            if columns is not None and column not in columns:
                raise TemplateError(f"${{{expr}}}: the data file has no column {column!r} "
                                    f"(it has {', '.join(sorted(columns))})")
            if columns is None and known is not None:
                raise TemplateError(f"${{{expr}}} reads the data row, but the target has no data: file")
            names.add(f"data.{column}")
            pieces.append(_column(column))
            continue
        if not _NAME.match(expr):
            raise TemplateError(f"${{{expr}}} is not a placeholder: use ${{name}}, ${{data.column}}, "
                                f"${{random(a, b)}}, ${{uuid}}, ${{user}} or ${{iteration}}")
        if known is not None and expr not in known:
            where = ", ".join(sorted(known)) or "none"
            raise TemplateError(f"${{{expr}}} is not captured by an earlier step nor a data column "
                                f"(known here: {where})")
        names.add(expr)
        pieces.append(_variable(expr))
    if at < len(text):
        pieces.append(text[at:])
    return Template(text, tuple(pieces), frozenset(names), escape)


def json_escape(value: str) -> str:
    """A value as it goes inside a JSON string literal."""
    import json

    return json.dumps(value)[1:-1]


def compile_json(value: Any, known: frozenset[str] | None = None, columns: frozenset[str] | None = None) -> Template:
    """A JSON body whose strings may hold placeholders: its text, with filled-in values JSON-escaped."""
    import json

    return compile_template(json.dumps(value, separators=(",", ":")), known, columns, escape=json_escape)


def resolve_servers(text: str, addresses: Mapping[str, str]) -> str:
    """Replace ``{server}`` references (not ``${variables}``) by that server's ``host:port``."""
    return SERVER_REF.sub(lambda m: addresses[m.group(1)], text)
