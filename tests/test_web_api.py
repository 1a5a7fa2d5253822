"""The JSON control API of `loadtest run --web` (loadtest.web, loadtest.control), against a real run.

One run serves the whole module (its tests run in order): every bad input is refused with its status
and one sentence while the run goes on untouched, then a level change, a pause and a resume are
followed by the workers, and a stop from the API ends the run as its duration would.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from loadtest.model.config import parse_config
from loadtest.execution.control import MAX_USERS, ControlError, Inbox, Pause, SetLevel
from loadtest.execution.web import MAX_BODY_BYTES, MAX_EVENT_STREAMS, WebServer
from loadtest.outputs.live_page import LivePage

from .web_runs import SITE, WebRun, env, target

TOKEN = "secret-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebRun]:
    run = WebRun(tmp_path_factory.mktemp("web"), "--web-token", TOKEN, duration="40s", rate=20)
    run.wait_for(lambda d: d["state"] == "running" and d["elapsed_s"] >= 1, headers=AUTH)
    yield run
    run.kill()


def api(web: WebRun, method: str, path: str, body: Any = None, raw: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return web.call(method, path, body, {**AUTH, **(headers or {})}, raw)


def test_the_run_document_has_every_field_the_page_and_scripts_read(web: WebRun) -> None:
    status, doc = api(web, "GET", "/api/run")
    assert status == 200
    assert doc["state"] == "running" and doc["elapsed_s"] >= 1
    assert [t["name"] for t in doc["targets"]] == ["open", "closed"]
    open_, closed = target(doc, "open"), target(doc, "closed")
    assert open_["model"] == "open" and open_["rate"] == 20 and "users" not in open_
    assert closed["model"] == "closed" and closed["users"] == 2 and "rate" not in closed
    for t in (open_, closed, doc["aggregated"]):
        assert set(t) >= {"requests", "failures", "rps", "p50_ms", "p99_ms"}
        assert t["requests"] > 0 and t["failures"] == 0 and t["p50_ms"] > 0 and t["p99_ms"] >= t["p50_ms"]


@pytest.mark.parametrize("path, body, status, sentence", [
    ("/api/targets/nope", {"rate": 5}, 404, "there is no target named 'nope' (targets: open, closed)"),
    ("/api/targets/open", {"users": 3}, 400, "target open is an open-model target: set its rate, not users"),
    ("/api/targets/closed", {"rate": 3}, 400, "target closed is a closed-model target: set its users, not rate"),
    ("/api/targets/closed", {"users": -1}, 400, "users must not be negative, got -1"),
    ("/api/targets/open", {"rate": -0.5}, 400, "rate must not be negative, got -0.5"),
    ("/api/targets/closed", {"users": "many"}, 400, "users must be a number, got 'many'"),
    ("/api/targets/open", {"rate": None}, 400, "rate must be a number, got None"),
    ("/api/targets/open", {"rate": True}, 400, "rate must be a number, got True"),
    ("/api/targets/closed", {"users": 2.5}, 400, "users must be a whole number, got 2.5"),
    ("/api/targets/closed", {"users": MAX_USERS + 1}, 400, f"users must be at most {MAX_USERS}, got {MAX_USERS + 1}"),
    ("/api/targets/open", {"rate": 1e300}, 400, "rate must be at most 1e+06 per second, got 1e+300"),
    ("/api/targets/open", {}, 400, "target open takes {\"rate\": R}, got keys []"),
    ("/api/targets/closed", {"users": 1, "rate": 1}, 400, "target closed takes {\"users\": N}, got keys ['rate', 'users']"),
    ("/api/targets/closed", [3], 400, 'the body must be a JSON object: {"users": N} or {"rate": R}'),
])
def test_a_bad_level_is_refused_with_its_status_and_one_sentence(web: WebRun, path: str, body: Any, status: int,
                                                                  sentence: str) -> None:
    assert api(web, "POST", path, body) == (status, {"error": sentence})


@pytest.mark.parametrize("raw, sentence", [
    (b"{users", 'the body is not JSON: send {"users": N} or {"rate": R}'),
    (b"", 'the body must be a JSON object: {"users": N} or {"rate": R}'),
    (b'{"users": NaN}', "users must be a finite number, got nan"),
    (b'{"rate": Infinity}', "rate must be a finite number, got inf"),
    (b"\xff\xfe", 'the body is not JSON: send {"users": N} or {"rate": R}'),
])
def test_a_body_that_is_not_a_level_is_refused(web: WebRun, raw: bytes, sentence: str) -> None:
    path = "/api/targets/closed" if b"users" in raw else "/api/targets/open"
    assert api(web, "POST", path, raw=raw) == (400, {"error": sentence})


def test_requests_without_the_token_get_401_and_other_sites_pages_403(web: WebRun) -> None:
    for method, path in (("GET", "/api/run"), ("GET", "/"), ("POST", "/api/stop"), ("GET", "/api/events")):
        status, doc = web.call(method, path)
        assert status == 401, (method, path)
        assert "token" in doc["error"]
    assert web.call("GET", "/api/run", headers={"Authorization": "Bearer wrong-token-1"})[0] == 401
    assert web.call("GET", f"/api/run?token={TOKEN}")[0] == 200
    status, doc = api(web, "POST", "/api/stop", headers={"Origin": "http://evil.example"})
    assert (status, doc) == (403, {"error": "a request from another site's page is refused"})
    assert api(web, "GET", "/api/run")[1]["state"] == "running"


def test_unknown_paths_wrong_methods_and_huge_bodies(web: WebRun) -> None:
    assert api(web, "GET", "/api/nothing") == (404, {"error": "there is nothing at /api/nothing"})
    assert api(web, "GET", "/api/stop") == (405, {"error": "/api/stop takes POST"})
    assert api(web, "DELETE", "/api/run") == (405, {"error": "DELETE is not served here"})
    assert api(web, "GET", "/files/summary.json") == (404, {"error": "the run's files are served once it has ended"})
    status, doc = api(web, "POST", "/api/targets/open", raw=b"x" * (MAX_BODY_BYTES + 1))
    assert (status, doc) == (413, {"error": f"the body must be at most {MAX_BODY_BYTES} bytes, got {MAX_BODY_BYTES + 1}"})


def test_slow_or_silent_clients_and_too_many_streams_do_not_stall_anything(web: WebRun) -> None:
    # A client that sends half a request and waits, and one that claims a body it never sends.
    idle = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(4)]
    idle[0].sendall(b"GET /api/run HTTP/1.1\r\nHost: x\r\n")
    idle[1].sendall(b"POST /api/targets/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    streams = []
    for _ in range(MAX_EVENT_STREAMS):  # every stream the server allows, each read by no one
        s = socket.create_connection(("127.0.0.1", web.port))
        s.sendall(f"GET /api/events?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams.append(s)
    time.sleep(0.5)
    started = time.monotonic()
    status, doc = api(web, "GET", "/api/events")
    assert (status, doc) == (503, {"error": f"at most {MAX_EVENT_STREAMS} event streams are served at once"})
    status, doc = api(web, "GET", "/api/run")
    assert status == 200 and doc["state"] == "running"
    assert time.monotonic() - started < 2
    for s in idle + streams:
        s.close()
    time.sleep(0.5)  # each stream's thread sees its client gone within STREAM_CHECK_S


def test_the_event_stream_sends_the_run_document_each_second(web: WebRun) -> None:
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=10)
    sock.sendall(f"GET /api/events?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    started = time.monotonic()
    while data.count(b"\n\ndata: ") < 2:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    sock.close()
    assert time.monotonic() - started < 4
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"text/event-stream" in head
    events = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1]["elapsed_s"] > events[0]["elapsed_s"] or len(events) >= 2
    assert events[0]["state"] == "running" and "targets" in events[0]


def test_a_level_change_pause_and_resume_are_followed_by_every_worker(web: WebRun) -> None:
    assert api(web, "POST", "/api/targets/open", {"rate": 200}) == (200, {"target": "open", "rate": 200.0})
    assert api(web, "POST", "/api/targets/closed", {"users": 4}) == (200, {"target": "closed", "users": 4})
    doc = web.wait_for(lambda d: (d["point"] or {}).get("targets", {}).get("open", {}).get("rps", 0) > 150,
                       headers=AUTH, timeout=5)
    assert target(doc, "open")["rate"] == 200 and target(doc, "closed")["users"] == 4
    assert [(c["target"], c["unit"], c["old"], c["new"], c["origin"]) for c in doc["level_changes"]] == [
        ("open", "rate", 20.0, 200.0, "api"), ("closed", "users", 2.0, 4.0, "api")]
    assert api(web, "POST", "/api/pause")[0] == 200
    web.wait_for(lambda d: d["state"] == "paused", headers=AUTH, timeout=2)
    time.sleep(2.8)  # the last merged second now began after the pause reached every worker (<0.5 s)
    quiet = api(web, "GET", "/api/run")[1]
    assert quiet["point"]["aggregated"]["rps"] == 0, quiet["point"]
    time.sleep(1.2)
    still = api(web, "GET", "/api/run")[1]
    assert still["elapsed_s"] > quiet["elapsed_s"] and still["aggregated"]["requests"] == quiet["aggregated"]["requests"]
    assert still["targets"][0]["failures"] == 0  # paused arrivals are neither sent nor dropped
    assert api(web, "POST", "/api/resume")[0] == 200
    web.wait_for(lambda d: d["state"] == "running" and d["point"]["targets"]["open"]["rps"] > 150,
                 headers=AUTH, timeout=5)


def test_stop_from_the_api_ends_the_run_as_its_duration_would(web: WebRun) -> None:
    assert api(web, "POST", "/api/stop") == (200, {"ok": True, "posted": "stop"})
    code, out, err = web.finish()
    assert code == 0, err
    summary = web.summary()
    assert summary["exit_status"] == 0 and summary["interrupted"] is False
    assert summary["stopped"]["origin"] == "api" and summary["stopped"]["reason"] is None
    assert "stopped from the API at" in summary["outcome"] and summary["outcome"].startswith("PASSED")
    assert summary["aggregated"]["failures"] == 0  # in-flight requests finished, none was cancelled
    assert summary["duration_s"] < 30
    assert [(c["target"], c["new"]) for c in summary["level_changes"]] == [("open", 200.0), ("closed", 4.0)]
    with open(web.dir / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "open"]
    assert rows[0]["Target Level"] == "20" and rows[-1]["Target Level"] == "200"
    assert sum(int(r["Dropped"]) for r in rows) == 0  # the paused seconds' arrivals were never due


def test_the_inbox_refuses_what_the_api_refuses_before_any_run() -> None:
    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:1/", "rate": 5}], "duration": "1s"})
    inbox = Inbox(config)
    with pytest.raises(ControlError) as e:
        inbox.post(SetLevel("a", users=3))
    assert (e.value.status, e.value.message) == (400, "target a is an open-model target: set its rate, not users")
    with pytest.raises(ControlError) as e:
        inbox.post(SetLevel("b", rate=3))
    assert e.value.status == 404
    inbox.post(SetLevel("a", rate=7.5, origin="capacity"))
    assert inbox.drain() == [SetLevel("a", rate=7.5, origin="capacity")]
    for state, sentence in (("stopping", "the run is stopping; it takes no more commands"), ("done", "the run is over")):
        inbox.status.state = state
        with pytest.raises(ControlError) as e:
            inbox.post(Pause())
        assert (e.value.status, e.value.message) == (409, sentence)


def test_a_non_loopback_address_gets_a_token_made_and_needs_it() -> None:
    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:1/", "rate": 5}], "duration": "1s"})
    inbox = Inbox(config)
    server = WebServer(LivePage(config, inbox.status), inbox)
    url = server.start("0.0.0.0", 0)
    try:
        assert server.token and len(server.token) >= 20 and url.endswith(f"?token={server.token}")
        import http.client

        port = int(url.split(":")[2].split("/")[0])
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {server.token}"}, 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/run", headers=headers)
            assert conn.getresponse().status == status
            conn.close()
    finally:
        server.stop()


def test_without_a_token_only_requests_addressed_to_loopback_are_answered() -> None:
    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:1/", "rate": 5}], "duration": "1s"})
    inbox = Inbox(config)
    server = WebServer(LivePage(config, inbox.status), inbox)
    url = server.start("127.0.0.1", 0)
    try:
        assert server.token is None and "token" not in url
        import http.client

        port = int(url.split(":")[2].split("/")[0])
        for host, status in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                             (f"rebound.example:{port}", 403)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/run", headers={"Host": host})
            assert conn.getresponse().status == status, host
            conn.close()
    finally:
        server.stop()


@pytest.mark.parametrize("args, said", [
    (["--wait"], "loadtest: --wait: applies only with --web HOST:PORT\n"),
    (["--web-token", "abcdefgh"], "loadtest: --web-token: applies only with --web HOST:PORT\n"),
    (["--web", "127.0.0.1:0", "--web-token", "short"],
     "loadtest: --web-token: must be at least 8 printable characters without spaces\n"),
])
def test_bad_web_options_are_one_sentence_and_exit_2(tmp_path: Path, args: list[str], said: str) -> None:
    (tmp_path / "run.yaml").write_text(SITE.format(duration="1s", rate=5, workers=1))
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), *args], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (2, said)


def test_wait_holds_the_run_until_resume(tmp_path: Path) -> None:
    web = WebRun(tmp_path, "--wait", duration="2s", workers=1)
    try:
        doc = web.wait_for(lambda d: d["state"] == "paused")
        time.sleep(1.5)
        doc = web.call("GET", "/api/run")[1]
        assert doc["state"] == "paused" and doc["elapsed_s"] == 0 and doc["aggregated"]["requests"] == 0
        assert web.call("POST", "/api/targets/open", {"rate": 50})[0] == 200  # set before the start, held from it
        assert web.call("POST", "/api/resume")[0] == 200
        web.wait_for(lambda d: d["state"] in ("running", "stopping", "done"))
        code, out, err = web.finish()
        assert code == 0, err
        summary = web.summary()
        assert 1.9 < summary["duration_s"] < 3.5  # the duration counts from the start, not from the launch
        open_ = next(t for t in summary["targets"] if t["name"] == "open")
        assert 70 <= open_["requests"] <= 110  # 50/s for 2 s, not the config's 20/s
    finally:
        web.kill()


def test_on_a_cluster_a_level_and_a_pause_reach_every_node(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="the test extra installs dask[distributed]")
    web = WebRun(tmp_path, "--cluster", "local:2", duration="9s", rate=20, workers=1)
    try:
        web.wait_for(lambda d: d["state"] == "running" and d["elapsed_s"] >= 1, timeout=30)
        assert web.call("POST", "/api/targets/open", {"rate": 200})[0] == 200
        time.sleep(2.5)
        assert web.call("POST", "/api/pause")[0] == 200
        time.sleep(2.5)
        assert web.call("POST", "/api/resume")[0] == 200
        code, out, err = web.finish(timeout=60)
        assert code == 0, err
    finally:
        web.kill()
    summary = web.summary()
    assert [n["ended"] for n in summary["nodes"]] == ["ok", "ok"]
    requests = [w["requests"] for w in summary["workers"] if w["role"].startswith("node-")]
    assert len(requests) == 2 and min(requests) > 0.4 * max(requests)  # each node's worker sent its half
    with open(web.dir / "history.csv", newline="") as f:
        sent = [int(r["Interval Requests"]) for r in csv.DictReader(f) if r["Name"] == "open"]
    assert 0 in sent  # paused on both nodes
    paused = sent.index(0)
    # 200/s in all before the pause and after the resume: both nodes followed (one alone would send 100/s)
    assert max(sent[:paused]) >= 140 and max(sent[paused:]) >= 140, sent
