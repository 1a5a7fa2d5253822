"""Flows end to end: real runs of `loadtest run` (worker processes, the embedded server, raw-socket servers)."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from tests.conftest import RawServer, read_request

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


def rows(out: Path, name: str) -> list[dict[str, str]]:
    with open(out / name, newline="") as f:
        return list(csv.DictReader(f))


def test_the_shop_config_runs_and_the_server_counts_each_step(tmp_path: Path) -> None:
    out = tmp_path / "shop"
    done = cli("run", str(ROOT / "configs" / "shop.yaml"), "--duration", "1s", "--workers", "2", "--out", str(out),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    stats = {r["Name"]: r for r in rows(out, "stats.csv")}
    requests = {name: int(r["Request Count"]) for name, r in stats.items()}
    assert stats["shop"]["Type"] == "FLOW" and stats["shop/login"]["Type"] == "POST"
    assert all(int(r["Failure Count"]) == 0 for r in stats.values()), stats
    assert requests["shop/login"] > 20 and requests["shop-py/login"] > 20
    served = summary(out)["servers"][0]["served"]
    # Exact: the server's own count per route is the report's per step (YAML and Python flows together).
    assert served["/login"] == requests["shop/login"] + requests["shop-py/login"]
    assert served["/me"] == requests["shop/me"] + requests["shop-py/me"]
    assert served["/site"] == requests["shop/page"] + requests["shop-py/page"]
    # Aggregated adds up requests sent, not the flows' passes
    assert requests["Aggregated"] == served["requests"] == sum(
        n for name, n in requests.items() if "/" in name)
    # each pass sends login, me and three pages: the flow's own row counts passes
    for flow in ("shop", "shop-py"):
        assert requests[f"{flow}/login"] - requests[flow] <= 40  # passes the run's end cut short: at most one a user
        assert requests[f"{flow}/page"] >= 3 * requests[flow]
    assert float(stats["shop"]["Min Response Time"]) >= 50.0  # the journey, with its 50 ms think, in one row


class HoldingServer:
    """A keep-alive HTTP server that holds each /u/<row> request 20 ms and notes any row requested twice at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.overlaps = 0
        self.server = RawServer(self.handle)

    def handle(self, conn: socket.socket) -> None:
        while True:
            head = read_request(conn)
            if not head:
                return
            row = head.split(b" ", 2)[1].decode().rsplit("/", 1)[-1]
            with self.lock:
                self.active[row] += 1
                self.seen[row] += 1
                if self.active[row] > 1:
                    self.overlaps += 1
            time.sleep(0.02)
            with self.lock:
                self.active[row] -= 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def run_rows(tmp_path: Path, rows_count: int, users: int, mode: str,
             where: tuple[str, ...] = ("--workers", "2")) -> tuple[HoldingServer, subprocess.CompletedProcess[str]]:
    server = HoldingServer()
    (tmp_path / "rows.csv").write_text("row\n" + "".join(f"r{i}\n" for i in range(rows_count)))
    (tmp_path / "rows.yaml").write_text(f"""
duration: 1s
targets:
  - name: rows
    concurrency: {users}
    data: rows.csv
    data_mode: {mode}
    flow:
      - {{name: hold, url: "http://127.0.0.1:{server.server.port}/u/${{data.row}}"}}
""")
    try:
        done = cli("run", str(tmp_path / "rows.yaml"), *where, "--out", str(tmp_path / f"out-{mode}"), cwd=tmp_path)
    finally:
        server.server.close()
    return server, done


def test_unique_rows_are_never_held_by_two_users_at_once_over_two_workers(tmp_path: Path) -> None:
    server, done = run_rows(tmp_path, rows_count=6, users=6, mode="unique")
    assert done.returncode == 0, done.stderr
    assert server.overlaps == 0
    assert set(server.seen) == {f"r{i}" for i in range(6)}  # every row dealt, in turn
    assert min(server.seen.values()) >= 5
    # the same test catches sharing: 6 users cycling over 2 rows hold rows together
    server, done = run_rows(tmp_path, rows_count=2, users=6, mode="cycle")
    assert done.returncode == 0, done.stderr
    assert server.overlaps > 0 and set(server.seen) == {"r0", "r1"}


def test_too_few_rows_for_unique_users_is_bad_input(tmp_path: Path) -> None:
    server, done = run_rows(tmp_path, rows_count=3, users=4, mode="unique")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "data_mode unique" in done.stderr and "Traceback" not in done.stderr
    assert sum(server.seen.values()) == 0  # refused before any load


def write_flow(tmp_path: Path, script: str, function: str = "journey") -> Path:
    (tmp_path / "journeys.py").write_text(script)
    config = tmp_path / "py.yaml"
    config.write_text(f"""
duration: 1s
servers:
  - {{name: site, kind: http, listen: "127.0.0.1:0", workers: 1}}
targets:
  - name: journey
    concurrency: 2
    url: http://{{site}}
    script: journeys.py:{function}
""")
    return config


RAISES = '''
def journey(user):
    user.get("/", name="home")
    if user.iteration % 2:
        raise ValueError(f"odd pass {user.iteration}")
    user.get("/site/1", name="page")
'''


