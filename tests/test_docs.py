"""The documentation: the site builds with no broken link, page, anchor or reference (`mkdocs build --strict`), its
generated reference pages cover every command, option and config field, and every config it shows loads.

A config example is a fenced ```yaml block with a title naming a .yaml file (```yaml title="shop.yaml"); every
yaml block in docs/ and README.md must be one, so none is left unchecked. Each is written to a folder holding
configs/'s data files (users.csv, flows.py), as if it sat beside them, and loaded by the project's own loader.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from loadtest.model.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
YAML_BLOCK = re.compile(r"^```yaml([^\n]*)\n(.*?)^```", re.S | re.M)
TITLE = re.compile(r'title="([^"]+\.yaml)"')
MAX_PICTURE_BYTES = 300 * 1024


def reference() -> ModuleType:
    """docs/gen/reference.py, the generator of the reference pages (an MkDocs hook, not part of the package)."""
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "gen" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_examples() -> list[tuple[str, str, str]]:
    """(where, file name, text) of every yaml block of the docs and the README."""
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for info, body in YAML_BLOCK.findall(text):
            line = text[:text.index(body)].count("\n") + 1
            title = TITLE.search(info)
            found.append((f"{page.relative_to(ROOT)}:{line}", title.group(1) if title else "", body))
    return found


EXAMPLES = config_examples()


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("index.html", "reference/cli/index.html", "reference/config/index.html",
                 "reference/run-folder/index.html", "reference/exit-codes/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    assert "--metrics-linger" in (site / "reference/cli/index.html").read_text(encoding="utf-8")


def test_the_cli_reference_has_every_command_and_option() -> None:
    import typer.main

    from loadtest.cli.app import app

    page = reference().cli_page()
    seen = 0
    for path, command, ctx in reference()._commands(typer.main.get_command(app), ["loadtest"]):
        if hasattr(command, "list_commands") and len(path) > 1:
            continue
        assert f"## `{' '.join(path)}`" in page
        for param in command.get_params(ctx):
            if param.name in ("help", "version"):
                continue
            names = [param.metavar] if param.param_type_name == "argument" else param.opts
            for name in names:
                assert f"`{name}`" in page, f"{' '.join(path)} {name}"
            if getattr(param, "help", None):
                assert reference()._cell(param.help) in page
            seen += 1
    assert seen > 30


def test_the_config_reference_has_every_field_with_a_description() -> None:
    from loadtest.model.config import RunConfigModel, ServerModel
    from loadtest.model.config_model import field_docstrings
    from loadtest.model.kinds import MODELS

    sections = {s.splitlines()[0]: s for s in re.split(r"^## ", reference().config_page(), flags=re.M)[1:]}
    titles = {"The run": RunConfigModel, "An embedded server (`servers[]`)": ServerModel,
              **{reference()._model_title(m.__name__): m for m in MODELS}}
    assert set(sections) == set(titles)
    for title, model in titles.items():
        described = field_docstrings(model)
        for field in model.model_fields:
            row = re.search(rf"^\| `{field}` \| (.+?) \| (.+?) \| (.+) \|$", sections[title], re.M)
            assert row, f"{model.__name__}.{field} is missing from its section"
            assert described.get(field) and row.group(3) == reference()._cell(described[field])


def test_a_field_without_a_description_fails_the_build() -> None:
    from loadtest.model.config_model import ConfigModel

    class Described(ConfigModel):
        """A mapping with one field described and one not."""

        size: int = 1
        """How big."""
        colour: str = "red"

    schema = Described.model_json_schema()
    with pytest.raises(ValueError, match="Described.colour: has no description"):
        reference()._model_section("Described", schema, Described, schema)


def test_the_run_folder_and_exit_code_references_come_from_their_owners() -> None:
    from loadtest.core import run_files

    page = reference().run_folder_page()
    for name in run_files.RUN_FILES:
        assert f"## {name}" in page
    for header in (run_files.STATS_HEADER, run_files.HISTORY_HEADER, run_files.FAILURES_HEADER,
                   run_files.RESOURCES_HEADER, run_files.WORKERS_HEADER):
        assert ",".join(header) in page
    for key in run_files.SUMMARY_KEYS:
        assert f"`{key}`" in page
    from loadtest.core import exits

    page = reference().exit_codes_page()
    for status in exits.TABLE:
        assert f"| {status.code} | {status.name} | {reference()._cell(status.meaning)} |" in page
    assert {s.code for s in exits.TABLE} == {0, 1, 2, 3, 130}


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    # the two set-up commands come first, exactly as CI and a new user run them
    main = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/loadtest run configs/sites.yaml"
    tests = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert main in readme and tests in readme and readme.index(main) < readme.index(tests) < readme.index("## ")
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace(" -q", "")


def test_every_yaml_block_is_a_named_config_example() -> None:
    assert len(EXAMPLES) >= 15
    unnamed = [where for where, name, _ in EXAMPLES if not name]
    assert unnamed == [], f'these yaml blocks have no title="NAME.yaml", so no test loads them: {unnamed}'


@pytest.mark.parametrize("where, name, text", [e for e in EXAMPLES if e[1]], ids=[e[0] for e in EXAMPLES if e[1]])
def test_a_config_example_loads(tmp_path: Path, where: str, name: str, text: str) -> None:
    for data in (ROOT / "configs").iterdir():
        if data.suffix != ".yaml":
            shutil.copy(data, tmp_path / data.name)  # a flow's data and script, as beside configs/ files
    (tmp_path / name).write_text(text, encoding="utf-8")
    config = load_config(tmp_path / name)
    assert config.targets, where


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_a_shipped_config_loads(path: Path) -> None:
    assert load_config(path).targets


def test_the_pictures_are_small_and_made_by_a_script() -> None:
    pictures = sorted((DOCS / "img").iterdir())
    assert {p.name for p in pictures} >= {"report.png", "live.svg", "coordinated-omission.svg"}
    for picture in pictures:
        assert picture.stat().st_size < MAX_PICTURE_BYTES, picture.name
    scripts = "".join(p.read_text(encoding="utf-8") for p in (DOCS / "gen").glob("*.py"))
    for picture in pictures:
        assert picture.name in scripts, f"{picture.name}: no script in docs/gen makes it"
