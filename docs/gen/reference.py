"""The generated pages of the documentation: an MkDocs hook that writes them at build time from their sources.

Each reference page is made from the one place that owns what it shows, never copied by hand:

- reference/cli.md: every command and option of the typer app, with its help (click's introspection);
- reference/config.md: every field of the config and of each target kind, from the pydantic models and the
  JSON Schema they export (`loadtest schema`): type, default and the field's own description;
- reference/run-folder.md: the run folder's file names, columns, row types and summary.json keys, from the
  run folder's contract module;
- reference/exit-codes.md: the exit statuses, from their one table.

The pages exist only in the built site (MkDocs' `File.generated`), so `mkdocs serve` shows them too and the
source tree holds no copy that could go stale. A field without a description, or a module that moved, fails
the build (`mkdocs build --strict` in tests/test_docs.py). Try it: `mkdocs build --strict`, or
`python docs/gen/reference.py cli` to print one page.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from typing import Any, Callable, Iterator

# Where each source of truth lives. The package is moving into layered subpackages: when a module moves,
# this table is the one place to change.
SOURCES = {
    "cli": "loadtest.cli.app",  # the typer `app`
    "config": "loadtest.model.config",  # config_schema(), RunConfigModel, ServerModel
    "kinds": "loadtest.model.kinds",  # MODELS: each target kind's config model
    "fields": "loadtest.model.fields",  # DURATION_PATTERN
    "run_files": "loadtest.core.run_files",  # the run folder's contract
    "exits": "loadtest.core.exits",  # TABLE: the exit statuses with their meanings
}


def source(name: str) -> Any:
    """The module that owns `name`'s source of truth."""
    return importlib.import_module(SOURCES[name])


# -- the command line --------------------------------------------------------------------------------------

def cli_page() -> str:
    """Every command, its usage, help and options, read from the click command typer builds."""
    import typer.main

    command = typer.main.get_command(source("cli").app)
    out = ["# Command line", "",
           "Generated from the command line's own definitions: what `loadtest COMMAND --help` prints, "
           "on one page. Every command also takes `-h`/`--help` and `--version`.", ""]
    for path, cmd, ctx in _commands(command, ["loadtest"]):
        if hasattr(cmd, "list_commands") and len(path) > 1:
            continue  # a group (`serve`): its commands follow, each with its own section
        out += [f"## `{' '.join(path)}`", "", _text(cmd.help or ""), "", "```text",
                cmd.get_usage(ctx).replace("Usage: ", "", 1), "```", ""]
        rows = [_param_row(p, ctx) for p in cmd.get_params(ctx) if p.name not in ("help", "version")]
        if rows:
            out += ["| argument or option | value | help |", "|---|---|---|", *rows, ""]
        if cmd.epilog:
            out += [_epilog(cmd.epilog), ""]
    return "\n".join(out)


def _commands(cmd: Any, path: list[str], parent: Any = None) -> Iterator[tuple[list[str], Any, Any]]:
    """The command, then each of its subcommands (depth first), with a click context for each."""
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    yield path, cmd, ctx
    if hasattr(cmd, "list_commands"):  # a group (typer carries its own click: no isinstance on click's classes)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), [*path, name], ctx)


def _param_row(param: Any, ctx: Any) -> str:
    if param.param_type_name == "argument":
        names = f"`{param.metavar or param.name.upper()}`"
        value = "required" if param.required else "optional"
    else:
        names = ", ".join(f"`{o}`" for o in sorted(param.opts, key=len, reverse=True))
        value = f"`{param.metavar}`" if param.metavar else "flag"
        if param.multiple:
            value += ", repeatable"
        if param.default not in (None, False, [], ()) and not getattr(param, "is_flag", False) \
                and param.show_default is not False:
            value += f"; default `{param.default}`"
    return f"| {names} | {value} | {_cell(param.help or '')} |"


