"""The update scenarios, the v2 extraction cases, the scenario worker and its scoring."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks import scenario_worker as worker
from benchmarks.scenarios import (
    LANGS,
    SPLITS,
    TAGS,
    failures,
    load_scenarios,
    markdown,
    problems,
    summarise,
)
from engine.backends.embed import HashingEmbedder
from engine.memory import Memory

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenarios() -> list[dict[str, Any]]:
    return load_scenarios("all")


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------- scenarios


def test_every_scenario_is_well_formed(scenarios: list[dict[str, Any]]) -> None:
    bad = {s["id"]: problems(s) for s in scenarios if problems(s)}
    assert bad == {}
    assert len({s["id"] for s in scenarios}) == len(scenarios)


def test_scenario_counts_and_coverage(scenarios: list[dict[str, Any]]) -> None:
    assert len(scenarios) >= 60
    tags = Counter(t for s in scenarios for t in s["tags"])
    assert {t: n for t, n in tags.items() if n < 5} == {}
    assert set(tags) == set(TAGS)
    implicit = Counter(t for s in scenarios if "implicit" in s["tags"] for t in s["tags"])
    for kind in ("move", "employer", "routine", "version", "phone"):
        assert implicit[kind] >= 5, kind
    langs = Counter(s["lang"] for s in scenarios)
    assert all(langs[lang] >= 4 for lang in LANGS if lang != "en")
    assert sum(n for lang, n in langs.items() if lang != "en") >= 20
    for split in SPLITS:
        part = [s for s in scenarios if s["split"] == split]
        assert {t for s in part for t in s["tags"]} == set(TAGS), split
        assert {s["lang"] for s in part} == set(LANGS), split
    share = {sp: n / len(scenarios) for sp, n in Counter(s["split"] for s in scenarios).items()}
    assert 0.3 <= share["train"] <= 0.5 and 0.12 <= share["val"] <= 0.3
    assert 0.3 <= share["test"] <= 0.5
    # most scenarios look at the past too
    assert sum(any(c["as_of"] for c in s["checks"]) for s in scenarios) >= 0.8 * len(scenarios)


def test_late_past_scenarios_ask_about_the_past(scenarios: list[dict[str, Any]]) -> None:
    for s in scenarios:
        if "late-past" in s["tags"]:
            first = s["turns"][0]["at"]
            assert any(c["as_of"] and c["as_of"] < first for c in s["checks"]), s["id"]


def test_problems_spots_bad_scenarios(scenarios: list[dict[str, Any]]) -> None:
    good = scenarios[0]
    swapped = dict(good, turns=list(reversed(good["turns"])))
    assert "turn dates out of order" in problems(swapped)
    assert any("does not fall between" in p for p in problems(
        dict(good, checks=[*good["checks"][:1], dict(good["checks"][0], as_of="2001-01-01")])))
    assert problems({"id": "x"})  # missing keys
    assert any("unknown tag" in p for p in problems(dict(good, tags=["nope"])))


def test_load_scenarios_filters_by_split(scenarios: list[dict[str, Any]]) -> None:
    parts = [load_scenarios(sp) for sp in SPLITS]
    assert sum(len(p) for p in parts) == len(scenarios)
    assert all(s["split"] == "val" for s in parts[1])


# ------------------------------------------------------------------------- extraction v2


def test_extraction_v2_extends_the_old_cases() -> None:
    old = _jsonl("extraction_cases.jsonl")
    new = _jsonl("extraction_cases_v2.jsonl")
    by_id = {c["id"]: c for c in new}
    assert len(by_id) == len(new)
    for case in old:  # nothing dropped, nothing rewritten, old test stays test
        got = by_id[case["id"]]
        assert got["turns" if case["kind"] == "extract" else "candidates"] == \
            case["turns" if case["kind"] == "extract" else "candidates"]
        if case["kind"] == "extract":
            assert [f["text"] for f in got["facts"]] == [f["text"] for f in case["facts"]]
        if case["split"] == "test":
            assert got["split"] == "test"
    old_ids = {c["id"] for c in old}
    added = [c for c in new if c["id"] not in old_ids]
    assert len([c for c in added if c["kind"] == "extract"]) >= 40
    assert sum(any(ch in "ãçéáíóúñüöäàèêâ«¡" for t in c["turns"] for ch in t["content"])
               or c["id"].startswith("intl") for c in added) >= 10
    assert sum(not c["facts"] for c in added) >= 6


def test_extraction_v2_fields() -> None:
    cases = [c for c in _jsonl("extraction_cases_v2.jsonl") if c["kind"] == "extract"]
    assert {c["split"] for c in cases} == set(SPLITS)
    for case in cases:
        text = " ".join(t["content"] for t in case["turns"])
        assert isinstance(case["specifics"], list), case["id"]
        for specific in case["specifics"]:
            assert specific in text, (case["id"], specific)
        for fact in case["facts"]:
            assert {"text", "category", "about", "valid_from", "replaces"} <= set(fact)
            for key in ("subject", "slot", "value"):
                assert isinstance(fact.get(key, ""), str) and fact.get(key, "x"), (case["id"], key)
    heavy = [c for c in cases if len(c["specifics"]) >= 3]
    assert len(heavy) >= 10


# ------------------------------------------------------------------------- scoring


def _raw() -> dict[str, Any]:
    def check(passed: bool, as_of: str | None = None) -> dict[str, Any]:
        return {"query": "q", "as_of": as_of, "expect": "x", "passed": passed,
                "top": "x" if passed else "y"}

    def turn(wall: float, calls: int | None, gen: int | None) -> dict[str, Any]:
        return {"wall_s": wall, "calls": calls, "completion_tokens": gen,
                "prompt_tokens": None if calls is None else 100, "reused_tokens": None
                if calls is None else 50, "error": None}

    return {
        "model": "m", "mode": "lm", "first_add_s": 5.0, "load_s": 2.0, "peak_rss_mb": 900.0,
        "scenarios": [
            {"id": "a", "split": "test", "lang": "en", "tags": ["move", "implicit"],
             "complete": True, "error": None,
             "turns": [turn(1.0, 1, 40), turn(3.0, 1, 60)],
             "checks": [check(True), check(False, "2026-01-01")]},
            {"id": "b", "split": "test", "lang": "pt", "tags": ["move"], "complete": True,
             "error": None, "turns": [turn(2.0, 2, 20)],
             "checks": [check(True), check(True, "2026-01-01")]},
            {"id": "c", "split": "val", "lang": "de", "tags": ["number"], "complete": False,
             "error": "RuntimeError: boom", "n_checks": 2,
             "check_kinds": ["current", "as_of"], "turns": [turn(10.0, None, None)],
             "checks": []},
        ],
        "not_run": ["d"],
    }


def test_summarise_hand_built_result() -> None:
    s = summarise(_raw())
    assert s["checks"] == {"passed": 3, "total": 6, "rate": 0.5}
    assert s["by_tag"]["move"] == {"passed": 3, "total": 4, "rate": 0.75}
    assert s["by_tag"]["number"]["passed"] == 0 and s["by_tag"]["number"]["total"] == 2
    assert s["by_lang"]["pt"]["rate"] == 1.0
    assert s["by_kind"]["current"] == {"passed": 2, "total": 3, "rate": 0.6667}
    assert s["by_split"]["val"]["total"] == 2
    assert s["turn_s"]["median"] == 3.0
    assert s["turn_s"]["p95"] == 10.0 and s["turn_s"]["n"] == 4
    assert s["lm_calls_per_turn"] == pytest.approx(4 / 3, abs=1e-3)
    assert s["completion_tokens_per_turn"] == 40.0
    assert s["first_add_s"] == 5.0 and s["load_s"] == 2.0
    assert s["scenarios"] == {"ran": 3, "complete": 2, "errors": 1, "turn_errors": 0,
                              "not_run": 1}
    table = markdown([dict(s, label="m")])
    assert "| m | 50% (3/6)" in table and "| move |" in table
    assert {f.get("id") for f in failures(_raw())} == {"a", "c"}


def test_passes() -> None:
    check = {"expect": "Porto", "expect_not": "Lisbon"}
    assert worker.passes(check, "User lives in porto")
    assert not worker.passes(check, "User moved from Lisbon to Porto")
    assert not worker.passes(check, None)
    assert not worker.passes({"expect": "Porto"}, "User lives in Braga")


def test_turn_times_keep_same_day_turns_ordered() -> None:
    times = worker.turn_times([{"at": "2026-03-01"}, {"at": "2026-03-01"},
                               {"at": "2026-03-04"}])
    assert times[0].hour == 12 and times[1] > times[0] and times[2].day == 4
    midnight = worker.as_of_time("2026-03-02")
    assert midnight is not None and midnight.hour == 0 and worker.as_of_time(None) is None


# ------------------------------------------------------------------------- the worker


def test_worker_core_in_process_raw(tmp_path: Path, scenarios: list[dict[str, Any]]) -> None:
    chosen = [s for s in scenarios if s["id"] in ("move-implicit-01", "late-past-city-01")]
    with Memory(tmp_path / "m.duckdb", embedder=HashingEmbedder(64), infer=False) as memory:
        out = worker.run_scenarios(chosen, memory, raw=True)
    assert out["timed_out"] is False and out["not_run"] == []
    assert out["first_add_s"] is not None
    first, late = out["scenarios"]
    assert first["complete"] and first["error"] is None
    assert [t["index"] for t in first["turns"]] == [0, 1]
    assert all(t["calls"] is None and t["events"][0]["kind"] == "ADD" for t in first["turns"])
    assert first["user_id"] != late["user_id"]
    # raw turns: before the move only the Lisbon message is valid
    past = next(c for c in first["checks"] if c["as_of"])
    assert past["passed"] and "Lisbon" in past["top"] and past["rank"] == 1
    # a late message about 2019 is stored as of its own date: nothing is valid in 2019
    old = next(c for c in late["checks"] if c["as_of"])
    assert old["passed"] is False and old["top"] is None
    summary = summarise(out)
    assert summary["checks"]["total"] == 4
    assert summary["lm_calls_per_turn"] is None


class _Stats:
    def __init__(self) -> None:
        self.calls = self.prompt_tokens = self.reused_tokens = self.completion_tokens = 0

    def snapshot(self) -> dict[str, float]:
        return dict(vars(self))


class _FakeExtractor:
    def __init__(self) -> None:
        self.engine = type("E", (), {})()
        self.engine.stats = _Stats()


class _FakeMemory:
    """Counts LM work per add; the scenario "boom" fails on its second turn."""

    def __init__(self, extractor: _FakeExtractor) -> None:
        self.stats = extractor.engine.stats
        self.texts: dict[str, list[str]] = {}

    def add(self, text: Any, *, user_id: str, observed_at: Any, infer: bool) -> Any:
        assert infer is True
        if "boom" in user_id and len(self.texts.get(user_id, [])) == 1:
            raise RuntimeError("extraction exploded")
        self.stats.calls += 1
        self.stats.completion_tokens += 30
        self.stats.prompt_tokens += 200
        self.texts.setdefault(user_id, []).append(text)
        return None

    def search(self, query: str, *, user_id: str, k: int, as_of: Any = None) -> list[Any]:
        return [type("Hit", (), {"text": t})() for t in reversed(self.texts.get(user_id, []))]


def test_worker_records_lm_stats_turn_errors_and_budget() -> None:
    scen = [
        {"id": "ok", "split": "test", "lang": "en", "tags": ["move"],
         "turns": [{"at": "2026-01-01", "content": "I live in Lisbon"},
                   {"at": "2026-02-01", "content": "I live in Porto now"}],
         "checks": [{"query": "where?", "as_of": None, "expect": "Porto"}]},
        {"id": "boom", "split": "test", "lang": "en", "tags": ["move"],
         "turns": [{"at": "2026-01-01", "content": "a"}, {"at": "2026-01-02", "content": "b"}],
         "checks": [{"query": "q", "as_of": None, "expect": "b"}]},
    ]
    extractor = _FakeExtractor()
    out = worker.run_scenarios(scen, _FakeMemory(extractor), extractor=extractor)
    ok, boom = out["scenarios"]
    assert [t["calls"] for t in ok["turns"]] == [1, 1]
    assert ok["turns"][1]["completion_tokens"] == 30 and ok["checks"][0]["passed"]
    assert boom["turns"][1]["error"].startswith("RuntimeError") and boom["complete"]
    assert boom["turns"][1]["calls"] == 0 and not boom["checks"][0]["passed"]
    assert summarise(out)["lm_calls_per_turn"] == 0.75

    ticks = iter(range(100))
    cut = worker.run_scenarios(scen, _FakeMemory(extractor), extractor=extractor,
                               budget_s=2.5, clock=lambda: float(next(ticks)))
    assert cut["timed_out"] and cut["not_run"] == ["boom"]
    assert cut["scenarios"][0]["complete"] is False
    assert summarise(cut)["checks"] == {"passed": 0, "total": 1, "rate": 0.0}


def test_worker_cli_raw(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = worker.main(["--engine-path", str(ROOT), "--raw", "--embedder", "hashing",
                      "--split", "val", "--limit", "2", "--out", str(out)])
    assert rc == 0
    raw = json.loads(out.read_text())
    assert raw["mode"] == "raw" and raw["model"] is None and raw["n_scenarios"] == 2
    assert len(raw["scenarios"]) == 2 and raw["peak_rss_mb"] > 0
    assert raw["engine_file"].startswith(str(ROOT))
    assert summarise(raw)["checks"]["total"] == sum(len(s["checks"]) for s in raw["scenarios"])


def test_a_run_notes_what_was_extracted_and_replays_it_without_the_lm(
        tmp_path: Path, scenarios: list[dict[str, Any]]) -> None:
    from benchmarks import scenario_replay
    from benchmarks.scenarios import changed_checks
    from engine.extract import ExtractedFact
    from engine.extract.scripted import ScriptedExtractor

    (chosen,) = [s for s in scenarios if s["id"] == "move-implicit-01"]
    first, moved = (t["content"] for t in chosen["turns"])
    extractor = ScriptedExtractor({
        first: [ExtractedFact("User lives in Lisbon", slot="home city", value="Lisbon")],
        moved: [ExtractedFact("User lives in Porto", slot="home city", value="Porto")]})
    with Memory(tmp_path / "m.duckdb", embedder=HashingEmbedder(64),
                extractor=extractor) as memory:
        noted = worker.record_extractions(extractor)
        out = worker.run_scenarios([chosen], memory, extractor=extractor, extracted=noted)
    turns = out["scenarios"][0]["turns"]
    assert [t["extracted"] for t in turns] == [
        [{"text": "User lives in Lisbon", "about": "user", "slot": "home city",
          "value": "Lisbon"}],
        [{"text": "User lives in Porto", "about": "user", "slot": "home city",
          "value": "Porto"}]]
    assert all(c["passed"] for c in out["scenarios"][0]["checks"])
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({**out, "model": "scripted", "split": "val"}))

    replayed = tmp_path / "replay.json"
    assert scenario_replay.main(["--engine-path", str(ROOT), "--raw", str(raw), "--out",
                                 str(replayed), "--embedder", "hashing"]) == 0
    again = json.loads(replayed.read_text())
    assert again["noted"] is True and again["mode"] == "replay"
    assert changed_checks(out, again) == []
    assert [c["top"] for c in again["scenarios"][0]["checks"]] == [
        c["top"] for c in out["scenarios"][0]["checks"]]

    # the same run as if the model had missed the move: Lisbon stays current
    turns[1]["extracted"] = []
    raw.write_text(json.dumps({**out, "model": "scripted", "split": "val"}))
    assert scenario_replay.main(["--engine-path", str(ROOT), "--raw", str(raw), "--out",
                                 str(replayed), "--embedder", "hashing"]) == 0
    changed = changed_checks(out, json.loads(replayed.read_text()))
    assert changed and {c["now"] for c in changed} == {"fails"}


def test_a_run_without_noted_facts_is_read_back_from_its_events() -> None:
    from benchmarks.scenario_replay import scripted_turns

    turn = {"index": 0, "observed_at": "2026-03-01T12:00:00", "events": [
        {"kind": "ADD", "text": "User lives in Porto", "subject": "user", "slot": "home city",
         "value": "Porto", "valid_from": "2026-03-01 12:00:00+00:00", "valid_to": "None"},
        {"kind": "ADD", "text": "User lived in Berlin in 2019", "subject": "user",
         "slot": "home city", "value": "Berlin", "valid_from": "2019-01-01 00:00:00+00:00",
         "valid_to": "2020-01-01 00:00:00+00:00"}]}
    script, noted = scripted_turns({"scenarios": [{"id": "s", "turns": [turn]}]})
    assert noted is False
    porto, berlin = script[("s", 0)]
    assert porto["valid_from"] is None and porto["valid_to"] is None  # from when it was said
    assert (berlin["valid_from"].year, berlin["valid_to"].year) == (2019, 2020)
