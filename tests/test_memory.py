"""The Memory API end to end on a real DuckDB file with the hashing embedder."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine import (
    FactNotFoundError,
    InvalidInputError,
    Memory,
    ScopeRequiredError,
)
from engine.config import MAX_TEXT_CHARS


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_add_stores_one_fact_per_message_with_its_time(memory: Memory) -> None:
    result = memory.add(
        ["I love coffee", {"role": "user", "content": "I live in Lisbon",
                           "observed_at": "2026-05-02T10:00:00Z", "metadata": {"src": "chat"}}],
        user_id="maria", observed_at="2026-05-01", metadata={"channel": "app"},
    )
    assert [e.kind for e in result.events] == ["ADD", "ADD"]
    assert len(result.message_ids) == 2
    coffee, lisbon = (memory.get(i) for i in result.fact_ids)
    assert coffee.text == "I love coffee"
    assert coffee.valid_from == utc(2026, 5, 1)
    assert coffee.metadata == {"channel": "app"}
    assert lisbon.valid_from == utc(2026, 5, 2, 10)
    assert lisbon.metadata == {"channel": "app", "src": "chat"}
    assert coffee.is_current and coffee.lineage_id == coffee.id
    assert coffee.source_message_id == result.message_ids[0]


def test_exact_duplicate_adds_provenance_not_a_copy(memory: Memory) -> None:
    first = memory.add("I love coffee", user_id="maria")
    again = memory.add(["i LOVE   coffee", "I love coffee"], user_id="maria")
    assert [e.kind for e in again.events] == ["DUPLICATE", "DUPLICATE"]
    assert {e.fact_id for e in again.events} == set(first.fact_ids)
    assert len(memory.get_all("maria")) == 1
    # another scope is another fact
    memory.add("I love coffee", user_id="maria", agent_id="barista")
    assert len(memory.get_all("maria")) == 2


def test_metadata_with_number_keys_is_stored_as_json_reads_it(memory: Memory) -> None:
    # Found by the write-path round-trip test: mixed key types escaped add as a bare
    # TypeError from the sorted JSON dump; they are stored the way JSON reads them back.
    (fact_id,) = memory.add("I keep bees", user_id="u", metadata={1: "a", "b": (2, 3)},
                            infer=False).fact_ids
    assert memory.get(fact_id).metadata == {"1": "a", "b": [2, 3]}
    assert memory.search("bees", user_id="u")[0].metadata == {"1": "a", "b": [2, 3]}


def test_duplicates_inside_one_batch_collapse(memory: Memory) -> None:
    result = memory.add(["same", "same", "other"], user_id="u")
    assert [e.kind for e in result.events] == ["ADD", "ADD", "DUPLICATE"]
    assert len(memory.get_all("u")) == 2


def test_coffee_to_tea_keeps_history_and_answers_the_past(memory: Memory) -> None:
    coffee = memory.add("Maria drinks coffee every morning", user_id="maria",
                        observed_at="2026-05-01").fact_ids[0]
    memory.add("Maria lives in Lisbon", user_id="maria", observed_at="2026-05-01")
    tea = memory.update(coffee, "Maria drinks green tea every morning", valid_from="2026-06-01",
                        reason="changed her mind")

    now = memory.search("what does maria drinks every morning", user_id="maria", k=1)
    assert now[0].id == tea.id
    may = memory.search("what does maria drinks every morning", user_id="maria", k=1,
                        as_of="2026-05-10")
    assert may[0].id == coffee
    assert may[0].valid_to == utc(2026, 6, 1)

    old = memory.get(coffee)
    assert not old.is_current
    assert old.superseded_by == tea.id and old.valid_to == utc(2026, 6, 1)
    assert old.expired_at is not None
    assert [v.id for v in memory.versions(tea.id)] == [coffee, tea.id]
    kinds = [(e.kind, e.old_text, e.new_text) for e in memory.history(coffee)]
    assert kinds == [
        ("ADD", None, "Maria drinks coffee every morning"),
        ("UPDATE", "Maria drinks coffee every morning", "Maria drinks green tea every morning"),
    ]
    assert [f.text for f in memory.get_all("maria", as_of="2026-05-15")] == [
        "Maria drinks coffee every morning", "Maria lives in Lisbon"]
    assert len(memory.get_all("maria", include_history=True)) == 3


def test_known_at_is_transaction_time(memory: Memory) -> None:
    fact_id = memory.add("I have a cat", user_id="u").fact_ids[0]
    learned = memory.get(fact_id).recorded_at
    memory.update(fact_id, "I have two cats")
    before = memory.known_at("u", datetime(2000, 1, 1))
    assert before == []
    then = memory.known_at("u", learned)
    assert [f.text for f in then] == ["I have a cat"]
    assert [f.text for f in memory.known_at("u", datetime(2100, 1, 1))] == ["I have two cats"]


def test_update_rejects_a_start_before_the_current_version(memory: Memory) -> None:
    fact_id = memory.add("x is 1", user_id="u", observed_at="2026-05-01").fact_ids[0]
    with pytest.raises(InvalidInputError, match="before"):
        memory.update(fact_id, "x is 2", valid_from="2026-04-01")
    new = memory.update(fact_id, "x is 2", valid_from="2026-05-02")
    with pytest.raises(InvalidInputError, match="not current"):
        memory.update(fact_id, "x is 3")
    assert memory.get(new.id).is_current


def test_delete_retires_and_restore_brings_back(memory: Memory) -> None:
    fact_id = memory.add("I am vegetarian", user_id="u").fact_ids[0]
    event = memory.delete(fact_id, reason="user asked")
    assert event.kind == "DELETE" and event.reason == "user asked"
    assert memory.get_all("u") == []
    assert memory.search("vegetarian", user_id="u") == []
    assert memory.get(fact_id).expired_at is not None  # kept in history
    with pytest.raises(InvalidInputError):
        memory.delete(fact_id)
    restored = memory.restore(fact_id)
    assert restored.lineage_id == fact_id and restored.is_current
    assert [h.id for h in memory.search("vegetarian", user_id="u")] == [restored.id]
    assert [e.kind for e in memory.history(restored.id)] == ["ADD", "DELETE", "RESTORE"]


def test_deleted_fact_is_not_true_for_any_time(memory: Memory) -> None:
    fact_id = memory.add("wrong fact", user_id="u", observed_at="2026-01-01").fact_ids[0]
    memory.delete(fact_id)
    assert memory.get_all("u", as_of="2026-02-01") == []


def test_scopes_are_isolated(memory: Memory) -> None:
    memory.add("alpha fact", user_id="a")
    memory.add("alpha fact for b", user_id="b")
    memory.add("alpha agent fact", user_id="a", agent_id="bot", run_id="r1")
    assert {h.text for h in memory.search("alpha", user_id="a")} == {"alpha fact",
                                                                     "alpha agent fact"}
    assert [h.text for h in memory.search("alpha", user_id="b")] == ["alpha fact for b"]
    assert [h.text for h in memory.search("alpha", user_id="a", agent_id="bot")] == [
        "alpha agent fact"]
    assert memory.search("alpha", user_id="a", run_id="r2") == []
    assert memory.search("alpha", user_id="nobody") == []


def test_search_with_filters_and_explain(memory: Memory) -> None:
    memory.add("pizza in Rome", user_id="u", metadata={"rating": 5, "tags": ["food", "trip"]})
    memory.add("pizza at home", user_id="u", metadata={"rating": 2, "tags": ["food"]})
    memory.add("pizza class", user_id="u", category="plans")
    hits = memory.search("pizza", user_id="u", filters={"rating": {"gte": 4}}, explain=True)
    assert [h.text for h in hits] == ["pizza in Rome"]
    assert hits[0].explain is not None and "vector" in hits[0].explain
    assert [h.text for h in memory.search("pizza", user_id="u",
                                          filters={"tags": {"contains": "trip"}})] == [
        "pizza in Rome"]
    assert [h.text for h in memory.search("pizza", user_id="u",
                                          filters={"category": "plans"})] == ["pizza class"]
    assert memory.search("pizza", user_id="u", explain=False)[0].explain is None


def test_filtered_search_falls_back_to_exact_when_neighbours_are_filtered_out(
    memory: Memory,
) -> None:
    memory.add([f"common words number {i}" for i in range(300)], user_id="u",
               metadata={"kind": "noise"})
    memory.add("completely different rare item", user_id="u", metadata={"kind": "needle"})
    hits = memory.search("common words", user_id="u", filters={"kind": "needle"}, k=3)
    assert [h.text for h in hits] == ["completely different rare item"]


def test_purge_erases_one_user_only(memory: Memory) -> None:
    memory.add(["a1", "a2"], user_id="a")
    keep = memory.add("b1", user_id="b").fact_ids[0]
    counts = memory.purge("a")
    assert counts == {"facts": 2, "messages": 2, "events": 2}
    assert memory.get_all("a", include_history=True) == []
    assert memory.timeline("a") == []
    assert memory.search("a1", user_id="a") == []
    assert memory.get(keep).text == "b1"


def test_timeline_orders_events(memory: Memory) -> None:
    fact_id = memory.add("one", user_id="u").fact_ids[0]
    memory.update(fact_id, "two")
    events = memory.timeline("u")
    assert [e.kind for e in events] == ["ADD", "UPDATE"]
    assert memory.timeline("u", since=datetime(2100, 1, 1)) == []
    assert len(memory.timeline("u", limit=1)) == 1


def test_persists_across_reopen(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    first = make_memory()
    fact_id = first.add("persistent fact", user_id="u").fact_ids[0]
    first.close()
    second = make_memory()
    assert second.get(fact_id).text == "persistent fact"
    assert [h.id for h in second.search("persistent", user_id="u")] == [fact_id]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.add("", user_id="u"), InvalidInputError, "empty"),
        (lambda m: m.add("   ", user_id="u"), InvalidInputError, "empty"),
        (lambda m: m.add("x" * (MAX_TEXT_CHARS + 1), user_id="u"), InvalidInputError, "limit"),
        (lambda m: m.add(42, user_id="u"), InvalidInputError, "string"),
        (lambda m: m.add([], user_id="u"), InvalidInputError, "empty list"),
        (lambda m: m.add([{"text": "no content"}], user_id="u"), InvalidInputError, "content"),
        (lambda m: m.add("hi", user_id=""), ScopeRequiredError, "user_id"),
        (lambda m: m.add("hi", user_id=None), ScopeRequiredError, "user_id"),
        (lambda m: m.add("hi", user_id=5), InvalidInputError, "string"),
        (lambda m: m.add("hi", user_id="u", metadata="x"), InvalidInputError, "dict"),
        (lambda m: m.add("hi", user_id="u", metadata={"a": object()}), InvalidInputError, "JSON"),
        (lambda m: m.add("hi", user_id="u", observed_at="yesterday"), InvalidInputError, "ISO"),
        (lambda m: m.search("", user_id="u"), InvalidInputError, "empty"),
        (lambda m: m.search("q", user_id="u", k=0), InvalidInputError, "k must"),
        (lambda m: m.search("q", user_id="u", filters={"a": {"near": 1}}), InvalidInputError,
         "operator"),
        (lambda m: m.get(12345), FactNotFoundError, "12345"),
        (lambda m: m.get("1"), InvalidInputError, "positive integer"),
        (lambda m: m.update(999, "x"), FactNotFoundError, "999"),
        (lambda m: m.delete(999), FactNotFoundError, "999"),
    ],
)
def test_bad_input_gets_a_clear_error_and_stores_nothing(
    memory: Memory, call, error, match  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(error, match=match):
        call(memory)
    assert memory.stats()["messages"] == 0


def test_engine_errors_share_one_base() -> None:
    import engine

    for name in engine.__all__:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, engine.EngineError), name
