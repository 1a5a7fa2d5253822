"""The documentation's pictures of a real run: the live terminal view and report.html.

Runs configs/sites.yaml for a few seconds on loopback (its embedded server, two workers) inside a tmux
terminal, keeps what the terminal showed near the end as docs/img/live.svg (rendered by rich), and
screenshots the run's report.html with headless Chromium as docs/img/report.png. Run it again when the
live view or the report changes, and commit what it writes:

    python docs/gen/screenshots.py            # needs tmux and chromium (apt-get install tmux chromium)

Nothing here runs in CI: the pictures are committed, the script that made them beside them.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
COLUMNS, LINES = 112, 24  # the terminal the live view is drawn in
DURATION_S = 6
CAPTURE_AT_S = 4.6  # seconds into the load: the table is full and the bar most of the way
REPORT_WIDTH, REPORT_HEIGHT = 1100, 1500  # the part of report.html shown: the badge, summary and first charts
MAX_PNG_BYTES = 300 * 1024


def loadtest() -> str:
    """The loadtest command beside this interpreter (a checkout's .venv), else the one on PATH."""
    here = Path(sys.executable).with_name("loadtest")
    found = str(here) if here.exists() else shutil.which("loadtest")
    if found is None:
        sys.exit("loadtest is not installed: pip install -e . first")
    return found


def live_view(run_dir: Path) -> str:
    """Run the config in a tmux terminal; return what the terminal showed at CAPTURE_AT_S, with its colours."""
    session = f"loadtest-docs-{os.getpid()}"
    command = f"{loadtest()} run configs/sites.yaml --duration {DURATION_S}s --workers 2 --out {run_dir}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(COLUMNS), "-y", str(LINES),
                    "-c", str(ROOT), f"{command}; sleep 30"], check=True)
    try:
        started = time.monotonic()
        while not (run_dir / "history.csv").exists():  # the folder fills once the workers run
            if time.monotonic() - started > 60:
                raise SystemExit("the run did not start within 60 s")
            time.sleep(0.05)
        time.sleep(CAPTURE_AT_S)
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-e", "-t", session], check=True,
                               capture_output=True, text=True).stdout
        deadline = time.monotonic() + DURATION_S + 60
        while not (run_dir / "report.html").exists():
            if time.monotonic() > deadline:
                raise SystemExit("the run did not write report.html")
            time.sleep(0.1)
        time.sleep(0.5)  # report.html is written last: let it be closed
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    return shown.rstrip("\n") + "\n"


def write_live_svg(shown: str, path: Path) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=COLUMNS, file=io.StringIO(), force_terminal=True)
    console.print(Text.from_ansi(shown))
    console.save_svg(str(path), title="loadtest run configs/sites.yaml")


def write_report_png(report: Path, path: Path) -> None:
    """report.html as Chromium draws it, its top REPORT_HEIGHT pixels."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={REPORT_WIDTH},{REPORT_HEIGHT}",
                        f"--screenshot={path}", report.as_uri()], check=True, capture_output=True, timeout=120)
    if path.stat().st_size > MAX_PNG_BYTES:
        raise SystemExit(f"{path} is {path.stat().st_size:,} bytes, over {MAX_PNG_BYTES:,}: make it smaller")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMG, help="where the pictures go (default docs/img)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shown = live_view(run_dir)
        write_live_svg(shown, args.out / "live.svg")
        write_report_png(run_dir / "report.html", args.out / "report.png")
    for name in ("live.svg", "report.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