def _epilog(text: str) -> str:
    """An epilog as prose: 'Examples: a; b' becomes a list of commands, anything else a paragraph."""
    parts = []
    for block in text.split("\n\n"):
        flat = " ".join(block.split())
        if flat.startswith("Examples:"):
            examples = []
            for example in flat.removeprefix("Examples:").split(";"):
                command, _, note = example.strip().rstrip(".").partition(" (")
                examples.append(f"- `{command}`" + (f" ({note}" if note else ""))
            parts.append("Examples:\n\n" + "\n".join(examples))
        elif flat.startswith("Exit status:"):
            parts.append("Exit status: see [Exit codes](exit-codes.md).")
        else:
            parts.append(_text(flat))
    return "\n\n".join(parts)


# -- the config ----------------------------------------------------------------------------------------------

def config_page() -> str:
    """Every field of a config: the run's, an embedded server's and each target kind's, and their nested parts."""
    config, kinds = source("config"), source("kinds")
    schema = config.config_schema()
    models = {m.__name__: m for m in (config.RunConfigModel, config.ServerModel, *kinds.MODELS)}
    out = ["# Config reference", "",
           "Generated from the pydantic models that check a config (the JSON Schema they export is what "
           "`loadtest schema` prints). A field's description is the model's own. A default of — means the "
           "field is left out unless given; its description says what that does. Durations are written with "
           "a unit: `250ms`, `10s`, `2m`, `1h`.", ""]
    out += _model_section("The run", schema, config.RunConfigModel, schema)
    # the servers, then the target kinds in the registry's order
    for name in sorted(schema["$defs"], key=lambda n: (n != "ServerModel", list(models).index(n))):
        out += _model_section(_model_title(name), schema["$defs"][name], models[name], schema)
    return "\n".join(out)


def _model_title(name: str) -> str:
    """A model's section title: ServerModel -> An embedded server (`servers[]`), HttpTargetModel -> HTTP target ..."""
    if name == "ServerModel":
        return "An embedded server (`servers[]`)"
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", re.sub(r"Model$", "", name)).split()
    words = [{"Http": "HTTP", "Tcp": "TCP", "Ws": "WebSocket"}.get(w, w if i == 0 else w.lower()) for i, w in enumerate(words)]
    return " ".join(words) + " (`targets[]`)"


def _model_section(title: str, node: dict[str, Any], model: Any, root: dict[str, Any]) -> list[str]:
    doc = _text(node.get("description") or (model.__doc__ or "").strip())
    out = [f"## {title}", "", doc, "", "| field | type | default | description |", "|---|---|---|---|"]
    required = set(node.get("required", []))
    nested: list[tuple[str, dict[str, Any]]] = []
    for field, prop in node["properties"].items():
        info = model.model_fields.get(field)
        if info is None:
            raise ValueError(f"{model.__name__}: schema property {field!r} is not a model field")
        description = prop.get("description")
        if not description:
            raise ValueError(f"{model.__name__}.{field}: has no description; give it one in the model "
                             f"(a docstring under the field)")
        default = "required" if field in required or info.is_required() else _default(prop, info.default)
        out.append(f"| `{field}` | {_type(prop, root)} | {default} | {_cell(description)} |")
        nested += [(f"{field}{suffix}", obj) for suffix, obj in _objects(prop)]
    out.append("")
    while nested:  # each mapping inside a field, then the mappings inside those
        where, obj = nested.pop(0)
        label = f"`{where}`" + (f" with `{obj['required'][0]}`" if obj.get("required") else "")
        out += [f"### {label}", "", "| field | type | description |", "|---|---|---|"]
        for field, prop in obj["properties"].items():
            mark = " (required)" if field in obj.get("required", []) else ""
            if not prop.get("description"):
                raise ValueError(f"{model.__name__}.{where}.{field}: has no description in its schema")
            out.append(f"| `{field}`{mark} | {_type(prop, root)} | {_cell(prop['description'])} |")
            nested += [(f"{where}.{field}{suffix}", sub) for suffix, sub in _objects(prop)]
        out.append("")
    return out


