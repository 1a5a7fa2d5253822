"""Failure storms: a closed-model user whose connects fail, or whose flow passes fail, backs off.

Real runs: a closed port (every connect refused) and a script flow that fails every pass against the
embedded server. Without the back-off two users sent tens of thousands of requests a second at them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

BOUND_S = 0.2  # failure_backoff: in these runs, so the bound is reached within the run


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def run(tmp_path: Path, config: str) -> dict[str, Any]:
    path = tmp_path / "storm.yaml"
    path.write_text(config)
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(path), "--quiet", "--out",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr  # the failures still fail the run
    return json.loads((tmp_path / "run" / "summary.json").read_text())  # type: ignore[no-any-return]


def most_attempts(users: int, seconds: float, bound: float) -> int:
    """The most exchanges `users` can start in `seconds` waiting 10 ms, 20 ms, … up to `bound` after each."""
    count, waited, wait = 0, 0.0, 0.0
    while waited < seconds:
        count += 1
        wait = min(bound, wait * 2 if wait else 0.01)
        waited += wait
    return users * (count + 1)


def test_users_back_off_when_every_connect_is_refused(tmp_path: Path) -> None:
    summary = run(tmp_path, f"""
duration: 2s
workers: 1
failure_backoff: {BOUND_S * 1000:g}ms
targets: [{{name: dead, url: "http://127.0.0.1:{closed_port()}/", concurrency: 2}}]
""")
    (target,) = summary["targets"]
    requests = target["requests"]
    assert 2 <= requests <= most_attempts(2, 2.0, BOUND_S), requests  # 26 at most; it was ~30,000
    assert target["failures_by_kind"].get("refused", 0) >= requests - 2  # 2: cancelled as the run stopped
    waits = target["backoffs"]["waits"]
    assert requests - 2 <= waits <= requests  # each refused request was followed by a wait
    assert 1.0 <= target["backoffs"]["seconds"] <= 2 * 2.0 + 2 * BOUND_S
    assert summary["as_run"]["failure_backoff_s"] == BOUND_S


def test_failed_flow_passes_back_off_and_off_turns_it_off(tmp_path: Path) -> None:
    (tmp_path / "journeys.py").write_text('def journey(user):\n    user.get("/", name="home")\n'
                                          '    raise RuntimeError("boom")\n')
    config = """
duration: 1s
workers: 1
failure_backoff: {backoff}
servers: [{{name: site, kind: http, listen: "127.0.0.1:0", workers: 1}}]
targets: [{{name: journey, url: "http://{{site}}", script: journeys.py:journey, concurrency: 2}}]
"""
    summary = run(tmp_path, config.format(backoff=f"{BOUND_S * 1000:g}ms"))
    flow = summary["targets"][0]
    assert 2 <= flow["requests"] <= most_attempts(2, 1.0, BOUND_S), flow["requests"]
    assert flow["failures_by_kind"]["script"] >= flow["requests"] - 2
    assert flow["backoffs"]["waits"] >= flow["requests"] - 2
    assert summary["servers"][0]["served"]["requests"] == summary["targets"][1]["requests"]

    (tmp_path / "run").rename(tmp_path / "with")
    summary = run(tmp_path, config.format(backoff="off"))
    flow = summary["targets"][0]
    assert flow["requests"] > 20 * most_attempts(2, 1.0, BOUND_S)  # no back-off: passes as fast as they fail
    assert flow["backoffs"] == {"waits": 0, "seconds": 0.0}
