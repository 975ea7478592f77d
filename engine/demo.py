"""A short end-to-end story that shows what the engine does (``make demo``).

Two users; Maria's drink changes from coffee to green tea. The story searches,
replaces a fact with a newer version, asks what was true before, and prints the
history: everything a new user should see working in under a minute.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from engine.cli.output import format_time, table
from engine.memory import Memory
from engine.types import SearchHit

__all__ = ["run_demo"]

DAY_1 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
DAY_10 = datetime(2026, 5, 10, 9, 0, tzinfo=UTC)
DAY_30 = datetime(2026, 5, 30, 9, 0, tzinfo=UTC)


def run_demo(db_path: Path, *, embedder: str | None = None,
             echo: Callable[[str], None] = print, fresh: bool = True) -> None:
    """Tell the coffee-to-tea story on a store at ``db_path``."""
    if fresh:
        db_path.unlink(missing_ok=True)
        Path(str(db_path) + ".wal").unlink(missing_ok=True)
        shutil.rmtree(Path(str(db_path) + ".index"), ignore_errors=True)

    def title(text: str) -> None:
        echo(f"\n== {text}")

    def hits_table(hits: list[SearchHit]) -> str:
        rows = [[h.score, h.text, format_time(h.valid_from), format_time(h.valid_to)]
                for h in hits]
        return table(rows, ["score", "fact", "valid from", "valid to"], wrap_column=1)

    with Memory(db_path, embedder=embedder, actor="demo", infer=False) as memory:
        echo(f"store: {db_path}  (embedder: {memory.embedder.identity})")
        title("Day 1: Maria and Joao tell us about themselves")
        maria = memory.add(
            ["I live in Lisbon", "I work as a nurse", "I really love coffee in the morning"],
            user_id="maria", observed_at=DAY_1,
        )
        memory.add(["I live in Porto", "I drink black coffee at work", "I play the guitar"],
                   user_id="joao", observed_at=DAY_1)
        for fact in memory.get_all("maria"):
            echo(f"  maria  #{fact.id}  {fact.text}")
        for fact in memory.get_all("joao"):
            echo(f"  joao   #{fact.id}  {fact.text}")

        title('Search Maria\'s memory: "what does Maria drink?"')
        echo(hits_table(memory.search("what does Maria drink?", user_id="maria", k=3)))

        title("Day 30: Maria switched to green tea (a new version replaces the old one)")
        coffee_id = maria.fact_ids[2]
        tea = memory.update(coffee_id, "I prefer green tea in the morning these days",
                            valid_from=DAY_30, reason="Maria said she stopped drinking coffee")
        echo(f"  fact #{coffee_id} superseded by #{tea.id}: {tea.text}")

        title('Today: "what does Maria drink?"')
        echo(hits_table(memory.search("what does Maria drink?", user_id="maria", k=2)))

        title(f'As of {DAY_10:%Y-%m-%d}: "what does Maria drink?"')
        echo(hits_table(memory.search("what does Maria drink?", user_id="maria", k=2,
                                      as_of=DAY_10)))

        title("Joao's memory is separate: his coffee did not change")
        echo(hits_table(memory.search("what does he drink?", user_id="joao", k=1)))

        title(f"History of fact #{tea.id}")
        rows = [[v.id, v.text, format_time(v.valid_from), format_time(v.valid_to),
                 "current" if v.is_current else f"superseded by #{v.superseded_by}"]
                for v in memory.versions(tea.id)]
        echo(table(rows, ["id", "version", "valid from", "valid to", "state"], wrap_column=1))
        for event in memory.history(tea.id):
            change = event.new_text if event.old_text is None else \
                f"{event.old_text!r} -> {event.new_text!r}"
            echo(f"  {format_time(event.at)}  {event.kind:<7} {change}"
                 + (f"  ({event.reason})" if event.reason else ""))
        stats = memory.stats()
        echo(f"\n{stats['current_facts']} current facts, {stats['facts']} versions, "
             f"{stats['events']} events, {stats['users']} users in {db_path}")
