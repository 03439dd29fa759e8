"""The part of GJSON (github.com/tidwall/gjson) that KServe's router evaluates for a Sequence
step's ``condition``, as far as posegraph's graphs use it: dotted paths of keys and array
indices, and a ``#(key op value)`` query over an array (first match), with ``==``/``!=`` against
a JSON literal or one of GJSON's ``~true``/``~false``/``~null``/``~*`` conversions. KServe runs the
step when the path *exists* in the previous step's response, and otherwise ends the sequence with
that response. Anything else is refused when the local router starts (``parse`` raises), so a
condition the two routers would read differently cannot get that far.

GJSON's ``~`` semantics, from its source (queryMatches, falseish, trueish; v1.18): the value is
first turned into a boolean and then compared with true. A missing key reads as null, so it is
null-ish and false-ish, never true-ish: ``#(key!=~true)`` matches an element without the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_QUERY = re.compile(r"^#\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=)\s*(.+?)\s*\)$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class UnsupportedCondition(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    key: str
    op: str
    value: str  # a JSON literal, or ~true / ~false / ~null / ~*


def _split(path: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in path:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse(path: str) -> list[str | int | Query]:
    """The path as steps, or UnsupportedCondition naming what this subset does not read."""
    steps: list[str | int | Query] = []
    for part in _split(path):
        if part.isdigit():
            steps.append(int(part))
        elif match := _QUERY.match(part):
            key, op, value = match.groups()
            if value not in {"~true", "~false", "~null", "~*"}:
                try:
                    json.loads(value)
                except ValueError:
                    raise UnsupportedCondition(f"condition {path!r}: {value!r} is not a JSON literal or ~bool") from None
            steps.append(Query(key, op, value))
        elif _KEY.match(part):
            steps.append(part)
        else:
            raise UnsupportedCondition(f"condition {path!r}: {part!r} is beyond the GJSON subset the local router "
                                       "reads (keys, indices, #(key==value), #(key!=value))")
    return steps


_MISSING = object()


_BOOL_STRINGS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}  # Go's ParseBool


def _falseish(value: Any) -> bool:
    if value is _MISSING or value is None or value is False:
        return True
    if isinstance(value, str):
        return _BOOL_STRINGS.get(value.lower()) is False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return False


def _trueish(value: Any) -> bool:
    if value is True:
        return True
    if isinstance(value, str):
        return _BOOL_STRINGS.get(value.lower()) is True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    return False


def _matches(query: Query, element: Any) -> bool:
    value = element.get(query.key, _MISSING) if isinstance(element, dict) else _MISSING
    if query.value.startswith("~"):
        value = {"~true": _trueish, "~false": _falseish, "~null": lambda v: v is _MISSING or v is None,
                 "~*": lambda v: v is not _MISSING}[query.value](value)
        wanted = True
    else:
        if value is _MISSING:
            return False
        wanted = json.loads(query.value)
    return (value == wanted) if query.op == "==" else (value != wanted)


def exists(body: Any, steps: list[str | int | Query]) -> bool:
    """Whether the parsed path names something in ``body`` (decoded JSON)."""
    current = body
    for step in steps:
        if isinstance(step, Query):
            if not isinstance(current, list):
                return False
            found = [e for e in current if _matches(step, e)]
            if not found:
                return False
            current = found[0]
        elif isinstance(step, int):
            if not isinstance(current, list) or step >= len(current):
                return False
            current = current[step]
        else:
            if not isinstance(current, dict) or step not in current:
                return False
            current = current[step]
    return True
