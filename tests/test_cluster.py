"""Cluster runs through Dask distributed (loadtest.execution.cluster, loadtest.execution.nodes), with real nodes.

`--cluster local:2` starts a LocalCluster of two single-threaded Dask worker processes (two nodes)
on loopback, each running one load worker; the refusals use a real `dask scheduler` and real
`dask worker` processes, one of them importing a copy of loadtest with another version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .test_faults import assert_all_gone, descendants
from .test_run import read_csv

pytest.importorskip("distributed", reason="the test extra installs dask[distributed]")

REPO = Path(__file__).resolve().parent.parent
COUNTED = ("name: counted\nrequests: 3001\nworkers: 1\nservers: [{name: s, kind: http}]\n"
           "targets: [{name: home, url: 'http://{s}/', concurrency: 3}]\n")
TIMED = ("name: timed\nduration: 30s\nworkers: 1\nservers: [{name: s, kind: http}]\n"
         "targets: [{name: home, url: 'http://{s}/', concurrency: 2, think: 5ms}]\n")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def loadtest(tmp_path: Path, config: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    (tmp_path / "run.yaml").write_text(config)
    return subprocess.run([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out",
                           str(tmp_path / "r"), *args], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r" / "summary.json").read_text())


def start_cluster_run(tmp_path: Path, config: str) -> tuple[subprocess.Popen[str], dict[str, int], list[int]]:
    """A `--cluster local:2` run in a process group of its own, once its load has begun: the process,
    each node's Dask worker pid by name, and the load workers' pids."""
    (tmp_path / "run.yaml").write_text(config)
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out",
                             str(tmp_path / "r"), "--cluster", "local:2"], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    nodes: dict[str, int] = {}
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if m := re.match(r"(node-\d) \(.*, pid (\d+)\)", line):
            nodes[m.group(1)] = int(m.group(2))
        if m := re.search(r"workers started \(pids ([\d, ]+)\)", line):
            return proc, nodes, [int(p) for p in m.group(1).split(", ")]
        assert time.monotonic() < deadline
    raise AssertionError(f"the run never started: {proc.stderr.read() if proc.stderr else ''}")


def wait_for_rows(tmp_path: Path, n: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        history = tmp_path / "r" / "history.csv"
        if history.exists() and len([r for r in read_csv(history) if r["Name"] == "home"]) >= n:
            return
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_two_nodes_count_exactly_what_the_server_served_and_the_reports_name_the_nodes(tmp_path: Path) -> None:
    done = loadtest(tmp_path, COUNTED, "--cluster", "local:2")
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path)
    served = summary["servers"][0]["served"]["requests"]
    stats = {r["Name"]: r for r in read_csv(tmp_path / "r" / "stats.csv")}
    assert int(stats["Aggregated"]["Request Count"]) == summary["aggregated"]["requests"] == served == 3001
    # requests: is split over nodes x workers exactly as over workers: 1501 + 1500.
    workers = read_csv(tmp_path / "r" / "workers.csv")
    assert [(w["Role"], int(w["Requests"])) for w in workers] == [("node-1/worker-0", 1501),
                                                                   ("node-2/worker-0", 1500)]
    nodes = summary["nodes"]
    assert [(n["name"], n["workers"], n["ended"]) for n in nodes] == [("node-1", [0], "ok"), ("node-2", [1], "ok")]
    for n in nodes:  # one machine: the measured offset is within the probe's round trip
        assert n["host"] == socket.gethostname() and abs(n["clock_offset_ms"]) <= n["clock_rtt_ms"]
    roles = {r["role"] for r in read_csv(tmp_path / "r" / "resources.csv")}
    assert {"node-1/worker-0", "node-2/worker-0"} <= roles
    # Seconds line up across nodes: every history second merged both nodes' snapshots (none counted twice).
    history = [r for r in read_csv(tmp_path / "r" / "history.csv") if r["Name"] == "home"]
    assert int(history[-1]["Total Request Count"]) == 3001
    stamps = [int(r["Timestamp"]) for r in history]  # one row a second, each with its own second
    assert stamps == sorted(set(stamps))
    # report.html shows each node's requests and CPU seconds (its workers' own accounting).
    page = (tmp_path / "r" / "report.html").read_text()
    nodes_table = re.sub(r"<[^>]+>", " ", page[page.index("<h2>Nodes</h2>"):page.index("<h2>Workers</h2>")])
    assert re.search(r"node-1\s+\S+\s+-?[\d.]+\s+1\s+1,501\s+[\d.]+\s+ok", nodes_table), nodes_table
    assert re.search(r"node-2\s+\S+\s+-?[\d.]+\s+1\s+1,500\s+[\d.]+\s+ok", nodes_table), nodes_table


def test_a_node_killed_mid_run_is_lost_named_and_its_counts_kept(tmp_path: Path) -> None:
    proc, nodes, workers = start_cluster_run(tmp_path, TIMED.replace("30s", "5s"))
    wait_for_rows(tmp_path, 1)
    os.kill(nodes["node-2"], signal.SIGKILL)  # the Dask worker itself; its load worker is left without a parent
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    summary = summary_of(tmp_path)
    assert any("node-2" in p and "lost" in p for p in summary["problems"]), summary["problems"]
    assert [n["ended"] for n in summary["nodes"]] == ["ok", "lost"]
    kept, lost = summary["workers"]
    assert lost["ended"] == "lost" and lost["requests"] > 0  # what it sent before it was lost is kept
    assert kept["ended"] == "ok" and summary["aggregated"]["requests"] == kept["requests"] + lost["requests"]
    # The run went on with node-1 to its end: 5 s of seconds in the history.
    assert summary["duration_s"] >= 4.5
    for pid in workers:  # node-2's orphaned load worker stopped by itself; node-1's was stopped
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGTERM to the controller"])
def test_ctrl_c_or_sigterm_stops_every_node_writes_the_reports_and_leaves_no_process(tmp_path: Path, how: str) -> None:
    proc, nodes, workers = start_cluster_run(tmp_path, TIMED)
    wait_for_rows(tmp_path, 1)
    children = descendants(proc.pid)
    assert {*nodes.values(), *workers} <= {c.pid for c in children}
    if how == "SIGINT to the group":
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: the nodes' processes get it too
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = summary_of(tmp_path)
    assert summary["interrupted"] is True and summary["problems"] == []
    assert [n["ended"] for n in summary["nodes"]] == ["ok", "ok"]  # they stopped when told, not lost
    assert summary["aggregated"]["requests"] == sum(w["requests"] for w in summary["workers"]) > 0
    assert summary["duration_s"] < 20
    assert_all_gone(children, within=10)


def test_a_dead_scheduler_address_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = loadtest(tmp_path, COUNTED, "--cluster", f"tcp://127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"loadtest: --cluster: no Dask scheduler answered at tcp://127.0.0.1:{port} "
                                   f"within 5 s (OSError)")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "config", "said"), [
    (["--cluster", "local:zero"], COUNTED, "--cluster: local:N needs N from 1 to 64 nodes, got 'local:zero'"),
    (["--cluster", "sched:8786"], COUNTED, "--cluster: must be a Dask scheduler address such as tcp://HOST:8786"),
    ([], COUNTED + "cluster: 8786\n", "cluster: must be a Dask scheduler address such as tcp://HOST:8786"),
    (["--nodes", "2"], COUNTED, "--nodes: applies only to a cluster run"),
    (["--nodes", "0", "--cluster", "local:1"], COUNTED, "--nodes: must be a whole number of at least 1, got '0'"),
])
def test_bad_cluster_options_are_one_sentence(tmp_path: Path, args: list[str], config: str, said: str) -> None:
    done = loadtest(tmp_path, config, *args)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr


def test_dask_scheduler_address_from_the_environment_is_used_and_checked(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(COUNTED)
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out",
                           str(tmp_path / "r")], env={**env(), "DASK_SCHEDULER_ADDRESS": "sched:8786"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("loadtest: DASK_SCHEDULER_ADDRESS: must be a Dask scheduler address such as "
                           "tcp://HOST:8786, or local:N, got 'sched:8786'\n")


def test_without_dask_a_cluster_run_says_what_to_install_and_a_local_run_never_imports_it(tmp_path: Path) -> None:
    hidden = tmp_path / "nodask"  # a `distributed` that cannot be imported, first on the path
    (hidden / "distributed").mkdir(parents=True)
    (hidden / "distributed" / "__init__.py").write_text("raise ImportError('not installed')\n")
    (tmp_path / "run.yaml").write_text(COUNTED.replace("3001", "50"))
    run = [sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out"]
    without = {**env(), "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])}
    done = subprocess.run([*run, str(tmp_path / "a"), "--cluster", "local:2"], env=without, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("loadtest: --cluster: a cluster run needs Dask distributed, which is not "
                                   "installed here; pip install loadtest[cluster]")
    # A local run: the same command without --cluster, then a look at what the process imported.
    probe = ("import sys, runpy\nsys.argv = ['loadtest', 'run', sys.argv[1], '--out', sys.argv[2], '-q']\n"
             "try:\n    runpy.run_module('loadtest', run_name='__main__')\nexcept SystemExit as e:\n"
             "    print('exit', e.code,\n"
             "          sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n")
    local = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "run.yaml"), str(tmp_path / "b")],
                           env=env(), capture_output=True, text=True, timeout=60)
    assert local.stdout.strip().endswith("exit 0 []"), local.stdout + local.stderr


def start_scheduler(file: Path, pythonpath: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A `dask scheduler` on a free loopback port that writes its address to `file`; in a group of its own."""
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                             "0", "--no-dashboard", "--scheduler-file", str(file)], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(pythonpath)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_a_scheduler_without_loadtest_is_refused(tmp_path: Path) -> None:
    """The scheduler unpickles each node's task: without loadtest it could not, and the run would fail late."""
    file = tmp_path / "scheduler.json"
    # The test's own environment has loadtest installed (an editable install is importable from anywhere),
    # so the scheduler is given a folder first on its path where `import loadtest` fails as it does on a
    # machine without it.
    shadow = tmp_path / "without-loadtest"
    (shadow / "loadtest").mkdir(parents=True)
    (shadow / "loadtest" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'loadtest\'", name="loadtest")\n')
    proc = start_scheduler(file, shadow, shadow)
    try:
        deadline = time.monotonic() + 30
        while not file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        done = loadtest(tmp_path, COUNTED, "--cluster", address)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"loadtest: --cluster: the Dask scheduler at {address} cannot import loadtest "
                                  f"(ModuleNotFoundError: No module named 'loadtest")
    from loadtest import __version__

    assert done.stderr.endswith(f"install loadtest {__version__} where it runs too "
                                f"(pip install loadtest[cluster]=={__version__})\n")
    assert done.stderr.count("\n") == 1


