"""Every benchmark runs at a tiny size and writes valid JSON (and its plots).

The hashing embedder keeps these fast; there are no timing assertions here (speed
targets live in ``benchmarks/``, measured, never asserted in tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import compare_mem0, latency, recall, write_path
from benchmarks.__main__ import main as dispatch
from benchmarks.facts import TEMPLATES, generate
from engine.memory import Memory


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


def test_latency_with_cached_vectors_embeds_the_facts_once(tmp_path: Path) -> None:
    argv = ["--sizes", "60", "--queries", "5", "--batch", "30", "--users", "0",
            "--synthetic", "0", "--embedder", "hashing", "--no-gpu", "--no-plots",
            "--cached-vectors", str(tmp_path / "vec"), "--out", str(tmp_path)]
    assert latency.main(argv) == 0
    (cached,) = (tmp_path / "vec").glob("60-*.npy")
    stamp = cached.stat().st_mtime_ns
    assert latency.main(argv) == 0
    assert cached.stat().st_mtime_ns == stamp  # read, not written again
    (size,) = _load(tmp_path / "latency.json")["results"]["cpu"]["sizes"]
    assert size["ingest"]["vectors_precomputed"] is True
    assert size["search"]["floor"]["bare_encode"]["n"] == 5


def test_recall_smoke(tmp_path: Path) -> None:
    code = recall.main(["--real", "0", "--synthetic", "400", "--queries", "10",
                        "--ms", "8", "--efs", "10,40", "--ef-constructions", "40,100",
                        "--out", str(tmp_path)])
    assert code == 0
    data = _load(tmp_path / "recall.json")
    rows = data["results"]["sweep"]
    assert [(r["ef_construction"], r["ef"]) for r in rows] == [(40, 10), (40, 40), (100, 10),
                                                                (100, 40)]
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
    floor = entry["ours"]["search_floor"]
    assert floor["bare_encode"]["n"] == floor["bare_ann"]["n"] == 5
    assert floor["ratio_to_floor"] > 0
    assert entry["ours"]["ingest"]["floor"]["sample"] == 80
    assert (tmp_path / "compare.png").exists()


def test_write_path_smoke_measures_a_checkout_in_its_own_process(tmp_path: Path) -> None:
    code = write_path.main(["--store-size", "150", "--adds", "3", "--batch", "20",
                            "--embedder", "hashing", "--vector-cache", str(tmp_path / "vec"),
                            "--out", str(tmp_path)])
    assert code == 0
    this = _load(tmp_path / "write_path.json")["results"]["this"]
    assert Path(this["engine_file"]).parent.parent == Path(write_path.__file__).parent.parent
    assert (this["adds"], this["facts"]) == (3, 60)
    assert 0.0 < this["share_outside_embedder"] < 1.0
    ms = this["ms_per_add"]
    assert ms["total"] >= ms["embed"] > 0
    assert {"duckdb", "ann", "lexical", "other"} <= set(ms)
    assert list((tmp_path / "vec").glob("150-*.npy"))


def test_dispatcher_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert dispatch(["--help"]) == 0


def test_locomo_facts_mode_points_each_fact_back_to_its_turn(
    make_memory: Callable[..., Memory],
) -> None:
    from datetime import datetime

    from benchmarks import locomo
    from engine.extract import ExtractedFact
    from engine.extract.scripted import ScriptedExtractor

    turns = [
        {"speaker": "Ann", "text": "I adopted a dog named Rex.", "dia_id": "D1:1"},
        {"speaker": "Bob", "text": "Nice!", "dia_id": "D1:2"},
        {"speaker": "Ann", "text": "Rex loves the beach, and I love hiking.", "dia_id": "D1:3"},
    ]
    extractor = ScriptedExtractor({
        turns[0]["text"]: [ExtractedFact("Ann adopted a dog named Rex", "people", "Ann")],
        turns[2]["text"]: [ExtractedFact("Ann's dog Rex loves the beach", "people", "Ann"),
                           ExtractedFact("Ann loves hiking", "preference", "Ann")],
    })
    memory = make_memory(extractor=extractor)
    conversation = locomo.Conversation("c1", [(datetime(2023, 5, 8), turns)], [
        locomo.Question("c1", "What is the name of Ann's dog?", 1, {"D1:1"}),
        locomo.Question("c1", "What does Ann love doing?", 4, {"D1:3"}),
    ])
    dia_of, counts = locomo.ingest_facts(memory, conversation)
    assert sorted(sorted(dias) for dias in dia_of.values()) == [["D1:1"], ["D1:3"], ["D1:3"]]
    assert (counts["turns"], counts["turns_with_facts"], counts["current_facts"]) == (3, 2, 3)
    assert counts["messages_not_extracted"] == 0
    ids = {fact.text: fact.id for fact in memory.get_all(user_id="c1")}
    assert dia_of[ids["Ann adopted a dog named Rex"]] == {"D1:1"}
    # Two facts from one evidence turn count once: the second adds nothing.
    hits = [SimpleNamespace(id=ids["Ann's dog Rex loves the beach"]),
            SimpleNamespace(id=ids["Ann loves hiking"])]
    assert locomo._gains(hits, dia_of, {"D1:3"}) == [1, 0]
    scores = locomo.evaluate(memory, [conversation], dia_of, modes=("lexical",),
                             ingested={"D1:1", "D1:2"})
    assert scores["lexical"]["all"]["overall"]["n"] == 1  # the D1:3 question is skipped
    assert scores["lexical"]["all"]["overall"]["recall@1"] == 1.0


def test_serve_smoke_runs_clients_in_separate_processes(tmp_path: Path) -> None:
    from benchmarks import serve

    code = serve.main(["--facts", "30", "--requests", "8", "--concurrency", "1,2",
                       "--embedder", "hashing", "--out", str(tmp_path)])
    assert code == 0
    data = _load(tmp_path / "serve.json")
    rows = data["results"]["search"]
    assert {(r["where"], r["clients"]) for r in rows} == {
        (w, c) for w in serve.WHERE for c in (1, 2)}
    assert all(r["failed"] == 0 and r["n"] == r["requests"] for r in rows)
    assert {r["where"] for r in data["results"]["add"]} == set(serve.WHERE)
    overhead = data["results"]["search_http_overhead_p50_ms"]
    assert set(overhead) == {"http_processes", "http_threads"}
    table = (tmp_path / "serve.md").read_text()
    assert "| 2 | http_processes |" in table and data["machine"]["cpu"] in table
    assert (tmp_path / "serve.png").stat().st_size > 0
