"""What the embedded HTTP server answers: its routes, their replies, and response heads.

Pure: no sockets, no event loop; `http.py` parses requests and sends what
`route()` replies (the routes are listed there). Deterministic routes give the
same bytes every time, so the server can cache a whole response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from http import HTTPStatus

from loadtest.servers import sites

MAX_BYTES = 100 * 1024 * 1024
MAX_DELAY_MS = 60_000
CACHE_MAX_RESPONSE = 256 * 1024  # larger responses are built per request from the pattern
ECHO_PATHS = (b"/echo", b"/echo/")  # the routes that send the request body back
BODY_PATHS = (*ECHO_PATHS, b"/login")  # the only routes that read the request body
MAX_LOGIN_BODY = 4096  # a /login body longer than this is refused (400): it is a user name and a password
# The key /login signs its tokens with: fixed, so that every server process (and every run) accepts the
# tokens of the others. A demo credential, not a secret.
TOKEN_KEY = b"loadtest-embedded-server"
# The routes the server counts requests of, each its own slot (`route_slot`); "other" is every 404.
ROUTE_NAMES = ("/", "/bytes", "/delay", "/stall", "/status", "/echo", "/site", "/login", "/me", "other")
_ROUTE_SLOTS = {name[1:].encode(): slot for slot, name in enumerate(ROUTE_NAMES) if name != "other"}
JSON = b"application/json"

# Connection modes: what a response says about the connection. Index = mode.
KEEP_ALIVE_11, KEEP_ALIVE_10, CLOSE = 0, 1, 2
_MODE_HEADERS = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")
HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"
_NO_BODY = (204, 205, 304)  # RFC 9110 15.3.5, 15.3.6, 15.4.5
_NO_LENGTH = (204, 304)  # 205 says Content-Length: 0 so a keep-alive client knows it ended (RFC 9112 6.3)
_CLASS_REASONS = {2: "Success", 3: "Redirection", 4: "Client Error", 5: "Server Error"}


def reason(code: int) -> str:
    """The reason phrase of status `code` (its class's for a code HTTP does not name)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return _CLASS_REASONS.get(code // 100, "Unknown")


_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode()) for code in range(100, 600)}


def response_head(status: int, content_type: bytes, length: int, mode: int) -> bytes:
    """The status line and headers of a response with a body of `length` bytes."""
    if status in _NO_LENGTH:  # no Content-Length either (RFC 9110 8.6)
        fields = b""
    else:
        fields = b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, length)
    return b"%sServer: loadtest\r\n%s%s\r\n" % (_STATUS_LINES[status], fields, _MODE_HEADERS[mode])


class Reply:
    """What a route answers: status, body and a delay.

    The body is bytes, a length of pattern bytes (an int), or a list of chunks
    (an echoed request body, sent as it arrived rather than copied into one).
    """

    __slots__ = ("body", "cacheable", "content_type", "delay", "length", "status")

    def __init__(self, status: int, body: bytes | int | list[bytes], content_type: bytes = TEXT,
                 delay: float = 0.0, cacheable: bool = True) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        if isinstance(body, int):
            self.length = body
        elif isinstance(body, list):
            self.length = sum(map(len, body))
        else:
            self.length = len(body)
        self.delay = delay
        self.cacheable = cacheable


def route_slot(path: bytes) -> int:
    """The index in `ROUTE_NAMES` of the route that answers `path` (query string removed): cheap, for counting."""
    return _ROUTE_SLOTS.get(path[1:].partition(b"/")[0], len(ROUTE_NAMES) - 1)


