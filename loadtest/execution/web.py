"""The live web page and its JSON control API: `loadtest run ... --web HOST:PORT`.

Runs in the controller's process, on threads, with the standard library's
`http.server.ThreadingHTTPServer` (no gevent here). Two parts:

- `loadtest.outputs.live_page.LivePage`, an output: the figures the page
  and the API show, fed each merged second.
- `WebServer`, here, the HTTP side: the page (`/`, its script and style, served
  from the package with a strict Content-Security-Policy), the API, and the
  run's files once it has ended. The API posts to the control inbox
  (`loadtest.execution.control`) and never touches the run itself:

      GET  /api/run              {"state", "elapsed_s", "targets": [...], "aggregated": {...}, ...}
      POST /api/targets/NAME     {"users": N} or {"rate": R}: 404 unknown target, 400 a bad level
      POST /api/pause, /api/resume, /api/stop
      GET  /api/events           server-sent events: the /api/run document once a second
      GET  /api/series           each second's figures so far, for the charts
      GET  /files/NAME           the run's files, once it has ended

Off by default; loopback unless asked. On any other address every request
needs the token (`Authorization: Bearer TOKEN` or `?token=TOKEN`), else 401.
Nothing sent can crash or stall the run: request bodies are bounded, slow
clients time out, connections and event streams are capped, a cross-site
POST is refused (and, without a token, any request not addressed to a
loopback name), and the run only ever reads a published snapshot.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from loadtest.core.run_files import RUN_FILES
from loadtest.execution.control import ControlError, Inbox, Pause, Resume, SetLevel, Stop, level_command
from loadtest.model.config import ConfigError
from loadtest.outputs.live_page import LivePage

MAX_BODY_BYTES = 16 * 1024  # a request body larger than this is refused (413)
CLIENT_TIMEOUT_S = 10.0  # a client that sends or reads nothing for this long is dropped
MAX_CONNECTIONS = 64  # connections served at once; more are closed at once
MAX_EVENT_STREAMS = 16  # /api/events streams at once; more get 503
EVENT_INTERVAL_S = 1.0
STREAM_CHECK_S = 0.2  # an event stream looks this often whether its client has gone
WEB_LINGER_S = 60.0  # after the run, the page (and the files it links to) is served this long at most while open
MIN_TOKEN_CHARS = 8
TOKEN_BYTES = 18  # a generated token: 24 URL-safe characters
PAGE_FILES = {"/": ("live.html", "text/html; charset=utf-8"),
              "/live.js": ("live.js", "text/javascript; charset=utf-8"),
              "/live.css": ("live.css", "text/css; charset=utf-8")}
# The page loads its script and style from this server and nothing else: no inline script, no other origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"  # report.html's
FILE_TYPES = {".csv": "text/csv; charset=utf-8", ".json": "application/json", ".html": "text/html; charset=utf-8"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, where: str = "--web-token") -> str | None:
    """A token as given on the command line, checked: ConfigError for one too short or with spaces."""
    if token is None:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: must be at least {MIN_TOKEN_CHARS} printable characters without spaces")
    return token


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], web: WebServer, family: int) -> None:
        self.address_family = family
        self.web = web
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # too many connections: this one is closed at once
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer is not the run's problem, nor worth a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_S  # socket timeout: a slow sender or reader is dropped
    protocol_version = "HTTP/1.1"
    server_version = "loadtest"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- answers --------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: int, sentence: str) -> None:
        self._json(status, {"error": sentence})

    # -- dispatch -------------------------------------------------------------------------------

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.server.web.token
        if token is None:
            return True
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        elif query.get("token"):
            given = query["token"][0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        addressed = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        if self.server.web.token is None and not is_loopback(addressed):
            # Without a token only this machine may ask; a page whose name was pointed at 127.0.0.1 (DNS
            # rebinding) says its own name in Host.
            self._error(403, "this page answers only requests addressed to this machine (a loopback Host)")
            return
        if not self._authorized(query):
            self._error(401, "this page needs its token: add ?token=TOKEN to the address, or send "
                             "Authorization: Bearer TOKEN")
            return
        if method in ("GET", "HEAD"):
            self._get(path)
        elif method != "POST":
            self._error(405, f"{method} is not served here")
        else:
            self._post(path)

    def _get(self, path: str) -> None:
        web = self.server.web
        if path in PAGE_FILES:
            name, content_type = PAGE_FILES[path]
            self._send(200, web.page_file(name), content_type, {"Content-Security-Policy": PAGE_CSP})
        elif path == "/api/run":
            self._json(200, web.page.document())
        elif path == "/api/series":
            self._json(200, web.page.chart_series())
        elif path == "/api/events":
            self._events()
        elif path.startswith("/files/"):
            self._file(unquote(path[len("/files/"):]))
        elif path.startswith("/api/targets/") or path in ("/api/pause", "/api/resume", "/api/stop"):
            self._error(405, f"{path} takes POST")
        else:
            self._error(404, f"there is nothing at {path}")

    def _post(self, path: str) -> None:
        web = self.server.web
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._error(403, "a request from another site's page is refused")
            return
        body = self._body()
        if body is None:
            return
        try:
            if path.startswith("/api/targets/"):
                name = unquote(path[len("/api/targets/"):])
                try:
                    value = json.loads(body) if body.strip() else None
                except (ValueError, UnicodeDecodeError):
                    raise ControlError(400, 'the body is not JSON: send {"users": N} or {"rate": R}') from None
                command = web.level_command(name, value)
                web.inbox.post(command)
                key = "users" if command.users is not None else "rate"
                self._json(200, {"target": name, key: command.users if key == "users" else command.rate})
            elif path in ("/api/pause", "/api/resume", "/api/stop"):
                cls = {"/api/pause": Pause, "/api/resume": Resume, "/api/stop": Stop}[path]
                web.inbox.post(cls())
                self._json(200, {"ok": True, "posted": path.rsplit("/", 1)[1]})
            else:
                self._error(404, f"there is nothing at {path}")
        except ControlError as e:
            self._error(e.status, e.message)

    def _body(self) -> bytes | None:
        """The request body, at most MAX_BODY_BYTES; None (and the answer sent) if it cannot be read."""
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self._error(411, "send the body with a Content-Length")
            return None
        text = self.headers.get("Content-Length", "0") or "0"
        if not text.isdigit():
            self._error(400, f"Content-Length must be a whole number, got {text!r}")
            return None
        length = int(text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"the body must be at most {MAX_BODY_BYTES} bytes, got {length}")
            return None
        return self.rfile.read(length) if length else b""

    def _events(self) -> None:
        """Server-sent events: the /api/run document once a second (sooner after a new second), until the
        client goes away or the run's page is closed."""
        web = self.server.web
        if not web.streams.acquire(blocking=False):
            self._error(503, f"at most {MAX_EVENT_STREAMS} event streams are served at once")
            return
        web.watched(+1)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.close_connection = True
            version = -1
            while not web.closing.is_set():
                self.wfile.write(b"data: " + json.dumps(web.page.document()).encode() + b"\n\n")
                self.wfile.flush()
                due = time.monotonic() + EVENT_INTERVAL_S
                seen = version
                while version == seen and time.monotonic() < due and not web.closing.is_set():
                    if self._hung_up():
                        return
                    version = web.page.wait(version, min(STREAM_CHECK_S, max(0.0, due - time.monotonic())))
        except OSError:
            pass  # the client went away, or stopped reading for CLIENT_TIMEOUT_S
        finally:
            web.watched(-1)
            web.streams.release()

    def _hung_up(self) -> bool:
        """True once an event stream's client has closed its end (it sends nothing after its request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _file(self, name: str) -> None:
        run_dir = self.server.web.page.run_dir
        if run_dir is None:
            self._error(404, "the run's files are served once it has ended")
            return
        if name not in RUN_FILES or not (run_dir / name).is_file():
            self._error(404, f"the run has no file {name!r}")
            return
        data = (run_dir / name).read_bytes()
        self._send(200, data, FILE_TYPES.get(Path(name).suffix, "application/octet-stream"),
                   {"Content-Security-Policy": REPORT_CSP})

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")


class WebServer:
    """The live page's HTTP server, on a thread of the controller's process."""

    def __init__(self, page: LivePage, inbox: Inbox, token: str | None = None) -> None:
        self.page, self.inbox, self.token = page, inbox, token
        self.streams = threading.BoundedSemaphore(MAX_EVENT_STREAMS)
        self.watching = 0  # event streams open now
        self._watching_lock = threading.Lock()
        self.closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._files: dict[str, bytes] = {}
        self.url = ""

    def watched(self, change: int) -> None:
        with self._watching_lock:
            self.watching += change

    def level_command(self, name: str, body: Any) -> SetLevel:
        return level_command(self.page.config, name, body)

    def page_file(self, name: str) -> bytes:
        if name not in self._files:
            self._files[name] = (resources.files("loadtest.outputs") / "webpage" / name).read_bytes()
        return self._files[name]

    def start(self, host: str, port: int, where: str = "--web") -> str:
        """Listen on host:port (0: a free port); the page's address. A non-loopback address needs a token:
        one is made if none was given. ConfigError if it cannot listen."""
        if not is_loopback(host) and self.token is None:
            self.token = secrets.token_urlsafe(TOKEN_BYTES)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), self, family)
        except OSError as e:
            raise ConfigError(f"{where}: cannot listen on {host}:{port} ({e.strerror or e})") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="loadtest-web", daemon=True)
        self._thread.start()
        bound = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/" + (f"?token={self.token}" if self.token else "")
        return self.url

    def linger(self, seconds: float, released: threading.Event) -> None:
        """After the run: keep serving while a page watches (its event stream is open), at most `seconds`,
        so that it can follow the links to the report; `released` (Ctrl-C) ends it at once."""
        deadline = time.monotonic() + seconds
        while self.watching and time.monotonic() < deadline and not released.is_set():
            released.wait(0.2)

    def stop(self) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
