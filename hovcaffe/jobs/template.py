"""`{date}`-style placeholders in job-spec strings.

Syntax: `{name}` or a dotted `{steps.train.outputs.model}`; a date takes a strftime format after
a colon (`{date:%Y/%m/%d}`); `{{` and `}}` are literal braces. Deliberately smaller than
`str.format` (no indexing, no attribute calls) so a spec cannot reach into Python objects.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Callable, Iterator

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^{}]*))?\}|[{}]")


class TemplateError(ValueError):
    """A placeholder is malformed or names nothing known; `name` is the placeholder."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message)
        self.name = name


def placeholders(text: str) -> Iterator[tuple[str, str | None]]:
    """Yield `(name, format)` for every placeholder in `text`.

    Raises:
        TemplateError: a lone `{` or `}`, or a placeholder that is not a dotted name.
    """
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise TemplateError(f"unbalanced {token!r} at character {match.start() + 1} of {text!r} "
                                "(write {{ or }} for a literal brace; placeholders look like {date})")
        yield match.group(1), match.group(2)


def render(text: str, lookup: Callable[[str], Any]) -> str:
    """Replace every placeholder in `text` with `lookup(name)`, formatted.

    Args:
        text: the template.
        lookup: name -> value; raises KeyError for unknown names.

    Raises:
        TemplateError: malformed text, unknown name, or a format on a value that takes none.
    """
    list(placeholders(text))  # syntax errors first, with the position

    def substitute(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name, fmt = match.group(1), match.group(2)
        try:
            value = lookup(name)
        except KeyError:
            raise TemplateError(f"unknown placeholder {{{name}}}", name) from None
        if fmt is not None:
            if not isinstance(value, (_dt.date, _dt.datetime)):
                raise TemplateError(f"{{{name}:{fmt}}}: only dates take a format", name)
            return value.strftime(fmt)
        return value.isoformat() if isinstance(value, _dt.date) else str(value)

    return _TOKEN.sub(substitute, text)


def nested_lookup(context: dict[str, Any]) -> Callable[[str], Any]:
    """A `lookup` for `render` that walks dotted names through nested dicts."""

    def lookup(name: str) -> Any:
        value: Any = context
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(name)
            value = value[part]
        if isinstance(value, dict):
            raise KeyError(name)  # a prefix like {steps.train} names no single value
        return value

    return lookup
