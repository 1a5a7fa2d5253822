"""The one-line form: `loadtest run http://127.0.0.1:8080/ -c 50 -d 10s`, as wrk or hey take it.

The options become the same document a YAML config file would hold (one target, no servers) and go
through `parse_config`, so the run gets the same validated `RunConfig`, the same checks and the same
reports as from a file. A mistake is named by the option that caused it (`-c/--concurrency: ...`),
not by the config field it became.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from loadtest.model.config import RunConfig

# The config loader (and the stats core under it) is imported on use: the command line reads this
# module's defaults for its help text, and `loadtest --help` should not wait for them.

DEFAULT_CONCURRENCY = 10  # virtual users when neither -c nor --rate is given (wrk's default connections)
DEFAULT_DURATION = "10s"  # when neither --duration nor --requests is given (wrk's default)
BODY_METHOD = "POST"  # --body without -m sends a POST, as curl -d does
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The option each config field came from, to name it in an error.
_OPTION_OF = {"url": "URL", "concurrency": "-c/--concurrency", "rate": "--rate", "method": "-m/--method",
              "headers": "-H/--header", "body": "--body", "timeout": "--timeout", "duration": "--duration",
              "requests": "-n/--requests", "name": "--name"}
_FIELD = re.compile(r"^(?:targets\[0\]\.)?(?P<field>[a-z_]+)(?P<rest>[.:\[].*)$", re.S)


# host:port[/path] with no scheme: 127.0.0.1:8080, [::1]:80/x, localhost:8080, example.com:80; an IP address or
# localhost may leave the port out (a host name alone could be a file's name: sites.yaml)
_BARE_URL = re.compile(r"^(?:(?:localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
                       r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*:\d{1,5})(?:/\S*)?$", re.ASCII)


def bare_url_problem(text: str) -> str:
    """What to say of a CONFIG that is no file but reads as a URL without its scheme; "" if it does not."""
    if not _BARE_URL.match(text) or os.path.exists(text):
        return ""
    return f"{text}: looks like a URL without http:// (loadtest run http://{text})"


def is_url(text: str) -> bool:
    """True if `text` is a URL (``scheme://...``) rather than a config file's path."""
    return bool(_SCHEME.match(text))


@dataclass(frozen=True)
class OneLine:
    """The one-line form's options, as typed; None where not given."""

    url: str
    concurrency: str | None = None
    rate: str | None = None
    requests: str | None = None
    duration: str | None = None
    method: str | None = None
    headers: tuple[str, ...] = ()
    body: str | None = None
    timeout: str | None = None
    name: str | None = None

    def given(self) -> list[str]:
        """The options given that only the one-line form takes, by their names on the command line."""
        fields = ("concurrency", "rate", "requests", "method", "headers", "body", "timeout", "name")
        return [_OPTION_OF[f] for f in fields if getattr(self, f) not in (None, ())]


def run_name(url: str) -> str:
    """A run's name from its URL's host and port (the report folder becomes `127.0.0.1-8080-<time>`)."""
    try:
        netloc = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        netloc = ""
    return netloc or "run"


def one_line_document(options: OneLine) -> dict[str, Any]:
    """The config document the options stand for, as a YAML file would give it to `parse_config`."""
    from loadtest.model.config import ConfigError

    if options.concurrency is not None and options.rate is not None:
        raise ConfigError("-c/--concurrency and --rate: give one, -c for the closed model (virtual users) or "
                          "--rate for the open model (arrivals per second), not both")
    target: dict[str, Any] = {"url": options.url}
    if options.rate is not None:
        target["rate"] = _number(options.rate)
    else:
        target["concurrency"] = _number(options.concurrency) if options.concurrency is not None \
            else DEFAULT_CONCURRENCY
    if options.method is not None:
        target["method"] = options.method
    elif options.body is not None:
        target["method"] = BODY_METHOD
    if options.headers:
        target["headers"] = _headers(options.headers)
    if options.body is not None:
        target["body"] = options.body
    if options.timeout is not None:
        target["timeout"] = options.timeout
    if options.name is not None:  # names the target's rows, so compare pairs runs of different URLs by it
        target["name"] = options.name
    document: dict[str, Any] = {"name": options.name if options.name is not None else run_name(options.url),
                                "targets": [target]}
    if options.requests is not None:
        document["requests"] = _number(options.requests)
    if options.duration is not None or options.requests is None:
        document["duration"] = options.duration if options.duration is not None else DEFAULT_DURATION
    return document


def one_line_config(options: OneLine) -> RunConfig:
    """The validated config of a one-line run; ConfigError names the option at fault."""
    from loadtest.model.config import ConfigError, parse_config

    document = one_line_document(options)
    try:
        return parse_config(document, default_name=document["name"])
    except ConfigError as e:
        raise ConfigError(_reworded(str(e))) from None


def _reworded(message: str) -> str:
    """`targets[0].concurrency: ...` as `-c/--concurrency: ...`; other messages unchanged."""
    m = _FIELD.match(message)
    if m is None or m.group("field") not in _OPTION_OF:
        return message
    rest = m.group("rest")
    if m.group("field") == "headers" and rest.startswith("."):  # headers.X-Name: ... names the header
        name, _, tail = rest[1:].partition(":")
        return f"-H/--header {name}:{tail}"
    return f"{_OPTION_OF[m.group('field')]}{rest}"


def _number(text: str) -> Any:
    """An integer or a number from the command line's text; the text itself if neither (the loader words it)."""
    if not text.isascii():  # int("１０") is 10: a full-width digit is not one the loader would take
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _headers(lines: tuple[str, ...]) -> dict[str, str]:
    from loadtest.model.config import ConfigError

    headers: dict[str, str] = {}
    seen: set[str] = set()
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise ConfigError(f"-H/--header: must be 'Name: value', got {line!r}")
        if name.lower() in seen:
            raise ConfigError(f"-H/--header: {name!r} is given twice; give each header once")
        seen.add(name.lower())
        headers[name] = value.strip()
    return headers
