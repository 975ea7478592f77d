"""The write unit of work: one transaction for versions, events and generations; the
indexes hear about it after the commit, and forget the users' caches on rollback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Memory
from engine.ingest.maintain import Decision, Ref, apply_decisions
from engine.storage.store import NewFact
from engine.storage.writes import IndexChange


def _fact(text: str, user: str = "u") -> NewFact:
    return NewFact(text, user, None, None, None, {}, datetime(2026, 5, 1), None)


def test_a_unit_writes_versions_events_and_generation_then_tells_the_indexes(
    memory: Memory,
) -> None:
    seen: list[list[IndexChange]] = []
    memory.store.on_commit(seen.append)
    first = memory.add("I keep bees", user_id="u").fact_ids[0]
    memory.search("bees", user_id="u")  # both indexes loaded
    generation = memory.store.generation("u")
    with memory.store.write(actor="tester") as tx:
        (new_id,) = tx.insert([_fact("I keep goats")], memory.embedder.embed(["I keep goats"]))
        tx.retire(first, "u", superseded_by=new_id, valid_to=datetime(2026, 5, 2))
        tx.event("UPDATE", user_id="u", fact_id=new_id, old_text="I keep bees",
                 new_text="I keep goats", reason="test")
        assert tx.events == []  # written when the block ends
        assert len(seen) == 1  # nothing handed on before the commit
    (event,) = tx.events
    assert (event.kind, event.actor, event.at.replace(tzinfo=None)) == (
        "UPDATE", "tester", tx.recorded)
    assert memory.timeline("u")[-1].id == event.id
    assert memory.store.generation("u") == generation + 1
    assert seen[-1] == [IndexChange("u", generation + 1, added=[new_id],
                                    vectors=seen[-1][0].vectors, removed=[first],
                                    facts=[memory.get(new_id)])]
    assert [h.text for h in memory.search("goats bees", user_id="u")] == ["I keep goats"]


def test_a_failed_unit_leaves_nothing_and_drops_the_cached_indexes(memory: Memory) -> None:
    seen: list[list[IndexChange]] = []
    memory.store.on_commit(seen.append)
    memory.add("I keep bees in the garden", user_id="u")
    memory.search("bees", user_id="u")
    before = len(memory.timeline("u"))
    with pytest.raises(RuntimeError), memory.store.write(actor="t") as tx:
        tx.insert([_fact("I keep goats on the hill")],
                  memory.embedder.embed(["I keep goats on the hill"]))
        tx.event("ADD", user_id="u", new_text="I keep goats on the hill")
        raise RuntimeError("abort")
    assert len(seen) == 1  # only the add before
    assert len(memory.timeline("u")) == before
    assert [h.text for h in memory.search("goats on the hill", user_id="u")] == [
        "I keep bees in the garden"]


def test_writes_join_an_open_one_and_the_indexes_hear_once_after_the_outer_commit(
    memory: Memory,
) -> None:
    seen: list[list[IndexChange]] = []
    memory.store.on_commit(seen.append)
    memory.search("anything", user_id="u")
    with memory.store.transaction():
        memory.add("one", user_id="u")
        memory.add("two", user_id="u")
        assert seen == []
    (changes,) = seen  # one hand-over, after the outer commit
    assert [c.added for c in changes] == [[1], [2]]
    assert {h.text for h in memory.search("one two", user_id="u")} == {"one", "two"}


def test_apply_decisions_on_a_store_opens_its_own_unit(memory: Memory) -> None:
    texts = ["Maria lives in Lisbon", "Maria lives in Porto"]
    vectors = memory.embedder.embed(texts)
    (message_id,) = memory.store.insert_messages(
        [("maria", None, None, "user", None, texts[1], {}, datetime(2026, 5, 1))],
        status="processed", mode="infer")

    def decision(n: int, **fields: object) -> Decision:
        return Decision(texts[n], None, {}, "maria", None, None, datetime(2026, 5, 1),
                        message_id, vectors[n], **fields)  # type: ignore[arg-type]

    applied = apply_decisions(memory.store, [decision(0), decision(1, corrects=[Ref(batch=0)])],
                              actor="t")
    assert [e.kind for e in applied.events] == ["ADD", "CORRECT"]
    assert [e.kind for e in memory.timeline("maria")] == ["ADD", "CORRECT"]
    assert [h.text for h in memory.search("Maria lives", user_id="maria")] == [texts[1]]


def test_every_write_of_memory_goes_through_one_unit(
    make_memory: Callable[..., Memory], tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    memory = make_memory()
    units: list[str] = []
    original = memory.store.write

    def counting(**kwargs):  # type: ignore[no-untyped-def]
        units.append(kwargs["actor"])
        return original(**kwargs)

    memory.store.write = counting  # type: ignore[method-assign]
    fact_id = memory.add("x", user_id="u").fact_ids[0]
    new = memory.update(fact_id, "y")
    memory.delete(new.id)
    memory.restore(new.id)
    memory.export(tmp_path / "e.jsonl")
    memory.import_(tmp_path / "e.jsonl")
    assert units == ["api"] * 5


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(st.text(max_size=6), _JSON_VALUES,
                                max_size=4),
       valid_from=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                               timezones=st.none() | st.just(timezone(timedelta(hours=-7)))),
       slot=st.none() | st.text(min_size=1, max_size=6))
def test_the_record_handed_to_the_indexes_is_what_the_store_reads_back(
    memory: Memory, metadata: dict, valid_from: datetime, slot: str | None,
) -> None:
    """The indexes take a new fact's record from the unit of work instead of reading it
    back; it must be exactly what a read returns (metadata through JSON, times as UTC)."""
    seen: list[list[IndexChange]] = []
    memory.store.on_commit(seen.append)
    fact = NewFact("I keep bees", "u", "agent", None, "hobby", metadata, valid_from, None,
                   subject="user" if slot else None, slot=slot, value="bees" if slot else None)
    with memory.store.write(actor="tester") as tx:
        (new_id,) = tx.insert([fact], memory.embedder.embed([fact.text]))
    (change,) = seen[-1]
    assert change.facts == [memory.get(new_id)]


def test_writes_run_on_one_duckdb_thread_and_reads_get_theirs_back(memory: Memory) -> None:
    """A run of writes lowers DuckDB's threads once; the next read raises them again."""
    store = memory.store
    configured = store._threads
    if configured is None or configured < 2:
        pytest.skip("DuckDB runs one thread here: nothing to lower")

    def threads() -> int:
        return int(store._con.execute("SELECT current_setting('threads')").fetchone()[0])

    for i in range(3):
        memory.add(f"fact number {i} about bees", user_id="u")
        assert threads() == 1  # left low between writes: no change back and forth
    assert store.query("SELECT count(*) FROM facts")[0][0] == 3
    assert threads() == configured
    memory.add("one more fact about bees", user_id="u")
    assert threads() == 1
    assert [h.text for h in memory.search("one more", user_id="u", k=1)] == [
        "one more fact about bees"]
    assert threads() == configured


