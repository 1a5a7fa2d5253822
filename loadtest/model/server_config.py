"""The embedded servers a config lists (`servers:`): each entry as written (`ServerModel`) and as started (`ServerSpec`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from loadtest.model import fields
from loadtest.model.config_model import ConfigModel
from loadtest.model.fields import MAX_WORKERS, Duration, FieldError, Flag, Name, choice, ip_address, positive_int, \
    process_count

DEFAULT_LISTEN = "127.0.0.1:0"
SERVER_KINDS = ("http", "echo")


@dataclass(frozen=True)
class ServerSpec:
    """An embedded server the run starts before the load and stops after."""

    name: str
    kind: str  # "http" | "echo"
    host: str
    port: int  # 0: a free port, chosen when the server starts
    workers: int
    upper: bool = False
    max_connections: int = 0  # 0: the server's own default
    idle_timeout: float = 0.0  # 0: the server's own default
    max_buffered: int = 0  # bytes one process holds for its clients in all; 0: the server's own default
    ws: bool = False  # an echo server that speaks WebSocket (servers/ws_echo.py)


class ServerModel(ConfigModel):
    """An embedded server as written in the config's `servers:` list."""

    name: Name = None  # type: ignore[assignment] # None (left out): named after its kind
    """The server's name, written {name} in targets' URLs and addresses; left out, its kind."""
    kind: choice(SERVER_KINDS)  # type: ignore[valid-type]
    """http (the sites server) or echo (the TCP echo server)."""
    listen: Annotated[tuple[str, int], BeforeValidator(ip_address), WithJsonSchema(
        {"type": "string", "description": "HOST:PORT to listen on; port 0: a free one", "default": DEFAULT_LISTEN}),
                      Field(validate_default=True)] = DEFAULT_LISTEN  # type: ignore[assignment]
    """HOST:PORT to listen on; port 0 picks a free port."""
    workers: Annotated[int, BeforeValidator(lambda v: process_count(positive_int(v))),
                       WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_WORKERS})] = 1
    """Server processes sharing the port (SO_REUSEPORT)."""
    upper: Flag = False
    """An echo server only: reply upper-cased instead of unchanged."""
    ws: Flag = False
    """An echo server only: speak WebSocket (an upgrade, then every message echoed in frames)."""
    # 0 (left out): the server's own default
    max_connections: Annotated[int, BeforeValidator(positive_int),
                               WithJsonSchema({"type": "integer", "minimum": 1})] = 0
    """Connections per process; past it, new ones are accepted and closed at once. Left out: 10,000 (http) or
    50,000 (echo), lowered to what the open-file limit allows."""
    idle_timeout: Duration = 0.0
    """Close a connection silent this long. Left out: 60s (http) or 5m (echo)."""
    max_buffered: Annotated[int, BeforeValidator(fields.max_buffered), WithJsonSchema(
        {"type": "integer", "minimum": 1, "description": "MiB one server process buffers for its clients in all"})] = 0
    """MiB one server process holds for its clients in all (left out: 256). Past it, http answers 503 and closes;
    echo closes the connections longest without reading."""

    @model_validator(mode="after")
    def _fits_its_kind(self) -> ServerModel:
        if self.kind != "echo" and self.upper:
            raise FieldError("only an echo server can upper-case", at=("upper",))
        if self.kind != "echo" and self.ws:
            raise FieldError("only an echo server speaks WebSocket (kind: echo, ws: true)", at=("ws",))
        return self

    @property
    def spec(self) -> ServerSpec:
        return ServerSpec(name=self.name if self.name is not None else self.kind, kind=self.kind, host=self.listen[0],
                          port=self.listen[1], workers=self.workers, upper=self.upper,
                          max_connections=self.max_connections, idle_timeout=self.idle_timeout,
                          max_buffered=self.max_buffered, ws=self.ws)
