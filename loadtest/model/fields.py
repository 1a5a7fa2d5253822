"""The config's field types: what each value may be, checked once, and the one sentence it fails with.

Each check is a plain function of the value that returns it converted (``"2s"`` -> 2.0) or raises
`FieldError` with the sentence *after* the field's path (``must be a positive integer, got 'many'``).
The pydantic models put the path in front (`explain`), and so do the `parse_*` functions that the
command line uses with its option's name (``--duration: ...``). The annotated types at the bottom
(`Duration`, `PositiveInt`, ...) carry a check and the JSON Schema an editor reads for it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Any, Iterable, Mapping

from pydantic import (
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)

from loadtest.core.schedule import Stage, stages_duration

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_METRICS_HOST = "127.0.0.1"  # live metrics listen on loopback unless a host is given
MAX_DURATION_S = 7 * 24 * 3600.0  # a run's length, whether from duration, --duration or its stages added up
MAX_DURATION_TEXT = "7 days"
MAX_LEVEL = 10_000_000.0  # a rate (per second) or a stage's target, at most
MAX_WORKERS = 256  # processes of one kind a run or server may start (each is ~30 MiB)
MAX_BUFFERED_MIB = 1024 * 1024  # an HTTP server's max_buffered, at most (1 TiB)
MAX_PID = 2**31 - 1  # a pid_t: a larger number is no process and overflows the system calls that take one
MAX_NAME_CHARS = 200

# "{site}" in a URL or tcp address stands for the host:port of the server named "site".
SERVER_REF = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
# ASCII digits only: "１s" (a full-width digit) is not one second, though `\d` and float() would read it so
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$", re.ASCII)
_BARE_NUMBER = re.compile(r"^\s*[-+]?\d+(?:\.\d*)?\s*$", re.ASCII)
# Characters that reorder the text after them (U+202E RIGHT-TO-LEFT OVERRIDE, …): a name holding one reverses
# the rest of a terminal line or a report's row
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)\s*$"  # the same as _DURATION, for the JSON Schema

FieldPath = tuple[str | int, ...]  # where a value is: keys and list indexes


class ConfigError(ValueError):
    """A mistake in the user's input: one sentence naming the field."""


