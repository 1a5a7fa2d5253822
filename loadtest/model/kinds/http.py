"""HTTP targets: their config model, and their two kinds, virtual users (closed) and arrivals (open).

A target with `rate` is open: arrivals on a schedule, latency from the intended start; otherwise
`concurrency` virtual users send back to back (closed). Both run one of the two HTTP engines.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from loadtest.model.fields import (
    DEFAULT_TIMEOUT_S,
    DURATION_SCHEMA,
    MAX_LEVEL,
    FieldError,
    check_at,
    Flag,
    Name,
    Duration,
    Stages,
    choice,
    duration,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    SERVER_REF,
    check_refs,
    type_name,
)
from loadtest.model.config_model import TargetModel
from loadtest.core.schedule import Stage, peak_level
from loadtest.model.kinds.base import ExtraRow, Load, TargetKind

if TYPE_CHECKING:
    from loadtest.core.stats import RunStats, TargetTotals

DEFAULT_METHOD = "GET"
DEFAULT_ENGINE = "fast"
DEFAULT_MAX_CONCURRENCY = 5000
DEFAULT_ARRIVAL = "constant"
ENGINES = ("fast", "requests")
ARRIVALS = ("constant", "poisson")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP target, as validated: virtual users (closed model) or arrivals on a schedule (open model)."""

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
    arrival: str = DEFAULT_ARRIVAL  # open model: constant | poisson
    stages: tuple[Stage, ...] = ()  # ramps of concurrency (closed) or rate (open)
    think: tuple[float, float] = (0.0, 0.0)  # closed model: pause between requests, uniform in [lo, hi]

    @property
    def kind(self) -> str:
        """The registry's name of this target's kind."""
        return HttpOpen.name if self.model == "open" else HttpClosed.name

    @property
    def peak_users(self) -> int:
        """The most virtual users (closed) or requests in flight (open) this target may have."""
        if self.model == "open":
            return self.max_concurrency
        return int(round(peak_level(self.stages, self.concurrency)))


# The checks of the HTTP fields (the common ones are in loadtest.model.fields).


def url_text(value: Any, info: ValidationInfo) -> str:
    """An http:// or https:// URL of ASCII text whose host:port may be a ``{server}`` reference."""
    if not isinstance(value, str) or not value:
        raise FieldError(f"must be a URL such as http://127.0.0.1:8080/, got {value!r}")
    check_refs(value, info)
    try:
        netloc = urlsplit(value).netloc.rpartition("@")[2] if "://" in value else ""
    except ValueError:  # an unclosed "[" of an IPv6 host
        raise FieldError(f"is not a valid URL, got {value!r}") from None
    if SERVER_REF.search(netloc) and not SERVER_REF.fullmatch(netloc):
        raise FieldError(f"a {{server}} reference stands for the whole host:port, as in http://{{name}}/path, "
                         f"got {value!r}")
    probe = SERVER_REF.sub("127.0.0.1:1", value)
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise FieldError(f"is not a valid URL, got {value!r}") from None
    if parts.scheme not in ("http", "https"):
        raise FieldError(f"must start with http:// or https://, got {value!r}")
    if not parts.hostname:
        raise FieldError(f"has no host, got {value!r}")
    if port == 0:
        raise FieldError(f"port must be between 1 and 65535, got {value!r}")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        raise FieldError(f"must not contain spaces or control characters, got {value!r}")
    if not value.isascii():
        raise FieldError(f"must be ASCII; percent-encode other characters (é as %C3%A9), got {value!r}")
    return value


def url_list(value: Any, info: ValidationInfo) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise FieldError(f"must be a non-empty list of URLs, got {value!r}")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(url_text(item, info))
        except FieldError as e:
            raise FieldError(e.message, at=(i,)) from None
    return tuple(out)


