"""Slot-keyed facts in storage: the schema migration, records, search hits, export and
import, and the CLI. Facts with a slot are applied as the pipeline applies them
(``Decision`` → ``apply_decisions``), with the hashing embedder."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from engine import Memory
from engine.backends.embed import HashingEmbedder
from engine.cli import cli
from engine.ingest.maintain import Decision, Ref
from engine.storage.schema import SCHEMA_VERSION, migrations
from engine.storage.store import NewFact
from engine.timeutil import now_utc

MAY1 = datetime(2026, 5, 1)
JUN1 = datetime(2026, 6, 1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def decision(memory: Memory, text: str, *, user: str = "maria", at: datetime = MAY1,
             **fields: Any) -> Decision:
    """A decided fact as the pipeline builds one (no source message)."""
    (message_id,) = memory.store.insert_messages(
        [(user, None, None, "user", None, text, {}, at)], status="processed", mode="infer")
    return Decision(text=text, category=None, metadata={}, user_id=user, agent_id=None,
                    run_id=None, valid_from=at, message_id=message_id,
                    vector=memory.embedder.embed([text])[0], **fields)


def lives_in(memory: Memory, city: str, **fields: Any) -> Decision:
    return decision(memory, f"Maria lives in {city}", subject="user", slot="home city",
                    value=city, **fields)


def write_version_1_store(path: Path, identity: str, dim: int) -> None:
    """A store as the engine wrote it before slots: schema version 1, one fact."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [
        ["embedder", identity], ["dim", str(dim)], ["schema_version", "1"],
        ["created_at", "2026-01-01T00:00:00"]])
    for statement in migrations(dim)[0]:
        con.execute(statement)
    con.execute(
        "INSERT INTO facts (id, lineage_id, user_id, text, metadata, content_hash, embedding,"
        " valid_from, recorded_at) VALUES (nextval('seq_facts'), 1, 'maria',"
        " 'Maria loves coffee', '{}', 'abc', ?, '2026-05-01', '2026-05-01')",
        [HashingEmbedder(dim).embed(["Maria loves coffee"])[0].tolist()])
    con.close()


