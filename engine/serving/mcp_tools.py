"""The memory tools an MCP client sees, bound to one user (and optionally one agent).

The scope belongs to the server, fixed when it is built, never to the caller: no
tool takes a ``user_id``, ``agent_id`` or ``run_id``; every argument model forbids
unknown keys, so a call that passes one is rejected with an error saying why; and a
fact id that belongs to another user or agent answers the same "not found" as an id
that does not exist. Text that talks the model into asking for someone else's
memories therefore gets nothing.

This module knows nothing of the MCP transport: :func:`call_tool` validates the
arguments, runs the tool on the :class:`~engine.memory.Memory` and returns a
JSON-ready dict (built from the records' ``to_dict()``), or raises an
:class:`~engine.errors.EngineError`. :mod:`engine.serving.mcp` puts it on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import FactNotFoundError, InvalidInputError
from engine.validate import ROLES, check_scope

if TYPE_CHECKING:
    from engine.memory import Memory
    from engine.types import Fact

__all__ = ["ScopedMemory", "TOOLS", "ToolSpec", "call_tool"]

DATE_HELP = "ISO 8601 date or date-time, e.g. 2026-05-01 or 2026-05-01T09:30:00Z"


class ToolArgs(BaseModel):
    """Base of the argument models: unknown keys (a user_id...) are an error."""

    model_config = ConfigDict(extra="forbid")


class ChatMessage(ToolArgs):
    role: str = Field("user", description="Who said it.",
                      json_schema_extra={"enum": list(ROLES)})
    content: str = Field(description="What was said.")
    name: str | None = Field(None, description="The speaker's name, if known.")
    observed_at: str | None = Field(None, description=f"When it was said ({DATE_HELP}).")


class AddArgs(ToolArgs):
    text: str | None = Field(
        None, description="One thing the user said or that should be remembered, "
                          "e.g. \"I moved to Porto last month\". Give this or `messages`.")
    messages: list[ChatMessage] | None = Field(
        None, description="Conversation turns to learn from, oldest first. Give this or `text`.")
    observed_at: str | None = Field(
        None, description=f"When it was said [default: now] ({DATE_HELP}); relative dates "
                          "such as \"last month\" are read from it.")
    metadata: dict[str, Any] | None = Field(
        None, description="Optional JSON object stored with the new facts, "
                          "e.g. {\"source\": \"chat\"}.")
    infer: bool | None = Field(
        None, description="true: the local language model extracts standalone facts and "
                          "reconciles them with what is known; false: store the text as one "
                          "fact as given. Default: the server's setting.")
    wait: bool = Field(
        True, description="false: return as soon as the messages are stored and extract "
                          "in the background (the result then lists them as pending).")


class SearchArgs(ToolArgs):
    query: str = Field(description="What you want to know, in plain words, "
                                   "e.g. \"what does the user drink in the morning?\"")
    k: int = Field(10, ge=1, description="How many facts to return at most.")
    as_of: str | None = Field(
        None, description=f"Search what was true at this time instead of now ({DATE_HELP}).")
    filters: dict[str, Any] | None = Field(
        None, description="Optional conditions that must all hold, on `category` or metadata "
                          "keys: a value for equality or {operator: value} with eq, ne, in, "
                          "nin, gt, gte, lt, lte, contains; e.g. {\"category\": \"food\"}.")


class ContextArgs(ToolArgs):
    query: str = Field(description="The user's message or the question you are about to "
                                   "answer; the context holds what is relevant to it.")
    max_tokens: int = Field(1000, ge=1, description="Size budget of the returned text.")
    as_of: str | None = Field(
        None, description=f"Build the context as things stood at this time ({DATE_HELP}).")


class ListArgs(ToolArgs):
    include_history: bool = Field(
        False, description="Also list superseded and deleted versions.")
    as_of: str | None = Field(
        None, description=f"List the facts that were true at this time ({DATE_HELP}).")
    filters: dict[str, Any] | None = Field(
        None, description="Optional conditions, as in search_memories.")
    limit: int = Field(100, ge=1, description="Return at most this many (the most recent).")


class UpdateArgs(ToolArgs):
    fact_id: int = Field(ge=1, description="The `id` of a current fact, from search_memories "
                                           "or list_memories.")
    text: str = Field(description="The new text of the fact, written as a standalone "
                                  "statement, e.g. \"User lives in Porto\".")
    valid_from: str | None = Field(
        None, description=f"When the new version became true [default: now] ({DATE_HELP}).")
    reason: str | None = Field(None, description="Why it changed (kept in the history).")


class DeleteArgs(ToolArgs):
    fact_id: int = Field(ge=1, description="The `id` of a current fact to forget.")
    reason: str | None = Field(None, description="Why it is forgotten (kept in the history).")


class HistoryArgs(ToolArgs):
    fact_id: int = Field(ge=1, description="The `id` of any version of the fact.")


@dataclass(frozen=True)
class ScopedMemory:
    """A :class:`Memory` seen through one fixed user (and agent, when given)."""

    memory: Memory
    user_id: str
    agent_id: str | None = None

    @classmethod
    def of(cls, memory: Memory, user_id: str, agent_id: str | None = None) -> ScopedMemory:
        """Validate the scope once, as the engine would (ids are stripped)."""
        user, agent, _ = check_scope(user_id, agent_id)
        return cls(memory, user, agent)

    def owned(self, fact_id: int) -> Fact:
        """The fact if it belongs to this scope; otherwise "not found", exactly as for an
        id that does not exist, so another user's ids reveal nothing."""
        fact = self.memory.get(fact_id, user_id=self.user_id)
        if self.agent_id is not None and fact.agent_id != self.agent_id:
            raise FactNotFoundError(f"no fact with id {fact_id}")
        return fact


