"""Bad input, property-based: hostile values over the public ``Memory`` API. Only
``EngineError`` subclasses come out, their messages name the argument, and the store is
unchanged after an error (row counts and the index)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.memory import Memory

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\t\n", "a\x00b", "\ud800 lone", "x\udfff",
                     "مرحبا بالعالم", "\u202eevil", "🙂👩‍👩‍👧", "x" * 100_001]),
    st.binary(max_size=20), st.integers(), st.none(), st.lists(st.integers(), max_size=2),
)
HOSTILE_USER = st.one_of(
    st.sampled_from(["", " ", "../x", "../../etc/passwd", "a'; DROP TABLE facts; --", "u" * 300,
                     "\x00", "\ud800", "maria"]),
    st.integers(), st.none(), st.text(max_size=10),
)
HOSTILE_FILTERS = st.one_of(
    st.none(), st.integers(), st.text(max_size=5),
    st.dictionaries(st.text(max_size=6), st.one_of(
        st.integers(), st.text(max_size=5), st.none(),
        st.dictionaries(st.sampled_from(["eq", "gte", "in", "nope", "$where", "contains"]),
                        st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers()),
                                  st.dictionaries(st.text(max_size=2), st.integers())))),
        max_size=3),
    st.recursive(st.integers(), lambda inner: st.dictionaries(st.just("a"), inner), max_leaves=40),
)
HOSTILE_DATE = st.one_of(
    st.none(), st.datetimes(), st.datetimes(timezones=st.just(UTC)),
    st.sampled_from(["2026-02-30", "yesterday", "9999-12-31", "10000-01-01", "", "2026-13-01T25:00",
                     "-1"]),
    st.just(datetime(9999, 12, 31, tzinfo=UTC)), st.integers(), st.floats(),
)
HOSTILE_META = st.one_of(st.none(), st.integers(), st.text(max_size=4),
                         st.just({"x": object()}), st.just({"x": float("nan")}),
                         st.just({1: "int key"}), st.dictionaries(st.text(max_size=4),
                                                                  st.text(max_size=4)))
ARGUMENT_WORDS = ("text", "message", "user_id", "agent_id", "metadata", "observed_at", "query",
                  "filter", "as_of", "k ", "k must", "valid_from", "since", "fact", "limit",
                  "operator", "add()", "date", "time")


def snapshot(memory: Memory) -> tuple[Any, ...]:
    counts = memory.store.query("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM"
                                " facts), (SELECT count(*) FROM events)")[0]
    return (*counts, memory.index.size("maria"), memory.searcher.lexical.size("maria"))


def call_or_engine_error(memory: Memory, call: Callable[[], Any]) -> None:
    before = snapshot(memory)
    try:
        call()
    except EngineError as exc:
        message = str(exc)
        assert any(word in message for word in ARGUMENT_WORDS), message
        assert snapshot(memory) == before


@pytest.fixture
def seeded(make_memory: Callable[..., Memory]) -> Memory:
    memory = make_memory()
    memory.add("Maria lives in Lisbon", user_id="maria", metadata={"rating": 4})
    return memory


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(text=HOSTILE_TEXT, user=HOSTILE_USER, meta=HOSTILE_META, when=HOSTILE_DATE)
def test_add_takes_anything_or_says_why(seeded: Memory, text: Any, user: Any, meta: Any,
                                        when: Any) -> None:
    call_or_engine_error(seeded, lambda: seeded.add(text, user_id=user, metadata=meta,
                                                    observed_at=when, infer=False))


@FUZZ
@given(query=HOSTILE_TEXT, user=HOSTILE_USER, filters=HOSTILE_FILTERS, when=HOSTILE_DATE,
       k=st.one_of(st.integers(-5, 2000), st.text(max_size=2), st.none(), st.booleans()))
def test_search_takes_anything_or_says_why(seeded: Memory, query: Any, user: Any,
                                           filters: Any, when: Any, k: Any) -> None:
    call_or_engine_error(seeded, lambda: seeded.search(query, user_id=user, k=k,
                                                       filters=filters, as_of=when))


@FUZZ
@given(user=HOSTILE_USER, filters=HOSTILE_FILTERS, when=HOSTILE_DATE,
       fact_id=st.one_of(st.integers(-3, 10**20), st.text(max_size=3), st.none()),
       text=HOSTILE_TEXT)
def test_reads_and_updates_take_anything_or_say_why(seeded: Memory, user: Any, filters: Any,
                                                    when: Any, fact_id: Any, text: Any) -> None:
    call_or_engine_error(seeded, lambda: seeded.get_all(user, filters=filters, as_of=when))
    call_or_engine_error(seeded, lambda: seeded.timeline(user, since=when))
    call_or_engine_error(seeded, lambda: seeded.known_at(user, when))
    call_or_engine_error(seeded, lambda: seeded.update(fact_id, text, valid_from=when))
    call_or_engine_error(seeded, lambda: seeded.delete(fact_id))


def test_ten_megabytes_of_text_is_refused_and_nothing_is_stored(seeded: Memory) -> None:
    before = snapshot(seeded)
    with pytest.raises(EngineError, match="limit"):
        seeded.add("word " * 2_000_000, user_id="maria", infer=False)
    assert snapshot(seeded) == before


@pytest.mark.parametrize("call", [
    lambda m: m.add("\ud800 lone", user_id="maria", infer=False),
    lambda m: m.add("fine", user_id="\ud800", infer=False),
    lambda m: m.add("fine", user_id="maria", metadata={"k": "\udfff"}, infer=False),
    lambda m: m.add({"content": "x\udfff"}, user_id="maria", infer=False),
    lambda m: m.search("\ud800", user_id="maria"),
], ids=["text", "user_id", "metadata", "message", "query"])
def test_lone_surrogates_get_a_clear_error(seeded: Memory, call: Any) -> None:
    """Found by these tests: a lone surrogate reached DuckDB and came out as a bare
    UnicodeEncodeError."""
    before = snapshot(seeded)
    with pytest.raises(EngineError, match="not valid Unicode"):
        call(seeded)
    assert snapshot(seeded) == before
