"""A real ``memengine serve`` SIGKILLed while client threads add and search over HTTP:
every add that got a 2xx reply is there after a restart, pending messages are processed,
nothing is duplicated, both indexes agree with DuckDB and the events with the facts
(``benchmarks/server_kill.py``; more kills in ``python -m benchmarks reliability``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.server_kill import server_round


def test_a_server_killed_under_load_loses_no_acknowledged_add(tmp_path: Path) -> None:
    db = tmp_path / "store" / "served.duckdb"
    acks = tmp_path / "served.acks"
    answered = 0
    for seed, delay in enumerate((2.5, 1.0, 2.0)):
        result = server_round(db, acks, seed=seed, max_delay=delay, clients=4)
        assert result.problems == [], f"kill {seed}: {result.problems}"
        answered += result.requests
    assert result.acknowledged > 5  # the kills landed on a server that was really busy
    assert answered > result.acknowledged  # searches were answered too
