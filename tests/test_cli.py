"""The commands beyond `run`: report, compare and serve, as a user types them."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests
from typer.testing import CliRunner

import loadtest
from loadtest.cli.app import app
from loadtest.model.config import parse_config
from loadtest.execution.controller import run

from .test_run import site_config


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    fast = run(parse_config(site_config([{"name": "page", "url": "http://{site}/", "concurrency": 4}],
                                        requests=300, workers=1)), out_dir=root / "fast")
    slow = run(parse_config(site_config([{"name": "page", "url": "http://{site}/delay/5", "concurrency": 4}],
                                        requests=300, workers=1)), out_dir=root / "slow")
    return fast.run_dir, slow.run_dir


def test_compare_exits_1_when_the_second_run_is_worse(runs: tuple[Path, Path], tmp_path: Path) -> None:
    fast, slow = runs
    worse = cli("compare", str(fast), str(slow), "--format", "json", "--html", str(tmp_path / "c.html"), cwd=tmp_path)
    assert worse.returncode == 1, worse.stderr
    data = json.loads(worse.stdout)
    assert data["worse"] is True
    assert (tmp_path / "c.html").read_text().startswith("<!DOCTYPE html>")
    # These runs last well under a second, so their CPU per request is mostly worker start-up and
    # varies from run to run by tens of percent; a wide tolerance leaves only real changes.
    better = cli("compare", str(slow), str(fast), "--tolerance", "200%", cwd=tmp_path)
    assert better.returncode == 0, better.stdout + better.stderr
    assert "page" in better.stdout


@pytest.mark.parametrize("args, message", [
    (["--tolerance", "lots"], "--tolerance: must be a percentage"),
    (["--format", "xml"], "--format: must be one of table, csv, json"),
])
def test_compare_bad_options_exit_2(runs: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    done = cli("compare", str(runs[0]), str(runs[1]), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_report_rebuilds_the_page_and_refuses_what_is_not_a_run(runs: tuple[Path, Path], tmp_path: Path) -> None:
    fast, _ = runs
    original = (fast / "report.html").read_bytes()
    done = cli("report", str(fast), "--out", str(tmp_path / "again.html"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "again.html")
    assert (tmp_path / "again.html").read_bytes() == original
    (tmp_path / "empty").mkdir()
    bad = cli("report", str(tmp_path / "empty"), cwd=tmp_path)
    assert bad.returncode == 2 and "summary.json" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("compare", str(fast), str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_report_and_compare_refuse_outputs_they_cannot_write(runs: tuple[Path, Path], tmp_path: Path) -> None:
    fast, slow = runs
    for args, message in (
        (["report", str(fast), "--out", str(tmp_path)], "is a folder; give the path of the HTML file"),
        (["report", str(fast), "--out", str(tmp_path / "nowhere" / "r.html")], "cannot be written (No such file"),
        (["compare", str(fast), str(slow), "--html", str(tmp_path)], "is a folder; give the path"),
    ):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def damaged_copy(run_dir: Path, where: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(run_dir, where)
    edit(where)
    return where


def test_damaged_run_folders_are_bad_input_not_tracebacks(runs: tuple[Path, Path], tmp_path: Path) -> None:
    fast, _ = runs

    def summary_edit(change):  # type: ignore[no-untyped-def]
        def edit(folder: Path) -> None:
            data = json.loads((folder / "summary.json").read_text())
            change(data)
            (folder / "summary.json").write_text(json.dumps(data))
        return edit

    def deep(folder: Path) -> None:
        (folder / "summary.json").write_text("[" * 100_000 + "]" * 100_000)

    def huge_rates(folder: Path) -> None:
        text = (folder / "history.csv").read_text().splitlines()
        header = text[0].split(",")
        column = header.index("Requests/s")
        rows = [line.split(",") for line in text[1:]]
        for k, row in enumerate(rows):
            row[column] = "1.7e308" if k % 2 else "-1.7e308"
        (folder / "history.csv").write_text("\n".join([text[0], *(",".join(r) for r in rows)]) + "\n")

    cases = [
        (summary_edit(lambda d: d.update(aggregated="x")), 2, "aggregated is not a mapping"),
        (summary_edit(lambda d: d["targets"][0].update(latency_ms=[1, 2])), 2, "latency_ms is not a mapping"),
        (summary_edit(lambda d: d.update(targets=["x"])), 2, "a target is not a mapping"),
        (deep, 2, "nested too deeply"),
        (huge_rates, 0, ""),  # absurd figures are left out of the charts
    ]
    for k, (edit, status, message) in enumerate(cases):
        folder = damaged_copy(fast, tmp_path / f"d{k}", edit)
        for args in (["report", str(folder), "--out", str(tmp_path / f"d{k}.html")], ["compare", str(fast), str(folder)]):
            done = cli(*args, cwd=tmp_path)
            assert "Traceback" not in done.stderr, done.stderr
            if status:
                assert done.returncode == status and message in done.stderr, (args, done.stderr)
        if not status:
            assert (tmp_path / f"d{k}.html").exists()


def test_compare_refuses_runs_with_nothing_in_common_and_fails_when_b_lacks_a_target(runs: tuple[Path, Path], tmp_path: Path) -> None:
    fast, _ = runs

    def unrelated(folder: Path) -> None:
        data = json.loads((folder / "summary.json").read_text())
        data["targets"] = [dict(data["targets"][0], name="other")]
        data.pop("aggregated", None)
        (folder / "summary.json").write_text(json.dumps(data))

    other = damaged_copy(fast, tmp_path / "other", unrelated)
    done = cli("compare", str(fast), str(other), cwd=tmp_path)
    assert done.returncode == 2 and "no target in common" in done.stderr

    def renamed(folder: Path) -> None:  # the totals are still there, but "page" is gone from B
        data = json.loads((folder / "summary.json").read_text())
        data["targets"] = [dict(data["targets"][0], name="other")]
        (folder / "summary.json").write_text(json.dumps(data))

    lacking = damaged_copy(fast, tmp_path / "lacking", renamed)
    done = cli("compare", str(fast), str(lacking), "--tolerance", "1000%", cwd=tmp_path)
    assert done.returncode == 1 and "1 target of A missing from B" in done.stdout


def test_run_and_serve_refuse_absurd_options(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("requests: 10\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: 1}]\n")
    for args, message in (
        (["run", str(config), "--workers", "100000"], "--workers: must be at most 256 processes"),
        (["run", str(config), "--out", ""], "--out: must be a folder path"),
        (["serve", "http", "--listen", "127.0.0.1:0", "--workers", "100000"], "--workers: must be at most 256"),
        (["serve", "echo", "--listen", "foo:80"], "--listen: host must be an IP address or localhost"),
    ):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == [config]  # no report folder, no report files in the current folder


def test_serve_http_runs_until_ctrl_c_and_says_what_it_served(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "serve", "http", "--listen", "127.0.0.1:0",
                             "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving http on http://127.0.0.1:") and "(2 processes)" in line
    url = line.split()[3]
    for _ in range(5):
        assert requests.get(url, timeout=5).status_code == 200
    time.sleep(0.3)  # the counts are shared memory, written before each send
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "5 requests served" in out


def test_bad_serve_options_exit_2(tmp_path: Path) -> None:
    done = cli("serve", "echo", "--listen", "127.0.0.1:99999", cwd=tmp_path)
    assert done.returncode == 2 and "--listen: port must be between 0 and 65535" in done.stderr


def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    done = cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for code in ("0 the run completed", "1 a threshold failed", "2 bad input", "3 the run itself failed", "130"):
        assert code in text


def test_a_report_folder_that_cannot_be_made_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("requests: 10\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: 1}]\n")
    (tmp_path / "afile").write_text("")
    for out, message in ((tmp_path / "afile", "exists and is not a folder"),
                         (tmp_path / "afile" / "sub", "cannot write reports under")):
        done = cli("run", str(config), "--out", str(out), cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_help_and_version_on_the_app_and_every_command() -> None:
    commands = [[], ["run"], ["report"], ["compare"], ["serve"], ["serve", "http"], ["serve", "echo"]]
    runner = CliRunner()  # in-process: 21 interpreters would cost seconds of a shared machine
    for command in commands:
        short, long = runner.invoke(app, [*command, "-h"]), runner.invoke(app, [*command, "--help"])
        assert short.exit_code == long.exit_code == 0 and short.stdout == long.stdout, command
        for jargon in ("<bool>", "<str>", "<int", "<list", "[default: 0]"):  # Python types, a default that is "auto"
            assert jargon not in short.stdout, (command, jargon)
        assert not re.search(r"\{[A-Z_]+\}", short.stdout), command  # click's mark for a required argument
        version = runner.invoke(app, [*command, "--version"])
        assert version.exit_code == 0 and version.stdout == f"loadtest {loadtest.__version__}\n", command
    run_help = " ".join(runner.invoke(app, ["run", "-h"]).stdout.split())
    assert "run [OPTIONS] CONFIG" in run_help and "loadtest run http://127.0.0.1:8080/ -c 50 -d 10s" in run_help
    serve_help = " ".join(runner.invoke(app, ["serve", "http", "-h"]).stdout.split())
    assert "/stall/P/S" in serve_help and "default: auto, one per core" in serve_help


def test_a_config_without_run_says_what_was_meant(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("requests: 1\ntargets: [{url: 'http://127.0.0.1:1/'}]\n")
    for args, meant in ((["ok.yaml"], "loadtest run ok.yaml"),
                        (["http://127.0.0.1:1/", "-c", "5"], "loadtest run http://127.0.0.1:1/ -c 5")):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"loadtest: {args[0]!r} is not a command; did you mean `{meant}`?\n"
    typo = cli("rnu", cwd=tmp_path)  # not a file: click's own "did you mean 'run'"
    assert typo.returncode == 2 and "Did you mean 'run'?" in typo.stderr


def test_usage_errors_are_one_line_like_every_other_error(tmp_path: Path) -> None:
    for args, said in (
            (["run", "x.yaml", "--bogus"],
             "loadtest: No such option: --bogus (Possible options: --body, --out); see `loadtest run -h`\n"),
            (["run"], "loadtest: Missing argument 'CONFIG'; see `loadtest run -h`\n"),
            (["serve", "http", "--nope"], "loadtest: No such option: --nope; see `loadtest serve http -h`\n")):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "", args
        assert done.stderr == said  # one line, not click's five-line box
    bare = cli(cwd=tmp_path)  # `loadtest` alone still shows its help
    assert bare.returncode == 2 and "Usage: loadtest [OPTIONS] COMMAND" in bare.stdout + bare.stderr


def test_a_url_without_its_scheme_is_named_as_one(tmp_path: Path) -> None:
    for args in (["127.0.0.1:8080"], ["127.0.0.1:8080/x", "-c", "5"], ["localhost:9"], ["[::1]:80/"]):
        done = cli("run", *args, cwd=tmp_path)
        assert done.returncode == 2, args
        assert done.stderr == f"loadtest: {args[0]}: looks like a URL without http:// (loadtest run " \
                              f"http://{args[0]})\n", done.stderr
    missing = cli("run", "sites.yaml", cwd=tmp_path)  # a file's name is still a missing file
    assert missing.stderr == "loadtest: sites.yaml: no such file\n"


def test_json_prints_summary_json_and_nothing_else_on_stdout(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-m", "loadtest", "serve", "http", "--listen", "127.0.0.1:0",
                               "--workers", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[3]
        done = cli("run", f"{url}/", "-c", "2", "-d", "1s", "-w", "1", "--json", "--out", str(tmp_path / "run"),
                   cwd=tmp_path)
        quiet = cli("run", f"{url}/", "-c", "2", "-n", "50", "-w", "1", "--json", "--quiet",
                    "--out", str(tmp_path / "quiet"), cwd=tmp_path)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert done.stdout == (tmp_path / "run" / "summary.json").read_text().rstrip("\n") + "\n"
    assert "req/s" in done.stderr and "Aggregated" in done.stderr  # the live lines and the table, on stderr
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["aggregated"]["requests"] == 50


def test_progress_thresholds_and_verdicts_read_as_sentences() -> None:
    from loadtest.core.thresholds import Outcome, ThresholdError, parse_threshold
    from loadtest.core.verdicts import Verdicts

    def outcome(text: str, value: float) -> str:
        return Outcome(parse_threshold(text, ["home"]), True, value).measured_text

    assert outcome("error_rate < 1%", 0.0) == "0.00%" and outcome("error_rate < 1%", 0.0123) == "1.23%"
    assert outcome("p95 < 20ms", 1.5) == "1.500 ms" and outcome("rps > 100", 1234.5) == "1,234.5 requests/s"
    assert outcome("failures == 0", 3) == "3"
    with pytest.raises(ThresholdError) as refused:
        parse_threshold("p9x < 5ms", ["home"])
    assert "any percentile pN such as p50, p95 or p99.9" in str(refused.value)
    for accepted in ("p95 < 20ms", "p50 < 1ms", "p99.9 < 1s", "mean < 1ms", "refused == 0"):
        parse_threshold(accepted, ["home"])  # each named in the message's list
    v = Verdicts()
    v.note_behind(0, 3.0, 0.2)  # the first note of an episode: no length yet
    (said,) = v.new()
    assert "since 3.0 s" in said["what"] and "0.0 s so far" not in said["what"]
