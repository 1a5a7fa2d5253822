"""Run folders: each run makes its own, and reading one back is bounded whatever its files are.

Every case is caused for real: concurrent runs of one config, an --out folder
that holds files, a history.csv that is a FIFO or a symlink to /dev/zero, a
zlib bomb in histograms.json, a 5000-digit integer in summary.json.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from loadtest.outputs.compare import compare_runs
from loadtest.outputs.html_report import write_html_report
from loadtest.outputs.run_folder import load_run, make_run_folder, release_run_folder
from loadtest.outputs.run_folder_checks import MAX_CSV_BYTES, MAX_HISTOGRAM_PAYLOAD_BYTES, MAX_SUMMARY_BYTES, RunFolderError
from loadtest.core.stats import new_histogram

CONFIG = """\
name: folders
servers: [{name: site, kind: http, listen: "127.0.0.1:0", workers: 1}]
targets: [{name: page, url: "http://{site}/", concurrency: 2}]
duration: 1s
workers: 1
out: %s
"""
BOMB_BYTES = 256 * 2**20  # what the bomb inflates to; reading it whole would cost at least this much memory
MAX_RSS_MIB = 200  # report on a bombed folder: the interpreter, hdrh and one capped histogram


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write_config(tmp_path: Path, out: Path) -> Path:
    config = tmp_path / "folders.yaml"
    config.write_text(CONFIG % json.dumps(str(out)))
    return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run's folder, copied by each test that damages it."""
    base = tmp_path_factory.mktemp("folder")
    done = cli("run", str(write_config(base, base)), "--out", str(base / "run"), "-q", cwd=base)
    assert done.returncode == 0, done.stderr
    return base / "run"


