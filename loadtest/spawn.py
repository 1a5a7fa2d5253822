"""Starting child processes that must patch gevent before anything else runs.

Workers and server processes are started with the ``spawn`` context: the
parent has threads, and a fork would copy them half-way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def main_script_hidden() -> Iterator[None]:
    """Keep a spawned process from re-running the caller's main script before its entry.

    `spawn` re-imports a main *script* (not a ``-m`` module; the ``loadtest``
    console script is one) in the child before the entry function runs, so the
    script's imports would come before `monkey.patch_all()`. Without
    ``__main__.__file__`` for the moment of `Process.start()`, the child skips
    that step; no entry needs anything from the main module.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main.__spec__, "name", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
