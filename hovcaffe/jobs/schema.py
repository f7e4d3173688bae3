"""A small declarative checker for job-spec mappings (no jsonschema dependency).

A schema is a dict `key -> Field`. `check_mapping` walks a parsed YAML/TOML mapping, and the
first problem becomes a `JobSpecError` that names the file, the key path (`steps[1].solver`)
and - for YAML - the line, with a "did you mean" hint for misspelt keys.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hovcaffe.errors import JobSpecError

# Maps a key path to a "line N" string for messages; spec.py supplies one for YAML files.
Locator = Callable[[tuple], "int | None"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Field:
    """One key of a mapping.

    Attributes:
        kind: "str", "int", "float", "bool", "str_list", "str_map", "num_map" or "map"
            (a nested schema).
        required: whether the key must be present.
        default: value used when the key is absent (not validated).
        doc: one sentence, shown in docs and in some errors.
        choices: allowed values for a "str" field.
        minimum: lower bound for "int"/"float" fields.
        schema: the nested schema for a "map" field.
        pattern: regex a "str" value must match (with `pattern_doc` explaining it).
    """

    kind: str
    required: bool = False
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    schema: Mapping[str, "Field"] = field(default_factory=dict)
    pattern: re.Pattern | None = None
    pattern_doc: str = ""


@dataclass
class Where:
    """The file being checked and how to find a key's line in it."""

    source: str
    locate: Locator | None = None

    def error(self, path: tuple, message: str) -> JobSpecError:
        line = self.locate(path) if self.locate else None
        where = self.source if line is None else f"{self.source}:{line}"
        key = format_path(path)
        return JobSpecError(f"{where}: {key + ': ' if key else ''}{message}")


def format_path(path: tuple) -> str:
    """`("steps", 1, "solver")` -> `steps[1].solver`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def check_value(value: Any, spec: Field, path: tuple, where: Where) -> Any:
    """Validate one value against `spec`; returns it (ints accepted where floats are)."""
    kind = spec.kind
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise where.error(path, f"expected a string, got {_type_name(value)}")
        value = str(value)
        if spec.choices and value not in spec.choices:
            raise where.error(path, f"{value!r} is not one of {', '.join(spec.choices)}"
                              + suggest(value, spec.choices))
        if spec.pattern and not spec.pattern.match(value):
            raise where.error(path, f"{value!r} is not valid: {spec.pattern_doc}")
        return value
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            want = "an integer" if kind == "int" else "a number"
            raise where.error(path, f"expected {want}, got {_type_name(value)} ({value!r})")
        if spec.minimum is not None and value < spec.minimum:
            raise where.error(path, f"must be >= {spec.minimum:g}, got {value}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise where.error(path, f"expected true or false, got {_type_name(value)}")
        return value
    if kind == "str_list":
        if isinstance(value, str) or not isinstance(value, list):
            raise where.error(path, f"expected a list of strings, got {_type_name(value)}")
        return [check_value(v, Field("str"), path + (i,), where) for i, v in enumerate(value)]
    if kind == "str_map":
        if not isinstance(value, dict):
            raise where.error(path, f"expected a mapping of names to strings, got {_type_name(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not NAME_RE.match(k):
                raise where.error(path + (str(k),), "keys must be names (letters, digits, _ . -)")
            out[k] = check_value(v, Field("str"), path + (k,), where)
        return out
    if kind == "num_map":
        if not isinstance(value, dict):
            raise where.error(path, f"expected a mapping of names to numbers, got {_type_name(value)}")
        return {str(k): check_value(v, Field("float"), path + (str(k),), where) for k, v in value.items()}
    if kind == "map":
        return check_mapping(value, spec.schema, path, where)
    raise AssertionError(f"unknown field kind {kind!r}")  # a bug in a schema table


def check_mapping(data: Any, schema: Mapping[str, Field], path: tuple, where: Where,
                  *, extra_ok: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate `data` against `schema`; unknown keys and missing required ones are errors.

    Args:
        data: the parsed mapping.
        schema: key -> Field.
        path: key path of `data` inside the file (for messages).
        where: the file.
        extra_ok: keys checked elsewhere (passed through untouched).

    Returns:
        A new dict with every schema key (defaults filled in) plus the `extra_ok` keys present.
    """
    if not isinstance(data, dict):
        raise where.error(path, f"expected a mapping, got {_type_name(data)}")
    for key in data:
        if key not in schema and key not in extra_ok:
            known = sorted(schema) + list(extra_ok)
            raise where.error(path + (str(key),), f"unknown key; known keys here: {', '.join(known)}"
                              + suggest(str(key), known))
    out: dict[str, Any] = {k: data[k] for k in extra_ok if k in data}
    for key, spec in schema.items():
        if key not in data or data[key] is None and not spec.required:
            if spec.required:
                raise where.error(path + (key,), f"required key is missing ({spec.doc})"
                                  if spec.doc else "required key is missing")
            out[key] = spec.default
            continue
        out[key] = check_value(data[key], spec, path + (key,), where)
    return out


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
