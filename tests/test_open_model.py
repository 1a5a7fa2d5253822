"""The open model, stages and exit codes, end to end with real workers and the embedded server."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from loadtest.model.config import parse_config
from loadtest.execution.controller import RunResult, run
from loadtest.execution.limits import auto_workers

from .test_run import site_config


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_site(out: Path, targets: list[dict[str, object]], **fields: object) -> RunResult:
    """Run `targets` against the embedded site server; the reports go to `out`."""
    return run(parse_config(site_config(targets, **fields)), out_dir=out)


def test_rate_is_kept_whatever_the_latency(tmp_path: Path) -> None:
    config = parse_config(site_config([{"name": "paced", "url": "http://{site}/delay/1", "rate": 500}],
                                      duration="3s", workers=2))
    result = run(config, out_dir=tmp_path / "rate")
    (paced,) = result.stats.totals
    assert paced.failure_count == 0 and paced.dropped == 0
    assert abs(paced.requests - 1500) <= 1500 * 0.02  # 500/s for 3 s, within 2%
    stats = {(r["Type"], r["Name"]): r for r in rows(tmp_path / "rate" / "stats.csv")}
    lateness = stats[("LATENESS", "paced")]
    assert int(lateness["Request Count"]) == paced.requests
    assert float(lateness["50%"]) < 5.0  # arrivals start within a few ms of their time
    uncorrected = stats[("UNCORRECTED", "paced")]
    assert float(uncorrected["50%"]) >= 1.0  # the server's 1 ms delay
    summary = json.loads((tmp_path / "rate" / "summary.json").read_text())
    assert summary["targets"][0]["open_model"]["dropped"] == 0
    history = [r for r in rows(tmp_path / "rate" / "history.csv") if r["Name"] == "paced"]
    assert all(r["Target Level"] == "500" for r in history)


def test_at_the_in_flight_cap_arrivals_wait_then_are_dropped_not_lost(tmp_path: Path) -> None:
    result = run_site(tmp_path / "cap", [{"name": "stuck", "url": "http://{site}/delay/2000", "rate": 200,
                                          "max_concurrency": 10, "timeout": "5s"}], duration="3s", workers=1)
    (stuck,) = result.stats.totals
    assert 10 <= stuck.requests <= 30  # ten at a time, each taking 2 s
    assert stuck.dropped >= 400  # the rest could not start within a second of their time
    assert abs(stuck.requests + stuck.dropped - 600) <= 12  # every arrival of 3 s at 200/s is accounted for
    assert stuck.lateness.get_max_value() >= 500e6  # those that waited for a free slot started late


def test_every_open_model_request_is_held_to_its_timeout(tmp_path: Path) -> None:
    # Sessions go back to a pool between arrivals and each request runs in a new greenlet: the
    # timeout must reach that greenlet, not the first one that used the session.
    result = run_site(tmp_path / "slow", [{"name": "slow", "url": "http://{site}/delay/1500", "rate": 20,
                                           "timeout": "300ms"}], duration="3s", workers=1)
    (slow,) = result.stats.totals
    assert slow.requests + slow.dropped == 60 and slow.requests >= 50  # 20/s for 3 s
    assert dict(slow.failures) == {"read_timeout": slow.requests}
    # never early, to the histogram's precision (its min is its bucket's low edge: 299.893 ms for 300.0-300.15)
    assert 299.7e6 <= slow.latency.get_min_value() and slow.latency.get_max_value() < 700e6


def test_a_late_arrival_still_gets_its_whole_timeout_on_the_wire(tmp_path: Path) -> None:
    # One request in flight at a time and 300 ms per request, at 10/s: arrivals wait for the slot and
    # start late. Their latency counts the wait, but the 500 ms timeout runs from the first byte sent.
    result = run_site(tmp_path / "queued", [{"name": "queued", "url": "http://{site}/delay/300", "rate": 10,
                                             "max_concurrency": 1, "timeout": "500ms"}], duration="3s", workers=1)
    (queued,) = result.stats.totals
    assert queued.failure_count == 0 and queued.requests >= 5
    assert queued.dropped > 0 and queued.latency.get_max_value() > 500e6  # late, yet not timed out


def test_a_timed_run_lasts_its_duration_and_its_last_second_is_one_row(tmp_path: Path) -> None:
    # Users in think time at the deadline are not waited for (only requests in flight are), and the
    # workers' last intervals land in the same second even when one stops a hair before the deadline.
    result = run_site(tmp_path / "timed", [{"name": "thinking", "url": "http://{site}/", "concurrency": 10,
                                            "think": "2500ms"},
                                           {"name": "paced", "url": "http://{site}/", "rate": 1000}],
                      duration="3s", workers=2)
    thinking, paced = result.stats.totals
    summary = json.loads((tmp_path / "timed" / "summary.json").read_text())
    assert 3.0 <= summary["duration_s"] < 3.3
    assert thinking.requests == 20  # at 0 s and 2.5 s; the third would start after the deadline
    history = [r for r in rows(tmp_path / "timed" / "history.csv") if r["Name"] == "paced"]
    # Three rows, not a fourth with the last second split off. Counted over the run, not per second: on a
    # busy machine a late snapshot moves some requests from one second's row to the next (±20 flaked).
    counts = [int(r["Interval Requests"]) for r in history]
    assert len(counts) == 3 and sum(counts) == paced.requests, counts
    assert abs(paced.requests + paced.dropped - 3000) <= 30 and min(counts) >= 500, (counts, paced.dropped)


def test_stages_that_end_at_rate_zero_still_last_the_duration(tmp_path: Path) -> None:
    result = run_site(tmp_path / "tail", [{"name": "tail", "url": "http://{site}/", "rate": 50,
                                           "stages": [{"duration": "1s", "target": 50},
                                                      {"duration": "1s", "target": 0}]}],
                      duration="3s", workers=1)
    (tail,) = result.stats.totals
    assert 3.0 <= result.stats.elapsed < 3.3  # not the 2 s where the schedule runs out
    assert 72 <= tail.requests <= 78 and tail.dropped == 0  # 50 in the first second, 25 on the way down


def test_a_spent_requests_total_is_not_held_open_by_a_schedule_that_ran_out(tmp_path: Path) -> None:
    result = run_site(tmp_path / "spent", [{"name": "users", "url": "http://{site}/", "concurrency": 1,
                                            "think": "100ms"},
                                           {"name": "quiet", "url": "http://{site}/", "rate": 10,
                                            "stages": [{"duration": "500ms", "target": 0}]}],
                      requests=20, duration="8s", workers=1)
    assert sum(t.requests for t in result.stats.totals) == 20
    assert result.stats.elapsed < 4.0  # not the 8 s of the duration


def test_auto_workers_never_outnumber_an_in_flight_cap() -> None:
    config = parse_config({"targets": [{"url": "http://127.0.0.1:1/", "rate": 5, "max_concurrency": 1}],
                           "duration": "1s"})
    assert auto_workers(config) == 1
    wide = parse_config({"targets": [{"url": "http://127.0.0.1:1/", "rate": 5}], "duration": "1s"})
    assert auto_workers(wide) == (os.cpu_count() or 1)


def test_a_requests_total_ends_a_staged_run_when_it_is_spent(tmp_path: Path) -> None:
    config = parse_config(site_config(
        [{"name": "ramp", "url": "http://{site}/", "rate": 100, "stages": [{"duration": "8s", "target": 100}]},
         {"name": "users", "url": "http://{site}/", "stages": [{"duration": "8s", "target": 4}]}],
        requests=40, workers=1))
    result = run(config, out_dir=tmp_path / "spent")
    assert sum(t.requests for t in result.stats.totals) == 40
    assert result.stats.elapsed < 4.0  # not the 8 s the stages would last


def test_stages_ramp_virtual_users_and_think_time_slows_them(tmp_path: Path) -> None:
    config = parse_config(site_config(
        [{"name": "ramp", "url": "http://{site}/", "stages": [{"duration": "2s", "target": 8},
                                                              {"duration": "1s", "target": 8}],
          "think": "10ms"}], workers=2))
    assert config.duration == 3.0
    result = run(config, out_dir=tmp_path / "stages")
    history = [r for r in rows(tmp_path / "stages" / "history.csv") if r["Name"] == "ramp"]
    users = [int(r["User Count"]) for r in history]
    assert users[0] < 8 and max(users) == 8  # ramps up, reaches the target
    (ramp,) = result.stats.totals
    # 8 users with 10 ms of think time cannot exceed 800 requests/s
    assert ramp.requests / result.stats.elapsed < 800


def test_exit_status_1_when_a_threshold_fails(tmp_path: Path) -> None:
    config = parse_config(site_config([{"name": "home", "url": "http://{site}/", "concurrency": 2}],
                                      requests=200, workers=1,
                                      thresholds=["home: p99 < 1s", "rps > 100000000", "error_rate < 1%"]))
    result = run(config, out_dir=tmp_path / "t")
    assert result.exit_status == 1
    assert [o.passed for o in result.thresholds] == [True, False, True]
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert [t["passed"] for t in summary["thresholds"]] == [True, False, True]
    assert summary["thresholds"][1]["measured"] > 0 and summary["exit_status"] == 1


def test_abort_on_fail_stops_the_run_early(tmp_path: Path) -> None:
    config = parse_config(site_config(
        [{"name": "broken", "url": "http://{site}/status/500", "concurrency": 2}], duration="20s", workers=1,
        thresholds=[{"threshold": "error_rate < 10%", "abort_on_fail": True}]))
    started = time.monotonic()
    result = run(config, out_dir=tmp_path / "abort")
    assert time.monotonic() - started < 10
    assert result.exit_status == 1 and "error_rate < 10%" in result.aborted


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_exit_status_0_and_3(tmp_path: Path) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text("requests: 20\nworkers: 1\nservers: [{name: s, kind: http}]\n"
                  "targets: [{url: 'http://{s}/', concurrency: 1}]\nthresholds: ['error_rate == 0']\n")
    assert cli(["run", str(ok), "-q"], tmp_path).returncode == 0

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        taken = tmp_path / "taken.yaml"
        taken.write_text(f"requests: 20\nservers: [{{name: s, kind: http, listen: '127.0.0.1:{port}'}}]\n"
                         "targets: [{url: 'http://{s}/', concurrency: 1}]\n")
        done = cli(["run", str(taken)], tmp_path)
    finally:
        busy.close()
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and str(port) in done.stderr


def test_ctrl_c_cancels_in_flight_writes_reports_and_exits_130(tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text("duration: 60s\nworkers: 2\nservers: [{name: s, kind: http}]\n"
                      "targets: [{name: slow, url: 'http://{s}/delay/300', concurrency: 6}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(config), "--out", str(tmp_path / "r")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "r" / "history.csv").exists() or len(rows(tmp_path / "r" / "history.csv")) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["targets"][0]["failures_by_kind"].get("cancelled") == 6  # the six in flight
    served = summary["servers"][0]["served"]["requests"]
    assert served == summary["aggregated"]["requests"]


def test_coordinated_omission_a_stall_shows_in_the_open_model_only(tmp_path: Path) -> None:
    """wrk2's demonstration: the server freezes 1 s in every 5 s (the /stall route, on the wall clock).

    The open model measures from when each request was due, so a fifth of its requests see up to a
    second and its p99 shows the stall. A closed model sends nothing while it waits, so almost all
    of its requests are fast and its p50 and p99 do not. With a small cap on connections, the open
    model's own uncorrected latency (from the actual send) hides the stall just as the closed one does.
    """
    config = parse_config(site_config([
        {"name": "open", "url": "http://{site}/stall/5000/1000", "rate": 100, "timeout": "5s"},
        {"name": "open-capped", "url": "http://{site}/stall/5000/1000", "rate": 100, "max_concurrency": 2,
         "timeout": "5s"},
        {"name": "closed", "url": "http://{site}/stall/5000/1000", "concurrency": 2, "timeout": "5s"},
    ], duration="6s", workers=1))
    result = run(config, out_dir=tmp_path / "co")
    opened, capped, closed = result.stats.totals
    assert opened.failure_count == 0 and closed.failure_count == 0
    assert opened.latency.get_value_at_percentile(99) >= 500e6
    assert capped.latency.get_value_at_percentile(99) >= 500e6  # corrected
    assert capped.uncorrected.get_value_at_percentile(99) < 100e6  # uncorrected: the stall is hidden
    assert capped.lateness.get_max_value() >= 500e6  # the arrivals that waited for a connection
    assert closed.latency.get_value_at_percentile(50) < 5e6
    assert closed.latency.get_value_at_percentile(99) < 100e6
    stats = {(r["Type"], r["Name"]): r for r in rows(tmp_path / "co" / "stats.csv")}
    assert float(stats[("UNCORRECTED", "open-capped")]["99%"]) < 100.0
    assert float(stats[("GET", "open-capped")]["99%"]) >= 500.0


def test_arrivals_reuse_parked_runners_and_release_them_when_the_schedule_ends(raw_server) -> None:
    """Open-model arrivals hand each request to a runner greenlet that has finished its last one,
    rather than a new greenlet per arrival; every arrival is recorded once, and when the schedule
    ends the parked runners end too, so the worker's pool finishes."""
    import gevent
    from gevent.pool import Pool

    from loadtest.engine.protocols import Deadlines
    from loadtest.engine.protocols.http_fast import HttpSession, build_endpoints
    from loadtest.core.schedule import ArrivalSchedule
    from loadtest.core.recorder import TargetRecorder
    from loadtest.engine.arrivals import Unsent, arrivals
    from loadtest.engine.budget import Budget

    from .conftest import read_request

    def answer(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(answer)
    url = f"http://127.0.0.1:{server.port}/"
    target = parse_config({"duration": "1s", "targets": [{"url": url, "rate": 400}]}).targets[0]
    endpoints = build_endpoints(target, [url])
    recorder, deadlines = TargetRecorder(0), Deadlines()
    spawned = [0]

    class CountingPool(Pool):
        def spawn(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            spawned[0] += 1
            return super().spawn(*args, **kwargs)

    pool = CountingPool()
    start = time.perf_counter_ns()
    until = start + 500_000_000  # 0.5 s at 400/s: 200 arrivals
    schedule = ArrivalSchedule("constant", 1, lambda t: 400.0, False, until)
    sessions: list[HttpSession] = []
    unsent = Unsent(recorder)
    pool.spawn(arrivals, lambda: HttpSession(target, endpoints, recorder, None, None, deadlines), Budget(None),
               recorder, pool, schedule, schedule.next_due(start, 0.0), 200, sessions, unsent)
    scan = gevent.spawn(deadlines.scan)
    assert pool.join(timeout=10), "runners left parked after the schedule ended"
    scan.kill()
    for s in sessions:
        s.close()
    snap = recorder.snapshot()
    assert 190 <= snap.requests <= 201 and not snap.failures and snap.dropped == 0
    assert recorder.users == 0 and unsent.waiting == 0  # every arrival handed over ran
    # The arrivals greenlet and a runner per request in flight at the busiest moment, not one per request: with
    # no cap in the way, 200 spawns would mean no reuse. A few runners on a quiet machine; on a busy one replies
    # may come late and more overlap, but 60 would take each request 150 ms against a server that answers at once.
    assert spawned[0] - 1 <= 60, spawned[0]