def test_a_failing_write_listener_rolls_its_unit_back_and_later_units_run_whole(
    memory: Memory,
) -> None:
    """A listener that raises as a unit starts must not leave that unit open: the next
    write would join it and its changes would never reach the indexes."""
    memory.add("I keep bees", user_id="u")
    memory.search("bees", user_id="u")  # the index is loaded
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("can't start new thread")

    memory.store.on_write(flaky)
    with pytest.raises(RuntimeError):
        memory.add("I keep goats", user_id="u")
    assert memory.store._write is None
    assert [f.text for f in memory.get_all("u")] == ["I keep bees"]
    (goats,) = memory.add("I keep goats too", user_id="u").fact_ids
    assert memory.index.ids("u") == {f.id for f in memory.get_all("u")}
    assert memory.search("goats too", user_id="u", k=1)[0].id == goats


def test_a_purge_copies_and_a_close_checkpoints_with_every_duckdb_thread(
    make_memory: Callable[..., Memory], db_path: Path,
) -> None:
    import duckdb

    memory = make_memory()
    configured = memory.store._threads
    if configured is None or configured < 2:
        pytest.skip("DuckDB runs one thread here: nothing to lower")
    memory.add(["I keep bees", "I keep goats"], user_id="u")
    memory.add("someone else's fact", user_id="v")
    real = memory.store._con
    seen: list[int] = []

    class Watch:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith(("CHECKPOINT", "COPY FROM DATABASE")):
                seen.append(int(real.execute(
                    "SELECT current_setting('threads')").fetchone()[0]))
            return real.execute(sql, *args)

    memory.store._con = Watch()  # type: ignore[assignment]
    memory.purge("u")
    assert seen == [configured, configured]
    # A second connection in this process shares the database, and its settings.
    other = duckdb.connect(str(db_path))
    try:
        memory.add("another fact", user_id="v")
        memory.close()
        assert other.execute("SELECT current_setting('threads')").fetchone()[0] == configured
    finally:
        other.close()
