"""Child entries for tests/test_children.py: each runs in a real child started by `ChildGroup`, patched.

Kept out of the test module so that a child imports neither pytest nor the tests.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from loadtest.model.link import ParentLink
from loadtest.model.messages import Failed, Ready

BOUND_S = 30.0  # no child here outlives a test by more than this, whatever happens


def ready_until_stopped(link: ParentLink) -> None:
    """Ready (if patched), then serve until the lifeline closes, as a server process does."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        link.send(Failed("not patched"))
        return
    link.send(Ready(os.getpid()))
    link.wait_gone()


def fails(link: ParentLink, error: str) -> None:
    link.send(Failed(error))


def dies(link: ParentLink, code: int) -> None:
    os._exit(code)


def hangs(link: ParentLink) -> None:
    """Says nothing and ignores its lifeline: only a kill ends it."""
    time.sleep(BOUND_S)


def ready_then_hangs(link: ParentLink) -> None:
    link.send(Ready(os.getpid()))
    time.sleep(BOUND_S)


def ready_then_polls(link: ParentLink, marker: str) -> None:
    """Ready, then poll `gone()` as a worker does; write `marker` once it says the parent is gone."""
    link.send(Ready(os.getpid()))
    deadline = time.monotonic() + BOUND_S
    while not link.gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(marker).write_text("gone" if link.gone() else "timed out")


def sends(link: ParentLink, messages: list[object]) -> None:
    """Ready, then each of `messages` back to the parent, then wait to be stopped."""
    link.send(Ready(os.getpid()))
    for message in messages:
        link.send(message)
    link.wait_gone()


def interrupts_itself(link: ParentLink) -> None:
    """SIGINT and SIGTERM to itself after start-up: a child leaves both to its parent and stays."""
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    link.send(Ready(os.getpid()))
    link.wait_gone()