def _objects(prop: dict[str, Any], suffix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """The mappings with fields of their own inside a property (a flow's steps, a stage, a threshold)."""
    if "properties" in prop:
        yield suffix, prop
    if "items" in prop:
        yield from _objects(prop["items"], suffix + "[]")
    for alternative in prop.get("anyOf", []) + prop.get("oneOf", []):
        if "$ref" not in alternative:
            yield from _objects(alternative, suffix)


def _type(prop: dict[str, Any], root: dict[str, Any]) -> str:
    """A property's type as a reader writes it: duration, integer ≥ 1, `fast` \\| `requests`, list of …"""
    if "$ref" in prop:
        name = prop["$ref"].removeprefix("#/$defs/")
        return f"[{_model_title(name).split(' (')[0].lower()}](#{_slug(_model_title(name))})"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" if not isinstance(v, str) else f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    alternatives = prop.get("anyOf") or prop.get("oneOf")
    if alternatives:
        return " or ".join(dict.fromkeys(_type(a, root) for a in alternatives))
    kind = prop.get("type")
    if prop.get("pattern") == source("fields").DURATION_PATTERN:
        return "duration"
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), root)}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"mapping of text to {_type(extra, root)}" if isinstance(extra, dict) else "mapping"
    if isinstance(kind, list):
        return " or ".join(kind)
    bounds = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]:,}")
    text = {"integer": "integer", "number": "number", "string": "text", "boolean": "boolean"}.get(kind or "", "any")
    return text + (" " + ", ".join(bounds) if bounds else "")


def _default(prop: dict[str, Any], value: Any) -> str:
    """A default as it would be written in the config, or — for a field left out."""
    if "default" in prop:
        value = prop["default"]
    if value is None or value in ((), [], b"", "") or (value == 0 and not isinstance(value, bool)):
        return "—"
    if prop.get("pattern") == source("fields").DURATION_PATTERN and isinstance(value, (int, float)):
        return f"`{_duration(float(value))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{value:g}`"
    return f"`{value}`"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


# -- the run folder --------------------------------------------------------------------------------------------

def run_folder_page() -> str:
    """The run folder's files, their columns in order, the row types and summary.json's keys."""
    rf = source("run_files")
    out = ["# Run folder", "",
           "Generated from the run folder's contract module, which every writer and reader of these files "
           "imports: the names, columns and keys below are the ones written. What the figures mean is in "
           "[Reports and comparing runs](../guides/reports.md).", "",
           "Each run writes one folder, `<out>/<name>-<YYYYmmdd-HHMMSS>/` (or exactly `--out DIR`).", "",
           "| file | what |", "|---|---|"]
    for name in rf.RUN_FILES:
        out.append(f"| [`{name}`](#{_slug(name)}) | {_cell(rf.FILE_DESCRIPTIONS[name])} |")
    out.append("")
    headers = {rf.STATS_NAME: (rf.STATS_HEADER, rf.STATS_HEADER), rf.HISTORY_NAME: (rf.HISTORY_HEADER, rf.HISTORY_HEADER[:rf.HISTORY_HEADER.index("Total Average Content Size") + 1]),
               rf.FAILURES_NAME: (rf.FAILURES_HEADER, rf.LOCUST_FAILURES_HEADER),
               rf.RESOURCES_NAME: (rf.RESOURCES_HEADER, []), rf.WORKERS_NAME: (rf.WORKERS_HEADER, [])}
    for name in rf.RUN_FILES:
        out += [f"## {name}", "", _text(rf.FILE_DESCRIPTIONS[name]), ""]
        if name in headers:
            header, locust = headers[name]
            out += ["Header, in order" + (" (Locust's columns first, marked L):" if locust else ":"), "",
                    "```text", ",".join(header), "```", "",
                    "| # | column | |", "|---|---|---|"]
            out += [f"| {i} | `{c}` | {'L' if c in locust else ''} |" for i, c in enumerate(header, 1)]
            out.append("")
        if name == rf.WORKERS_NAME:
            out += ["Each row is one worker of summary.json's `workers` list, key for column:", "",
                    "| column | summary.json key | type |", "|---|---|---|"]
            for column, (key, kind) in zip(rf.WORKERS_HEADER, rf.WorkerSummary.__annotations__.items()):
                out.append(f"| `{column}` | `{key}` | `{kind}` |")
            out.append("")
        if name == rf.SUMMARY_NAME:
            out += ["Top-level keys, in the order written:", "", _keys(rf.SUMMARY_KEYS), "",
                    "Each of `targets[]` and `aggregated` has:", "", _keys(rf.TARGET_SUMMARY_KEYS), "",
                    f"and, where its kind has them, `{rf.CONNECTIONS_KEY}` (a tcp target: connections opened, "
                    f"failed, held, connect latency) and `{rf.OPEN_MODEL_KEY}` (an open-model target: rate, "
                    f"started, dropped, lateness).", "",
                    "A latency figure (`latency_ms` and the like) has, in milliseconds:", "",
                    _keys(rf.LATENCY_SUMMARY_KEYS), ""]
    out += ["## Row types", "",
            f"The `Type` column of stats.csv, history.csv and failures.csv is a target's HTTP method (or `TCP`) "
            f"for its own rows; the `Name` column is the target's name, and `{rf.AGGREGATED}` for the row "
            f"that totals every target. Other types:", "", "| Type | row |", "|---|---|"]
    out += [f"| `{kind}` | {_cell(meaning)} |" for kind, meaning in rf.ROW_TYPE_MEANINGS.items()]
    out.append("")
    return "\n".join(out)