@pytest.fixture
def scheduler(tmp_path: Path):
    """A real `dask scheduler` on a free loopback port; yields (its address, a function that starts a worker)."""
    file = tmp_path / "scheduler.json"
    procs = [start_scheduler(file, REPO, tmp_path)]

    def worker(pythonpath: Path, daemon: bool, hostname: str | None = None) -> None:
        """A `dask worker` (one node); with `hostname`, in a UTS namespace of its own: a node on another host."""
        other_host = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname] if hostname else []
        procs.append(subprocess.Popen(
            [*other_host, sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file),
             "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            env={**os.environ, "PYTHONPATH": str(pythonpath), "DASK_DISTRIBUTED__WORKER__DAEMON": str(daemon)},
            cwd=tmp_path,  # python -m puts its folder first on the path: not the checkout's own loadtest
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    deadline = time.monotonic() + 30
    while not file.exists():
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written whole, but give its writer the moment to close it
    address = json.loads(file.read_text())["address"]
    yield address, worker
    for p in procs:  # each in a group of its own: a dask worker's nanny and its worker process go together
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def test_refused_before_the_run_a_daemon_node_too_few_nodes_and_another_version(tmp_path: Path, scheduler) -> None:
    address, start_worker = scheduler
    start_worker(REPO, daemon=True)  # the dask worker default: a nanny starts it as a daemon
    done = loadtest(tmp_path, COUNTED, "--cluster", address, "--nodes", "1")
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"loadtest: node-1 \(.+, tcp://127\.0\.0\.1:\d+\): its Dask worker is a daemon process, "
                        r"which may not start load workers; start it with DASK_DISTRIBUTED__WORKER__DAEMON=False "
                        r"\(or dask worker --no-nanny\)\n", done.stderr), done.stderr
    done = loadtest(tmp_path, COUNTED, "--cluster", address, "--nodes", "3")
    assert done.returncode == 2
    assert done.stderr == (f"loadtest: --nodes: the scheduler at {address} has 1 node (Dask workers), "
                           f"fewer than the 3 asked\n")
    # A node importing a copy of loadtest that calls itself 0.0.0-other.
    other = tmp_path / "other"
    shutil.copytree(REPO / "loadtest", other / "loadtest", ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "loadtest" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "0.0.0-other"', init.read_text()))
    start_worker(other, daemon=False)
    done = loadtest(tmp_path, COUNTED, "--cluster", address, "--nodes", "2")
    assert done.returncode == 2, done.stderr
    from loadtest import __version__

    assert re.fullmatch(rf"loadtest: node-\d \(.+, tcp://127\.0\.0\.1:\d+\) has loadtest 0\.0\.0-other, this "
                        rf"controller {re.escape(__version__)}; install the same version on every node "
                        rf"\(pip install loadtest\[cluster\]=={re.escape(__version__)}\)\n", done.stderr), done.stderr
    assert not (tmp_path / "r").exists()


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="a node on another host needs `unshare --uts` (root)")
def test_a_node_on_another_host_cannot_reach_a_loopback_server_but_reaches_a_wildcard_one(tmp_path: Path,
                                                                                      scheduler) -> None:
    """The node runs in a UTS namespace named other-host: another machine by its name, same network."""
    address, start_worker = scheduler
    start_worker(REPO, daemon=False, hostname="other-host")
    done = loadtest(tmp_path, COUNTED, "--cluster", address, "--nodes", "1")
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("loadtest: servers: s listens on 127.0.0.1, which node-1 (other-host) on another machine "
                           "cannot reach; give it a listen address the nodes can reach (such as 0.0.0.0:PORT)\n")
    wildcard = COUNTED.replace("kind: http}", "kind: http, listen: '0.0.0.0:0'}").replace("3001", "500")
    wildcard = (wildcard.replace("requests: 500", "requests: 500\nduration: 30s")
                .replace("concurrency: 3", "concurrency: 1, think: 5ms"))
    done = loadtest(tmp_path, wildcard, "--cluster", address)
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path)
    assert summary["aggregated"]["requests"] == summary["servers"][0]["served"]["requests"] == 500
    assert [(n["host"], n["ended"]) for n in summary["nodes"]] == [("other-host", "ok")]
    # Its worker's pid is another machine's: the node samples its own worker and machine and sends the rows.
    rows = read_csv(tmp_path / "r" / "resources.csv")
    assert {"node-1/worker-0", "node-1/machine"} <= {r["role"] for r in rows}
    worker_pid = str(summary["workers"][0]["pid"])
    assert {r["pid"] for r in rows if r["role"] == "node-1/worker-0"} == {worker_pid}

    # The controller killed outright: the node sees through the scheduler that its client is gone and stops
    # its worker; nothing of the run is left on the node.
    (tmp_path / "long.yaml").write_text(wildcard.replace("requests: 500\n", ""))
    proc = subprocess.Popen([sys.executable, "-m", "loadtest", "run", str(tmp_path / "long.yaml"), "--out",
                             str(tmp_path / "r2"), "--cluster", address], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"worker started \(pids (\d+)\)", line):
            break
    else:
        raise AssertionError(proc.stderr.read() if proc.stderr else "")
    load_worker = psutil.Process(int(m.group(1)))
    proc.kill()
    proc.communicate(timeout=10)
    assert_all_gone([load_worker], within=10)


