"""The live page of `loadtest run --web`, driven in a real browser (Chromium through Playwright).

A real run serves it; the test reads the figures through their `data-metric` attributes, sets a
target's rate from the page and sees the target's rate follow, and stops the run from the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from .web_runs import WebRun

CHROMIUM = Path("/usr/bin/chromium")
METRICS = ("requests", "failures", "rps", "p50_ms", "p99_ms")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Chromium at /usr/bin/chromium (Debian package chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extras)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def figure(page: Any, target: str, metric: str) -> float:
    text = page.locator(f'tr[data-target="{target}"] [data-metric="{metric}"]').inner_text()
    return float(text.replace(",", "")) if text.strip() else float("nan")


def shown(target: str, metric: str) -> str:
    """A JavaScript expression: the figure the page shows for `target`'s `metric`, NaN while its row is not
    there yet (a predicate that throws ends `wait_for_function` at once instead of waiting)."""
    return (f"(e => e ? Number(e.textContent.replace(/,/g, '')) : NaN)"
            f"(document.querySelector('tr[data-target=\"{target}\"] [data-metric=\"{metric}\"]'))")


def test_the_page_shows_the_run_follows_a_level_set_on_it_and_stops_it(tmp_path: Path, browser: Any) -> None:
    web = WebRun(tmp_path, duration="30s", rate=20)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    elsewhere: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(web.url.split("?")[0]) else None)
    try:
        answer = page.goto(web.url, wait_until="load")
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp

        # The numbers move: the requests so far grow from one second to the next.
        # (The rows appear with the page's first frame: until then a figure reads as NaN, not an error, which
        # would end the wait at once.)
        page.wait_for_function(f"() => {shown('open', 'requests')} > 0", timeout=15000)
        first = figure(page, "open", "requests")
        page.wait_for_function(f"() => {shown('open', 'requests')} > {first}", timeout=5000)
        for metric in METRICS:
            assert figure(page, "closed", metric) >= 0, metric
        assert figure(page, "open", "rate") == 20 and figure(page, "closed", "users") == 2
        assert page.locator('tr[data-target="open"] [data-metric="users"]').count() == 0
        assert figure(page, "Aggregated", "requests") >= figure(page, "open", "requests")
        assert page.locator("#chart-rps path[data-series='open']").count() == 1  # drawn by the page's own SVG code

        # A level set on the page: the target's rate follows within seconds.
        page.fill('form[data-target="open"] input', "150")
        page.click('form[data-target="open"] button')
        page.wait_for_function(f"() => {shown('open', 'rate')} === 150", timeout=8000)
        page.wait_for_function(f"() => {shown('open', 'rps')} > 120", timeout=6000)
        assert page.locator("#changes tbody tr").count() == 1
        assert page.locator("#chart-level path[data-series^='open']").count() == 1

        # A bad level typed on the page is refused with the API's sentence.
        page.fill('form[data-target="closed"] input', "2.5")
        page.click('form[data-target="closed"] button')
        page.wait_for_function("() => (document.getElementById('message')?.textContent ?? '').includes('whole number')",
                               timeout=3000)

        # Stop from the page: the run ends as its duration would, and the page links to its files.
        page.click("#stop")
        page.wait_for_selector("#done:not([hidden])", timeout=20000)
        links = page.locator("#links a")
        names = [links.nth(i).inner_text() for i in range(links.count())]
        assert {"report.html", "summary.json", "stats.csv", "history.csv"} <= set(names)
        assert page.locator("#state").inner_text().lower() == "done"
        href = page.locator("#links a", has_text="summary.json").get_attribute("href")
        fetched = page.request.get(web.url.split("?")[0].rstrip("/") + href)
        assert fetched.status == 200 and json.loads(fetched.text())["stopped"]["origin"] == "api"
        report = page.request.get(web.url.split("?")[0].rstrip("/") + "/files/report.html")
        assert report.status == 200 and b"<svg" in report.body()
        assert b'class="mark"' in report.body()  # the level change, marked on the report's charts
        page.close()  # the page's event stream closes: the command ends at once
        code, out, err = web.finish()
        assert code == 0, err
        summary = web.summary()
        assert summary["stopped"]["origin"] == "api" and summary["exit_status"] == 0
        assert re.match(r"PASSED.*stopped from the API", summary["outcome"])
        assert [(c["target"], c["old"], c["new"]) for c in summary["level_changes"]] == [("open", 20.0, 150.0)]
        # The one line Chromium logs for the refused level (its 400) is the only one.
        assert [p for p in problems if "status of 400" not in p] == [], problems
        assert len(problems) == 1
        assert not elsewhere, elsewhere
    finally:
        web.kill()
