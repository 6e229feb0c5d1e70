"""AIP-160 filters, the subset the List RPCs document: ``field op value`` terms joined by ``AND``.

Values are bare words or double-quoted strings (backslash escapes). Each List RPC says which
fields it accepts and turns the terms into SQL conditions with the helpers here; every problem
is INVALID_ARGUMENT with a ``filter`` field violation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement

from seedline_server.domain.errors import FieldViolation, InvalidArgument

_TERM = re.compile(
    r'\s*(?P<field>[a-z_.]+)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^\s"()]+)\s*'
)
_AND = re.compile(r"AND\s+|AND$")
RANGE_OPS = frozenset({"=", "<", "<=", ">", ">="})
# What one field makes of a term: (operator, value, field name) -> SQL condition.
Field = Callable[[str, str, str], ColumnElement[bool]]


def violation(message: str) -> InvalidArgument:
    """The error for a filter that cannot be used."""
    return InvalidArgument(f"filter: {message}", [FieldViolation("filter", message)])


def terms(expression: str) -> list[tuple[str, str, str]]:
    """The ``(field, operator, value)`` terms of ``expression`` (quotes and escapes removed).

    Raises:
        InvalidArgument: the expression is not terms joined by AND.

    """
    out, pos, expr = [], 0, expression.strip()
    while pos < len(expr):
        term = _TERM.match(expr, pos)
        if term is None:
            raise violation(f"expected `field operator value` at offset {pos}")
        raw = term["value"]
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        out.append((term["field"], term["op"], value))
        pos = term.end()
        if pos < len(expr):
            joiner = _AND.match(expr, pos)
            if joiner is None:
                raise violation(f"expected AND at offset {pos} (only AND is supported)")
            pos = joiner.end()
            if pos >= len(expr):
                raise violation("a term must follow AND")
    return out


def conditions(expression: str, fields: Mapping[str, Field]) -> list[ColumnElement[bool]]:
    """The SQL conditions of ``expression``, each term made by its field's entry in ``fields``.

    Raises:
        InvalidArgument: the expression does not parse, or names a field not in ``fields``.

    """
    out = []
    for field, op, value in terms(expression):
        make = fields.get(field)
        if make is None:
            raise violation(f"unknown field {field!r}; filter on {', '.join(fields)}")
        out.append(make(op, value, field))
    return out


def matches(column: Any, parse: Callable[[str, str], Any]) -> Field:
    """A field compared with ``=`` / ``!=`` to ``parse(value, field name)``."""
    return lambda op, value, field: equal(column, op, parse(value, field), field)


def equal(column: Any, op: str, value: Any, field: str) -> ColumnElement[bool]:
    """``column = value`` or ``column != value`` (NULL counts as different); other operators refused."""
    if op == "=":
        result: ColumnElement[bool] = column == value
    elif op == "!=":
        result = column.is_distinct_from(value)
    else:
        raise violation(f"{field} supports only = and !=")
    return result


def compare(column: Any, op: str, value: Any, field: str) -> ColumnElement[bool]:
    """``column <op> value`` for ``=``, ``<``, ``<=``, ``>``, ``>=``; other operators refused."""
    if op not in RANGE_OPS:
        raise violation(f"{field} does not support {op}")
    result: ColumnElement[bool] = {
        "=": column == value,
        "<": column < value,
        "<=": column <= value,
        ">": column > value,
        ">=": column >= value,
    }[op]
    return result


def timestamp(value: str, field: str) -> datetime:
    """An RFC 3339 time with an offset (``Z`` allowed)."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise violation(f"{field} must be an RFC 3339 time with an offset, got {value!r}")
    return when


def enum_number(value: str, numbers: Mapping[str, int], prefix: str, field: str) -> int:
    """The number of an enum value given by its full name or without ``prefix``."""
    number = numbers.get(value) or numbers.get(prefix + value)
    if number is None:
        raise violation(f"{field} must be a {prefix}* name, got {value!r}")
    return number


def boolean(value: str, field: str) -> bool:
    """``true`` or ``false``."""
    if value not in {"true", "false"}:
        raise violation(f"{field} must be true or false, got {value!r}")
    return value == "true"
