"""Printing results: JSON for scripts, aligned tables for people."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

__all__ = ["emit", "format_time", "slot_label", "table", "with_slot"]


def format_time(value: Any) -> str:
    """A short, readable UTC time (date only when the time is midnight)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
            return value.strftime("%Y-%m-%d")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def slot_label(subject: str | None, slot: str | None, value: str | None) -> str:
    """A fact's slot in brackets, e.g. ``[user · home city: Porto]``; "" without a slot."""
    if not slot:
        return ""
    label = f"{subject} · {slot}" if subject else slot
    return f"[{label}: {value}]" if value else f"[{label}]"


def with_slot(record: Any) -> str:
    """A fact's (or hit's) text, after its slot label when it has a slot."""
    label = slot_label(record.subject, record.slot, record.value)
    return f"{label} {record.text}" if label else str(record.text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False) if value else "-"
    return " ".join(str(value).split())


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, wrap_column: int = -1) -> str:
    """Render rows as an aligned text table; the ``wrap_column`` is cut to fit the terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    total = shutil.get_terminal_size((120, 20)).columns
    if cells and wrap_column is not None:
        column = wrap_column % len(headers)
        others = sum(w + 2 for i, w in enumerate(widths) if i != column)
        widths[column] = max(len(headers[column]), min(widths[column], total - others))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        parts = []
        for value, width in zip(row, widths, strict=True):
            if len(value) > width:
                value = value[: max(width - 1, 0)] + "…"
            parts.append(value.ljust(width))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def emit(data: Any, *, as_json: bool, text: str | None = None) -> None:
    """Print ``data`` as JSON, or ``text`` (a rendered table) for people."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        click.echo(text if text is not None else str(data))
