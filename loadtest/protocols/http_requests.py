"""The `requests` engine: slower, but follows redirects and keeps cookies.

One `requests.Session` per virtual user, so cookies, auth and connection
pooling behave as they would for one browser. Proxies come from the usual
environment variables. Use it for what the fast engine does not do.
"""

from __future__ import annotations

from itertools import cycle
from time import perf_counter_ns
from typing import Iterator

import requests
from gevent import GreenletExit

from ..config import HttpTarget
from ..stats import TargetRecorder
from . import Deadlines, RequestTimer

BODY_CHUNK = 256 * 1024


class RequestsSession:
    """One virtual user driving a target through a `requests.Session`."""

    def __init__(self, target: HttpTarget, urls: list[str], recorder: TargetRecorder,
                 url_cycle: Iterator[str] | None = None, deadlines: Deadlines | None = None) -> None:
        self.target = target
        self.recorder = recorder
        self.expect = frozenset(target.expect_status)
        self._urls = url_cycle if url_cycle is not None else cycle(urls)
        self._session = requests.Session()
        self._session.headers.update(dict(target.headers))
        self._session.verify = target.verify_tls
        # requests enforces its own timeouts; the timer only tells the worker a request is in flight
        self._timer = RequestTimer(deadlines) if deadlines is not None else None

    def exchange(self, scheduled_ns: int = 0) -> None:
        url = next(self._urls)
        rec = self.recorder
        t = self.target
        sending = perf_counter_ns()
        started = scheduled_ns or sending
        timer = self._timer
        if timer is not None:
            timer.hold()
        try:
            resp = self._session.request(t.method, url, data=t.body or None, timeout=t.timeout,
                                         allow_redirects=True, stream=True)
            body = 0
            for chunk in resp.iter_content(BODY_CHUNK):  # counted, never kept whole
                body += len(chunk)
            resp.close()
        except GreenletExit:
            rec.failure("cancelled", "the run stopped while this request was in flight", None)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is counted, none escapes
            kind, message = request_failure(e, t.timeout)
            rec.failure(kind, message, perf_counter_ns() - started)
            return
        finally:
            if timer is not None:
                timer.stop()
        ended = perf_counter_ns()
        latency = ended - started
        if scheduled_ns:  # open model: also what a closed-loop tool would have measured
            rec.uncorrected.record(ended - sending)
        sent = len(t.body)
        status = resp.status_code
        if (status in self.expect) if self.expect else (200 <= status < 400):
            rec.success(latency, body, sent, body)
        else:
            rec.failure("status", f"HTTP {status}", latency, body, sent, body)

    def close(self) -> None:
        self._session.close()
        if self._timer is not None:
            self._timer.close()


def request_failure(e: BaseException, timeout: float) -> tuple[str, str]:
    """Map a `requests` exception to the failure kinds the fast engine uses."""
    text = str(e)
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return "connect_timeout", f"no connection within {timeout:g} s"
    if isinstance(e, requests.exceptions.ReadTimeout):
        return "read_timeout", f"no complete response within {timeout:g} s"
    if isinstance(e, requests.exceptions.SSLError):
        return "tls", f"TLS error: {text[:200]}"
    if isinstance(e, requests.exceptions.ConnectionError):
        if "Connection refused" in text:
            return "refused", "connection refused"
        if "reset" in text.lower():
            return "reset", "connection reset"
        if "RemoteDisconnected" in text or "closed" in text.lower():
            return "closed", "the server closed the connection before the response ended"
        return "error", f"connection error: {text[:200]}"
    if isinstance(e, requests.exceptions.TooManyRedirects):
        return "redirects", "too many redirects"
    if isinstance(e, requests.exceptions.RequestException):
        return "protocol", f"bad response: {text[:200]}"
    return "error", f"{type(e).__name__}: {text[:200]}"