class FieldError(ValueError):
    """What is wrong with one value, without its path; `at` is where below the value's own field it is
    (``("headers", "X")``), for a check that looks inside a mapping or list."""

    def __init__(self, message: str, at: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def path_text(path: Iterable[str | int]) -> str:
    """``("targets", 2, "rate")`` as ``targets[2].rate``; the empty path is the whole ``config``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def at(where: str, check: Any, value: Any, *args: Any) -> Any:
    """`check(value, *args)` with a failure raised as ConfigError naming `where` (an option, say)."""
    try:
        return check(value, *args)
    except FieldError as e:
        raise ConfigError(f"{where}{path_text(e.at) if e.at else ''}: {e.message}") from None


def check_at(field: str | int, check: Any, value: Any) -> Any:
    """`check(value)`, its failure placed at `field` (a check across fields names the one that is wrong)."""
    try:
        return check(value)
    except FieldError as e:
        raise FieldError(e.message, at=(field, *e.at)) from None


def type_name(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "text", int: "a number", float: "a number",
            bool: "true/false", type(None): "nothing"}.get(type(value), type(value).__name__)


# The checks: value in, converted value out, or FieldError.


def duration(value: Any) -> float:
    """Seconds from ``10s``, ``2m``, ``1h`` or ``250ms``.

    A bare number is refused, not read as seconds: ``think: 100`` meant 100 ms as often as 100 s.
    """
    if isinstance(value, bool):
        raise FieldError(f"must be a duration such as 10s, 2m or 1h, got {value!r}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and _BARE_NUMBER.match(value)):
        raise FieldError(f"a duration needs a unit (100ms, 2s, 5m, 1h), got {value!r}")
    if not (isinstance(value, str) and (m := _DURATION.match(value))):
        raise FieldError(f"must be a duration such as 10s, 2m or 1h, got {value!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise FieldError(f"must be more than 0 and at most {MAX_DURATION_TEXT}, got {value!r}")
    return seconds


def positive_int(value: Any, noun: str = "a positive integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FieldError(f"must be {noun}, got {value!r}")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(f"must be a whole number, 0 or more, got {value!r}")
    return value


def positive_number(value: Any, most: float = MAX_LEVEL) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise FieldError(f"must be a positive number, got {value!r}")
    if value > most:
        raise FieldError(f"must be at most {most:,.0f}, got {value!r}")
    return float(value)


def non_negative_number(value: Any, most: float = MAX_LEVEL) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise FieldError(f"must be a number, 0 or more, got {value!r}")
    if value > most:
        raise FieldError(f"must be at most {most:,.0f}, got {value!r}")
    return float(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"must be true or false, got {value!r}")
    return value


def name(value: Any) -> str:
    """A target's, server's or run's name: one line of text, as it appears in reports."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"must be non-empty text, got {value!r}")
    if len(value) > MAX_NAME_CHARS or any(unicodedata.category(c) == "Cc" for c in value):
        raise FieldError(f"must be one line of at most {MAX_NAME_CHARS} characters, without control characters, "
                         f"got {value!r}")
    bidi = next((c for c in value if c in BIDI_CONTROLS), None)
    if bidi is not None:
        raise FieldError(f"must not contain U+{ord(bidi):04X} ({unicodedata.name(bidi, 'a direction control')}), "
                         f"which reorders the text after it in terminals and reports, got {value!r}")
    return value


def one_of(choices: tuple[str, ...]) -> Any:
    """A check that the value is one of `choices`."""
    def check(value: Any) -> str:
        if value not in choices:
            raise FieldError(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)
    return check


def workers(value: Any) -> int | None:
    """A worker count: a positive whole number up to `MAX_WORKERS`, or ``auto`` (None: one per core)."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return process_count(positive_int(value, noun="a positive integer or auto"))


def process_count(count: int) -> int:
    """A process count a machine can start: at most `MAX_WORKERS`."""
    if count > MAX_WORKERS:
        raise FieldError(f"must be at most {MAX_WORKERS} processes, got {count}")
    return count


def pid(value: Any) -> int:
    """A process id: a whole number from 1 to `MAX_PID` (digits in text too, as from the command line)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PID:
        raise FieldError(f"must be a process id (a whole number from 1 to {MAX_PID}), got {value!r}")
    return value


def address(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a (host, port) pair."""
    if not isinstance(value, str) or ":" not in value:
        raise FieldError(f"must be HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise FieldError(f"must be HOST:PORT with a host, got {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise FieldError(f"port must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise FieldError(f"port must be between 0 and 65535, got {port}")
    return host, port


def ip(host: str) -> str:
    """`host` if it is an IP address or localhost: load goes to addresses, never to names looked up."""
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise FieldError(f"host must be an IP address or localhost, got {host!r}") from None
    return host


def ip_address(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` whose host is an IP address or localhost."""
    host, port = address(value)
    return ip(host), port


def metrics_address(value: Any) -> tuple[str, int]:
    """Where to serve live metrics: ``HOST:PORT``, or ``PORT`` / ``:PORT`` on loopback."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and (text.isdigit() or text.startswith(":")):
        text = f"{DEFAULT_METRICS_HOST}:{text.lstrip(':')}"
    return ip_address(text)


def max_buffered(value: Any) -> int:
    """A server's `max_buffered`, given in MiB (a whole number), in bytes."""
    mib = positive_int(value, "a whole number of MiB")
    if mib > MAX_BUFFERED_MIB:
        raise FieldError(f"must be at most {MAX_BUFFERED_MIB} MiB, got {mib}")
    return mib * 1024 * 1024


def check_refs(text: str, info: ValidationInfo) -> None:
    """Every ``{server}`` in `text` names a server of the config (the validation context's "servers")."""
    servers = (info.context or {}).get("servers", set())
    for ref in SERVER_REF.findall(text):
        if ref not in servers:
            known = ", ".join(sorted(servers)) or "none are configured"
            raise FieldError(f"refers to server {{{ref}}}, but no server has that name ({known})")


def resolve(text: str, addresses: Mapping[str, str]) -> str:
    """Replace ``{server}`` references by that server's ``host:port``."""
    return SERVER_REF.sub(lambda m: addresses[m.group(1)], text)


def optional(check: Any) -> Any:
    """`check`, except that nothing (YAML's null, or the field left out) stays None."""
    def maybe(value: Any) -> Any:
        return None if value is None else check(value)
    return maybe


def field_error(error: ValidationError) -> FieldError:
    """A model's first error, met while checking a value of a larger document, as that value's FieldError."""
    sentence = str(explain(error))
    path, _, message = sentence.partition(": ")
    e = error.errors()[0]
    cause = (e.get("ctx") or {}).get("error")
    at_path = tuple(e["loc"]) + (cause.at if isinstance(cause, FieldError) else ())
    if e["type"] == "extra_forbidden":
        at_path = at_path[:-1]
    return FieldError(message, at=at_path)


def explain(error: ValidationError) -> ConfigError:
    """The first of pydantic's errors as one sentence naming the field, as the checks above word them."""
    e = error.errors()[0]
    loc = tuple(e["loc"])
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return ConfigError(f"{path_text(loc + cause.at)}: {cause.message}")
    kind = e["type"]
    if kind == "extra_forbidden":
        return ConfigError(f"{path_text(loc[:-1])}: unknown field {loc[-1]!r}")
    if kind == "missing":
        return ConfigError(f"{path_text(loc)}: is missing")
    return ConfigError(f"{path_text(loc)}: {e['msg'][:1].lower()}{e['msg'][1:]}, got {e.get('input')!r}")


# The types the models are made of: a check, and what an editor is told about the value.

DURATION_SCHEMA = {"type": "string", "pattern": DURATION_PATTERN, "description": "a duration: 250ms, 10s, 2m, 1h"}
Duration = Annotated[float, BeforeValidator(duration), WithJsonSchema(DURATION_SCHEMA)]
OptionalDuration = Annotated[float | None, BeforeValidator(optional(duration)), WithJsonSchema(DURATION_SCHEMA)]
PositiveInt = Annotated[int, BeforeValidator(positive_int), WithJsonSchema({"type": "integer", "minimum": 1})]
OptionalPositiveInt = Annotated[int | None, BeforeValidator(optional(positive_int)),
                                WithJsonSchema({"type": "integer", "minimum": 1})]
PositiveNumber = Annotated[float, BeforeValidator(positive_number),
                           WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LEVEL})]
