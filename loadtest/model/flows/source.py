"""A Python flow's source, read in the controller: importing it (to refuse a script that cannot be used before
the load starts), reading its stats rows, and where in it an exception was raised.

Rows must be known before the run, so they are read from the script's source:
every call ``<x>.get(...)``, ``.post(...)``, ... ``.request(...)`` with a literal
``name=`` (or a literal path) gives a row. A request whose name the source does
not show literally is counted in the row ``<flow>/other``, which exists when the
source has such a call. Nothing here imports gevent.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from loadtest.model import interrupts

OTHER_ROW = "other"  # the row of requests whose name the script's source does not show
_METHODS = {"get": "GET", "post": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE", "head": "HEAD",
            "options": "OPTIONS"}
REQUEST_TYPE = "HTTP"  # the Type of a row whose requests' method the source does not show


class ScriptError(ValueError):
    """A script that cannot be used: one sentence."""


def load_function(path: Path, function: str) -> Callable[[Any], Any]:
    """Import the script at `path` and return its function `function`; raises ScriptError with one sentence."""
    if not path.is_file():
        raise ScriptError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    module_name = f"loadtest_flow_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ScriptError(f"{path} line {e.lineno}: {e.msg}") from None
    except (KeyboardInterrupt, SystemExit):
        if interrupts.noted() or sys.exc_info()[0] is KeyboardInterrupt:  # Ctrl-C or SIGTERM while it imported
            raise
        raise ScriptError(f"{path} failed to import: it called sys.exit()") from None
    except BaseException as e:  # noqa: BLE001 - whatever the script's top level raised is one sentence
        raise ScriptError(f"{path} failed to import: {type(e).__name__}: {e}{where_raised(e, path)}") from None
    func = getattr(module, function, None)
    if func is None:
        raise ScriptError(f"{path} has no function {function!r}")
    if not callable(func):
        raise ScriptError(f"{path}: {function!r} is not a function")
    return func  # type: ignore[no-any-return]


def where_raised(e: BaseException, path: Path) -> str:
    """ (flows.py line 12)" for the innermost frame of the exception in the script, or ""."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).name == path.name]
    return f" ({path.name} line {frames[-1].lineno})" if frames else ""


def script_rows(path: Path) -> tuple[list[tuple[str, str]], bool]:
    """The rows a script's source shows: [(name, method)], and whether it also needs the `other` row."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return [], True  # load_function says what is wrong
    rows: dict[str, str] = {}
    other = False
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr = node.func.attr
        if attr not in _METHODS and attr != "request":
            continue
        args = list(node.args)
        method = _METHODS.get(attr)
        if attr == "request":
            first = args.pop(0) if args else next((k.value for k in node.keywords if k.arg == "method"), None)
            method = first.value.upper() if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        name = next((k.value for k in node.keywords if k.arg == "name"), None)
        if name is None:
            name = args[0] if args else next((k.value for k in node.keywords if k.arg == "url"), None)
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                name = ast.Constant(urlsplit(name.value).path or "/")
        if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value:
            known = rows.get(name.value)
            rows[name.value] = (method or REQUEST_TYPE) if known in (None, method) else REQUEST_TYPE
        else:
            other = True
    return list(rows.items()), other