def add_memory(scope: ScopedMemory, args: AddArgs) -> dict[str, Any]:
    if (args.text is None) == (args.messages is None):
        raise InvalidInputError("give either `text` or `messages` (not both, not neither)")
    content: str | list[dict[str, Any]] = (
        args.text if args.text is not None
        else [m.model_dump(exclude_none=True) for m in args.messages or []]
    )
    result = scope.memory.add(content, user_id=scope.user_id, agent_id=scope.agent_id,
                              metadata=args.metadata, observed_at=args.observed_at,
                              infer=args.infer, wait=args.wait)
    return {**result.to_dict(), "fact_ids": result.fact_ids}


def search_memories(scope: ScopedMemory, args: SearchArgs) -> dict[str, Any]:
    hits = scope.memory.search(args.query, user_id=scope.user_id, agent_id=scope.agent_id,
                               k=args.k, as_of=args.as_of, filters=args.filters)
    return {"results": [hit.to_dict() for hit in hits]}


def get_context(scope: ScopedMemory, args: ContextArgs) -> dict[str, Any]:
    context = scope.memory.context(args.query, user_id=scope.user_id, agent_id=scope.agent_id,
                                   max_tokens=args.max_tokens, as_of=args.as_of)
    return context.to_dict()


def list_memories(scope: ScopedMemory, args: ListArgs) -> dict[str, Any]:
    facts = scope.memory.get_all(scope.user_id, agent_id=scope.agent_id,
                                 include_history=args.include_history, as_of=args.as_of,
                                 filters=args.filters)
    shown = facts[-args.limit:]
    return {"facts": [fact.to_dict() for fact in shown], "total": len(facts),
            "truncated": len(shown) < len(facts)}


def update_memory(scope: ScopedMemory, args: UpdateArgs) -> dict[str, Any]:
    scope.owned(args.fact_id)
    fact = scope.memory.update(args.fact_id, args.text, valid_from=args.valid_from,
                               reason=args.reason)
    return fact.to_dict()


def delete_memory(scope: ScopedMemory, args: DeleteArgs) -> dict[str, Any]:
    scope.owned(args.fact_id)
    return scope.memory.delete(args.fact_id, reason=args.reason).to_dict()


