"""WebSocket targets: their config model and their kind, held WebSocket connections sending a message and
checking the reply.

A ws target is a tcp target whose connection starts with an HTTP upgrade and whose messages are
WebSocket frames: the same held connections, pacing, stages, source addresses, CONNECT row (TCP
connect plus the upgrade), summary and shortfall check as `model/kinds/tcp.py`, whose kind this one extends. A
`message` (text) is sent in text frames, a `size` in binary frames. Its worker half is
`loadtest.engine.kinds.ws` (a `WsDriver` from `engine/protocols/ws.py`), which the worker alone imports.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from loadtest.model.config_model import TargetModel
from loadtest.model.fields import (
    DEFAULT_TIMEOUT_S,
    SERVER_REF,
    Duration,
    FieldError,
    Flag,
    Name,
    PositiveNumber,
    Stages,
    check_refs,
    choice,
    ip,
)
from loadtest.model.kinds.http import header_pairs
from loadtest.model.kinds.tcp import (_FILLER, held_connections, _SOURCE_TEXT, DEFAULT_TCP_SIZE, MAX_TCP_SIZE, TCP_EXPECTS, Tcp,
                                      TcpTarget, message_bytes, message_size, source_addresses)

DEFAULT_PORTS = {"ws": 80, "wss": 443}


@dataclass(frozen=True)
class WsTarget(TcpTarget):
    """A WebSocket target: held connections that upgrade, then send a message and check the reply."""

    url: str = ""  # as written, possibly with a "{server}" reference for its host:port
    binary: bool = False  # binary frames (a `size:` message) rather than text frames
    headers: tuple[tuple[str, str], ...] = ()  # extra headers of the upgrade request
    verify_tls: bool = True  # wss: check the server's certificate

    @property
    def kind(self) -> str:
        """The registry's name of this target's kind."""
        return Ws.name


def ws_url(value: Any, info: ValidationInfo) -> str:
    """A ws:// or wss:// URL whose host is an IP address or localhost, or a ``{server}`` reference."""
    if not isinstance(value, str) or not value:
        raise FieldError(f"must be a URL such as ws://127.0.0.1:9000/chat, got {value!r}")
    check_refs(value, info)
    probe = SERVER_REF.sub("127.0.0.1:1", value)
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise FieldError(f"is not a valid URL, got {value!r}") from None
    if parts.scheme in ("http", "https"):
        raise FieldError(f"must be a ws:// or wss:// URL (an HTTP target is written url:), got {value!r}")
    if parts.scheme not in DEFAULT_PORTS or "://" not in value:
        raise FieldError(f"must be a URL that starts with ws:// or wss://, got {value!r}")
    netloc = value.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    if SERVER_REF.search(netloc) and not SERVER_REF.fullmatch(netloc):
        raise FieldError(f"a {{server}} reference stands for the whole host:port, as in ws://{{name}}/path, "
                         f"got {value!r}")
    if not parts.hostname:
        raise FieldError(f"has no host, got {value!r}")
    if parts.username is not None or parts.fragment:
        raise FieldError(f"must have no user name and no #fragment, got {value!r}")
    if port == 0:
        raise FieldError(f"port must be between 1 and 65535, got {value!r}")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value) or not value.isascii():
        raise FieldError(f"must be ASCII without spaces or control characters, got {value!r}")
    if not SERVER_REF.fullmatch(netloc):
        ip(parts.hostname)
    return value


_OWN_HEADERS = ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version")


def upgrade_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """Extra headers of the upgrade request: those an HTTP target takes, less the ones the upgrade sets itself."""
    pairs = header_pairs(value)
    for name, _ in pairs:
        if name.lower() in _OWN_HEADERS:
            raise FieldError(f"{name!r} is set by the upgrade itself and cannot be given", at=(name,))
    return pairs


