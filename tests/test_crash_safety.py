"""Crash safety: a child process ingesting (raw, inferred, background, flush, purge) is
killed with SIGKILL at random moments; after each kill the store opens and every
acknowledged promise holds (``benchmarks/crash_harness.py``; 200+ kills in
``python -m benchmarks reliability``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.crash_harness import kill_round


def test_kills_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store" / "crash.duckdb"
    acks = tmp_path / "crash.acks"
    acknowledged = 0
    for seed, delay in enumerate((0.05, 0.8, 1.5, 0.3, 2.5, 1.0)):
        result = kill_round(db, acks, seed=seed, max_delay=delay)
        assert result.problems == [], f"kill {seed}: {result.problems}"
        acknowledged = result.acknowledged
    assert acknowledged > 5  # the kills landed on a store that was really being written