def method_name(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in HTTP_METHODS:
        raise FieldError(f"must be one of {', '.join(HTTP_METHODS)}, got {value!r}")
    return value.upper()


def header_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not value:
        return ()
    if not isinstance(value, dict):
        raise FieldError(f"must be a mapping of header names to values, got {type_name(value)}")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not _HEADER_NAME.match(k):
            raise FieldError(f"{k!r} is not a valid header name")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or not _latin1_line(str(v)):
            raise FieldError(f"must be one line of Latin-1 text without control characters, got {v!r}", at=(k,))
        out.append((k, str(v)))
    return tuple(out)


def _latin1_line(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(c) == "Cc" and c != "\t" for c in text)


def body_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise FieldError(f"must be text, got {type_name(value)}")
    return value.encode("utf-8")


def statuses(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
            raise FieldError(f"must be HTTP status codes between 100 and 599, got {item!r}")
    if not items:
        raise FieldError("must list at least one status code")
    return tuple(items)


def think_range(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 2:
            raise FieldError(f"must be a duration or [shortest, longest], got {value!r}")
        lo, hi = (duration(v) for v in value)
        if hi < lo:
            raise FieldError(f"[shortest, longest] must not run backwards, got {value!r}")
        return (lo, hi)
    seconds = duration(value)
    return (seconds, seconds)


_URL_SCHEMA = {"type": "string", "pattern": "^[hH][tT][tT][pP][sS]?://", "description": "http:// or https:// URL; "
               "{name} stands for the host:port of the server of that name"}


class HttpTargetModel(TargetModel):
    """An HTTP target as written in the config: `url` (or `urls`) and `concurrency`, `rate` or `stages`."""

    name: Name = None  # type: ignore[assignment] # None (left out): its first URL
    """The target's row name in every report; left out, its first URL."""
    url: Annotated[str | None, BeforeValidator(url_text), WithJsonSchema(_URL_SCHEMA)] = None
    """The http:// or https:// URL to request; {name} stands for the host:port of the embedded server of that name."""
    urls: Annotated[tuple[str, ...] | None, BeforeValidator(url_list),
                    WithJsonSchema({"type": "array", "minItems": 1, "items": _URL_SCHEMA})] = None
    """Several URLs instead of url, requested in turn, as a crawler visits sites."""
    method: Annotated[str, BeforeValidator(method_name), WithJsonSchema({
        "type": "string", "description": "one of " + ", ".join(HTTP_METHODS) + " (any case)"})] = DEFAULT_METHOD
    """GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (any case)."""
    headers: Annotated[tuple[tuple[str, str], ...], BeforeValidator(header_pairs), WithJsonSchema({
        "type": "object", "additionalProperties": {"type": ["string", "number"]}})] = ()
    """Request headers, as name: value."""
    body: Annotated[bytes, BeforeValidator(body_bytes), WithJsonSchema({"type": "string"})] = b""
    """The request body, as text."""
    timeout: Duration = DEFAULT_TIMEOUT_S
    """How long the whole response may take, from its first byte written; past it the request fails as read_timeout."""
    expect_status: Annotated[tuple[int, ...], BeforeValidator(statuses), WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 100, "maximum": 599}}]})] = ()
    """The status, or list of statuses, that succeed; left out, any 2xx or 3xx. Any other fails as status."""
    engine: choice(ENGINES) = DEFAULT_ENGINE  # type: ignore[valid-type]
    """fast: HTTP/1.1 keep-alive with a C parser; requests: follows redirects, keeps cookies, does auth and proxies."""
    verify_tls: Flag = True
    """Check an https server's certificate."""
    stages: Stages = ()
    """A ramp, as k6's stages: of virtual users (closed model, from 0) or of arrivals per second (open model, from
    rate)."""
    # concurrency, rate and their companions are checked together (after the fields above): what each
    # may be depends on which model the target is and whether it has stages.
    concurrency: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 0,
                                                "description": "virtual users (closed model)"})] = None
    """Closed model: virtual users in all, split over the workers; each sends its next request when its last one
    ended."""
    rate: Annotated[Any, WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_LEVEL,
                                         "description": "arrivals per second in all (open model)"})] = None
    """Open model: arrivals per second in all, started on schedule whatever the latency; latency counts from the
    scheduled start."""
    max_concurrency: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 1})] = None
    """Open model: requests in flight in all, at most (left out: 5,000); an arrival that cannot start within 1 s is
    dropped and counted."""
    arrival: choice(ARRIVALS) = DEFAULT_ARRIVAL  # type: ignore[valid-type]
    """Open model: constant gaps between arrivals, or poisson."""
    think: Annotated[tuple[float, float] | None, BeforeValidator(think_range), WithJsonSchema({"anyOf": [
        DURATION_SCHEMA, {"type": "array", "minItems": 2, "maxItems": 2, "items": DURATION_SCHEMA}]})] = None
    """Closed model: a user's pause between requests, one duration or [shortest, longest] drawn uniformly."""

    needs: ClassVar[str] = "url (or urls) for an HTTP target"  # what a target lacking every kind's key needs

    @cached_property
    def target(self) -> HttpTarget:
        """The validated target."""
        given = self.model_fields_set
        if "rate" in given:
            model = "open"
            if "concurrency" in given:
                raise FieldError("give concurrency (closed model) or rate (open model), not both")
            if "think" in given:
                raise FieldError("only the closed model (concurrency) has think time", at=("think",))
            rate = check_at("rate", non_negative_number if self.stages else positive_number, self.rate)
            concurrency = 1
        else:
            model = "closed"
            for key in ("max_concurrency", "arrival"):
                if key in given:
                    raise FieldError(f"only the open model (rate) has {key}", at=(key,))
            rate = 0.0
            users = self.concurrency if "concurrency" in given else (0 if self.stages else 1)
            # with stages, concurrency is where the ramp starts, and may be 0
            concurrency = check_at("concurrency", non_negative_int if self.stages else positive_int, users)
        cap = self.max_concurrency if "max_concurrency" in given else DEFAULT_MAX_CONCURRENCY
        target_urls = self.urls if self.urls is not None else (self.url,)
        target = HttpTarget(
            name=self.name if self.name is not None else str(target_urls[0]),
            urls=target_urls,  # type: ignore[arg-type]
            method=self.method,
            headers=self.headers,
            body=self.body,
            timeout=self.timeout,
            expect_status=self.expect_status,
            engine=self.engine,
            concurrency=concurrency,
            verify_tls=self.verify_tls,
            model=model,
            rate=rate,
            max_concurrency=check_at("max_concurrency", positive_int, cap),
            arrival=self.arrival,
            stages=self.stages,
            think=self.think or (0.0, 0.0),
        )
        # Checked once every field is valid, so a mistake in one is named first. There is no silent default
        # of one user: a forgotten concurrency would measure one user's pace and look like the server's.
        if not {"concurrency", "rate", "stages"} & given:
            raise FieldError("needs concurrency (virtual users, closed model) or rate (arrivals per second, "
                             "open model), such as concurrency: 10")
        return target

    @classmethod
    def claims(cls, data: dict[str, Any]) -> bool:
        """Whether a target as written is one of these: it has a url (or urls)."""
        return "url" in data or "urls" in data

    @classmethod
    def check_written(cls, data: dict[str, Any]) -> None:
        if "url" in data and "urls" in data:
            raise FieldError("give url or urls, not both")

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        """A target needs url or urls, and concurrency, rate or stages."""
        schema["allOf"] = [{"anyOf": [{"required": ["url"]}, {"required": ["urls"]}]},
                       {"anyOf": [{"required": ["concurrency"]}, {"required": ["rate"]}, {"required": ["stages"]}]}]