def _keys(keys: Any) -> str:
    return ", ".join(f"`{k}`" for k in keys)


# -- exit codes ----------------------------------------------------------------------------------------------

def exit_codes() -> list[tuple[int, str, str]]:
    """The exit statuses, their names and meanings, from their one table."""
    return [(status.code, status.name, status.meaning) for status in source("exits").TABLE]


def exit_codes_page() -> str:
    out = ["# Exit codes", "",
           "Generated from the one table of exit statuses, which the code and `loadtest --help` read too. "
           "Every command uses these statuses; CI can gate on them.", "", "| status | name | meaning |", "|---|---|---|"]
    out += [f"| {status} | {name} | {_cell(meaning)} |" for status, name, meaning in exit_codes()]
    out += ["", "`loadtest compare` exits 0 when nothing got worse beyond the tolerance and the runs' noise, 1 when "
                "something did or a target of the first run is missing from the second, and 2 on bad input. "
                "`loadtest report` exits 0 when it wrote the page and 2 on bad input. More on what counts as a "
                "failed run in [Reports and comparing runs](../guides/reports.md#exit-status).", ""]
    return "\n".join(out)


# -- helpers and the hook --------------------------------------------------------------------------------------

def _text(text: str) -> str:
    return " ".join(text.split())


_MARKDOWN = re.compile(r"([\\`*_\[\]|])")


def _cell(text: str) -> str:
    """Plain text for a table cell: one line, with Markdown's marks escaped (help texts are not Markdown)."""
    return _MARKDOWN.sub(r"\\\1", _text(text)).replace("<", "&lt;").replace(">", "&gt;")


def _slug(title: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", re.sub(r"<[^>]+>|`", "", title)).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_page,
    "reference/config.md": config_page,
    "reference/run-folder.md": run_folder_page,
    "reference/exit-codes.md": exit_codes_page,
}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site's files (they are never written into docs/)."""
    from mkdocs.structure.files import File

    for path, render in PAGES.items():
        files.append(File.generated(config, path, content=render()))
    return files


if __name__ == "__main__":
    names = {p.split("/")[-1].removesuffix(".md"): r for p, r in PAGES.items()}
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        sys.exit(f"usage: python docs/gen/reference.py {'|'.join(names)}")
    print(names[sys.argv[1]]())