def test_a_node_whose_limits_cannot_fit_its_share_is_refused(tmp_path: Path) -> None:
    import resource

    hard = 4096  # the run, and so its local nodes, get this open-file limit
    users = 2 * (hard + 1000)  # each of the 2 nodes' workers would hold more connections than its hard limit
    (tmp_path / "run.yaml").write_text(COUNTED.replace("concurrency: 3", f"concurrency: {users}"))
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(tmp_path / "run.yaml"), "--out",
                           str(tmp_path / "r"), "--cluster", "local:2"], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"loadtest: node-1 \(.+\): targets: each worker would hold {users // 2} connections but the "
                        rf"open-file limit is {hard} per process; .+\n", done.stderr), done.stderr


def test_unique_data_rows_are_dealt_apart_across_nodes(tmp_path: Path) -> None:
    # Two nodes of one worker each: worker k of 2 deals rows k, k+2, ... whichever node it runs on, so no row
    # is held by two users at once anywhere, and every row is used.
    from .test_flow_runs import run_rows

    server, done = run_rows(tmp_path, rows_count=6, users=6, mode="unique",
                            where=("--workers", "1", "--cluster", "local:2"))
    assert done.returncode == 0, done.stderr
    assert server.overlaps == 0
    assert set(server.seen) == {f"r{i}" for i in range(6)} and min(server.seen.values()) >= 5
    nodes = json.loads((tmp_path / "out-unique" / "summary.json").read_text())["nodes"]
    assert len(nodes) == 2