def memory_history(scope: ScopedMemory, args: HistoryArgs) -> dict[str, Any]:
    scope.owned(args.fact_id)
    return {"versions": [v.to_dict() for v in scope.memory.versions(args.fact_id)],
            "events": [e.to_dict() for e in scope.memory.history(args.fact_id)]}


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name and description for the model, arguments, and what it runs."""

    name: str
    title: str
    description: str
    args: type[ToolArgs]
    run: Callable[[ScopedMemory, Any], dict[str, Any]]
    read_only: bool
    destructive: bool = False

    def input_schema(self) -> dict[str, Any]:
        return self.args.model_json_schema()


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "add_memory", "Remember",
        "Remember something about the user for later conversations. Give `text` (one "
        "statement) or `messages` (conversation turns). By default the local language model "
        "extracts standalone facts and reconciles them with what is already known: a change "
        "(a new city, a new favourite drink) supersedes the old fact, which stays in the "
        "history. Returns the events (ADD, SUPERSEDE, UPDATE, CORRECT, DUPLICATE) with fact "
        "ids. Call it when the user shares lasting information about themselves, their "
        "preferences, plans or the people they know.",
        AddArgs, add_memory, read_only=False),
    ToolSpec(
        "search_memories", "Search memories",
        "Find what is remembered about the user that is relevant to a question, best first. "
        "Use it before answering anything that depends on the user's preferences, history, "
        "people or plans. `as_of` searches what was true at a past time. Each result's `id` "
        "works with update_memory, delete_memory and memory_history; `valid_from` says since "
        "when it is true.",
        SearchArgs, search_memories, read_only=True),
    ToolSpec(
        "get_context", "Get prompt context",
        "A ready-to-read text block of what is known about the user that is relevant to "
        "`query`: current facts with the date each became true and recent changes, grouped "
        "by who they are about, within `max_tokens`. Read its `text` before answering the "
        "user; `facts` lists the facts it holds.",
        ContextArgs, get_context, read_only=True),
    ToolSpec(
        "list_memories", "List memories",
        "List the facts remembered about the user, oldest first (at most `limit`, the most "
        "recent ones; `total` counts all). `include_history` adds superseded and deleted "
        "versions; `as_of` lists what was true at a past time. Prefer search_memories for a "
        "specific question.",
        ListArgs, list_memories, read_only=True),
    ToolSpec(
        "update_memory", "Update a memory",
        "Replace a current fact with new text when it changed or was wrong, e.g. the user "
        "moved. The old version stays in the history, valid until `valid_from` (default "
        "now). Get the `fact_id` from search_memories or list_memories.",
        UpdateArgs, update_memory, read_only=False, destructive=True),
    ToolSpec(
        "delete_memory", "Forget a memory",
        "Forget a fact when the user asks you to or it is plainly wrong: it stops being "
        "current and no longer shows in searches, but stays in the history (memory_history).",
        DeleteArgs, delete_memory, read_only=False, destructive=True),
    ToolSpec(
        "memory_history", "Memory history",
        "Every version of a fact and the events that changed it (added, superseded, "
        "corrected, deleted, restored), oldest first, with when and why. Use it to answer "
        "how something about the user changed over time.",
        HistoryArgs, memory_history, read_only=True),
)

_BY_NAME = {tool.name: tool for tool in TOOLS}


def call_tool(scope: ScopedMemory, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``arguments`` for tool ``name`` and run it in ``scope``.

    Raises :class:`InvalidInputError` for an unknown tool or bad arguments (an argument
    the tool does not have, such as ``user_id``, included), and whatever the engine
    raises for the call itself (all :class:`~engine.errors.EngineError`).
    """
    tool = _BY_NAME.get(name)
    if tool is None:
        raise InvalidInputError(
            f"no tool named {name!r}; the tools are {', '.join(_BY_NAME)}"
        )
    try:
        args = tool.args.model_validate(arguments or {})
    except ValidationError as exc:
        raise InvalidInputError(_describe(name, exc)) from exc
    return tool.run(scope, args)


def _describe(tool: str, exc: ValidationError) -> str:
    """One line per problem; an unknown argument says the scope is not the caller's."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            problems.append(f"{where!r} is not an argument of {tool}; the user and agent whose "
                            "memory this is are fixed by the server's configuration")
        else:
            problems.append(f"{where}: {error['msg']}")
    return f"invalid arguments for {tool}: " + "; ".join(problems)
