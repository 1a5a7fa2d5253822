"""TCP targets: their config model and their kind, persistent connections sending a message and checking
the reply. Connection set-up is a histogram of its own (the CONNECT row), and a run that holds fewer
connections than asked fails."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from loadtest.model.fields import (
    DEFAULT_TIMEOUT_S,
    SERVER_REF,
    FieldError,
    check_at,
    Name,
    Duration,
    PositiveNumber,
    Stages,
    address,
    check_refs,
    choice,
    ip,
    non_negative_int,
    positive_int,
)
from loadtest.model.config_model import TargetModel
from loadtest.core.schedule import Stage, peak_level, sustained_level_until
from loadtest.model.kinds.base import ExtraRow, HeldConnections, Load, TargetKind

if TYPE_CHECKING:
    from loadtest.core.stats import RunStats, TargetTotals

DEFAULT_TCP_EXPECT = "echo"
DEFAULT_TCP_SIZE = 64
MAX_TCP_SIZE = 16 * 1024 * 1024
TCP_EXPECTS = ("echo", "upper", "any")
STAGE_LAG_S = 1.0  # a staged tcp target has this long to open the connections a ramp asks for
# ... and is held to the highest level its stages keep for this long: the level is followed ten times a
# second, so the tip of a ramp that turns at once (up, then straight down) is never held exactly
STAGE_HOLD_S = 0.25
_FILLER = b"abcdefghijklmnopqrstuvwxyz0123456789"  # a `size:` message repeats these


@dataclass(frozen=True)
class TcpTarget:
    """A TCP target: persistent connections sending a message and checking the reply."""

    name: str
    address: str  # "host:port", possibly with a "{server}" reference
    connections: int
    message: bytes
    expect: str = DEFAULT_TCP_EXPECT
    rate: float = 0.0  # messages/s in all; 0: back to back
    connect_rate: float = 0.0  # new connections/s in all; 0: as fast as possible
    source_ips: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_S
    stages: tuple[Stage, ...] = ()  # ramps of the connections held, from `connections`

    @property
    def kind(self) -> str:
        """The registry's name of this target's kind."""
        return Tcp.name

    @property
    def peak_connections(self) -> int:
        """The most connections this target holds at once: `connections`, or the stages' highest."""
        return int(round(peak_level(self.stages, self.connections)))

    def asked_at_peak(self, elapsed: float) -> int:
        """The connections to have held at the peak of a run whose load lasted `elapsed` seconds.

        With stages, the highest level they kept for `STAGE_HOLD_S`, from a moment up to `STAGE_LAG_S`
        before the load stopped.
        """
        if not self.stages:
            return self.connections
        return int(round(sustained_level_until(self.stages, self.connections, elapsed - STAGE_LAG_S, STAGE_HOLD_S)))


def tcp_address(value: Any, info: ValidationInfo) -> str:
    """``HOST:PORT`` with an IP address or localhost, or a ``{server}`` reference."""
    if not isinstance(value, str):
        raise FieldError(f"must be HOST:PORT, got {value!r}")
    check_refs(value, info)
    if not SERVER_REF.fullmatch(value):
        host, port = address(value)
        if port == 0:
            raise FieldError("port must be between 1 and 65535, got 0")
        ip(host)
    return value


def message_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise FieldError(f"must be non-empty text, got {value!r}")
    return value.encode("utf-8")


def message_size(value: Any) -> int:
    count = positive_int(value)
    if count > MAX_TCP_SIZE:
        raise FieldError(f"must be at most 16 MiB, got {count}")
    return count


