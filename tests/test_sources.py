"""The package's own sources, checked for what only some Python versions would refuse.

Python 3.13 cleans docstrings at compile time as UTF-8 text, so a string constant holding a lone surrogate
(written as an escape in a normal string) made importing its module fail there with UnicodeEncodeError,
though 3.11 and 3.12 import it. Every string constant in the package must be encodable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import loadtest

PACKAGE = Path(loadtest.__file__).resolve().parent


def unencodable_strings(source: str, filename: str) -> list[int]:
    """The lines of string constants in `source` that are not encodable as UTF-8 (a lone surrogate)."""
    lines = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node.value.encode("utf-8")
            except UnicodeEncodeError:
                lines.append(node.lineno)
    return lines


def test_every_string_constant_in_the_package_is_encodable_text() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50  # the whole package, not an empty glob
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in files
             for line in unencodable_strings(path.read_text(encoding="utf-8"), str(path))]
    assert not found, found


def test_the_check_finds_the_docstring_that_failed_on_python_3_13() -> None:
    planted = 'def _check_text():\n    """Encodable text (YAML lets "\\ud800" through)."""\n'
    assert unencodable_strings(planted, "planted.py") == [2]
    assert unencodable_strings(planted.replace("\\ud800", "\\\\ud800"), "mended.py") == []