def test_a_version_1_store_migrates_on_open_and_its_facts_keep_working(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    embedder = HashingEmbedder(64)
    write_version_1_store(path, embedder.identity, embedder.dim)
    with Memory(path, embedder=embedder, infer=False) as memory:
        assert memory.stats()["schema_version"] == SCHEMA_VERSION == 2
        (old,) = memory.get_all("maria")
        assert (old.text, old.subject, old.slot, old.value) == (
            "Maria loves coffee", None, None, None)
        assert memory.search("coffee", user_id="maria")[0].id == old.id
        updated = memory.update(old.id, "Maria loves green tea", valid_from="2026-06-01")
        assert updated.slot is None
        memory._apply([lives_in(memory, "Lisbon")], actor="test")
        assert {f.slot for f in memory.get_all("maria")} == {None, "home city"}
    with Memory(path, embedder=embedder, infer=False, read_only=True) as again:
        assert len(again.get_all("maria", include_history=True)) == 3


def test_slotted_facts_carry_subject_slot_and_value_everywhere(memory: Memory) -> None:
    (event,) = memory._apply([lives_in(memory, "Lisbon")], actor="test")
    memory.add("Maria loves coffee", user_id="maria")
    fact = memory.get(event.fact_id)  # type: ignore[arg-type]
    assert (fact.subject, fact.slot, fact.value) == ("user", "home city", "Lisbon")
    assert fact.to_dict()["slot"] == "home city"
    for _ in range(2):  # the second search answers from the cached lexical index
        hits = {h.text: h for h in memory.search("Maria lives in Lisbon", user_id="maria")}
        hit = hits["Maria lives in Lisbon"]
        assert (hit.subject, hit.slot, hit.value) == ("user", "home city", "Lisbon")
        assert hits["Maria loves coffee"].slot is None
    past = memory.search("Lisbon", user_id="maria", as_of="2026-05-10")
    assert past[0].value == "Lisbon"


def test_update_keeps_the_slot_and_takes_a_new_value(memory: Memory) -> None:
    (event,) = memory._apply([lives_in(memory, "Lisbon")], actor="test")
    fact_id = event.fact_id
    assert fact_id is not None
    plain = memory.update(fact_id, "Maria lives in Porto", valid_from="2026-06-01")
    assert (plain.subject, plain.slot, plain.value) == ("user", "home city", None)
    valued = memory.update(plain.id, "Maria lives in Braga", valid_from="2026-07-01",
                           value="Braga")
    assert (valued.subject, valued.slot, valued.value) == ("user", "home city", "Braga")
    memory.delete(valued.id)
    restored = memory.restore(valued.id)
    assert (restored.slot, restored.value) == ("home city", "Braga")


def test_current_slotted_lists_a_users_current_slots(memory: Memory) -> None:
    memory._apply([lives_in(memory, "Lisbon"),
                   decision(memory, "Ana lives in Braga", subject="sister Ana",
                            slot="home city", value="Braga"),
                   decision(memory, "Maria has a cat", subject="user", slot="pets",
                            value="a cat")], actor="test")
    memory.add("Maria loves coffee", user_id="maria")
    facts = memory.store.current_slotted("maria")
    assert [(f.subject, f.slot, f.value) for f in facts] == [
        ("sister Ana", "home city", "Braga"), ("user", "home city", "Lisbon"),
        ("user", "pets", "a cat")]
    assert [f.value for f in memory.store.current_slotted("maria", slot=" Home City")] == [
        "Braga", "Lisbon"]
    assert [f.value for f in memory.store.current_slotted("maria", subject="USER",
                                                          slot="pets")] == ["a cat"]
    assert memory.store.current_slotted("maria", "some-agent") == []
    assert memory.store.current_slotted("nobody") == []


def test_export_import_round_trips_slots_and_reads_older_exports(
    make_memory: Any, tmp_path: Path
) -> None:
    source = make_memory(tmp_path / "a.duckdb")
    source._apply([lives_in(source, "Lisbon")], actor="test")
    source.add("Maria loves coffee", user_id="maria")
    source.export(tmp_path / "a.jsonl")
    target = make_memory(tmp_path / "b.duckdb")
    target.import_(tmp_path / "a.jsonl")
    assert [(f.text, f.subject, f.slot, f.value) for f in target.get_all("maria")] == [
        ("Maria lives in Lisbon", "user", "home city", "Lisbon"),
        ("Maria loves coffee", None, None, None)]

    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    old = []
    for line in lines:
        record = json.loads(line)
        for key in ("subject", "slot", "value"):
            record.pop(key, None)
        old.append(json.dumps(record))
    (tmp_path / "old.jsonl").write_text("\n".join(old) + "\n")
    older = make_memory(tmp_path / "c.duckdb")
    assert older.import_(tmp_path / "old.jsonl")["fact"] == 2
    assert {f.slot for f in older.get_all("maria")} == {None}
    assert older.search("Lisbon", user_id="maria")[0].text == "Maria lives in Lisbon"


def test_cli_shows_the_slot(tmp_path: Path) -> None:
    db = tmp_path / "cli.duckdb"
    with Memory(db, embedder="hashing", infer=False) as memory:
        memory._apply([lives_in(memory, "Porto")], actor="test")
        memory.store.insert_facts(
            [NewFact("Maria loves coffee", "maria", None, None, None, {}, MAY1, None)],
            memory.embedder.embed(["Maria loves coffee"]), recorded_at=MAY1)
        memory.store.bump_generation(["maria"])

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--db", str(db), "--embedder", "hashing", *args])
        assert result.exit_code == 0, result.output
        return result.output

    listed = run("list", "-u", "maria")
    assert "[user · home city: Porto] Maria lives in Porto" in listed
    assert "  Maria loves coffee" in listed  # no label without a slot
    found = run("search", "-u", "maria", "where does Maria live")
    assert "[user · home city: Porto] Maria lives in Porto" in found
    hits = json.loads(run("search", "-u", "maria", "Porto", "--json"))
    assert {(h["subject"], h["slot"], h["value"]) for h in hits} == {
        ("user", "home city", "Porto"), (None, None, None)}
    facts = json.loads(run("list", "-u", "maria", "--json"))
    assert {f["value"] for f in facts} == {"Porto", None}


def test_a_correction_replaces_the_old_fact_for_all_time_but_not_in_what_was_known(
    memory: Memory,
) -> None:
    (added,) = memory._apply([lives_in(memory, "Lisbon")], actor="test")
    lisbon = added.fact_id
    assert lisbon is not None
    before = now_utc()
    (corrected,) = memory._apply(
        [lives_in(memory, "Porto", at=JUN1, corrects=[Ref(fact_id=lisbon)])], actor="test")
    assert (corrected.kind, corrected.old_text, corrected.new_text, corrected.reason) == (
        "CORRECT", "Maria lives in Lisbon", "Maria lives in Porto", "corrects the earlier fact")
    porto = memory.get(corrected.fact_id)  # type: ignore[arg-type]
    old = memory.get(lisbon)
    # the old version is retired in transaction time only; the new one takes its place
    assert old.expired_at is not None and old.valid_to is None
    assert old.superseded_by == porto.id and not old.is_current
    assert porto.valid_from == utc(2026, 5, 1) and porto.is_current
    assert porto.lineage_id == old.lineage_id and porto.value == "Porto"

    for when in ("2026-05-10", "2026-06-10", "2030-01-01"):
        assert [f.value for f in memory.get_all("maria", as_of=when)] == ["Porto"]
        hits = memory.search("Maria lives in", user_id="maria", as_of=when)
        assert [h.text for h in hits] == ["Maria lives in Porto"]
    assert [f.value for f in memory.get_all("maria")] == ["Porto"]
    assert [h.text for h in memory.search("Lisbon", user_id="maria")] == [
        "Maria lives in Porto"]
    assert [f.value for f in memory.known_at("maria", before)] == ["Lisbon"]
    assert [f.value for f in memory.known_at("maria", now_utc())] == ["Porto"]

    assert [(v.value, v.valid_from, v.valid_to, v.is_current)
            for v in memory.versions(porto.id)] == [
        ("Lisbon", utc(2026, 5, 1), None, False), ("Porto", utc(2026, 5, 1), None, True)]
    assert [(e.kind, e.old_text, e.new_text) for e in memory.history(lisbon)] == [
        ("ADD", None, "Maria lives in Lisbon"),
        ("CORRECT", "Maria lives in Lisbon", "Maria lives in Porto")]
    assert memory.timeline("maria")[-1].kind == "CORRECT"


def test_a_correction_keeps_its_own_start_when_it_is_earlier(memory: Memory) -> None:
    (added,) = memory._apply([lives_in(memory, "Lisbon", at=JUN1)], actor="test")
    (event,) = memory._apply(
        [lives_in(memory, "Porto", at=MAY1, corrects=[Ref(fact_id=added.fact_id)])],
        actor="test")
    assert memory.get(event.fact_id).valid_from == utc(2026, 5, 1)  # type: ignore[arg-type]
    assert [f.value for f in memory.get_all("maria", as_of="2026-05-10")] == ["Porto"]


def test_a_correction_within_one_batch_and_of_a_fact_no_longer_current(memory: Memory) -> None:
    events = memory._apply([lives_in(memory, "Lisbon"),
                            lives_in(memory, "Porto", corrects=[Ref(batch=0)])], actor="test")
    assert [e.kind for e in events] == ["ADD", "CORRECT"]
    assert [f.value for f in memory.get_all("maria")] == ["Porto"]
    stale = events[0].fact_id
    (late,) = memory._apply([lives_in(memory, "Braga", corrects=[Ref(fact_id=stale)])],
                            actor="test")
    assert late.kind == "ADD"  # the target had already been replaced: nothing to correct
    assert sorted(f.value or "" for f in memory.get_all("maria")) == ["Braga", "Porto"]


def test_a_change_still_closes_the_old_fact_in_valid_time(memory: Memory) -> None:
    (added,) = memory._apply([lives_in(memory, "Lisbon")], actor="test")
    (moved,) = memory._apply(
        [lives_in(memory, "Porto", at=JUN1, supersedes=[Ref(fact_id=added.fact_id)])],
        actor="test")
    assert moved.kind == "SUPERSEDE"
    assert [f.value for f in memory.get_all("maria", as_of="2026-05-10")] == ["Lisbon"]
    assert [f.value for f in memory.get_all("maria", as_of="2026-06-10")] == ["Porto"]


def test_search_favours_facts_filed_under_the_slot_the_question_names(memory: Memory) -> None:
    from dataclasses import replace

    from engine.extract.slots import slots_asked

    assert slots_asked("where does the user work?") == {"job"}
    assert slots_asked("what is the name of the user's cat?") == {"pets"}
    assert slots_asked("what is the user's name?") == set()
    memory._apply([decision(memory, "User's first month at Mercadona was intense",
                            subject="user", slot="job", value="Mercadona"),
                   decision(memory, "User's weekends are for side projects", at=JUN1,
                            subject="user", slot="hobbies", value="side projects")],
                  actor="test")
    weights = memory.searcher.weights
    for as_of in (None, "2026-06-10"):  # the lexical index's path and the SQL path
        scores = {}
        for slot_weight in (weights.slot, 0.0):
            memory.searcher.weights = replace(weights, slot=slot_weight)
            hits = memory.search("where does the user work?", user_id="maria", as_of=as_of,
                                 explain=True)
            scores[slot_weight] = {h.value: h.score for h in hits}
            signals = {h.value: h.explain["slot"] for h in hits}  # type: ignore[index]
            assert signals["Mercadona"] == {"asked": ["job"], "slot": "job",
                                            "contribution": slot_weight}
            assert signals["side projects"]["contribution"] == 0.0
        memory.searcher.weights = weights
        boost = {v: scores[weights.slot][v] - scores[0.0][v] for v in scores[0.0]}
        assert boost == pytest.approx({"Mercadona": weights.slot, "side projects": 0.0})


def test_the_slot_signal_goes_to_the_person_the_question_asks_about(memory: Memory) -> None:
    memory._apply([decision(memory, "User works at Mercadona", subject="user", slot="job",
                            value="Mercadona"),
                   decision(memory, "User's sister Lucía is a lawyer in Zaragoza",
                            subject="sister Lucía", slot="job", value="lawyer")],
                  actor="test")
    asked = {"what does the user's sister Lucía do for work?": "lawyer",
             "where does Lucía work?": "lawyer",
             "what does the user's sister do for work?": "lawyer",
             "where does the user work?": "Mercadona"}
    for as_of in (None, "2026-06-10"):  # the lexical index's path and the SQL path
        for query, value in asked.items():
            hits = memory.search(query, user_id="maria", as_of=as_of, explain=True)
            boosted = {h.value for h in hits
                       if h.explain["slot"]["contribution"] > 0}  # type: ignore[index]
            assert boosted == {value}, (query, as_of)
            assert hits[0].value == value, (query, as_of)
