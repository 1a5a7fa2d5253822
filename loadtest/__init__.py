"""loadtest: HTTP and TCP load from one gevent worker process per core.

Importing the package patches nothing and opens nothing: the public names
below are loaded on first use, so a worker process can patch the standard
library before any socket code is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "RunConfig", "RunError", "RunResult", "load_config", "parse_config", "run"]
__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "model.config", "RunConfig": "model.config", "load_config": "model.config",
    "parse_config": "model.config", "RunError": "execution.controller", "RunResult": "execution.controller",
    "run": "execution.controller",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'loadtest' has no attribute {name!r}")