def history_is_whole(folder: Path) -> bool:
    """One header, then rows of one run: elapsed seconds never go back within a target."""
    with open(folder / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    last: dict[str, float] = {}
    for row in body:
        if len(row) != len(header) or row == header:
            return False
        name, elapsed = row[header.index("Name")], float(row[header.index("Elapsed")])
        if elapsed < last.get(name, 0.0):
            return False
        last[name] = elapsed
    return bool(body)


# -- making the folder ----------------------------------------------------------


def test_two_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    config = write_config(tmp_path, reports)
    # An earlier run's folder for every stamp these runs can get: both collide with it, and then with each
    # other, whichever second they start in.
    now = datetime.now()
    for s in range(-2, 30):
        earlier = reports / f"folders-{now + timedelta(seconds=s):%Y%m%d-%H%M%S}"
        earlier.mkdir(parents=True, exist_ok=True)
        (earlier / "history.csv").write_text("earlier run\n")
    procs = [subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(config), "-q"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    folders = [Path(out.strip()) for out, _ in outs]
    assert folders[0] != folders[1]
    assert {f.name.rsplit("-", 1)[1] for f in folders} <= {"2", "3"}, folders  # suffixed, not the earlier's
    for folder in folders:
        assert history_is_whole(folder), folder
        assert json.loads((folder / "summary.json").read_text())["exit_status"] == 0
    assert all((p / "history.csv").read_text() == "earlier run\n" for p in reports.iterdir() if p not in folders)


def test_out_onto_a_folder_that_holds_files_is_refused_unless_overwrite(run_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path)
    taken = tmp_path / "taken"
    shutil.copytree(run_dir, taken)
    (taken / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in taken.iterdir()}

    refused = cli("run", str(config), "--out", str(taken), "-q", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "is not empty" in refused.stderr and "--overwrite" in refused.stderr, refused.stderr
    assert {p.name: p.read_bytes() for p in taken.iterdir()} == before  # nothing touched

    (tmp_path / "empty").mkdir()
    into_empty = cli("run", str(config), "--out", str(tmp_path / "empty"), "-q", cwd=tmp_path)
    assert into_empty.returncode == 0 and into_empty.stdout.strip() == str(tmp_path / "empty"), into_empty.stderr
    assert history_is_whole(tmp_path / "empty")

    overwritten = cli("run", str(config), "--out", str(taken), "--overwrite", "-q", cwd=tmp_path)
    assert overwritten.returncode == 0, overwritten.stderr
    assert (taken / "notes.txt").read_text() == "mine"  # only a run's own files are replaced
    assert history_is_whole(taken)
    assert json.loads((taken / "summary.json").read_text())["started"] != \
        json.loads(before["summary.json"])["started"]


def test_making_a_folder_is_exclusive_and_a_failed_claim_says_why(tmp_path: Path) -> None:
    first, made = make_run_folder(tmp_path / "r" / "x-20260101-000000", exact=False)
    second, made_too = make_run_folder(tmp_path / "r" / "x-20260101-000000", exact=False)
    assert made and made_too and first.name == "x-20260101-000000" and second.name == "x-20260101-000000-2"
    release_run_folder(second, made=True)
    assert not second.exists()  # a run that failed before it began leaves nothing behind
    assert make_run_folder(first, exact=True) == (first, False)  # empty: fine, and claimed by its history.csv
    with pytest.raises(RunFolderError, match="is not empty"):
        make_run_folder(first, exact=True)
    release_run_folder(first, made=False)
    assert first.is_dir() and not list(first.iterdir())  # given empty, left empty

    # Eight runs given one empty --out folder at the same moment: exactly one gets it.
    claims: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        try:
            make_run_folder(first, exact=True)
            claims.append("won")
        except RunFolderError as e:
            claims.append(str(e))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert claims.count("won") == 1 and len(claims) == 8, claims
    release_run_folder(first, made=False)
    (first / "summary.json").write_text("{}")
    with pytest.raises(RunFolderError, match="is not empty"):
        make_run_folder(first, exact=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="exists and is not a folder"):
        make_run_folder(tmp_path / "file", exact=True)


def test_a_run_that_fails_before_it_begins_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # the run's server cannot listen here: the run fails
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{taken.getsockname()[1]}"')
                      % json.dumps(str(tmp_path)))
    (tmp_path / "empty").mkdir()
    try:
        for out in (tmp_path / "new", tmp_path / "empty"):
            done = cli("run", str(config), "--out", str(out), "-q", cwd=tmp_path)
            assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    finally:
        taken.close()
    assert not (tmp_path / "new").exists() and not list((tmp_path / "empty").iterdir())


# -- reading it back, bounded ---------------------------------------------------------


def damaged(run_dir: Path, tmp_path: Path, name: str = "bad") -> Path:
    folder = tmp_path / name
    shutil.copytree(run_dir, folder)
    return folder


def assert_refused(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr


def test_a_history_that_is_dev_zero_or_a_fifo_is_refused_not_read(run_dir: Path, tmp_path: Path) -> None:
    zero = damaged(run_dir, tmp_path, "zero")
    (zero / "history.csv").unlink()
    (zero / "history.csv").symlink_to("/dev/zero")
    fifo = damaged(run_dir, tmp_path, "fifo")
    (fifo / "history.csv").unlink()
    os.mkfifo(fifo / "history.csv")
    for folder, kind in ((zero, "a symbolic link, to /dev/zero"), (fifo, "a FIFO")):
        # Before: /dev/zero was read until 8 GB of RSS, and the FIFO's open waited forever (timeout here).
        for args in (["report", str(folder), "--out", str(tmp_path / "r.html")],
                     ["compare", str(run_dir), str(folder)]):
            assert_refused(cli(*args, cwd=tmp_path, timeout=30), "history.csv: is not a regular file", kind)


def test_report_and_compare_read_the_same_files(run_dir: Path, tmp_path: Path) -> None:
    folder = damaged(run_dir, tmp_path)
    for name in ("failures.csv", "histograms.json"):
        (folder / name).unlink()
        os.mkfifo(folder / name)  # a read of either would hang or be refused
    # Before, compare read neither and passed a folder report refused
    for args in (["compare", str(run_dir), str(folder)], ["report", str(folder), "--out", str(tmp_path / "r.html")]):
        assert_refused(cli(*args, cwd=tmp_path, timeout=30), "is not a regular file (it is a FIFO)")


def summary_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / "summary.json").read_text())
        change(data)
        (folder / "summary.json").write_text(json.dumps(data))
    return edit


def unrelated_file(name: str, link: bool) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        other = folder.parent / f"other-{name}"
        other.write_text("id,when,what\n1,2026-01-01,nothing to do with a run\n")
        (folder / name).unlink()
        if link:
            (folder / name).symlink_to(other)
        else:
            shutil.copy(other, folder / name)
    return edit


DAMAGE = [  # what was done to a real run's folder, and what both commands then say
    (summary_edit(lambda d: d["aggregated"].update(requests=1e308)), "aggregated.requests is out of range"),
    (summary_edit(lambda d: d["targets"][0]["latency_ms"].update(p99="9999")),
     "targets[0].latency_ms.p99 is not a number (got \"9999\")"),
    (summary_edit(lambda d: d["targets"][0].update(requests_per_s=-5)),
     "targets[0].requests_per_s is out of range (got -5"),
    (summary_edit(lambda d: d["workers"][0].update(cpu_user_s="lots")), "workers[0].cpu_user_s is not a number"),
    (summary_edit(lambda d: d["targets"][0].update(name={"a": 1})), "targets[0].name is not text"),
    (summary_edit(lambda d: d["targets"][0].pop("latency_ms")), "targets[0].latency_ms is missing"),
    (unrelated_file("history.csv", link=True), "history.csv: is not a regular file (it is a symbolic link"),
    (unrelated_file("stats.csv", link=True), "stats.csv: is not a regular file (it is a symbolic link"),
    (unrelated_file("history.csv", link=False), "history.csv: is not a loadtest history.csv (its header begins "
                                                "'id,when,what')"),
    (unrelated_file("stats.csv", link=False), "stats.csv: is not a loadtest stats.csv"),
]


@pytest.mark.parametrize("damage, says", DAMAGE, ids=[s for _, s in DAMAGE])
def test_report_and_compare_refuse_a_damaged_folder_with_one_sentence(run_dir: Path, tmp_path: Path,
                                                                       damage: Callable[[Path], None],
                                                                       says: str) -> None:
    # Before: report drew most of these (exit 0) while compare refused them, or called a target "missing"
    folder = damaged(run_dir, tmp_path)
    damage(folder)
    with pytest.raises(RunFolderError) as by_report:
        write_html_report(folder, tmp_path / "r.html")
    with pytest.raises(RunFolderError) as by_compare:
        compare_runs(run_dir, folder)
    assert str(by_report.value) == str(by_compare.value)
    assert says in str(by_report.value) and str(folder) in str(by_report.value), str(by_report.value)
    assert "\n" not in str(by_report.value)


def test_both_commands_exit_2_on_a_damaged_folder(run_dir: Path, tmp_path: Path) -> None:
    folder = damaged(run_dir, tmp_path)
    summary_edit(lambda d: d["aggregated"].update(requests=1e308))(folder)
    report = cli("report", str(folder), "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    compare = cli("compare", str(run_dir), str(folder), cwd=tmp_path)
    assert_refused(report, "aggregated.requests is out of range")
    assert report.stderr == compare.stderr and compare.returncode == 2


def zlib_bomb(inflated: int) -> str:
    """A well-formed encoded HdrHistogram (real headers) whose counts inflate to `inflated` bytes of zeros."""
    real = base64.b64decode(new_histogram().encode())
    header = zlib.decompress(real[8:])[:40]
    squeeze = zlib.compressobj(9)
    chunk = bytes(2**20)
    body = b"".join([squeeze.compress(header), *(squeeze.compress(chunk) for _ in range(inflated // len(chunk))),
                     squeeze.flush()])
    return base64.b64encode(real[:4] + len(body).to_bytes(4, "big") + body).decode("ascii")


# ru_maxrss of a child counts the memory it was forked with, and a fork from this test process (hundreds of
# MiB late in a suite) would count all of it: a small interpreter forks the CLI and reports its peak instead.
_MEASURE = ("import os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.execv(sys.executable, [sys.executable, '-m', 'loadtest', *sys.argv[2:]])\n"
            "_, status, usage = os.wait4(pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_measured(args: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run the CLI; its exit status, stderr and peak RSS in MiB (from wait4, the child's own)."""
    peak = cwd / "peak-rss-kib.txt"
    with open(cwd / "stderr.txt", "w+") as err:
        done = subprocess.run([sys.executable, "-c", _MEASURE, str(peak), *args], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=err, timeout=60)
        err.seek(0)
        return done.returncode, err.read(), int(peak.read_text()) / 1024


def test_a_zlib_bomb_histogram_is_refused_before_it_is_inflated(run_dir: Path, tmp_path: Path) -> None:
    folder = damaged(run_dir, tmp_path)
    histograms = json.loads((folder / "histograms.json").read_text())
    histograms["page"]["latency"] = zlib_bomb(BOMB_BYTES)
    (folder / "histograms.json").write_text(json.dumps(histograms))
    for args in (["report", str(folder), "--out", str(tmp_path / "r.html")],
                 ["compare", str(run_dir), str(folder), "--html", str(tmp_path / "c.html")]):
        status, stderr, rss_mib = run_measured(args, tmp_path)
        assert status == 2 and "Traceback" not in stderr, stderr
        assert f"over the {MAX_HISTOGRAM_PAYLOAD_BYTES:,} bytes" in stderr and "'page'" in stderr, stderr
        assert rss_mib < MAX_RSS_MIB, rss_mib  # before: the whole bomb, and a copy, in memory


def test_a_histogram_whose_header_asks_for_a_huge_counts_array_is_refused(run_dir: Path, tmp_path: Path) -> None:
    real = base64.b64decode(new_histogram().encode())
    payload = bytearray(zlib.decompress(real[8:]))
    payload[12:16] = (5).to_bytes(4, "big")  # 5 significant digits
    payload[24:32] = (2**62).to_bytes(8, "big")  # up to 2^62: 6 million counts, 48 MB once decoded
    body = zlib.compress(bytes(payload))
    folder = damaged(run_dir, tmp_path)
    histograms = json.loads((folder / "histograms.json").read_text())
    histograms["page"]["latency"] = base64.b64encode(real[:4] + len(body).to_bytes(4, "big") + body).decode()
    (folder / "histograms.json").write_text(json.dumps(histograms))
    assert_refused(cli("report", str(folder), "--out", str(tmp_path / "r.html"), cwd=tmp_path),
                   "beyond what a run writes", "5 significant digits")


def test_out_of_range_summary_numbers_and_oversized_files_are_refused(run_dir: Path, tmp_path: Path) -> None:
    huge = damaged(run_dir, tmp_path, "huge")
    data = json.loads((huge / "summary.json").read_text())
    data["targets"][0]["requests"] = "HUGE"
    # A 5000-digit integer: json.loads itself raised ValueError (int conversion limit), a traceback.
    (huge / "summary.json").write_text(json.dumps(data).replace('"HUGE"', "1" + "0" * 4999))
    nan = damaged(run_dir, tmp_path, "nan")
    data = json.loads((nan / "summary.json").read_text())
    data["aggregated"]["requests_per_s"] = float("inf")
    (nan / "summary.json").write_text(json.dumps(data))  # json.dumps writes Infinity
    big = damaged(run_dir, tmp_path, "big")
    with open(big / "summary.json", "r+b") as f:
        f.truncate(MAX_SUMMARY_BYTES + 1)  # sparse: costs no disk
    for folder, phrases in ((huge, ("targets[0].requests is out of range", "5000 digits")),
                            (nan, ("aggregated.requests_per_s is out of range", "inf")),
                            (big, (f"over the {MAX_SUMMARY_BYTES:,} bytes",))):
        for args in (["report", str(folder), "--out", str(tmp_path / "r.html")],
                     ["compare", str(run_dir), str(folder)]):
            assert_refused(cli(*args, cwd=tmp_path), "summary.json", *phrases)


def test_a_real_run_folder_reads_back_whole(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.history and run.resources is not None and set(run.histograms) == {"page", "Aggregated"}
    assert load_run(run_dir, files=()).history == []  # only what is asked for is read


def test_a_history_over_its_cap_is_refused_and_one_under_it_costs_a_bounded_memory(run_dir: Path,
                                                                                    tmp_path: Path) -> None:
    big = damaged(run_dir, tmp_path, "big")
    with open(big / "history.csv", "r+b") as f:
        f.truncate(MAX_CSV_BYTES + 1)  # sparse: costs no disk
    for args in (["report", str(big), "--out", str(tmp_path / "r.html")], ["compare", str(run_dir), str(big)]):
        assert_refused(cli(*args, cwd=tmp_path), "history.csv", f"over the {MAX_CSV_BYTES:,} bytes")

    long = damaged(run_dir, tmp_path, "long")  # a history.csv of 8 MiB: ~45,000 rows
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    elapsed = rows[0].index("Elapsed")
    with open(long / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        second = 0
        while f.tell() < 8 * 2**20:
            second += 1
            for row in rows[1:3]:
                w.writerow([*row[:elapsed], f"{second:.3f}", *row[elapsed + 1:]])
    status, stderr, rss_mib = run_measured(["report", str(long), "--out", str(tmp_path / "long.html")], tmp_path)
    # Measured: as dicts (csv.DictReader) these rows took 173 MiB of RSS; as CsvRows 77 MiB.
    assert status == 0 and rss_mib < MAX_RSS_MIB, (status, stderr, rss_mib)
