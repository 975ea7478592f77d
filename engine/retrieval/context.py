"""Prompt-ready context: the block of memories an application puts in its prompt.

:func:`build_context` turns search hits (the relevant facts, best first) into text a model
reads easily, grouped by who each fact is about: the user first, then each person the user
knows (the fact's ``subject``, e.g. ``sister Ana``). Every fact carries the date it became
true and, when it replaced earlier versions of itself, what was true before::

    Memory of the user "maria": what is true now; "since" is when each fact became true.
    About the user:
    - User prefers green tea (since 2026-05-30; before that: User loves coffee, from 2026-05-01)
    About the people the user knows:
    sister Ana:
    - User's sister Ana lives in Berlin (since 2026-04-02)

Earlier versions are those of the fact's lineage that were true until it started: a
corrected version (never true) and a deleted one (retracted) are not shown. With ``as_of``
the hits are the versions true at that time, and only their own past is shown.

The block fits a token budget. Facts are taken in order of relevance; one that does not
fit with its earlier versions is tried without them, and one that does not fit at all is
left out (``truncated``), so the least relevant facts go first. Tokens are counted by a
:class:`TokenCounter`: the local LM's own tokenizer when one is loaded
(:meth:`engine.backends.lm.LlamaCppEngine.count_tokens`), else :data:`APPROXIMATE`, one token
per 4 characters rounded up (what BPE vocabularies average on English prose; text with many
digits, names or other languages can need more, so leave a margin when the budget is tight).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.storage.records import fact_from_row
from engine.storage.store import FACT_COLUMNS, Store, id_list
from engine.timeutil import to_aware
from engine.types import Context, Fact, SearchHit

__all__ = ["APPROXIMATE", "CHARS_PER_TOKEN", "HISTORY_DEPTH", "TokenCounter",
           "approximate_tokens", "build_context", "earlier_versions"]

CHARS_PER_TOKEN = 4
HISTORY_DEPTH = 2
"""Earlier versions shown per fact, most recent first."""


@dataclass(frozen=True)
class TokenCounter:
    """How a context's tokens are counted: the function and a description of it."""

    count: Callable[[str], int]
    description: str


