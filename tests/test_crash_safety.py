"""Crash safety: a child process ingesting (raw, inferred, background, flush, purge) is
killed with SIGKILL at random moments; after each kill the store opens and every
acknowledged promise holds (``benchmarks/crash_harness.py``; 200+ kills in
``python -m benchmarks reliability``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.crash_harness import kill_round, scripted_extractor
from engine.memory import Memory
from engine.timeutil import now_utc


def test_kills_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store" / "crash.duckdb"
    acks = tmp_path / "crash.acks"
    acknowledged = 0
    for seed, delay in enumerate((0.05, 0.8, 1.5, 0.3, 2.5, 1.0)):
        result = kill_round(db, acks, seed=seed, max_delay=delay)
        assert result.problems == [], f"kill {seed}: {result.problems}"
        acknowledged = result.acknowledged
    assert acknowledged > 5  # the kills landed on a store that was really being written


def test_pending_adds_left_by_a_crash_are_extracted_one_add_at_a_time(
    make_memory: Callable[..., Memory],
) -> None:
    """Found by the harness: on open, every pending message of a user went to the
    extractor as one conversation, so the facts of earlier adds were credited to the
    last message (and would be dated from it)."""
    first = make_memory(process_pending=False)
    row = ("ana", None, None, "user", None, "ana says tokA", {}, now_utc())
    stored = [first.store.insert_messages([row], status="pending", mode="infer")[0],
              first.store.insert_messages([(*row[:5], "ana says tokB", {}, now_utc())],
                                          status="pending", mode="infer")[0]]
    first.close()
    reopened = make_memory(extractor=scripted_extractor())
    reopened.flush()
    facts = {f.source_message_id: f.text for f in reopened.get_all("ana")}
    assert facts == {stored[0]: "User noted tokA", stored[1]: "User noted tokB"}
