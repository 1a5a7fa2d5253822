"""Target kinds: one registry maps each target to its kind, each kind supplies what is particular to it,
and nothing outside loadtest/kinds asks which kind a target is."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from loadtest.model.config import ConfigError, parse_config
from loadtest.execution.controller import run
from loadtest.model.kinds import KINDS, MODELS, Load, kind_of, needs
from loadtest.execution.limits import check_limits
from loadtest.core.stats import TargetTotals

PACKAGE = Path(__file__).resolve().parent.parent / "loadtest"
ASKS_WHICH_KIND = re.compile(r"isinstance\([^)]*(HttpTarget|TcpTarget)|model == \"open\"|(?<!loadtest)\.model\b(?! =)")

THREE = {
    "duration": "1s",
    "workers": 1,
    "servers": [{"name": "web", "kind": "http"}, {"name": "echo", "kind": "echo"}],
    "targets": [
        {"name": "users", "url": "http://{web}/", "concurrency": 2},
        {"name": "echo", "tcp": "{echo}", "connections": 3, "size": 8},
        {"name": "arrivals", "urls": ["http://{web}/a", "http://127.0.0.2:1/b"], "rate": 50, "max_concurrency": 10},
    ],
}


def test_nothing_outside_the_kinds_package_asks_which_kind_a_target_is() -> None:
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if "kinds" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if ASKS_WHICH_KIND.search(line)]
    assert found == []


def test_the_registry_maps_each_target_to_its_kind() -> None:
    users, echo, arrivals = parse_config(THREE).targets
    assert [kind_of(t).name for t in (users, echo, arrivals)] == ["http", "tcp", "http-open"]
    assert len({k.name for k in KINDS}) == len(KINDS)
    assert {k.model for k in KINDS} == set(MODELS)
    assert needs() == ("flow or script for a flow, url (or urls) for an HTTP target, tcp for a TCP target, "
                       "or ws for a WebSocket target")


def test_each_kind_says_what_is_particular_to_it() -> None:
    users, echo, arrivals = parse_config(THREE).targets
    assert [kind_of(t).row_type(t) for t in (users, echo, arrivals)] == ["GET", "TCP", "GET"]
    assert kind_of(users).load(users) == Load(users=2, start=2.0)
    assert kind_of(echo).load(echo) == Load(users=3, start=3.0)
    assert kind_of(arrivals).load(arrivals) == Load(users=10, start=50.0, arrival="constant")
    # a user keeps a connection to each origin it visits; a tcp connection is one descriptor
    assert [kind_of(t).descriptors_per_user(t) for t in (users, echo, arrivals)] == [1, 1, 2]
    assert [h.count for h in kind_of(echo).held_connections(echo)] == [3]
    assert kind_of(users).held_connections(users) == kind_of(arrivals).held_connections(arrivals) == ()
    # the open model's requests in flight are shared by the workers: at most max_concurrency of them
    assert [kind_of(t).most_workers(t) for t in (users, echo, arrivals)] == [None, None, 10]
    assert kind_of(arrivals).check_workers(arrivals, 10) is None
    assert "max_concurrency 10, fewer than the 11 workers" in (kind_of(arrivals).check_workers(arrivals, 11) or "")
    with pytest.raises(ConfigError, match="targets: arrivals has max_concurrency 10"):
        check_limits(parse_config(THREE), workers=11)
    totals = TargetTotals(name="x", type="GET")
    assert [r.type for t in (users, echo, arrivals) for r in kind_of(t).extra_rows(t, totals)] == \
        ["CONNECT", "LATENESS", "UNCORRECTED"]


def test_a_run_of_three_kinds_writes_each_kinds_rows_and_summary(tmp_path: Path) -> None:
    result = run(parse_config(THREE), out_dir=tmp_path / "run")
    with open(result.run_dir / "stats.csv", newline="") as f:
        rows = [(r["Type"], r["Name"]) for r in csv.DictReader(f)]
    # targets in config order, then the extra rows grouped by kind in the registry's order, then Aggregated
    assert rows == [("GET", "users"), ("TCP", "echo"), ("GET", "arrivals"), ("CONNECT", "echo"),
                    ("LATENESS", "arrivals"), ("UNCORRECTED", "arrivals"), ("", "Aggregated")]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    users, echo, arrivals = summary["targets"]
    assert "connections" not in users and "open_model" not in users
    assert list(echo["connections"]) == ["opened", "failed", "failed_by_kind", "open_at_end", "connect_latency_ms",
                                         "peak_open", "held_at_end", "asked"]
    assert echo["connections"]["asked"] == 3 and echo["connections"]["peak_open"] == 3
    assert arrivals["open_model"]["rate"] == 50 and arrivals["open_model"]["max_concurrency"] == 10
    assert "connections" not in summary["aggregated"] and result.shortfalls == []
    # the second URL of the open target has nothing listening: its requests fail as the kind's own rows count
    assert users["failures"] == 0 and echo["failures"] == 0
    assert Counter(arrivals["failures_by_kind"]).total() == arrivals["failures"] > 0
