"""Does the controller's memory stay flat however long a run lasts? The requirement: at most 40 MiB above
its RSS in the first second.

    .venv/bin/python benchmarks/controller_memory.py [--duration 60s] [--wide-duration 60s] [--only sites|wide]

Runs `loadtest run` twice as a user would, quietly, into a temporary folder:

- sites: configs/sites.yaml with 2 workers for --duration (the issue asks for 60 s and 10 minutes);
- wide: 16 workers x 20 targets against one embedded http server for --wide-duration: the most
  snapshots a second to decode and merge (16 x 20 each second), at a low request rate so the
  generator and the server do not starve the controller of CPU on a small machine.

It reads the controller's RSS from each run's resources.csv (one row a second) and prints the RSS of
the first second, the highest RSS and the difference, and whether the difference is within the limit.
Exit status 1 if a run's difference is over the limit, 2 if a run did not produce its reports.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.execution.resources import CONTROLLER_ROLE

LIMIT_MIB = 40.0  # the most the controller may grow over a run
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
SITES_CONFIG = ROOT / "configs" / "sites.yaml"
SITES_WORKERS = 2
WIDE_WORKERS = 16
WIDE_TARGETS = 20
WIDE_USERS_PER_TARGET = 16  # one virtual user per worker and target
WIDE_THINK = "50ms"  # each user pauses between requests: about 20 requests/s per user


def wide_config(folder: Path) -> Path:
    """A config with WIDE_TARGETS closed-model targets on one embedded http server."""
    lines = ["name: wide", "duration: 60s", "out: reports", "servers:", "  - name: site", "    kind: http",
             "    listen: 127.0.0.1:0", "    workers: 1", "targets:"]
    for k in range(WIDE_TARGETS):
        lines += [f"  - name: t{k:02d}", f"    url: http://{{site}}/bytes/{100 + k}",
                  f"    concurrency: {WIDE_USERS_PER_TARGET}", f"    think: {WIDE_THINK}"]
    path = folder / "wide.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def controller_rss(run_dir: Path) -> list[tuple[float, int]]:
    """(elapsed seconds, RSS bytes) of the controller, one per sample, from resources.csv."""
    with open(run_dir / "resources.csv", newline="") as f:
        return [(float(row["elapsed_s"]), int(row["rss_bytes"])) for row in csv.DictReader(f)
                if row["role"] == CONTROLLER_ROLE and row["rss_bytes"]]


def run_once(label: str, config: Path, workers: int, duration: str, folder: Path) -> float | None:
    """Run one config; print its controller RSS figures; return the growth in MiB (None: no reports)."""
    run_dir = folder / label
    command = [sys.executable, "-m", "loadtest", "run", str(config), "--workers", str(workers),
               "--duration", duration, "--quiet", "--out", str(run_dir)]
    print(f"{label}: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if not (run_dir / "resources.csv").exists():
        print(f"{label}: no reports (exit status {done.returncode}): {done.stderr.strip()}")
        return None
    samples = controller_rss(run_dir)
    first = next((rss for elapsed, rss in samples if elapsed >= 1.0), samples[0][1])
    peak = max(rss for _, rss in samples)
    growth = (peak - first) / MIB
    verdict = "ok" if growth <= LIMIT_MIB else f"OVER the {LIMIT_MIB:g} MiB limit"
    print(f"{label}: exit {done.returncode}, {len(samples)} samples over {samples[-1][0]:.0f} s; controller RSS "
          f"first second {first / MIB:.1f} MiB, max {peak / MIB:.1f} MiB, difference {growth:+.1f} MiB ({verdict})",
          flush=True)
    return growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="60s", help="length of the configs/sites.yaml run (60s, 10m)")
    parser.add_argument("--wide-duration", default="60s", help=f"length of the {WIDE_WORKERS} x {WIDE_TARGETS} run")
    parser.add_argument("--only", choices=("sites", "wide"), help="run one of the two")
    args = parser.parse_args()
    growths = []
    with tempfile.TemporaryDirectory(prefix="loadtest-memory-") as tmp:
        folder = Path(tmp)
        if args.only in (None, "sites"):
            growths.append(run_once("sites", SITES_CONFIG, SITES_WORKERS, args.duration, folder))
        if args.only in (None, "wide"):
            growths.append(run_once("wide", wide_config(folder), WIDE_WORKERS, args.wide_duration, folder))
    if any(g is None for g in growths):
        return 2
    return 1 if any(g is not None and g > LIMIT_MIB for g in growths) else 0


if __name__ == "__main__":
    sys.exit(main())
