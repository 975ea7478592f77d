"""The request bodies of the HTTP API, with their limits (pydantic models).

Limits are checked before the engine sees a request: a text over
:data:`engine.config.MAX_TEXT_CHARS` or a list over :data:`MAX_MESSAGES` answers 413.
Times are ISO 8601 strings, parsed by the engine so a bad one gets its message.
Answers are the engine's own records as ``to_dict()`` prints them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.config import MAX_TEXT_CHARS
from engine.validate import MAX_ID_CHARS, ROLES

__all__ = ["MAX_ID", "MAX_LIMIT", "MAX_MESSAGES", "AddRequest", "ContextRequest",
           "MessageIn", "PurgeRequest", "ReasonRequest", "SearchRequestBody", "UpdateRequest"]

MAX_MESSAGES = 1000
"""Messages in one add request."""

MAX_LIMIT = 1_000_000
"""The largest ``limit`` a list endpoint accepts."""

MAX_ID = 2**63 - 1
"""The largest fact or message id (DuckDB BIGINT)."""

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
ScopeId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
TimeText = Annotated[str, Field(max_length=64, description="ISO 8601 date or date-time")]
Role = Literal[ROLES]  # type: ignore[valid-type]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Body):
    """One message of a conversation."""

    content: Text
    role: Role = "user"
    name: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None
    observed_at: TimeText | None = None
    metadata: dict[str, Any] | None = None


class AddRequest(_Body):
    """``Memory.add``: a text, a message or a list of texts or messages for one user."""

    messages: Text | MessageIn | Annotated[
        list[Text | MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    user_id: ScopeId
    agent_id: ScopeId | None = None
    run_id: ScopeId | None = None
    metadata: dict[str, Any] | None = None
    observed_at: TimeText | None = None
    infer: bool | None = Field(
        None, description="Extract facts with the LM (default: the server's setting)")
    wait: bool = Field(
        False, description="With infer: answer when extraction is done (200) instead of at "
        "once with a status URL (202)")
    category: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None


class SearchRequestBody(_Body):
    """``Memory.search``."""

    query: Text
    user_id: ScopeId
    agent_id: ScopeId | None = None
    run_id: ScopeId | None = None
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    filters: dict[str, Any] | None = None
    as_of: TimeText | None = None
    explain: bool = False


class ContextRequest(_Body):
    """``Memory.context``: the prompt-ready block of what is known about a user."""

    query: Text
    user_id: ScopeId
    agent_id: ScopeId | None = None
    run_id: ScopeId | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    as_of: TimeText | None = None
    k: Annotated[int, Field(ge=1, le=1000)] = 20


class UpdateRequest(_Body):
    """``Memory.update``: a new version of a current fact."""

    text: Text
    metadata: dict[str, Any] | None = None
    valid_from: TimeText | None = None
    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    value: Text | None = None
    user_id: ScopeId = Field(
        description="The fact's user: another user's fact answers 404, like a missing id")


class ReasonRequest(_Body):
    """``Memory.restore`` (and a reason kept in the history)."""

    reason: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    user_id: ScopeId = Field(
        description="The fact's user: another user's fact answers 404, like a missing id")


class PurgeRequest(_Body):
    """``Memory.purge``: erase everything about one user, for real."""

    user_id: ScopeId
