"""compare: two real runs made here, one against a fast route and one against /delay/5."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from loadtest.compare import (
    METRICS,
    Comparison,
    compare_runs,
    format_csv,
    format_json,
    format_table,
    write_compare_html,
)
from loadtest.config import parse_config
from loadtest.controller import run
from loadtest.run_folder import RunFolderError

REQUESTS = 300


def make_run(out: Path, path: str, name: str = "page") -> Path:
    config = parse_config({
        "name": "compare",
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "targets": [{"name": name, "url": "http://{site}" + path, "concurrency": 10}],
        "requests": REQUESTS, "workers": 1,
    })
    result = run(config, out_dir=out)
    assert result.exit_status == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("compare")
    return {"fast": make_run(base / "fast", "/"), "slow": make_run(base / "slow", "/delay/5"),
            "fast2": make_run(base / "fast2", "/")}


def change(c: Comparison, target: str, metric: str) -> tuple[float | None, float | None, float | None, bool]:
    t = next(t for t in c.targets if t.name == target)
    ch = next(ch for ch in t.changes if ch.metric.key == metric)
    return ch.a, ch.b, ch.change_pct, ch.worse


def test_the_slower_run_is_flagged_worse(runs: dict[str, Path]) -> None:
    c = compare_runs(runs["fast"], runs["slow"])
    assert c.worse
    assert [t.name for t in c.targets] == ["page", "Aggregated"]
    for target in ("page", "Aggregated"):
        a, b, pct, worse = change(c, target, "p50")
        assert a is not None and b is not None and b >= 5.0 > a  # /delay/5 waits 5 ms
        assert pct is not None and pct > 5 and worse
        assert change(c, target, "requests_per_s")[3]  # fewer requests a second is worse too
        assert not change(c, target, "error_rate")[3]
    cpu = change(c, "Aggregated", "cpu_us_per_request")
    assert cpu[0] is not None and cpu[0] > 0 and cpu[1] is not None
    assert change(c, "page", "cpu_us_per_request")[:3] == (None, None, None)  # a whole-run figure only


def test_the_faster_run_has_better_latency_and_the_same_run_is_not_worse(runs: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    better = compare_runs(runs["slow"], runs["fast"])
    for metric in ("p50", "p95", "p99", "requests_per_s"):
        assert not change(better, "page", metric)[3]
    assert change(better, "page", "p50")[2] < -50  # type: ignore[operator]

    copy = tmp_path / "copy"
    shutil.copytree(runs["fast"], copy)
    same = compare_runs(runs["fast"], copy, tolerance=0.0)
    assert not same.worse
    assert all(ch.change_pct in (0.0, None) for t in same.targets for ch in t.changes)

    alike = compare_runs(runs["fast"], runs["fast2"], tolerance=10.0)  # two fast runs, loopback noise and all
    assert not alike.worse, format_table(alike)


def test_every_format_renders(runs: dict[str, Path], tmp_path: Path) -> None:
    c = compare_runs(runs["fast"], runs["slow"], tolerance=0.05)
    table = format_table(c)
    assert "WORSE" in table
    assert any(line.startswith("page") and "worse" in line for line in table.splitlines())
    assert str(runs["fast"]) in table and str(runs["slow"]) in table

    rows = list(csv.DictReader(io.StringIO(format_csv(c))))
    assert len(rows) == 2 * len(METRICS)
    p50 = next(r for r in rows if r["target"] == "page" and r["metric"] == "p50")
    assert p50["worse"] == "true" and float(p50["b"]) > float(p50["a"])

    data = json.loads(format_json(c))
    assert data["worse"] is True and data["tolerance"] == 0.05
    assert data["targets"][0]["metrics"]["p50"]["worse"] is True
    assert data["run_a"]["path"] == str(runs["fast"])

    out = write_compare_html(c, tmp_path / "compare.html")
    html = out.read_text()
    assert html.count("<polyline") >= 2 and "A: page" in html and "B: page" in html
    assert "<script" not in html and "WORSE" in html


def test_targets_in_one_run_only_are_listed_and_names_escaped(runs: dict[str, Path], tmp_path: Path) -> None:
    evil = make_run(tmp_path / "evil", "/", name="<img src=x onerror=alert(1)>")
    c = compare_runs(runs["fast"], evil, tolerance=10.0)
    assert [t.name for t in c.targets] == ["Aggregated"]
    assert c.only_in_a == ("page",) and c.only_in_b == ("<img src=x onerror=alert(1)>",)
    assert "only in B: <img" in format_table(c)
    assert c.worse and "WORSE: 1 target of A missing from B" in format_table(c)  # "page" is not in B
    html = write_compare_html(c, tmp_path / "c.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_folder_that_is_not_a_run_is_one_clear_error(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        compare_runs(tmp_path / "nowhere", runs["fast"])
    with pytest.raises(RunFolderError, match=r"is not a run folder \(it has no summary\.json\)"):
        compare_runs(runs["fast"], tmp_path)
    (tmp_path / "summary.json").write_text("[]")
    with pytest.raises(RunFolderError, match="is not a loadtest summary"):
        compare_runs(runs["fast"], tmp_path)
    with pytest.raises(ValueError, match="tolerance"):
        compare_runs(runs["fast"], runs["fast"], tolerance=-1)
