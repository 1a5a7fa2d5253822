"""The base of every config model: strict (unknown keys refused), frozen, and its JSON Schema described.

The schema's descriptions come from the fields' own docstrings, read from the source only when a schema
is made (`loadtest schema`, the docs), not at import.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from loadtest.model.fields import FieldError, type_name

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def _fits(default: Any, prop: dict[str, Any]) -> bool:
    """Whether a default is a value the property's own schema allows (0 for "left out" often is not)."""
    kind = _JSON_TYPES.get(prop.get("type", ""))
    if default is None or default == [] or (kind is not None and not isinstance(default, kind)):
        return False
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return default >= prop.get("minimum", default) and default > prop.get("exclusiveMinimum", default - 1)
    return not isinstance(default, str) or len(default) >= prop.get("minLength", 0)


def field_docstrings(model: type) -> dict[str, str]:
    """The docstring written under each field in a model's class body: the field's description.

    Read from the source only when a schema is made (`loadtest schema`, the documentation), so importing the
    models parses no source, as pydantic's own `use_attribute_docstrings` would in every process.
    """
    import ast
    import inspect
    import textwrap

    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(model))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):  # no source (a frozen build): no descriptions
        return {}
    found = {}
    statements = getattr(body, "body", [])
    for statement, after in zip(statements, statements[1:]):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str):
            found[statement.target.id] = " ".join(after.value.value.split())
    return found


def _schema_extra(schema: dict[str, Any], model: Any) -> None:
    """Each field's description from the docstring under it. Defaults shown only where they are what a user
    would write: a field left out is not one given as null, and a default held converted (a tuple for
    "listen: 127.0.0.1:0", bytes for a body) is left out. Then the model's own `schema_extra`, if it has one."""
    descriptions = field_docstrings(model)
    for name, prop in schema.get("properties", {}).items():
        if name in descriptions:
            prop["description"] = descriptions[name]
        if "default" in prop:
            if not _fits(prop["default"], prop):
                del prop["default"]
    extra = getattr(model, "schema_extra", None)
    if extra is not None:
        extra(schema)


class ConfigModel(BaseModel):
    """A mapping in the config: unknown fields refused (first, naming the known ones), values frozen."""

    # A docstring under a field is its description, in the JSON Schema and the generated config reference
    # (put there by _schema_extra when a schema is made).
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_schema_extra)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise FieldError(f"must be a mapping, got {type_name(data)}")
        known = set(cls.model_fields)
        for key in data:
            if key not in known:
                raise FieldError(f"unknown field {key!r} (known: {', '.join(sorted(known))})")
        cls.check_written(data)
        return data

    @classmethod
    def check_written(cls, data: dict[str, Any]) -> None:
        """Checks of the mapping as written that come before any field's (fields that exclude each other)."""


# A cluster's scheduler address (--cluster, cluster:): checked here, with the config's other fields, so that
# the config need not import the cluster module, which imports the config.


class TargetModel(ConfigModel):
    """A target kind's config model: its `target` property builds the validated target (once, cached), and it is
    built while validating, so that a mistake across fields is raised as a validation error."""

    @model_validator(mode="after")
    def _checked_across_fields(self) -> TargetModel:
        self.target  # noqa: B018 - built now
        return self
