"""The run report's sections on the processes that ran it: CPU and memory over time, each worker, each node."""

from __future__ import annotations

from loadtest.core.run_files import WorkerSummary
from loadtest.core.verdicts import MACHINE_SATURATED_PERCENT
from loadtest.core.verdicts import WORKER_SATURATED_PERCENT as SATURATED_CPU_PERCENT
from loadtest.outputs.page import fmt_count, table, td, text_of
from loadtest.outputs.run_folder import RunFolder, as_float
from loadtest.outputs.series import downsample, mean_of
from loadtest.outputs.svg_chart import AGGREGATED_COLOR, PALETTE, Series, time_chart


# -- resources -------------------------------------------------------------


def resource_series(run: RunFolder) -> tuple[list[Series], list[Series], list[Series]]:
    """CPU (% of one core) and RSS (MiB) over time, one line per process, and the machine's CPU (% of all
    cores, its own scale), from resources.csv.

    A process's sample as it exits (zombie or dead) is left out: it covers a sliver of a second of shutdown
    work and drew as a spike that read as saturation. Every other process line is dashed and thinner, so
    that lines that coincide (two workers as busy as each other) both show.
    """
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in run.resources:
        groups.setdefault((row.get("role", "") or "", row.get("pid", "") or ""), []).append(row)
    roles = [role for role, _ in groups]
    cpu, rss, machine_cpu = [], [], []
    for i, ((role, pid), rows) in enumerate(groups.items()):
        machine = role == "machine"
        label = "machine, all cores" if machine else (role if roles.count(role) == 1 else f"{role} {pid}")
        color = AGGREGATED_COLOR if machine else PALETTE[i % len(PALETTE)]
        dashed = not machine and i % 2 == 1
        width = 1.6 if dashed else 2.6
        cpu_points, rss_points = [], []
        for row in rows:
            t = as_float(row.get("elapsed_s", row.get("elapsed")))
            if t is None or row.get("status") in ("zombie", "dead"):  # exiting: see the docstring
                continue
            c, r = as_float(row.get("cpu_percent")), as_float(row.get("rss_bytes"))
            if c is not None:
                cpu_points.append((t, c))
            if r is not None:
                rss_points.append((t, r / 2**20))
        if cpu_points:  # the machine's CPU is a share of all cores, another scale than a process's
            (machine_cpu if machine else cpu).append(Series(label, downsample(cpu_points, keep=mean_of), color,
                                                           dashed=dashed, width=width))
        if rss_points and not machine:  # so is its memory
            rss.append(Series(label, downsample(rss_points), color, dashed=dashed, width=width))
    return cpu, rss, machine_cpu


def _resources_section(run: RunFolder) -> str:
    if not run.resources:
        return ('<section><h2>Resources</h2><p class="note">This run folder has no resources.csv, '
                'so there is no CPU or memory over time.</p></section>')
    cpu, rss, machine = resource_series(run)
    end = run_end(run)
    refs = [(SATURATED_CPU_PERCENT, f"{SATURATED_CPU_PERCENT:g}% of a core: saturated")]
    cores = (run.summary.get("machine") or {}).get("cores")
    whole = f"all {cores} cores" if isinstance(cores, int) else "all cores"
    machine_chart = time_chart(f"Machine CPU, {whole}", machine, f"% of {whole}", at_least=100.0, end=end,
                               refs=[(MACHINE_SATURATED_PERCENT, f"{MACHINE_SATURATED_PERCENT:g}%: saturated")]
                               ) if machine else ""
    return ('<section><h2>Resources</h2><div class="grid2">'
            + time_chart("CPU per process", cpu, "% of one core", refs=refs, at_least=100.0, end=end)
            + time_chart("Resident memory per process", rss, "MiB", end=end) + machine_chart + "</div></section>")


def run_end(run: RunFolder) -> float | None:
    """Where the time axis ends: the run's duration (the charts' axis ends there, not at a round number)."""
    return as_float(run.summary.get("duration_s"))


def _workers_section(run: RunFolder) -> str:
    workers: list[WorkerSummary] = [w for w in run.summary.get("workers") or [] if isinstance(w, dict)]
    if not workers:
        return ""
    rows = []
    for w in workers:
        rss = as_float(w.get("peak_rss_bytes"))
        rows.append([td(text_of(w.get("worker")), "l"), td(text_of(w.get("pid")), "l"),
                     td(fmt_count(as_float(w.get("requests")))), td(fmt_count(as_float(w.get("failures")))),
                     td(fmt_count(as_float(w.get("cpu_user_s")), 2)), td(fmt_count(as_float(w.get("cpu_system_s")), 2)),
                     td(fmt_count(rss / 2**20 if rss is not None else None, 1)),
                     td(text_of(w.get("ended")), "l"), td(text_of(w.get("problem")), "l name")])
    return ('<section><h2>Workers</h2>' + table(
        ["Worker", "PID", "Requests", "Failures", "CPU user s", "CPU system s", "Peak RSS MiB", "Ended", "Problem"],
        rows, left=(0, 1, 7, 8)) + "</section>")


def _nodes_section(run: RunFolder) -> str:
    """A cluster run's nodes: host, clock offset, how each ended, and its workers' requests and CPU seconds."""
    nodes = [n for n in run.summary.get("nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return ""
    workers = {w.get("worker"): w for w in run.summary.get("workers") or [] if isinstance(w, dict)}
    rows = []
    for n in nodes:
        own = [workers[k] for k in n.get("workers") or [] if k in workers]
        cpu = [c for w in own for c in (as_float(w.get("cpu_user_s")), as_float(w.get("cpu_system_s")))
               if c is not None]
        rows.append([td(text_of(n.get("name")), "l"), td(text_of(n.get("host")), "l"),
                     td(fmt_count(as_float(n.get("clock_offset_ms")), 1)), td(fmt_count(len(own))),
                     td(fmt_count(sum(as_float(w.get("requests")) or 0 for w in own))),
                     td(fmt_count(sum(cpu) if cpu else None, 2)),
                     td(text_of(n.get("ended")), "l"), td(text_of(n.get("problem")), "l name")])
    return ('<section><h2>Nodes</h2>' + table(
        ["Node", "Host", "Clock offset ms", "Workers", "Requests", "CPU s", "Ended", "Problem"],
        rows, left=(0, 1, 6, 7)) + "</section>")
