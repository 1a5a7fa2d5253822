"""Connections that cannot fit are refused before the load starts, with the limit and the remedy."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.model.config import MAX_WORKERS, ConfigError, parse_config
from loadtest.execution.limits import FD_RESERVE, check_limits, ephemeral_ports, nofile_hard_limit

LOW_HARD_LIMIT = 1024  # the open-file limit the CLI tests run under, so any connection count can pass it


def tcp(connections: int, **fields: object) -> dict[str, object]:
    return {"duration": "1s", "targets": [{"name": "echo", "tcp": "127.0.0.1:9000", "connections": connections,
                                           **fields}]}


def test_too_many_connections_per_worker_names_the_open_file_limit() -> None:
    hard = nofile_hard_limit()
    config = parse_config(tcp(hard + 100))
    with pytest.raises(ConfigError, match=rf"open-file limit is {hard} per process; use at least 2 workers "
                                          rf"\(--workers 2\), fewer connections, or raise the hard limit to "
                                          rf"{hard + 100 + FD_RESERVE} \(ulimit -Hn, as root\)"):
        check_limits(config, workers=1)
    check_limits(parse_config(tcp(hard + 100, source_ips="127.0.0.1-127.0.0.4")), workers=2)  # fits


def test_a_staged_tcp_target_is_limited_by_its_peak() -> None:
    hard = nofile_hard_limit()
    staged = tcp(0, stages=[{"duration": "1s", "target": hard + 100}, {"duration": "1s", "target": 10}])
    with pytest.raises(ConfigError, match=rf"open-file limit is {hard} per process; use at least 2 workers"):
        check_limits(parse_config(staged), workers=1)


def test_an_in_flight_cap_smaller_than_the_workers_is_refused() -> None:
    config = parse_config({"duration": "1s", "targets": [{"name": "api", "url": "http://127.0.0.1:9/", "rate": 10,
                                                          "max_concurrency": 1}]})
    with pytest.raises(ConfigError, match=r"api has max_concurrency 1, fewer than the 2 workers .* --workers 1"):
        check_limits(config, workers=2)
    check_limits(config, workers=1)


def test_past_the_ephemeral_ports_of_one_source_address_asks_for_source_ips() -> None:
    ports = ephemeral_ports()
    connections = ports + 1000
    workers = connections // (nofile_hard_limit() - 100) + 1
    with pytest.raises(ConfigError, match=r"ephemeral ports .* set source_ips to at least 2 addresses"):
        check_limits(parse_config(tcp(connections)), workers)
    check_limits(parse_config(tcp(connections, source_ips="127.0.0.1-127.0.0.2")), workers)


def test_an_embedded_server_that_cannot_hold_the_connections_asks_for_more_server_workers() -> None:
    hard = nofile_hard_limit()
    config = parse_config({"duration": "1s", "servers": [{"name": "echo", "kind": "echo", "workers": 1}],
                           "targets": [{"tcp": "{echo}", "connections": hard + 10,
                                        "source_ips": "127.0.0.1-127.0.0.2"}]})
    with pytest.raises(ConfigError, match=r"servers: echo would hold .* give it at least 2 workers"):
        check_limits(config, workers=4)


def test_the_cli_refuses_with_exit_2_and_no_report(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    config.write_text(f"duration: 1s\nworkers: 1\ntargets: [{{tcp: '127.0.0.1:9', connections: {nofile_hard_limit() + 1}}}]\n")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "open-file limit" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "reports").exists()


def run_under_low_limit(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`loadtest run` on `text` in a process whose open-file hard limit is `LOW_HARD_LIMIT`."""
    config = tmp_path / "cfg.yaml"
    config.write_text(text)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_HARD_LIMIT, LOW_HARD_LIMIT))

    return subprocess.run([sys.executable, "-m", "loadtest", "run", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, preexec_fn=lower)


def test_past_what_the_most_workers_can_hold_the_advice_is_fewer_connections_or_a_higher_limit(
        tmp_path: Path) -> None:
    # The old advice was "use at least 502 workers" where 256 is the most a run may start.
    room = LOW_HARD_LIMIT - FD_RESERVE
    connections = room * (MAX_WORKERS + 10)
    done = run_under_low_limit(tmp_path, f"duration: 1s\nworkers: 2\ntargets: [{{tcp: '127.0.0.1:9', "
                                         f"connections: {connections}, source_ips: 127.0.0.1-127.0.0.200}}]\n")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert (f"open-file limit is {LOW_HARD_LIMIT} per process; even the most processes ({MAX_WORKERS}) hold only "
            f"{room * MAX_WORKERS} connections, so use fewer connections or raise the hard limit to "
            f"{connections // 2 + FD_RESERVE} (ulimit -Hn, as root)") in done.stderr
    assert "--workers" not in done.stderr  # no worker count can fit them
    assert not (tmp_path / "reports").exists()


def test_within_what_more_workers_can_hold_the_advice_is_a_worker_count_the_cli_accepts(tmp_path: Path) -> None:
    room = LOW_HARD_LIMIT - FD_RESERVE
    done = run_under_low_limit(tmp_path, f"duration: 1s\nworkers: 1\n"
                                         f"targets: [{{tcp: '127.0.0.1:9', connections: {room * 3}}}]\n")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "use at least 3 workers (--workers 3), fewer connections, or raise the hard limit" in done.stderr


def test_a_source_address_this_machine_does_not_have_is_refused_before_the_run(tmp_path: Path) -> None:
    # 8.8.8.8 was accepted and every connection failed at run time (exit 1 with a report of failures).
    config = tmp_path / "cfg.yaml"
    config.write_text("duration: 1s\nworkers: 1\ntargets: [{tcp: '127.0.0.1:9', source_ips: [127.0.0.1, 8.8.8.8]}]\n")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "targets[0].source_ips: 8.8.8.8 is not an address of this machine" in done.stderr
    assert not (tmp_path / "reports").exists()
    check_limits(parse_config(tcp(1, source_ips="127.0.0.1-127.0.0.255")), workers=1)  # all of loopback binds
