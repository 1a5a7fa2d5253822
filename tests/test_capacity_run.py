"""`loadtest capacity` end to end: real workers, steered through the control inbox, against a server of known
capacity (a FIFO queue served at a fixed rate), the embedded servers, flows and paced tcp."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest.cli.app import app
from loadtest.core.run_files import CAPACITY_KEYS, CAPACITY_STEP_KEYS

KNOWN_CAPACITY = 200.0  # requests per second the test server answers, at most


class FixedRate:
    """`python -m loadtest.servers.fixed_rate` on a free port: its address, then (stopped) what it served."""

    def __init__(self, capacity: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.servers.fixed_rate", "--capacity",
                                      str(capacity), "--listen", "127.0.0.1:0", "--stdin"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.address = line.split()[-1]

    def stop(self) -> int:
        """Stop the server (stdin closed: it stops as its parent's end); the requests it answered."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.wait(10)
        return int(out.split()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
def fifo() -> Iterator[FixedRate]:
    server = FixedRate(KNOWN_CAPACITY)
    try:
        yield server
    finally:
        server.close()


def capacity(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", "capacity", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_search_finds_a_known_capacity_and_writes_its_answer(fifo: FixedRate, tmp_path: Path) -> None:
    # p90, not p99: a step judges 2 s here, and on a busy machine one stall of the server's process of 50 ms
    # (1% of 2 s) would break a p99 bound below capacity; above it, the server's queue breaks p90 in a second.
    out = tmp_path / "run"
    done = capacity(f"http://{fifo.address}/", "--slo", "p90<50ms", "--slo", "errors<1%", "--start", "60",
                    "--step", "3s", "--warmup", "0s", "--precision", "20%", "--workers", "1", "--out", str(out),
                    "--json", cwd=tmp_path)
    served = fifo.stop()
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)  # --json: capacity.json on stdout and nothing else
    assert answer == json.loads((out / "capacity.json").read_text())
    assert tuple(answer) == CAPACITY_KEYS and answer["slo"] == ["p90<50ms", "errors<1%"]
    assert answer["limited_by"] == "target", done.stderr
    # Never more than the server can take. Below it, how close depends on the machine: at 90% of capacity one
    # stall of the server's process queues requests for a second, and a step whose stall repeats when held again
    # is a real miss (benchmarks/capacity_accuracy.py measures the -15% .. +2% asked, with 10 s steps).
    assert KNOWN_CAPACITY * 0.7 <= answer["max_rate"] <= KNOWN_CAPACITY * 1.02, done.stderr
    steps = answer["steps"]
    assert all(tuple(s) == CAPACITY_STEP_KEYS for s in steps)
    assert list(dict.fromkeys(s["rate"] for s in steps))[:3] == [60.0, 120.0, 240.0]  # doubling until a miss
    over = [s for s in steps if s["rate"] == 240.0]
    assert len(over) == 2 and not any(s["met"] for s in over)  # a miss is held again before it is believed
    assert over[0]["why"].startswith("p90<50ms (measured ")
    assert steps[-1]["met"] and steps[-1]["rate"] == answer["max_rate"]  # the answer held once more
    assert all(abs(s["achieved_rate"] - s["rate"]) <= 0.05 * s["rate"] for s in steps if s["met"])
    rows = read_csv(out / "capacity.csv")
    assert [list(r) for r in rows[:1]] == [list(CAPACITY_STEP_KEYS)] and len(rows) == len(steps)
    assert [float(r["rate"]) for r in rows] == [s["rate"] for s in steps]
    # The terminal (stderr with --json): a line per step as it ends, then the verdict in one sentence.
    lines = done.stderr.strip().splitlines()
    assert sum(line.startswith("step ") for line in lines) == len(steps)
    assert lines[-1].startswith(f"Capacity: {answer['max_rate']:,.0f}/s (requests) within p90<50ms and errors<1%")
    # One run folder: its counts are every request of every step, as the server counted them.
    stats = {r["Name"]: r for r in read_csv(out / "stats.csv") if r["Type"] in ("GET", "")}
    assert int(stats["Aggregated"]["Request Count"]) == served
    history = [r for r in read_csv(out / "history.csv") if r["Name"] == "Aggregated"]
    assert int(history[-1]["Total Request Count"]) == served
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"]["origin"] == "capacity"
    levels = [c["new"] for c in summary["level_changes"]]  # every step's level, and each drain's
    assert levels.index(120.0) < levels.index(240.0) and levels[-1] == answer["max_rate"]
    page = (out / "report.html").read_text()
    section = page.split('<section id="capacity">', 1)[1].split("</section>", 1)[0]
    assert "Latency against rate" in section and "<svg" in section and "SLO p90&lt;50ms" in section
    assert f"knee: {answer['max_rate']:,.0f}/s (target-limited)" in section


def test_even_the_first_step_missing_exits_1(tmp_path: Path) -> None:
    server = FixedRate(50.0)
    try:
        done = capacity(f"http://{server.address}/", "--slo", "p99<20ms", "--start", "150", "--step", "2s",
                        "--warmup", "0s", "--workers", "1", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    finally:
        server.stop()
        server.close()
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("No capacity found: even the first step, 150/s, missed p99<20ms")
    assert done.stdout.count("\n") == 1  # --quiet: the verdict alone
    answer = json.loads((tmp_path / "run" / "capacity.json").read_text())
    # held twice (a miss is held again before it is believed), missed twice
    assert answer["max_rate"] == 0.0 and [(s["rate"], s["met"]) for s in answer["steps"]] == [(150.0, False)] * 2


SEVERAL = """
name: several
servers:
  - {name: site, kind: http, listen: 127.0.0.1:0, workers: 1}
  - {name: echo, kind: echo, listen: 127.0.0.1:0, workers: 1}
targets:
  - {name: home, url: "http://{site}/", rate: 20}
  - {name: bytes, url: "http://{site}/bytes/100", rate: 60}
  - name: journey
    rate: 20
    flow:
      - {name: one, url: "http://{site}/"}
      - {name: two, url: "http://{site}/bytes/10"}
  - {name: paced, tcp: "{echo}", connections: 10, rate: 100}
"""


def test_several_targets_flows_and_paced_tcp_scale_together_on_cluster_nodes(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="the test extra installs dask[distributed]")
    (tmp_path / "several.yaml").write_text(SEVERAL)
    out = tmp_path / "run"
    done = capacity("several.yaml", "--slo", "p99<200ms", "--start", "100", "--max-rate", "200", "--step", "2s",
                    "--warmup", "0s", "--cluster", "local:2", "--workers", "1", "--out", str(out), cwd=tmp_path,
                    timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    answer = json.loads((out / "capacity.json").read_text())
    assert (answer["max_rate"], answer["limited_by"]) == (200.0, "max-rate"), done.stdout
    # 100/s, then 200/s held and held again (a step missed or not delivered on a busy machine is held again too)
    assert list(dict.fromkeys(s["rate"] for s in answer["steps"])) == [100.0, 200.0]
    assert [(s["rate"], s["met"]) for s in answer["steps"][-2:]] == [(200.0, True)] * 2
    assert "the --max-rate, held within p99<200ms" in done.stdout.splitlines()[-1]
    # Each target's level moved in proportion to its own rate (20 : 60 : 20 : 100 of 200): the open ones' rates,
    # the paced tcp target's connections (each keeps its pace, 10 messages/s).
    changes = json.loads((out / "summary.json").read_text())["level_changes"]
    first = {c["target"]: (c["unit"], c["old"], c["new"]) for c in changes[:4]}
    assert first == {"home": ("rate", 10.0, 20.0), "bytes": ("rate", 30.0, 60.0), "journey": ("rate", 10.0, 20.0),
                     "paced": ("users", 5.0, 10.0)}
    # Both nodes' workers followed every level and sent their share: a node left at the old level would deliver
    # 75% of 200/s (a paced connection whose reply comes late sends its next message late: hence 15%, not 5%).
    assert all(abs(s["achieved_rate"] - s["rate"]) <= 0.15 * s["rate"] for s in answer["steps"] if s["met"])
    workers = read_csv(out / "workers.csv")
    assert len(workers) == 2 and all(int(w["Requests"]) > 0 for w in workers)
    stats = {r["Name"]: r for r in read_csv(out / "stats.csv")}
    assert int(stats["journey"]["Request Count"]) * 2 == sum(int(stats[f"journey/{s}"]["Request Count"])
                                                              for s in ("one", "two"))


@pytest.mark.parametrize("args, says", [
    (["--slo", "p99 fast"], "--slo 'p99 fast': must look like 'p99<50ms' or 'errors<1%'"),
    (["--slo", "errors<1"], "give errors in %"),
    (["--slo", "p99<5ms", "--start", "100", "--max-rate", "50"], "--max-rate (50/s) is below --start (100/s)"),
    (["--slo", "p99<5ms", "--start", "fast"], "--start: must be a rate per second"),
    (["--slo", "p99<5ms", "--precision", "200%"], "--precision: must be between 0% and 100%"),
    (["--slo", "p99<5ms", "--step", "1s"], "--step: must be at least 2s"),
    ([], "--slo: give at least one"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = CliRunner().invoke(app, ["capacity", "http://127.0.0.1:9/", *args])  # in-process: nothing runs
    assert done.exit_code == 2 and done.stdout == ""
    assert done.stderr.startswith("loadtest: ") and says in done.stderr and done.stderr.count("\n") == 1


def test_a_closed_model_only_config_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "closed.yaml").write_text("targets:\n  - {url: 'http://127.0.0.1:9/', concurrency: 5}\n")
    done = CliRunner().invoke(app, ["capacity", str(tmp_path / "closed.yaml"), "--slo", "p99<5ms"])
    assert done.exit_code == 2 and "closed-model targets only" in done.stderr and done.stderr.count("\n") == 1