def login_token(user: str) -> str:
    """The token /login gives `user`: the user's name and a signature of it, so any server process can check it."""
    name = base64.urlsafe_b64encode(user.encode()).rstrip(b"=").decode()
    mac = hmac.new(TOKEN_KEY, user.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{name}.{mac}"


def token_user(token: bytes) -> str | None:
    """The user a /login token names, or None if it is not one /login gave."""
    name, _, mac = token.partition(b".")
    try:
        user = base64.urlsafe_b64decode(name + b"=" * (-len(name) % 4)).decode()
    except ValueError:  # bad base64 or bad UTF-8
        return None
    good = hmac.new(TOKEN_KEY, user.encode(), hashlib.sha256).hexdigest()[:32].encode()
    return user if hmac.compare_digest(mac, good) else None


def _login(body: list[bytes]) -> Reply:
    """POST /login: a JSON body {"user": "...", "password": "..."} gets 200 {"token": "..."}."""
    data = b"".join(body)
    try:
        fields = json.loads(data) if len(data) <= MAX_LOGIN_BODY else None
    except ValueError:
        fields = None
    user = fields.get("user") if isinstance(fields, dict) else None
    if not isinstance(user, str) or not user or not isinstance(fields.get("password"), str):  # type: ignore[union-attr]
        return Reply(400, b'{"error": "send a JSON body {\\"user\\": \\"...\\", \\"password\\": \\"...\\"}"}\n',
                     JSON, cacheable=False)
    return Reply(200, json.dumps({"token": login_token(user), "user": user}).encode() + b"\n", JSON, cacheable=False)


def _me(authorization: bytes) -> Reply:
    """GET /me: the user a valid `Authorization: Bearer <token>` names, else 401."""
    scheme, _, token = authorization.strip().partition(b" ")
    user = token_user(token.strip()) if scheme.lower() == b"bearer" else None
    if user is None:
        return Reply(401, b'{"error": "send Authorization: Bearer <token from /login>"}\n', JSON, cacheable=False)
    return Reply(200, json.dumps({"user": user}).encode() + b"\n", JSON, cacheable=False)


def _number(text: bytes) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 10 else None


def _bad(why: str) -> Reply:
    return Reply(400, why.encode() + b"\n")


def route(path: bytes, body: list[bytes], authorization: bytes = b"") -> Reply:
    """The reply to a request for `path` (query string removed) carrying `body` (its chunks; only /echo and /login
    read it) and an `Authorization` header (only /me reads it)."""
    if path == b"/":
        return Reply(200, sites.INDEX_PAGE, HTML)
    kind, _, arg = path[1:].partition(b"/")
    if kind == b"echo" and not arg:  # ECHO_PATHS
        return Reply(200, body, OCTETS, cacheable=False)
    if kind == b"login" and not arg:
        return _login(body)
    if kind == b"me" and not arg:
        return _me(authorization)
    n = _number(arg)
    if kind == b"bytes":
        if n is None or n > MAX_BYTES:
            return _bad(f"/bytes/N: N must be a whole number from 0 to {MAX_BYTES}")
        return Reply(200, n if n > CACHE_MAX_RESPONSE else sites.pattern()[:n], OCTETS)
    if kind == b"delay":
        if n is None or n > MAX_DELAY_MS:
            return _bad(f"/delay/MS: MS must be a whole number from 0 to {MAX_DELAY_MS}")
        return Reply(200, b"delayed %d ms\n" % n, delay=n / 1000, cacheable=False)
    if kind == b"stall":
        period, _, stall = arg.partition(b"/")
        p, st = _number(period), _number(stall)
        if p is None or st is None or not 0 < p <= MAX_DELAY_MS or st > p:
            return _bad(f"/stall/P/S: P must be a whole number from 1 to {MAX_DELAY_MS} and S at most P")
        phase = (time.time() * 1000.0) % p  # the wall clock, so every server process stalls together
        return Reply(200, b"ok\n", delay=(st - phase) / 1000.0 if phase < st else 0.0, cacheable=False)
    if kind == b"status":
        # 1xx is excluded: it is an interim response, and clients would wait for the final one.
        if n is None or not 200 <= n <= 599:
            return _bad("/status/CODE: CODE must be a whole number from 200 to 599")
        return Reply(n, b"" if n in _NO_BODY else b"%d %s\n" % (n, reason(n).encode()))
    if kind == b"site" and n is not None and n < sites.SITE_PAGES:
        return Reply(200, sites.site_page(n), HTML)
    return Reply(404, b"not found\n")
