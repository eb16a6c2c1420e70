"""Name and unit rules shared by every payload format (pure).

>>> name_problem("press-1") is None
True
>>> name_problem("a/b")
('invalid_value', "contains '+', '#' or '/'")
"""

from __future__ import annotations

from typing import Final

from gateway.core.model import INVALID_VALUE, MISSING_FIELD

MAX_NAME: Final = 256
MAX_UNIT: Final = 64


def kind(v: object) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "a boolean"
    if type(v) is str:
        return "a string"
    if type(v) is list:
        return "an array"
    if type(v) is dict:
        return "an object"
    return f"a {type(v).__name__}"


def short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def name_problem(v: object, allow_empty: bool = False) -> tuple[str, str] | None:
    """(reason, why) if `v` cannot be an equipment/sensor/tag name, else None."""
    if type(v) is not str:
        return INVALID_VALUE, f"is {kind(v)}, not a string"
    if not v.strip():
        if allow_empty and not v:
            return None
        return MISSING_FIELD, "is empty"
    if len(v) > MAX_NAME:
        return INVALID_VALUE, f"is longer than {MAX_NAME} characters"
    if "/" in v or "+" in v or "#" in v:
        return INVALID_VALUE, "contains '+', '#' or '/'"
    if not v.isprintable():
        return INVALID_VALUE, "contains control characters"
    return None


def unit_problem(v: object) -> str | None:
    if type(v) is not str:
        return f"is {kind(v)}, not a string"
    if len(v) > MAX_UNIT:
        return f"is longer than {MAX_UNIT} characters"
    if not v.isprintable():
        return "contains control characters"
    return None


# A route: what a topic means. (reason, detail) are set when the topic is unusable.