NonNegativeNumber = Annotated[float, BeforeValidator(non_negative_number),
                              WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_LEVEL})]
Flag = Annotated[bool, BeforeValidator(flag), WithJsonSchema({"type": "boolean"})]
Name = Annotated[str, BeforeValidator(name),
                 WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS})]
Workers = Annotated[int | None, BeforeValidator(workers), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_WORKERS}, {"const": "auto"}]})]
Pid = Annotated[int, BeforeValidator(pid), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_PID})]


def choice(choices: tuple[str, ...]) -> Any:
    """A field that is one of `choices`."""
    return Annotated[str, BeforeValidator(one_of(choices)), WithJsonSchema({"enum": list(choices)})]


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``10s``, ``2m``, ``1h`` or ``250ms``, or ConfigError naming `where`."""
    return float(at(where, duration, value))


def parse_workers(value: Any, where: str) -> int | None:
    """A worker count from the config or the command line: a positive whole number, or ``auto`` (None)."""
    return at(where, workers, value)  # type: ignore[no-any-return]


def parse_pid(value: Any, where: str) -> int:
    """A process id from the config or the command line: a whole number from 1 to `MAX_PID`."""
    return int(at(where, pid, value))


def parse_address(value: Any, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a (host, port) pair."""
    return at(where, address, value)  # type: ignore[no-any-return]


def parse_metrics_address(value: Any, where: str) -> tuple[str, int]:
    """Where to serve live metrics: ``HOST:PORT``, or ``PORT`` / ``:PORT`` on loopback."""
    return at(where, metrics_address, value)  # type: ignore[no-any-return]


def parse_max_buffered(value: Any, where: str) -> int:
    """A server's `max_buffered`, given in MiB (a whole number), in bytes."""
    return int(at(where, max_buffered, value))


def check_ip(host: str, where: str) -> None:
    """Raise ConfigError unless `host` is an IP address or localhost."""
    at(where, ip, host)



def stages(value: Any) -> tuple[Stage, ...]:
    """Ramps of a target's level: ``[{duration: 30s, target: 200}, ...]``, lasting `MAX_DURATION_S` at most."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise FieldError(f"must be a list such as [{{duration: 30s, target: 200}}], got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"duration", "target"}:
            raise FieldError(f"must have exactly duration and target, got {item!r}", at=(i,))
        try:
            seconds = duration(item["duration"])
        except FieldError as e:
            raise FieldError(e.message, at=(i, "duration")) from None
        try:
            level = non_negative_number(item["target"])
        except FieldError as e:
            raise FieldError(e.message, at=(i, "target")) from None
        out.append(Stage(seconds, level))
    total = stages_duration(tuple(out))
    if total > MAX_DURATION_S:  # the same cap as duration: the stages are the run's length
        raise FieldError(f"add up to {total / 86400:.1f} days; a run lasts at most {MAX_DURATION_TEXT}")
    return tuple(out)


Stages = Annotated[tuple[Stage, ...], BeforeValidator(stages), WithJsonSchema({
    "type": "array", "minItems": 1, "description": "ramps of the level, as k6's stages",
    "items": {"type": "object", "additionalProperties": False, "required": ["duration", "target"],
              "properties": {"duration": {**DURATION_SCHEMA, "description": "how long this stage lasts"},
                             "target": {"type": "number", "minimum": 0, "description": "the level at the stage's end: "
                                        "users, arrivals (or passes) per second, or connections"}}}})]


LOCAL_PREFIX = "local:"  # --cluster local:N starts N nodes on this machine
ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"  # where Dask's own tools look for the scheduler
MAX_LOCAL_NODES = 64
_CLUSTER_ADDRESS = re.compile(r"(tcp|tls|ucx|inproc)://[^\s/]+:\d+")


def cluster_address_problem(value: object) -> str:
    """What is wrong with a scheduler address as given (--cluster, cluster:), or "" if nothing is."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.startswith(LOCAL_PREFIX):
        count = text[len(LOCAL_PREFIX):]
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_NODES:
            return f"local:N needs N from 1 to {MAX_LOCAL_NODES} nodes, got {text!r}"
        return ""
    if not isinstance(text, str) or not _CLUSTER_ADDRESS.fullmatch(text):
        return f"must be a Dask scheduler address such as tcp://HOST:8786, or local:N, got {text!r}"
    return ""