def test_an_exception_in_a_script_is_a_script_failure_and_the_user_goes_on(tmp_path: Path) -> None:
    config = write_flow(tmp_path, RAISES)
    out = tmp_path / "out"
    done = cli("run", str(config), "--workers", "1", "--out", str(out), cwd=tmp_path)
    # No request failed, but passes did: the default check (no thresholds set) fails the run on them
    assert done.returncode == 1, done.stderr
    stats = {r["Name"]: r for r in rows(out, "stats.csv")}
    passes, failed = int(stats["journey"]["Request Count"]), int(stats["journey"]["Failure Count"])
    result = summary(out)
    assert result["exit_status"] == 1 and result["aggregated"]["failures"] == 0
    assert result["outcome"] == f"FAILED: {failed:,} of {passes:,} passes of journey failed: script"
    defaults = {c["threshold"]: c for c in result["thresholds"]}
    assert defaults["failed == 0"]["passed"] and defaults["failed == 0"]["default"]
    assert not defaults["journey: failed == 0"]["passed"] and defaults["journey: failed == 0"]["measured"] == failed
    assert "threshold FAIL: journey: failed == 0" in done.stdout and "no failed passes" in done.stdout
    homes, pages = int(stats["journey/home"]["Request Count"]), int(stats["journey/page"]["Request Count"])
    assert passes > 10 and homes >= passes  # two users made many passes: none of them died
    assert abs(failed - pages) <= 2 and failed > 3  # every odd pass failed, every even one reached the page
    failures = [r for r in rows(out, "failures.csv") if r["Kind"] == "script"]
    assert len(failures) == 1 and failures[0]["Name"] == "journey"
    assert failures[0]["Error"].startswith("ValueError: odd pass ") and "journeys.py line 5" in failures[0]["Error"]
    assert int(stats["journey/home"]["Failure Count"]) == 0


def bad_input(tmp_path: Path, make: Callable[[Path], Path]) -> str:
    out = tmp_path / "never"
    done = cli("run", str(make(tmp_path)), "--workers", "1", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()  # refused before the load started
    return done.stderr


def test_a_script_that_cannot_be_used_is_one_sentence_before_the_load(tmp_path: Path) -> None:
    message = bad_input(tmp_path, lambda p: write_flow(p, "import no_such_module_anywhere\n"))
    assert "targets[0].script:" in message and "failed to import: ModuleNotFoundError" in message
    message = bad_input(tmp_path, lambda p: write_flow(p, "def other(user):\n    pass\n"))
    assert "has no function 'journey'" in message
    message = bad_input(tmp_path, lambda p: write_flow(p, "def journey(user)\n"))
    assert "journeys.py line 1" in message


def test_an_unknown_variable_is_bad_input_before_the_run(tmp_path: Path) -> None:
    def config(p: Path) -> Path:
        path = p / "unknown.yaml"
        path.write_text("""
duration: 1s
targets:
  - name: shop
    concurrency: 1
    flow:
      - {name: me, url: "http://127.0.0.1:9/me", headers: {Authorization: "Bearer ${token}"}}
      - {name: login, url: "http://127.0.0.1:9/login", capture: {token: "json:token"}}
""")
        return path
    message = bad_input(tmp_path, config)
    assert message.startswith("loadtest: targets[0].flow[0].headers.Authorization: ${token} is not captured by an "
                              "earlier step")


def test_an_open_model_flow_starts_passes_on_schedule(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("""
duration: 1s
servers:
  - {name: site, kind: http, listen: "127.0.0.1:0", workers: 1}
targets:
  - name: shop
    rate: 100
    max_concurrency: 20
    flow:
      - {name: login, method: POST, url: "http://{site}/login", json: {user: "u${user}", password: x},
         capture: {token: "json:token", type: "header:Content-Type"}}
      - {name: me, url: "http://{site}/me", headers: {Authorization: "Bearer ${token}", X-Type: "${type}"},
         expect: {status: [200], body_contains: '"user"'}}
""")
    out = tmp_path / "out"
    done = cli("run", str(config), "--workers", "1", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stats = [(r["Type"], r["Name"], int(r["Request Count"]), int(r["Failure Count"])) for r in rows(out, "stats.csv")]
    passes = stats[0][2]
    assert stats[0][:2] == ("FLOW", "shop") and 80 <= passes <= 101, stats
    assert stats[1:3] == [("POST", "shop/login", passes, 0), ("GET", "shop/me", passes, 0)]
    assert ("LATENESS", "shop") == stats[3][:2] and stats[3][2] >= passes
    # UNCORRECTED: each pass from when it actually began, not from its schedule; never longer than the corrected
    assert stats[4] == ("UNCORRECTED", "shop", passes, 0), stats
    by_type = {(r["Type"], r["Name"]): r for r in rows(out, "stats.csv")}
    assert float(by_type[("UNCORRECTED", "shop")]["Max Response Time"]) <= \
        float(by_type[("FLOW", "shop")]["Max Response Time"])
    open_model = summary(out)["targets"][0]["open_model"]
    assert open_model["rate"] == 100 and open_model["started"] == stats[3][2] and open_model["dropped"] == 0
    assert open_model["uncorrected_latency_ms"]["p50"] > 0
    served = summary(out)["servers"][0]["served"]
    assert served["/login"] == served["/me"] == passes
