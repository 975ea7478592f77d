"""Checks on public arguments, with errors that say what to pass instead."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.config import MAX_TEXT_CHARS
from engine.errors import InvalidInputError, ScopeRequiredError, TooLargeError
from engine.timeutil import TimeLike, to_storage

__all__ = ["InputMessage", "check_fact_id", "check_k", "check_limit", "check_max_tokens",
           "check_metadata", "check_scope", "check_text", "normalise_messages"]

MAX_ID_CHARS = 256
MAX_CONTEXT_TOKENS = 1_000_000
ROLES = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class InputMessage:
    """One message as accepted by ``Memory.add``, validated."""

    role: str
    content: str
    observed_at: datetime
    metadata: dict[str, Any]
    name: str | None = None


def _check_unicode(value: str, what: str) -> None:
    """Refuse strings UTF-8 cannot store (lone surrogates, e.g. from a bad decode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode (a lone surrogate at position {exc.start}); "
            "decode the input with errors='replace' first"
        ) from exc


def check_text(text: Any, what: str = "text") -> str:
    """A non-empty string of at most MAX_TEXT_CHARS characters, stripped."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a string, got {type(text).__name__}")
    _check_unicode(text, what)
    stripped = text.strip()
    if not stripped:
        raise InvalidInputError(f"{what} is empty; pass the text to remember")
    if len(stripped) > MAX_TEXT_CHARS:
        raise TooLargeError(
            f"{what} has {len(stripped):,} characters; the limit is {MAX_TEXT_CHARS:,}. "
            "Split it into several messages."
        )
    return stripped


def check_scope(
    user_id: Any, agent_id: Any = None, run_id: Any = None
) -> tuple[str, str | None, str | None]:
    """Validate the (user, agent, run) scope; user_id is required."""
    if user_id is None or (isinstance(user_id, str) and not user_id.strip()):
        raise ScopeRequiredError(
            "user_id is required: every fact belongs to a user (e.g. user_id='maria')"
        )
    values: list[str | None] = []
    for name, value in (("user_id", user_id), ("agent_id", agent_id), ("run_id", run_id)):
        if value is None:
            values.append(None)
            continue
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
        _check_unicode(value, name)
        value = value.strip()
        if not value or len(value) > MAX_ID_CHARS:
            raise InvalidInputError(f"{name} must be 1 to {MAX_ID_CHARS} characters")
        values.append(value)
    assert values[0] is not None
    return values[0], values[1], values[2]


def check_metadata(metadata: Any) -> dict[str, Any]:
    """A JSON-serialisable dict (None becomes {}), returned as JSON reads it back (keys as
    strings, tuples as lists): what is stored, so what a read returns."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, ensure_ascii=False)
        _check_unicode(text, "metadata")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise InvalidInputError(f"k must be an integer from 1 to 1000, got {k!r}")
    return k


def check_limit(limit: Any) -> int:
    """A positive integer row limit."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit must be a positive integer, got {limit!r}")
    return limit


def check_max_tokens(max_tokens: Any) -> int:
    """A token budget: an integer from 1 to MAX_CONTEXT_TOKENS."""
    if (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
            or not 1 <= max_tokens <= MAX_CONTEXT_TOKENS):
        raise InvalidInputError(
            f"max_tokens must be an integer from 1 to {MAX_CONTEXT_TOKENS:,} (the prompt's "
            f"budget for memories, e.g. 1000), got {max_tokens!r}"
        )
    return max_tokens


def check_fact_id(fact_id: Any) -> int:
    if isinstance(fact_id, bool) or not isinstance(fact_id, int) or fact_id < 1:
        raise InvalidInputError(f"fact id must be a positive integer, got {fact_id!r}")
    return fact_id


def normalise_messages(
    text_or_messages: Any, *, observed_at: datetime, metadata: dict[str, Any]
) -> list[InputMessage]:
    """Accept a string, a message dict, or a list of strings / message dicts.

    A message dict has ``content`` and optionally ``role`` (default ``user``),
    ``name``, ``observed_at`` and ``metadata`` (merged over the call's metadata).
    """
    if isinstance(text_or_messages, (str, Mapping)):
        items: Sequence[Any] = [text_or_messages]
    elif isinstance(text_or_messages, Sequence):
        items = text_or_messages
    else:
        raise InvalidInputError(
            "add() takes a string, a message dict or a list of them, got "
            f"{type(text_or_messages).__name__}"
        )
    if not items:
        raise InvalidInputError("add() got an empty list; pass at least one message")
    result = []
    for position, item in enumerate(items):
        where = f"message {position}" if len(items) > 1 else "text"
        if isinstance(item, str):
            result.append(InputMessage("user", check_text(item, where), observed_at, metadata))
            continue
        if not isinstance(item, Mapping):
            raise InvalidInputError(
                f"{where} must be a string or a dict with 'content', got {type(item).__name__}"
            )
        if "content" not in item:
            raise InvalidInputError(f"{where} has no 'content' key")
        role = item.get("role", "user")
        if role not in ROLES:
            raise InvalidInputError(f"{where}: role must be one of {', '.join(ROLES)}")
        when: TimeLike | None = item.get("observed_at")
        merged = {**metadata, **check_metadata(item.get("metadata"))}
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidInputError(f"{where}: name must be a string")
        result.append(
            InputMessage(
                role=role,
                content=check_text(item["content"], where),
                observed_at=observed_at if when is None else to_storage(when, name="observed_at"),
                metadata=merged,
                name=name,
            )
        )
    return result
