"""Every benchmark runs at a tiny size and writes valid JSON (and its plots).

The hashing embedder keeps these fast; there are no timing assertions here (speed
targets live in ``benchmarks/``, measured, never asserted in tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import compare_mem0, latency, recall
from benchmarks.__main__ import main as dispatch
from benchmarks.facts import TEMPLATES, generate


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["machine"]["python"]
    assert "versions" in data["machine"]
    return data


def test_facts_are_deterministic_distinct_and_answerable() -> None:
    facts, queries = generate(2000, 50, seed=3)
    again, _ = generate(2000, 50, seed=3)
    assert [f.text for f in facts] == [f.text for f in again]
    assert len({f.text for f in facts}) == 2000
    assert len({f.template for f in facts}) > len(TEMPLATES) // 2
    for query in queries:
        assert query.text == facts[query.target].question


def test_latency_smoke(tmp_path: Path) -> None:
    code = latency.main(["--sizes", "60,120", "--queries", "8", "--batch", "50",
                         "--users", "3", "--per-user", "20", "--synthetic", "500",
                         "--embedder", "hashing", "--no-gpu", "--out", str(tmp_path)])
    assert code == 0
    data = _load(tmp_path / "latency.json")
    sizes = data["results"]["cpu"]["sizes"]
    assert [s["n"] for s in sizes] == [60, 120]
    assert sizes[0]["search"]["end_to_end"]["n"] == 8
    assert {"embed", "ann"} <= set(sizes[0]["search"]["stages"])
    assert data["results"]["multi_tenant"]["users"] == 3
    assert data["results"]["synthetic_index"]["n"] == 500
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert (tmp_path / "latency_ingest.png").stat().st_size > 0


def test_recall_smoke(tmp_path: Path) -> None:
    code = recall.main(["--real", "0", "--synthetic", "400", "--queries", "10",
                        "--ms", "8", "--efs", "10,40", "--out", str(tmp_path)])
    assert code == 0
    data = _load(tmp_path / "recall.json")
    rows = data["results"]["sweep"]
    assert len(rows) == 2
    assert all(0.0 <= r["recall_at_10"] <= 1.0 for r in rows)
    assert (tmp_path / "recall.png").exists()


def test_compare_smoke_without_mem0(tmp_path: Path) -> None:
    code = compare_mem0.main(["--sizes", "80", "--queries", "5", "--batch", "40",
                              "--embedder", "hashing", "--skip-mem0", "--out",
                              str(tmp_path)])
    assert code == 0
    data = _load(tmp_path / "compare.json")
    entry = data["results"]["sizes"][0]
    assert entry["n"] == 80
    assert 0.0 <= entry["ours"]["hit_at_1"] <= 1.0
    assert "mem0" not in entry
    assert (tmp_path / "compare.png").exists()


def test_dispatcher_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert dispatch(["--help"]) == 0
