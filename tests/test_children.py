"""loadtest.execution.children, the one owner of child processes, with real children (entries in children_entries.py).

What it must do: start a child patched, get its Ready, name a child that failed, died or hung before
it was ready, kill a child that ignores its stop, stop a child when asked and when the parent dies,
and leave Ctrl-C and SIGTERM to the parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from loadtest.execution.children import ChildExited, ChildFailed, ChildGroup, ReadyTimeout

ENTRIES = "tests.children_entries"
ROOT = Path(__file__).resolve().parent.parent


def start(entry: str, args: list[tuple[object, ...]]) -> ChildGroup:
    return ChildGroup.start(f"{ENTRIES}:{entry}", args, "test-child")


def test_children_start_patched_say_ready_and_stop_when_asked() -> None:
    group = start("ready_until_stopped", [(), ()])
    try:
        readies = group.ready(timeout=20)
        assert [r.pid for r in readies] == [c.pid for c in group.children]
        assert all(c.alive() for c in group.children) and group.ended() == []
    finally:
        group.stop(timeout=10)
    assert [code for _, code in group.ended()] == [0, 0]  # they ended by themselves: lifeline closed, not killed


def test_a_child_that_fails_is_named_with_its_sentence() -> None:
    group = start("fails", [("cannot resolve example.invalid",)])
    try:
        with pytest.raises(ChildFailed) as caught:
            group.ready(timeout=20)
        assert caught.value.error == "cannot resolve example.invalid" and caught.value.child is group.children[0]
    finally:
        group.stop(timeout=5)


def test_a_child_that_dies_before_ready_is_named_with_its_exit_code() -> None:
    group = ChildGroup(start("ready_until_stopped", [()]).children + start("dies", [(3,)]).children)
    try:
        with pytest.raises(ChildExited) as caught:
            group.ready(timeout=20)
        assert caught.value.exitcode == 3 and caught.value.child.pid == group.children[1].pid
        assert f"pid {group.children[1].pid}" in str(caught.value)
    finally:
        group.stop(timeout=5)


def test_a_child_that_hangs_times_out_and_is_killed() -> None:
    group = start("hangs", [()])
    begun = time.monotonic()
    try:
        with pytest.raises(ReadyTimeout) as caught:
            group.ready(timeout=1.5)
        assert (caught.value.waiting, caught.value.total) == (1, 1)
        assert time.monotonic() - begun >= 1.5
    finally:
        group.stop(timeout=0.5)
    assert group.ended() == [(group.children[0].pid, -signal.SIGKILL)]


def test_stop_kills_a_child_that_ignores_its_lifeline_after_the_timeout() -> None:
    group = start("ready_then_hangs", [()])
    group.ready(timeout=20)
    begun = time.monotonic()
    group.stop(timeout=1.0)
    took = time.monotonic() - begun
    assert group.children[0].exitcode == -signal.SIGKILL
    assert 1.0 <= took < 10.0, took


def test_interrupted_while_waiting_raises_keyboard_interrupt() -> None:
    group = start("hangs", [()])
    try:
        with pytest.raises(KeyboardInterrupt):
            group.ready(timeout=20, interrupted=lambda: True)
    finally:
        group.stop(timeout=0.5)


def test_a_child_leaves_sigint_and_sigterm_to_its_parent() -> None:
    group = start("interrupts_itself", [()])
    try:
        group.ready(timeout=20)  # it signalled itself before saying so
        assert group.children[0].alive()
    finally:
        group.stop(timeout=10)
    assert group.children[0].exitcode == 0


def test_a_child_whose_parent_dies_stops_by_itself(tmp_path: Path) -> None:
    """The parent is a real process (which never imports gevent) killed with SIGKILL; its child sees `gone()`
    and ends."""
    marker = tmp_path / "gone"
    parent = textwrap.dedent(f"""
        import sys, time
        from loadtest.execution.children import ChildGroup
        group = ChildGroup.start("{ENTRIES}:ready_then_polls", [({str(marker)!r},)], "orphan")
        group.ready(timeout=20)
        print(group.children[0].pid, "gevent" in sys.modules, flush=True)
        time.sleep(30)
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env=env) as process:
        try:
            assert process.stdout is not None
            pid, parent_imported_gevent = process.stdout.readline().split()
            child = psutil.Process(int(pid))
            assert child.is_running() and not marker.exists()
            assert parent_imported_gevent == "False"  # the entry is imported, and gevent patched, in the child only
        finally:
            process.kill()
            process.wait(10)
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:
        child.kill()
        raise AssertionError("the child outlived its parent by 10 s") from None
    assert marker.read_text() == "gone"
