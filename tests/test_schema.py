"""The config's JSON Schema: `loadtest schema` prints it, it is a well-formed draft 2020-12 document, and every
config the project ships or shows validates against it (and through the models, which agree with it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.model.config import RunConfigModel, config_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The draft 2020-12 keywords (core, applicator, validation, meta-data) a schema of ours may use.
KEYWORDS = {"$schema", "$defs", "$ref", "title", "description", "default", "type", "properties", "required",
            "additionalProperties", "items", "enum", "const", "anyOf", "oneOf", "allOf", "minimum", "maximum",
            "exclusiveMinimum", "minItems", "maxItems", "minLength", "maxLength", "pattern"}
JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def errors(schema: dict[str, Any], value: Any, root: dict[str, Any], where: str = "") -> list[str]:
    """Where `value` breaks `schema`: a validator of exactly the keywords in KEYWORDS, as draft 2020-12 reads them."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(root["$defs"][name], value, root, where)
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        ok = {"string": isinstance(value, str), "boolean": isinstance(value, bool), "null": value is None,
              "integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "array": isinstance(value, list), "object": isinstance(value, dict)}
        if not any(ok[t] for t in allowed):
            return [f"{where}: {value!r} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            out.append(f"{where}: {value!r} has the wrong length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{where}: {len(value)} items")
        if "items" in schema:
            for i, item in enumerate(value):
                out += errors(schema["items"], item, root, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: {key!r} is required" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in props:
                out += errors(props[key], item, root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}: {key!r} is not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(schema["additionalProperties"], item, root, f"{where}.{key}")
    for sub in schema.get("allOf", []):
        out += errors(sub, value, root, where)
    if "anyOf" in schema and all(errors(s, value, root, where) for s in schema["anyOf"]):
        out.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema and sum(not errors(s, value, root, where) for s in schema["oneOf"]) != 1:
        out.append(f"{where}: matches not exactly one of oneOf: "
                   f"{[errors(s, value, root, where) for s in schema['oneOf']]}")
    return out


def walk(schema: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every schema object inside `schema`, with where it is."""
    if not isinstance(schema, dict):
        return []
    found = [(path, schema)]
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            found += walk(sub, f"{path}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        found += walk(schema.get(key), f"{path}/{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            found += walk(sub, f"{path}/{key}/{i}")
    return found


def shipped_documents() -> list[tuple[str, Any]]:
    """configs/*.yaml and every ```yaml block of the README and the documentation, parsed."""
    docs = [(p.name, yaml.safe_load(p.read_text())) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        blocks = re.findall(r"^```yaml[^\n]*\n(.*?)^```", page.read_text(), re.S | re.M)
        docs += [(f"{page.relative_to(ROOT)} block {i}", yaml.safe_load(b)) for i, b in enumerate(blocks)]
    assert len(docs) >= 15
    return docs


def test_loadtest_schema_prints_the_schema_as_json() -> None:
    done = subprocess.run([sys.executable, "-m", "loadtest", "schema"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    printed = json.loads(done.stdout)
    assert printed == config_schema()
    assert printed["$schema"] == DRAFT and printed["type"] == "object" and printed["required"] == ["targets"]


def test_the_schema_is_a_well_formed_draft_2020_12_document() -> None:
    schema = config_schema()
    json.dumps(schema)  # plain JSON: no tuples, bytes or floats that are not numbers
    nodes = walk(schema)
    assert len(nodes) > 50
    for where, node in nodes:
        assert set(node) <= KEYWORDS, (where, set(node) - KEYWORDS)
        types = node.get("type", [])
        assert set(types if isinstance(types, list) else [types]) <= JSON_TYPES, where
        if "pattern" in node:
            re.compile(node["pattern"])
        if "$ref" in node:
            assert node["$ref"].removeprefix("#/$defs/") in schema["$defs"], where
        if node.get("type") == "object" and "properties" in node:
            assert node["additionalProperties"] is False, f"{where} lets unknown fields through"
            assert set(node.get("required", [])) <= set(node["properties"]), where
    # each mapping of the config is a model whose fields are the schema's properties, no more and no fewer
    defs = schema["$defs"]
    assert set(defs) == {"FlowTargetModel", "HttpTargetModel", "TcpTargetModel", "WsTargetModel", "ServerModel"}
    assert set(schema["properties"]) == set(RunConfigModel.model_fields)


@pytest.mark.parametrize("name, document", shipped_documents(), ids=[n for n, _ in shipped_documents()])
def test_every_shipped_config_validates_against_the_schema(name: str, document: Any) -> None:
    assert errors(config_schema(), document, config_schema()) == []
    # and through the models: a flow's files are beside its config, as the documentation's examples say
    parse_config(document, base=ROOT / "configs")


def test_the_schema_refuses_what_the_models_refuse() -> None:
    schema = config_schema()
    good = {"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", "concurrency": 1}]}
    assert errors(schema, good, schema) == []
    for bad in ({**good, "colour": "red"},
                {"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", "concurrency": 1, "speed": 3}]},
                {"duration": 30, "targets": good["targets"]},
                {"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "expect": "reverse"}]},
                {"duration": "1s", "targets": [{"name": "x"}]},
                {"duration": "1s", "servers": [{"kind": "ftp"}], "targets": good["targets"]},
                {"duration": "1s", "targets": []}):
        assert errors(schema, bad, schema), bad
        with pytest.raises(ValueError):
            parse_config(bad)


def test_an_editor_schema_comment_does_not_change_the_config(tmp_path: Path) -> None:
    path = tmp_path / "edited.yaml"
    path.write_text("# yaml-language-server: $schema=loadtest.schema.json\n"
                    "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: 2}]\n")
    assert load_config(path).targets[0].concurrency == 2
