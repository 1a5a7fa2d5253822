"""What the controller pays per worker snapshot, and so how many workers one controller can merge.

    .venv/bin/python benchmarks/merge_scale.py [--workers 100] [--targets 10] [--seconds 3] [--open]

Builds snapshots as workers ship them (per target: counters, a latency
histogram of --values latencies spread over 0.2–50 ms; a connect-latency
histogram in the first second only, as keep-alive connections open once), encoded once, then times the controller's work on them for
--seconds simulated seconds: decoding and merging every snapshot into the
run's totals and its second (`RunStats.add`), handing the finished second
over (`ready_intervals`), and the history row (`HistoryWriter.write`: the
percentiles of every target and of Aggregated, once per second). Prints the
CPU µs per snapshot per target, the once-a-second cost, and the number of
workers × targets one controller could merge each second within half a core.
Then what the pipe adds: a worker-second's pickled size and the CPU to
unpickle it (`pickle.loads`, as `Connection.recv` does); what the monitor
pays per snapshot (with --open, each one's p99 lateness); and the capacity
with all of it counted. In-process and CPU-timed (`time.process_time`), so a
busy machine changes little.
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.model.config import parse_config  # noqa: E402
from loadtest.model.kinds import kind_of  # noqa: E402
from loadtest.execution.monitor import RunMonitor  # noqa: E402
from loadtest.outputs.reports import HistoryWriter  # noqa: E402
from loadtest.core.stats import RunStats, Snapshot, TargetSnapshot
from loadtest.core.recorder import TargetRecorder

HALF_CORE = 0.5


def worker_snapshots(workers: int, targets: int, values: int, seq: int, rng: random.Random,
                     open_model: bool = False) -> list[Snapshot]:
    """One second's snapshots of every worker, each target with `values` latencies recorded (and with
    `open_model`, as many lateness and uncorrected latencies, as an open-model target ships)."""
    out = []
    for w in range(workers):
        parts: list[TargetSnapshot] = []
        for t in range(targets):
            rec = TargetRecorder(t)
            for _ in range(values):
                latency = int(rng.lognormvariate(14.5, 0.8))  # ~2 ms median, 0.2–50 ms
                rec.success(latency, 200, 60, 12)
                if open_model:
                    rec.lateness.record(int(rng.expovariate(1 / 200_000)) + 1)  # started ~0.2 ms late
                    rec.uncorrected.record(latency // 2 + 1)
            if seq == 0:  # keep-alive: connections open in the first second only
                for _ in range(3):
                    rec.connected(int(rng.uniform(50_000, 400_000)))
            rec.failure("status", "HTTP 503", 1_500_000)
            parts.append(rec.snapshot())
        out.append(Snapshot(w, seq, float(seq), float(seq + 1), tuple(parts)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=100, help="worker processes simulated (default 100)")
    parser.add_argument("--targets", type=int, default=10, help="targets per worker (default 10)")
    parser.add_argument("--values", type=int, default=2000, help="latencies per target per worker-second (2000)")
    parser.add_argument("--seconds", type=int, default=3, help="simulated seconds (default 3)")
    parser.add_argument("--open", action="store_true",
                        help="open-model targets: each snapshot also ships lateness and uncorrected histograms, and "
                             "the controller's monitor reads each one's p99 lateness (RunMonitor.note_snapshot)")
    args = parser.parse_args()
    if not (1 <= args.workers <= 5000 and 1 <= args.targets <= 100 and 1 <= args.seconds <= 60
            and 1 <= args.values <= 1_000_000):
        parser.error("--workers 1..5000, --targets 1..100, --seconds 1..60, --values 1..1000000")
    rng = random.Random(1)
    # Workers' histograms differ little from second to second; a few distinct ones, reused, keep set-up short.
    distinct = [worker_snapshots(min(args.workers, 8), args.targets, args.values, seq, rng, args.open)
                for seq in range(2)]
    config = parse_config({"duration": f"{args.seconds}s", "targets": [
        {"name": f"t{t}", "url": f"http://127.0.0.1:9/{t}", "concurrency": 1} for t in range(args.targets)]})
    stats = RunStats([(t.name, kind_of(t).row_type(t)) for t in config.targets], args.workers)
    snapshots = args.workers * args.seconds
    add_s = flush_s = note_s = 0.0
    with tempfile.TemporaryDirectory(prefix="merge-scale-") as tmp:
        history = HistoryWriter(Path(tmp) / "history.csv", config)
        monitor = RunMonitor(Path(tmp))  # not started: only its verdicts' bookkeeping per snapshot runs
        for seq in range(args.seconds):
            batch = [Snapshot(w, seq, float(seq), float(seq + 1),
                              distinct[min(seq, 1)][w % len(distinct[0])].targets) for w in range(args.workers)]
            t0 = time.process_time()
            for snap in batch:
                stats.add(snap)
            t1 = time.process_time()
            for interval in stats.ready_intervals():
                history.write(interval, 0.0)
            t2 = time.process_time()
            for snap in batch:
                monitor.note_snapshot(snap)
            t3 = time.process_time()
            add_s += t1 - t0
            flush_s += t2 - t1
            note_s += t3 - t2
        history.close()
    per_snapshot_target = add_s / (snapshots * args.targets)
    per_second = flush_s / args.seconds
    budget = HALF_CORE - per_second
    capacity = budget / per_snapshot_target if budget > 0 else 0.0
    print(f"{args.workers} workers × {args.targets} targets × {args.seconds} s, {args.values} latencies per "
          f"target per worker-second")
    print(f"  decode + merge (RunStats.add):   {per_snapshot_target * 1e6:8.1f} µs CPU per snapshot per target")
    print(f"  second handed over + history row: {per_second * 1e3:8.2f} ms CPU per second "
          f"({args.targets} targets + Aggregated, percentiles once each)")
    print(f"  within half a core:              {capacity:,.0f} worker-targets merged each second "
          f"= {capacity / args.targets:,.0f} workers at {args.targets} targets")
    need = (1000 * 10 * per_snapshot_target + per_second)
    print(f"  1,000 workers × 10 targets would take {need:.2f} CPU-s each second "
          f"({'within' if need <= HALF_CORE else 'over'} half a core)")
    pickled = [pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL) for snap in distinct[1]]
    t0 = time.process_time()
    rounds = max(1, 2000 // len(pickled))
    for _ in range(rounds):
        for data in pickled:
            pickle.loads(data)
    unpickle = (time.process_time() - t0) / (rounds * len(pickled) * args.targets)
    note = note_s / (snapshots * args.targets)
    all_in = per_snapshot_target + unpickle + note
    capacity = budget / all_in if budget > 0 else 0.0
    print(f"  the pipe: {sum(map(len, pickled)) / len(pickled) / 1024:,.1f} KiB a worker-second, unpickled in "
          f"{unpickle * 1e6:.1f} µs CPU per snapshot per target")
    print(f"  the monitor (RunMonitor.note_snapshot{', p99 lateness' if args.open else ''}): {note * 1e6:.1f} µs CPU "
          f"per snapshot per target")
    print(f"  all in ({all_in * 1e6:.1f} µs):                {capacity:,.0f} worker-targets within half a core "
          f"= {capacity / args.targets:,.0f} workers at {args.targets} targets")


if __name__ == "__main__":
    main()
