"""Helpers for tests of `loadtest run --web`: a real run in a subprocess, and calls to its API."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SITE = """\
name: web
duration: {duration}
workers: {workers}
servers: [{{name: site, kind: http, listen: "127.0.0.1:0", workers: 1}}]
targets:
  - {{name: open, url: "http://{{site}}/", rate: {rate}}}
  - {{name: closed, url: "http://{{site}}/delay/10", concurrency: 2}}
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class WebRun:
    """`loadtest run --web 127.0.0.1:0 ...` in a subprocess; `port` once its page is served."""

    def __init__(self, tmp_path: Path, *args: str, duration: str = "30s", rate: int = 20, workers: int = 2,
                 config: str | None = None) -> None:
        self.dir = tmp_path / "r"
        (tmp_path / "run.yaml").write_text(config or SITE.format(duration=duration, rate=rate, workers=workers))
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out",
                                      str(self.dir), "--quiet", "--web", "127.0.0.1:0", *args],
                                     cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        self.url = ""
        deadline = time.monotonic() + 30
        for line in self.proc.stderr:
            m = re.search(r"live page on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            assert time.monotonic() < deadline, line
        assert self.url, f"no page was served: {self.proc.stderr.read()}"
        self.port = int(re.search(r":(\d+)/", self.url).group(1))  # type: ignore[union-attr]

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        """One request; the status and the JSON answer (or the text, if it is not JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=headers or {})
        answer = conn.getresponse()
        text = answer.read()
        conn.close()
        try:
            return answer.status, json.loads(text)
        except ValueError:
            return answer.status, text.decode(errors="replace")

    def wait_for(self, check: Any, timeout: float = 15.0, path: str = "/api/run", **kw: Any) -> Any:
        """GET `path` until `check(document)` is true; that document."""
        deadline = time.monotonic() + timeout
        while True:
            status, doc = self.call("GET", path, **kw)
            if status == 200 and check(doc):
                return doc
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)

    def summary(self) -> dict[str, Any]:
        return json.loads((self.dir / "summary.json").read_text())


def target(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["targets"] if t["name"] == name)