def ws_address(url: str) -> str:
    """The ``host:port`` (``[v6]:port``, or the ``{server}`` reference) a ws URL connects to."""
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    if SERVER_REF.fullmatch(netloc):
        return netloc
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ws_parts(url: str) -> tuple[bool, str, str, str]:
    """A resolved ws URL as (tls, host:port to connect to, Host header, path with its query)."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme == "wss", ws_address(url), parts.netloc, path


class WsTargetModel(TargetModel):
    """A WebSocket target as written in the config: `ws: ws://HOST:PORT/path`, with `connections` or `stages`."""

    name: Name = None  # type: ignore[assignment] # None (left out): its URL
    """The target's row name in every report; left out, its URL."""
    ws: Annotated[str, BeforeValidator(ws_url), WithJsonSchema({
        "type": "string", "pattern": "^[wW][sS][sS]?://",
        "description": "ws:// or wss:// URL; its host:port may be {name}, the server of that name"})]
    """The ws:// or wss:// URL to upgrade, with its path and query; its host is an IP address or localhost, or its
    host:port {name} for the embedded server of that name."""
    headers: Annotated[tuple[tuple[str, str], ...], BeforeValidator(upgrade_headers), WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number"]},
         "description": "extra headers of the upgrade request"})] = ()
    """Extra headers of the upgrade request (not Host, Upgrade, Connection or the Sec-WebSocket- ones it sets)."""
    connections: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 0})] = None
    """WebSocket connections in all, split over the workers (with stages: where the ramp starts, 0 if left out)."""
    message: Annotated[bytes, BeforeValidator(message_bytes), WithJsonSchema(
        {"type": "string", "minLength": 1, "description": "sent in text frames"})] = b""
    """The message each connection sends, in text frames (instead of size)."""
    size: Annotated[int, BeforeValidator(message_size), WithJsonSchema(
        {"type": "integer", "minimum": 1, "maximum": MAX_TCP_SIZE, "description": "bytes sent in binary frames"})
                    ] = DEFAULT_TCP_SIZE
    """The message's size in bytes, filled with letters and digits and sent in binary frames, when no message is
    given."""
    expect: choice(TCP_EXPECTS) = "echo"  # type: ignore[valid-type]
    """How each reply is checked: echo (the same message), upper (upper-cased; a text message only) or any (any
    message); a wrong one is a mismatch."""
    rate: PositiveNumber = 0.0  # 0 (left out): back to back
    """Messages per second in all, each connection its share on its own schedule, latency from the intended send;
    left out, back to back. With stages: the rate at the peak."""
    connect_rate: PositiveNumber = 0.0  # 0 (left out): as fast as possible
    """New connections (each a TCP connect and an upgrade) per second in all; left out, as fast as possible."""
    source_ips: Annotated[tuple[str, ...], BeforeValidator(source_addresses), WithJsonSchema(
        {"anyOf": [_SOURCE_TEXT, {"type": "array", "items": _SOURCE_TEXT}]})] = ()
    """Local source addresses to spread connections over (127.0.0.1-127.0.0.4, or a list), past one address's
    ~28,000 ephemeral ports towards one port."""
    timeout: Duration = DEFAULT_TIMEOUT_S
    """How long the connect and upgrade, and then each reply, may take (connect_timeout, read_timeout past it)."""
    stages: Stages = ()
    """A ramp of the connections held, as k6's stages, from connections."""
    verify_tls: Flag = True
    """wss:// only: check the server's certificate; false accepts any."""

    needs: ClassVar[str] = "ws for a WebSocket target"  # what a target lacking every kind's key needs

    @classmethod
    def claims(cls, data: dict[str, Any]) -> bool:
        """Whether a target as written is one of these: it has `ws`."""
        return "ws" in data

    @classmethod
    def check_written(cls, data: dict[str, Any]) -> None:
        if "message" in data and "size" in data:
            raise FieldError("give message or size, not both")
        if data.get("expect") == "upper" and "message" not in data:
            raise FieldError("upper needs a text message (message:); a binary one (size:) has no upper case",
                             at=("expect",))

    @cached_property
    def target(self) -> WsTarget:
        """The validated target."""
        given = self.model_fields_set
        connections = held_connections(self.stages, self.connections if "connections" in given else None)
        text = "message" in given
        return WsTarget(
            name=self.name if self.name is not None else self.ws,
            address=ws_address(self.ws),
            connections=connections,
            message=self.message if text else bytes(_FILLER[i % 36] for i in range(self.size)),
            expect=self.expect,
            rate=self.rate,
            connect_rate=self.connect_rate,
            source_ips=self.source_ips,
            timeout=self.timeout,
            stages=self.stages,
            url=self.ws,
            binary=not text,
            headers=self.headers,
            verify_tls=self.verify_tls,
        )


class Ws(Tcp):
    """Held WebSocket connections, each sending its message and reading back the reply: a tcp target's
    connections, rows, summary and shortfall, with an upgrade first and frames around every message."""

    name = "ws"
    model = WsTargetModel
    worker = "loadtest.engine.kinds.ws:WsWorker"

    def row_type(self, target: WsTarget) -> str:  # type: ignore[override]
        return "WS"
