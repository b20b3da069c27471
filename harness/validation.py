"""One line from a pydantic ValidationError: the file, where in it, what was wrong, what was there."""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import ValidationError


def where(loc: Sequence[int | str]) -> str:
    """runs[0].subjects[1].mix, from pydantic's location tuple."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (key)"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def describe(value: object) -> str:
    """A short rendering of a bad value (scalars as JSON, anything else by its type)."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(source: str, exc: ValidationError) -> str:
    """`source: where: message (got value) (and N more problems)` for the first error."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] not in ("missing", "value_error", "model_type"):
        message += f" (got {describe(first.get('input'))})"
    rest = len(errors) - 1
    more = f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else ""
    return f"{source}: {where(first['loc'])}: {message}{more}"