class HttpClosed(TargetKind):
    """HTTP virtual users, each sending its next request when the last one finished (plus think time)."""

    name = "http"
    model = HttpTargetModel
    worker = "loadtest.engine.kinds.http:HttpWorker"

    def row_type(self, target: HttpTarget) -> str:
        return target.method

    def load(self, target: HttpTarget) -> Load:
        return Load(users=target.peak_users, start=float(target.concurrency), stages=target.stages,
                    think=target.think)

    def descriptors_per_user(self, target: HttpTarget) -> int:
        return len({u.split("/")[2] for u in target.urls})  # a user keeps a connection to each origin


class HttpOpen(HttpClosed):
    """HTTP arrivals on a schedule, `rate` per second whatever the latency, at most `max_concurrency` in flight;
    latency from the intended start (coordinated omission corrected)."""

    name = "http-open"

    def load(self, target: HttpTarget) -> Load:
        return Load(users=target.max_concurrency, start=target.rate, stages=target.stages, arrival=target.arrival)

    def most_workers(self, target: HttpTarget) -> int | None:
        return target.max_concurrency  # each worker needs at least one request in flight

    def check_workers(self, target: HttpTarget, workers: int) -> str | None:
        if target.max_concurrency >= workers:
            return None
        return (f"{target.name} has max_concurrency {target.max_concurrency}, fewer than the {workers} workers "
                f"that share it (each needs at least one request in flight); use --workers {target.max_concurrency} "
                f"or a larger max_concurrency")

    def extra_rows(self, target: HttpTarget, totals: TargetTotals) -> list[ExtraRow]:
        return open_model_rows(totals)

    def summary(self, target: HttpTarget, totals: TargetTotals, stats: RunStats, index: int) -> dict[str, Any]:
        return open_model_summary(target, totals)


def open_model_rows(totals: TargetTotals) -> list[ExtraRow]:
    """An open-model target's other rows (HTTP arrivals and flow passes alike). LATENESS: how late arrivals
    started (Failure Count: the dropped ones); UNCORRECTED: latency from the actual start rather than the
    scheduled one (lower than the corrected row by how late each request was sent: see OPEN_MODEL_MEANING)."""
    from loadtest.core.run_files import LATENESS_TYPE, UNCORRECTED_TYPE

    started = totals.lateness.get_total_count()
    return [ExtraRow(LATENESS_TYPE, totals.lateness, started + totals.dropped,
                     Counter(dropped=totals.dropped) if totals.dropped else Counter()),
            ExtraRow(UNCORRECTED_TYPE, totals.uncorrected, totals.requests, totals.failures)]


def open_model_summary(target: Any, totals: TargetTotals) -> dict[str, Any]:
    """summary.json's `open_model` entry of an open-model target (one with rate, arrival, max_concurrency)."""
    from loadtest.core.histograms import latency_summary

    return {"open_model": {
        "rate": target.rate, "arrival": target.arrival, "max_concurrency": target.max_concurrency,
        "started": totals.lateness.get_total_count(), "dropped": totals.dropped,
        "lateness_ms": latency_summary(totals.lateness),
        "uncorrected_latency_ms": latency_summary(totals.uncorrected),
    }}