def source_addresses(value: Any) -> tuple[str, ...]:
    """``127.0.0.1-127.0.0.4``, one address, or a list of addresses."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise FieldError(f"must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}")
        first, dash, last = item.partition("-")
        if dash and not last.strip():
            raise FieldError(f"must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}")
        try:
            lo = ipaddress.IPv4Address(first.strip())
            hi = ipaddress.IPv4Address(last.strip()) if last else lo
        except ValueError:
            raise FieldError(f"must be addresses such as 127.0.0.1-127.0.0.4, got {item!r}") from None
        if hi < lo or int(hi) - int(lo) > 255:
            raise FieldError(f"range {item!r} must run upwards and span at most 256 addresses")
        out.extend(str(ipaddress.IPv4Address(i)) for i in range(int(lo), int(hi) + 1))
    return tuple(dict.fromkeys(out))


_SOURCE_TEXT = {"type": "string", "description": "an IPv4 address or a range such as 127.0.0.1-127.0.0.4"}


def held_connections(stages: tuple[Stage, ...], given: int | None) -> int:
    """The connections a target holds, as written: where its stages start (0 allowed, but some stage must reach
    one), or without stages at least 1 (1 when left out)."""
    if stages:  # connections is where the ramp starts, and may be 0
        connections = check_at("connections", non_negative_int, 0 if given is None else given)
        if peak_level(stages, connections) < 0.5:
            raise FieldError("never reach a connection; give a stage a target of 1 or more", at=("stages",))
        return int(connections)
    return int(check_at("connections", positive_int, 1 if given is None else given))


class TcpTargetModel(TargetModel):
    """A TCP target as written in the config: `tcp: HOST:PORT`, with `connections` or `stages`."""

    name: Name = None  # type: ignore[assignment] # None (left out): its address
    """The target's row name in every report; left out, its address."""
    tcp: Annotated[str, BeforeValidator(tcp_address), WithJsonSchema({
        "type": "string", "description": "HOST:PORT, or {name} for the server of that name"})]
    """HOST:PORT of the server, or {name} for the embedded server of that name."""
    connections: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 0})] = None
    """Persistent connections in all, split over the workers (with stages: where the ramp starts, 0 if left out)."""
    message: Annotated[bytes, BeforeValidator(message_bytes), WithJsonSchema({"type": "string", "minLength": 1})] = b""
    """The message each connection sends, as text (instead of size)."""
    size: Annotated[int, BeforeValidator(message_size), WithJsonSchema(
        {"type": "integer", "minimum": 1, "maximum": MAX_TCP_SIZE})] = DEFAULT_TCP_SIZE
    """The message's size in bytes, filled with letters and digits, when no message is given."""
    expect: choice(TCP_EXPECTS) = DEFAULT_TCP_EXPECT  # type: ignore[valid-type]
    """How each reply is checked: echo (the same bytes), upper (upper-cased) or any (anything of the same length);
    a wrong one is a mismatch."""
    rate: PositiveNumber = 0.0  # 0 (left out): back to back
    """Messages per second in all, each connection its share on its own schedule, latency from the intended send;
    left out, back to back. With stages: the rate at the peak."""
    connect_rate: PositiveNumber = 0.0  # 0 (left out): as fast as possible
    """New connections per second in all; left out, as fast as possible."""
    source_ips: Annotated[tuple[str, ...], BeforeValidator(source_addresses), WithJsonSchema(
        {"anyOf": [_SOURCE_TEXT, {"type": "array", "items": _SOURCE_TEXT}]})] = ()
    """Local source addresses to spread connections over (127.0.0.1-127.0.0.4, or a list), past one address's
    ~28,000 ephemeral ports towards one port."""
    timeout: Duration = DEFAULT_TIMEOUT_S
    """How long a reply may take; past it the message fails as read_timeout."""
    stages: Stages = ()
    """A ramp of the connections held, as k6's stages, from connections."""

    needs: ClassVar[str] = "tcp for a TCP target"  # what a target lacking every kind's key needs

    @classmethod
    def claims(cls, data: dict[str, Any]) -> bool:
        """Whether a target as written is one of these: it has `tcp`."""
        return "tcp" in data

    @classmethod
    def check_written(cls, data: dict[str, Any]) -> None:
        if "message" in data and "size" in data:
            raise FieldError("give message or size, not both")

    @cached_property
    def target(self) -> TcpTarget:
        """The validated target."""
        given = self.model_fields_set
        connections = held_connections(self.stages, self.connections if "connections" in given else None)
        return TcpTarget(
            name=self.name if self.name is not None else self.tcp,
            address=self.tcp,
            connections=connections,
            message=self.message if "message" in given else bytes(_FILLER[i % 36] for i in range(self.size)),
            expect=self.expect,
            rate=self.rate,
            connect_rate=self.connect_rate,
            source_ips=self.source_ips,
            timeout=self.timeout,
            stages=self.stages,
        )



class Tcp(TargetKind):
    """Persistent TCP connections, each sending its message and reading back the reply."""

    name = "tcp"
    model = TcpTargetModel
    worker = "loadtest.engine.kinds.tcp:TcpWorker"

    def row_type(self, target: TcpTarget) -> str:
        return "TCP"

    def load(self, target: TcpTarget) -> Load:
        return Load(users=target.peak_connections, start=float(target.connections), stages=target.stages)

    def held_connections(self, target: TcpTarget) -> tuple[HeldConnections, ...]:
        return (HeldConnections(target.address, target.peak_connections, target.source_ips),)

    def extra_rows(self, target: TcpTarget, totals: TargetTotals) -> list[ExtraRow]:
        """CONNECT: connection set-up; Request Count is the connections tried, Failure Count the failed ones."""
        from loadtest.core.run_files import CONNECT_TYPE

        return [ExtraRow(CONNECT_TYPE, totals.connect_latency, totals.connects + sum(totals.connect_failures.values()),
                         totals.connect_failures)]

    def summary(self, target: TcpTarget, totals: TargetTotals, stats: RunStats, index: int) -> dict[str, Any]:
        from loadtest.core.histograms import latency_summary

        held = stats.held_at_end(index)
        return {"connections": {
            "opened": totals.connects,
            "failed": sum(totals.connect_failures.values()),
            "failed_by_kind": dict(sorted(totals.connect_failures.items())),
            "open_at_end": totals.open_connections,
            "connect_latency_ms": latency_summary(totals.connect_latency),
            "peak_open": max(stats.peak_open[index], held),
            "held_at_end": held,
            "asked": target.asked_at_peak(stats.elapsed),
        }}

    def shortfall(self, target: TcpTarget, stats: RunStats, index: int) -> str | None:
        """Fewer connections held than asked, at peak or when the load stopped.

        A staged target is held to the highest level its stages kept for `STAGE_HOLD_S`, from a moment up to
        `STAGE_LAG_S` before the load stopped (a connection gets that long to open), and not checked at the end,
        where it may be ramping down.
        """
        held = stats.held_at_end(index)
        peak = max(stats.peak_open[index], held)  # the seconds' samples can miss a peak at the very end
        asked = target.asked_at_peak(stats.elapsed)
        if peak < asked or (not target.stages and held < asked):
            return (f"{target.name}: held {peak:,} connections at peak and {held:,} when the load stopped, "
                    f"fewer than the {asked:,} asked")
        return None
