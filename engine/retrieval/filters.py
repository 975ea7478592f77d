"""Metadata and column filters, compiled to SQL and checked again in code.

A filter is a dict. Each key is a fact column (``category``, ``agent_id``,
``run_id``) or a metadata key (dots reach into nested objects: ``"place.city"``).
Each value is either a plain value (equality) or ``{operator: value}`` with one
or more of ``eq, ne, in, nin, gt, gte, lt, lte, contains``. All conditions must
hold. Example::

    {"category": "food", "rating": {"gte": 4}, "tags": {"contains": "vegan"}}

The same filter is turned into a SQL predicate (so DuckDB does the work) and
into a Python predicate (so results from caches are checked the same way); the
test suite checks that the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import InvalidInputError

__all__ = ["OPERATORS", "compile_filters", "matches", "validate_filters"]

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains")
COLUMNS = ("category", "agent_id", "run_id")
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")
Scalar = str | int | float | bool


def validate_filters(filters: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Normalise a filter dict to ``{key: {op: value}}`` or raise InvalidInputError."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise InvalidInputError(f"filters must be a dict, got {type(filters).__name__}")
    result: dict[str, dict[str, Any]] = {}
    for key, condition in filters.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInputError(
                f"filter key {key!r} must be letters, digits, '_' or '-', dot-separated"
            )
        ops = dict(condition) if isinstance(condition, Mapping) else {"eq": condition}
        if not ops:
            raise InvalidInputError(f"filter {key!r} has no operator")
        for op, value in ops.items():
            if op not in OPERATORS:
                raise InvalidInputError(
                    f"unknown filter operator {op!r} for {key!r}; use one of {', '.join(OPERATORS)}"
                )
            if op in ("in", "nin"):
                if not isinstance(value, (list, tuple, set)) or not value:
                    raise InvalidInputError(f"filter {key!r}: {op!r} needs a non-empty list")
                if not all(isinstance(v, (str, int, float, bool)) for v in value):
                    raise InvalidInputError(f"filter {key!r}: {op!r} values must be scalars")
                ops[op] = list(value)
            elif op in ("gt", "gte", "lt", "lte"):
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise InvalidInputError(
                        f"filter {key!r}: {op!r} needs a number or a string"
                    )
            elif not isinstance(value, (str, int, float, bool)) and value is not None:
                raise InvalidInputError(f"filter {key!r}: {op!r} needs a scalar value")
            if op == "contains" and not isinstance(value, str):
                raise InvalidInputError(f"filter {key!r}: 'contains' needs a string")
        result[key] = ops
    return result


def _as_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_filters(filters: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """A SQL predicate over the ``facts`` table (``TRUE`` when empty) and its parameters."""
    normalised = validate_filters(filters)
    clauses: list[str] = []
    params: list[Any] = []
    for key, ops in normalised.items():
        if key in COLUMNS:
            text_expr = key
            number_expr = f"TRY_CAST({key} AS DOUBLE)"
            list_expr = "NULL::VARCHAR[]"
        else:
            path = "$." + key
            text_expr = f"json_extract_string(metadata, '{path}')"
            number_expr = f"TRY_CAST({text_expr} AS DOUBLE)"
            list_expr = (
                f"CASE WHEN json_type(metadata, '{path}') = 'ARRAY' "
                f"THEN json_extract_string(metadata, '{path}[*]') END"
            )
        for op, value in ops.items():
            if op in ("eq", "ne"):
                if value is None:
                    clauses.append(f"{text_expr} IS {'NOT ' if op == 'ne' else ''}NULL")
                    continue
                equal = (
                    f"({number_expr} = ?)"
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else f"({text_expr} = ?)"
                )
                param: Any = value if not isinstance(value, bool) else _as_text(value)
                if isinstance(value, str):
                    param = value
                if op == "eq":
                    clauses.append(f"coalesce({equal}, FALSE)")
                else:
                    clauses.append(f"NOT coalesce({equal}, FALSE)")
                params.append(param)
            elif op in ("in", "nin"):
                clause = f"coalesce(list_contains(?::VARCHAR[], {text_expr}), FALSE)"
                clauses.append(clause if op == "in" else f"NOT {clause}")
                params.append([_as_text(v) for v in value])
            elif op in ("gt", "gte", "lt", "lte"):
                sql_op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
                if isinstance(value, str):
                    clauses.append(f"coalesce({text_expr} {sql_op} ?, FALSE)")
                else:
                    clauses.append(f"coalesce({number_expr} {sql_op} ?, FALSE)")
                params.append(value)
            else:  # contains: substring of a string, or member of a list
                clauses.append(
                    f"coalesce(CASE WHEN {list_expr} IS NOT NULL THEN list_contains({list_expr}, ?)"
                    f" ELSE contains({text_expr}, ?) END, FALSE)"
                )
                params.extend([value, value])
    return (" AND ".join(clauses) if clauses else "TRUE"), params


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    if key in COLUMNS:
        return record.get(key)
    value: Any = record.get("metadata") or {}
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return _as_text(value)


def _check(op: str, actual: Any, expected: Any) -> bool:
    if op in ("eq", "ne"):
        if expected is None:
            result = actual is None
        elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
            number = _number(actual) if not isinstance(actual, (dict, list)) else None
            result = number is not None and number == float(expected)
        else:
            result = _text(actual) == _as_text(expected)
        return result if op == "eq" else not result
    if op in ("in", "nin"):
        text = _text(actual)
        result = text is not None and text in {_as_text(v) for v in expected}
        return result if op == "in" else not result
    if op in ("gt", "gte", "lt", "lte"):
        compare: Callable[[Any, Any], bool] = {
            "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
        }[op]
        if isinstance(expected, str):
            text = _text(actual)
            return text is not None and compare(text, expected)
        number = _number(actual) if not isinstance(actual, (dict, list)) else None
        return number is not None and compare(number, float(expected))
    if isinstance(actual, list):
        return any(_text(item) == expected for item in actual)
    text = _text(actual)
    return text is not None and expected in text


def matches(filters: Mapping[str, Any] | None, record: Mapping[str, Any]) -> bool:
    """Whether a fact record (a dict with columns and ``metadata``) passes the filters."""
    for key, ops in validate_filters(filters).items():
        actual = _lookup(record, key)
        for op, expected in ops.items():
            if not _check(op, actual, expected):
                return False
    return True
