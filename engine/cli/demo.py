"""A short end-to-end story that shows what the engine does (``make demo``).

Maria talks to an assistant on day 1 and day 30; the local LM extracts facts from
her messages, and when she says she stopped drinking coffee the engine supersedes the
old fact and keeps its history. The story then searches now and as of day 10, prints
the versions and events, and shows that another user's memory is separate.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from engine.cli.output import format_time, table, with_slot
from engine.memory import Memory
from engine.types import AddResult, Event, SearchHit

__all__ = ["run_demo"]

DAY_1 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
DAY_10 = datetime(2026, 5, 10, 9, 0, tzinfo=UTC)
DAY_30 = datetime(2026, 5, 30, 9, 0, tzinfo=UTC)


HELLO = ("Hi! I'm Maria, I live in Lisbon and work as a nurse. "
         "I really love coffee in the morning.")
LATER = ("Actually I've stopped drinking coffee, I prefer green tea these days. "
         "My sister Ana is visiting next week.")


def _change(event: Event) -> str:
    """``new`` for an addition, ``'old' -> 'new'`` for a change."""
    if event.old_text is None:
        return str(event.new_text)
    return f"{event.old_text!r} -> {event.new_text!r}"


def run_demo(db_path: Path, *, embedder: str | None = None, lm: str | None = None,
             echo: Callable[[str], None] = print, fresh: bool = True) -> None:
    """Tell the coffee-to-tea story on a store at ``db_path`` with the LM ``lm``
    (a manifest name or GGUF path; None: the default)."""
    if fresh:
        db_path.unlink(missing_ok=True)
        Path(str(db_path) + ".wal").unlink(missing_ok=True)
        shutil.rmtree(Path(str(db_path) + ".index"), ignore_errors=True)

    def title(text: str) -> None:
        echo(f"\n== {text}")

    def hits_table(hits: list[SearchHit]) -> str:
        rows = [[h.score, with_slot(h), format_time(h.valid_from), format_time(h.valid_to)]
                for h in hits]
        return table(rows, ["score", "fact", "valid from", "valid to"], wrap_column=1)

    def said(result: AddResult, seconds: float) -> None:
        for event in result.events:
            echo(f"  {event.kind:<9} {_change(event)}")
        echo(f"  ({seconds:.1f} s; {'no facts' if not result.events else 'done'})")

    with Memory(db_path, embedder=embedder, actor="demo", extractor=lm) as memory:
        echo(f"store: {db_path}  (embedder: {memory.embedder.identity})")
        title(f"Day 1, Maria: {HELLO!r}")
        echo("  (the local LM extracts the facts; the first call also loads the model)")
        started = time.perf_counter()
        said(memory.add(HELLO, user_id="maria", observed_at=DAY_1), time.perf_counter() - started)
        memory.add(["I live in Porto", "I drink black coffee at work"], user_id="joao",
                   observed_at=DAY_1, infer=False)

        title(f"Day 30, Maria: {LATER!r}")
        started = time.perf_counter()
        said(memory.add(LATER, user_id="maria", observed_at=DAY_30),
             time.perf_counter() - started)

        title('Today: "what does Maria drink?"')
        now = memory.search("what does Maria drink?", user_id="maria", k=3)
        echo(hits_table(now))

        title(f'As of {DAY_10:%Y-%m-%d}: "what does Maria drink?"')
        echo(hits_table(memory.search("what does Maria drink?", user_id="maria", k=3,
                                      as_of=DAY_10)))

        title("Joao's memory is separate: his coffee did not change (stored with infer=False)")
        echo(hits_table(memory.search("what does he drink?", user_id="joao", k=1)))

        if now:
            title(f"History of fact #{now[0].id}")
            rows = [[v.id, v.text, format_time(v.valid_from), format_time(v.valid_to),
                     "current" if v.is_current else f"superseded by #{v.superseded_by}"]
                    for v in memory.versions(now[0].id)]
            echo(table(rows, ["id", "version", "valid from", "valid to", "state"],
                       wrap_column=1))
            for event in memory.history(now[0].id):
                echo(f"  {format_time(event.at)}  {event.kind:<9} {_change(event)}"
                     + (f"  ({event.reason})" if event.reason else ""))

        title("All of Maria's current facts (Ana's visit is dated a week after day 30)")
        for fact in memory.get_all("maria"):
            echo(f"  #{fact.id}  {fact.text}  (from {format_time(fact.valid_from)})")
        stats = memory.stats()
        echo(f"\n{stats['current_facts']} current facts, {stats['facts']} versions, "
             f"{stats['events']} events, {stats['users']} users in {db_path}")
