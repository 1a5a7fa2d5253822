"""report.html: built from a real run's folder, checked in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.model.config import parse_config
from loadtest.execution.controller import run
from loadtest.outputs.html_report import (
    REPORT_NAME,
    RunFolderError,
    write_html_report,
)
from loadtest.outputs.report_processes import resource_series
from loadtest.outputs.run_folder import load_run
from loadtest.outputs.series import MAX_POINTS, spectra

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>alert(1)</script>"
RESOURCE_COLUMNS = ["timestamp", "elapsed_s", "role", "pid", "status", "cpu_percent", "rss_bytes", "threads"]


def site_config(targets: list[dict[str, object]], **fields: object) -> dict[str, object]:
    return {
        "name": "report",
        "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 1}],
        "targets": targets,
        **fields,
    }


def write_resources(run_dir: Path, seconds: int, pids: dict[str, int]) -> None:
    """A resources.csv like the controller's sampler writes, when this run did not write one."""
    with open(run_dir / "resources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESOURCE_COLUMNS)
        for t in range(seconds + 1):
            for role, pid in pids.items():
                rss = "" if role == "machine" else 30_000_000 + 1000 * t
                w.writerow([1_800_000_000 + t, f"{t:.3f}", role, pid, "running", f"{40 + (pid + t) % 50:.1f}", rss, 4])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run: a fine target, an open-model one, and one named like an attack that fails, with a
    passing and a failing threshold; verdicts added (a saturated worker cannot be had on demand)."""
    out = tmp_path_factory.mktemp("report") / "run"
    config = parse_config(site_config(
        [{"name": "home", "url": "http://{site}/", "concurrency": 8},
         {"name": "open", "url": "http://{site}/", "rate": 50},
         {"name": EVIL, "url": "http://{site}/status/503", "concurrency": 2}],
        duration="2s", workers=1, thresholds=["p99 < 5s", f"{EVIL}: error_rate < 1%"]))
    run(config, out_dir=out)
    if not (out / "resources.csv").exists():
        write_resources(out, 2, {"controller": 1, "worker-0": 2, "server-site-0": 3, "machine": 0})
    summary = json.loads((out / "summary.json").read_text())
    summary["verdicts"] = [  # as resources.Verdicts.summary writes them
        {"kind": "worker_saturated", "what": "worker-0 was above 90% CPU for 3.0 s from 0.0 s (peak 99%)",
         "role": "worker-0", "start_s": 0.0, "duration_s": 3.0, "peak": 99.0}]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_html_report(out)
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Chromium at /usr/bin/chromium (Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extras)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def open_page(browser: Any, path: Path) -> tuple[Any, list[str], list[str], list[str]]:
    """The page at `path`, and what it logged, fetched and popped up while loading."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_timeout(200)  # anything late would show up here
    return page, console, requests, dialogs


def test_the_report_opens_offline_with_every_chart_drawn(run_dir: Path, browser: Any) -> None:
    page, console, requests, dialogs = open_page(browser, run_dir / REPORT_NAME)
    assert console == []
    assert requests == [(run_dir / REPORT_NAME).as_uri()]  # the page itself, nothing else
    assert dialogs == []
    assert page.locator("script").count() == 0

    charts = page.locator("svg.chart")
    # per target and All targets: rates and latency; the open target's level (its rate); the spectrum; CPU and
    # memory per process, machine CPU
    assert charts.count() == 4 * 2 + 1 + 1 + 3
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
    lines = page.locator("svg.chart polyline")
    assert lines.count() >= 4 * 4 + 4 + 4
    for i in range(lines.count()):
        box = lines.nth(i).bounding_box()
        assert box is not None and box["width"] > 0
    text = page.inner_text("body")
    for heading in ("Summary", "Over time", "Latency by percentile", "Resources", "Thresholds and verdicts",
                    "Config", "Machine", "Workers"):
        assert heading in text
    badge = page.locator("#outcome").inner_text()
    assert re.fullmatch(rf"FAILED: [\d,]+ of [\d,]+ requests failed: status; threshold '{re.escape(EVIL)}: "
                        r"error_rate < 1%' failed \(measured 100.00%\)", badge), badge
    assert "FAIL" in page.locator("#outcome").get_attribute("class").upper()
    assert "PASS" in text and "p99 < 5s" in text
    assert "WARN" in text and "above 90% CPU" in text
    assert "worker-0" in text and "server-site-0" in text
    png = page.screenshot(full_page=True)
    assert len(png) > 50_000
    page.close()


def test_an_injected_script_in_a_target_name_stays_text(run_dir: Path, browser: Any) -> None:
    html = (run_dir / REPORT_NAME).read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page, console, _, dialogs = open_page(browser, run_dir / REPORT_NAME)
    assert dialogs == [] and console == []
    assert page.locator("script").count() == 0
    assert EVIL in page.inner_text("body")  # shown as the name it is, in tables and legends
    assert page.locator(f"td.name:text-is('{EVIL}')").count() >= 1
    titles = page.eval_on_selector_all("svg title", "els => els.map(e => e.textContent)")
    assert EVIL in titles  # SVG text is escaped too, not parsed
    page.close()


def test_the_report_is_rebuilt_from_the_files_alone(run_dir: Path, tmp_path: Path) -> None:
    first = (run_dir / REPORT_NAME).read_bytes()
    assert write_html_report(run_dir) == run_dir / REPORT_NAME
    assert (run_dir / REPORT_NAME).read_bytes() == first
    archived = tmp_path / "archive" / "old-run"
    shutil.copytree(run_dir, archived)
    (archived / REPORT_NAME).unlink()
    out = write_html_report(archived, tmp_path / "again.html")
    assert out.read_bytes() == first


def test_the_spectrum_is_walked_from_histograms_or_falls_back(run_dir: Path, tmp_path: Path) -> None:
    full = {s.name: s for s in spectra(load_run(run_dir))}
    home = full["home"]
    assert home.exact and len(home.points) > 40
    ps = [p for p, _ in home.points]
    values = [v for _, v in home.points]
    assert ps == sorted(ps) and values == sorted(values) and ps[0] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert values[-1] == pytest.approx(summary["targets"][0]["latency_ms"]["max"], rel=1e-3)

    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    for name in ("histograms.json", "resources.csv", "history.csv", "failures.csv", REPORT_NAME):
        (bare / name).unlink()
    fallback = {s.name: s for s in spectra(load_run(bare))}
    assert not fallback["home"].exact and dict(fallback["home"].points)[50.0] == \
        summary["targets"][0]["latency_ms"]["p50"]
    html = write_html_report(bare).read_text()
    assert "no resources.csv" in html and "history.csv is missing" in html and "fixed percentiles" in html


def test_a_long_run_stays_small(run_dir: Path, tmp_path: Path) -> None:
    long = tmp_path / "long"
    shutil.copytree(run_dir, long)
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    names = list(dict.fromkeys(r[3] for r in body))
    template = {r[3]: r for r in body}
    elapsed = header.index("Elapsed")
    with open(long / "history.csv", "w", newline="") as f:  # two hours, one row a second per target
        w = csv.writer(f)
        w.writerow(header)
        for t in range(1, 7201):
            for n in names:
                row = list(template[n])
                row[elapsed] = f"{t:.3f}"
                w.writerow(row)
    write_resources(long, 7200, {f"worker-{k}": 10 + k for k in range(8)} | {"controller": 1, "machine": 0})
    html = write_html_report(long).read_text()
    assert len(html.encode()) < 2_000_000
    for points in re.findall(r'<polyline points="([^"]*)"', html):
        assert len(points.split()) <= MAX_POINTS


def test_a_folder_that_is_not_a_run_says_so_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="is not a folder"):
        write_html_report(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no summary\.json"):
        write_html_report(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="is not valid JSON"):
        write_html_report(tmp_path)


def test_the_open_model_rows_are_on_the_page_and_say_what_uncorrected_means(run_dir: Path, browser: Any) -> None:
    page, console, _, _ = open_page(browser, run_dir / REPORT_NAME)
    assert console == []
    summary = json.loads((run_dir / "summary.json").read_text())
    open_model = next(t for t in summary["targets"] if t["name"] == "open")["open_model"]
    rows = page.locator("tr.open")
    assert rows.count() == 2
    lateness = [c.strip() for c in rows.nth(0).locator("td").all_inner_texts()]
    uncorrected = [c.strip() for c in rows.nth(1).locator("td").all_inner_texts()]
    assert lateness[:4] == ["LATENESS", "open", f"{open_model['started'] + open_model['dropped']:,}",
                            f"{open_model['dropped']:,}"]
    assert uncorrected[:2] == ["UNCORRECTED", "open"] and uncorrected[2] != "—"
    assert all(rows.nth(i).is_visible() for i in range(2))
    note = page.locator("#open-model-note").inner_text()
    assert "plus that lateness" in note and "max_concurrency" in note
    late = open_model["lateness_ms"]
    assert f"open: sends left {late['p50']:.3f} ms late at p50 and {late['p99']:.3f} ms at p99" in note
    text = page.inner_text("body")
    assert "closed-loop" not in text and "Error rate" in text
    page.close()


def test_the_workers_table_shows_what_the_run_wrote(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    (worker,) = summary["workers"]
    html = (run_dir / REPORT_NAME).read_text()
    section = html[html.index("<h2>Workers</h2>"):]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section[:section.index("</table>")])
    assert cells[:4] == ["0", str(worker["pid"]), f"{worker['requests']:,}", f"{worker['failures']:,}"]
    assert worker["peak_rss_bytes"] > 10 * 2**20
    assert cells[6] == f"{worker['peak_rss_bytes'] / 2**20:,.1f}"  # Peak RSS MiB, not "—"
    assert cells[7] == "ok"


def test_the_time_axis_ends_at_the_runs_duration_and_verdicts_read_as_sentences(run_dir: Path) -> None:
    html = (run_dir / REPORT_NAME).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    over_time = html[html.index("<h2>Over time</h2>"):html.index("<h2>Latency by percentile</h2>")]
    ticks = re.findall(r'<text class="tick" x="[^"]*" y="[^"]*" text-anchor="[^"]*">([\d.]+)s</text>', over_time)
    assert ticks and max(float(t) for t in ticks) <= summary["duration_s"] + 0.5  # 2 s, not 2.5 s
    checks = html[html.index("<h2>Thresholds and verdicts</h2>"):html.index("<h2>Summary</h2>")]
    assert "from 0.0 s to 3.0 s (3.0 s), peak 99% CPU" in checks
    assert "start_s" not in checks and "{" not in checks and "abort_on_fail" not in checks
    resources = html[html.index("<h2>Resources</h2>"):]
    assert "Machine CPU, all" in resources and "machine (all cores)" not in resources


def test_resource_lines_leave_out_the_exit_sample_and_coinciding_workers_both_show(run_dir: Path,
                                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "workers"
    shutil.copytree(run_dir, folder)
    with open(folder / "resources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESOURCE_COLUMNS)
        for t in range(3):
            for role, pid in (("worker-0", 10), ("worker-1", 11), ("machine", 0)):  # two workers alike
                w.writerow([1_800_000_000 + t, f"{t:.3f}", role, pid, "running", "40.0", 30_000_000, 4])
        w.writerow([1_800_000_003, "2.250", "worker-0", 10, "zombie", "180.0", 30_000_000, 1])  # exiting
    cpu, rss, machine = resource_series(load_run(folder))
    # Before: the exit sample drew a 180% spike, and worker-1's line hid worker-0's exactly
    assert [max(v for _, v in s.points) for s in cpu] == [40.0, 40.0]
    assert [(s.dashed, s.width) for s in cpu] == [(False, 2.6), (True, 1.6)]
    assert [(s.dashed, s.width) for s in rss] == [(False, 2.6), (True, 1.6)]
    html = write_html_report(folder).read_text()
    section = html[html.index("<h2>Resources</h2>"):]
    assert section.count('<figure class="chart-box">') >= 3  # CPU, memory and the machine: the third alone ...
    assert ".grid2>:last-child:nth-child(odd){grid-column:1/-1}" in html  # ... takes the whole row