def approximate_tokens(text: str) -> int:
    """One token per CHARS_PER_TOKEN characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


APPROXIMATE = TokenCounter(
    approximate_tokens,
    f"approximate: {CHARS_PER_TOKEN} characters per token (no model loaded)",
)


@dataclass(frozen=True)
class _Entry:
    fact: Fact
    earlier: list[Fact]


def earlier_versions(store: Store, facts: Sequence[Fact]) -> dict[int, list[Fact]]:
    """For each fact id, the versions of its lineage that were true until it started,
    most recent first (at most HISTORY_DEPTH; same text as the fact skipped)."""
    lineages = sorted({f.lineage_id for f in facts})
    if not lineages:
        return {}
    rows = store.query(
        f"SELECT {FACT_COLUMNS} FROM facts WHERE lineage_id IN {id_list(lineages)}"
        " AND valid_to IS NOT NULL AND (expired_at IS NULL OR superseded_by IS NOT NULL)"
        " ORDER BY valid_from DESC, id DESC"
    )
    versions = [fact_from_row(row) for row in rows]
    result: dict[int, list[Fact]] = {}
    for fact in facts:
        earlier: list[Fact] = []
        for version in versions:
            if (version.lineage_id != fact.lineage_id or version.id == fact.id
                    or version.valid_to is None or version.valid_to > fact.valid_from
                    or _clean(version.text) == _clean(fact.text)):
                continue
            earlier.append(version)
            if len(earlier) == HISTORY_DEPTH:
                break
        result[fact.id] = earlier
    return result


def _facts_of(store: Store, hits: Sequence[SearchHit]) -> list[Fact]:
    """The hits' facts, in the hits' order."""
    if not hits:
        return []
    rows = store.query(
        f"SELECT {FACT_COLUMNS} FROM facts WHERE id IN {id_list([h.id for h in hits])}"
    )
    by_id = {int(row[0]): fact_from_row(row) for row in rows}
    return [by_id[h.id] for h in hits if h.id in by_id]


def _clean(text: str) -> str:
    """One line, without a final full stop (the line adds its own punctuation)."""
    return " ".join(text.split()).rstrip(".")


def _day(value: datetime) -> str:
    return value.date().isoformat()


def _about_user(fact: Fact) -> bool:
    return fact.subject is None or fact.subject.strip().casefold() in ("", "user")


def _line(entry: _Entry, *, with_history: bool) -> str:
    parts = [f"since {_day(entry.fact.valid_from)}"]
    if with_history:
        parts += [f"before that: {_clean(e.text)}, from {_day(e.valid_from)}"
                  for e in entry.earlier]
    return f"- {_clean(entry.fact.text)} ({'; '.join(parts)})"


def _header(user_id: str, as_of: datetime | None) -> str:
    when = "is true now" if as_of is None else f"was true on {_day(as_of)}"
    return f'Memory of the user "{user_id}": what {when}; "since" is when each fact became true.'


def _ordered(entries: Sequence[_Entry]) -> list[_Entry]:
    """Entries grouped: about the user first, then each person in order of their most
    relevant fact; by relevance inside a group."""
    groups: dict[str, list[_Entry]] = {"": []}
    for entry in entries:
        subject = entry.fact.subject or ""
        key = "" if _about_user(entry.fact) else " ".join(subject.split()).casefold()
        groups.setdefault(key, []).append(entry)
    return [entry for group in groups.values() for entry in group]


def _render(entries: Sequence[_Entry], shown: dict[int, bool], user_id: str,
            as_of: datetime | None) -> str:
    """The block for the entries in ``shown`` (fact id -> with its history)."""
    kept = [e for e in entries if e.fact.id in shown]
    if not kept:
        return ""
    lines = [_header(user_id, as_of)]
    mine = [e for e in kept if _about_user(e.fact)]
    theirs = [e for e in kept if not _about_user(e.fact)]
    if mine:
        lines.append("About the user:")
        lines += [_line(e, with_history=shown[e.fact.id]) for e in mine]
    if theirs:
        lines.append("About the people the user knows:")
        person = None
        for entry in theirs:
            subject = " ".join((entry.fact.subject or "").split())
            if subject.casefold() != person:
                person = subject.casefold()
                lines.append(f"{subject}:")
            lines.append(_line(entry, with_history=shown[entry.fact.id]))
    return "\n".join(lines)


def build_context(
    store: Store,
    hits: Sequence[SearchHit],
    *,
    user_id: str,
    max_tokens: int,
    counter: TokenCounter = APPROXIMATE,
    as_of: datetime | None = None,
) -> Context:
    """The prompt block for ``hits`` (best first), fitted to ``max_tokens``.

    ``as_of`` (naive UTC, as stored) says the hits are the versions true then; it only
    changes the wording and what the result reports.
    """
    facts = _facts_of(store, hits)
    history = earlier_versions(store, facts)
    entries = _ordered([_Entry(f, history.get(f.id, [])) for f in facts])
    rank = {f.id: position for position, f in enumerate(facts)}
    by_relevance = sorted(entries, key=lambda e: rank[e.fact.id])
    shown: dict[int, bool] = {}
    truncated = False
    text = ""
    for entry in by_relevance:
        for with_history in (True, False) if entry.earlier else (False,):
            trial = {**shown, entry.fact.id: with_history}
            candidate = _render(entries, trial, user_id, as_of)
            if counter.count(candidate) <= max_tokens:
                shown, text = trial, candidate
                truncated = truncated or (bool(entry.earlier) and not with_history)
                break
        else:
            truncated = True
    return Context(
        text=text,
        facts=[e.fact for e in entries if e.fact.id in shown],
        tokens=counter.count(text) if text else 0,
        max_tokens=max_tokens,
        token_count=counter.description,
        truncated=truncated,
        as_of=to_aware(as_of),
    )
