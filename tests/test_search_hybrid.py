"""Hybrid search end to end: rankings, explain, scope, filters and as_of on the fused path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from engine.errors import InvalidInputError
from engine.memory import Memory
from engine.retrieval.fusion import HYBRID, mentions_time, query_features
from engine.retrieval.search import SearchRequest

SESSION = "2023-05-08T13:56:00"


@pytest.fixture
def chat(make_memory: Callable[..., Memory]) -> tuple[Memory, dict[str, int]]:
    """Two sessions of a two-person chat stored as raw turns (like the LoCoMo benchmark)."""
    memory = make_memory()
    turns = [
        ("Caroline", "I went to a LGBTQ support group yesterday and it was so powerful."),
        ("Melanie", "Wow, that sounds amazing. What happened there?"),
        ("Caroline", "The transgender stories were so inspiring, I felt accepted."),
        ("Melanie", "I painted a sunrise over the lake last year."),
        ("Caroline", "My dog Oscar loves long walks on the beach."),
    ]
    result = memory.add(
        [{"role": "user", "content": f"{who}: {text}",
          "metadata": {"speaker": who, "dia_id": f"D1:{i}"}}
         for i, (who, text) in enumerate(turns, start=1)],
        user_id="caroline", observed_at=SESSION, infer=False,
    )
    later = memory.add(
        [{"role": "user", "content": "Melanie: Caroline and I went camping in the mountains.",
          "metadata": {"speaker": "Melanie", "dia_id": "D2:1"}}],
        user_id="caroline", observed_at="2023-07-01T10:00:00", infer=False,
    )
    ids = {f"D1:{i}": fact for i, fact in enumerate(result.fact_ids, start=1)}
    ids["D2:1"] = later.fact_ids[0]
    return memory, ids


def _ids(hits: list) -> list[int]:
    return [hit.id for hit in hits]


def test_query_features() -> None:
    features = query_features("When did Caroline go to the support group?")
    assert features.asks_when and "caroline" in features.words
    assert not query_features("What did Melanie paint?").asks_when
    assert mentions_time("I went there yesterday") and not mentions_time("I love dogs")


def test_hybrid_ranks_the_matching_turn_first(chat: tuple[Memory, dict[str, int]]) -> None:
    memory, ids = chat
    hits = memory.search("When did Caroline go to the LGBTQ support group?", user_id="caroline",
                         k=3)
    assert hits[0].id == ids["D1:1"]
    # The reply right after it comes next even though it shares no word with the query.
    assert hits[1].id == ids["D1:2"]
    assert hits[0].score > hits[1].score > hits[2].score


def test_neighbour_expansion_reaches_a_turn_neither_retriever_found(
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory()
    # Lexical signal only, so the answer (no shared word, no vector help) can come in
    # through its neighbour alone.
    memory.searcher.weights = replace(HYBRID, vector=0.0, recency=0.0)
    memory.add([f"Filler {i} about groceries" for i in range(5)], user_id="u",
               observed_at="2023-01-01", infer=False)
    result = memory.add(
        ["Did you ever see the northern lights?", "Yes, in Tromso, it was unforgettable.",
         "Anyway, how is work?"],
        user_id="u", observed_at=SESSION, infer=False,
    )
    question, answer, after = result.fact_ids
    hits = memory.search("northern lights", user_id="u", k=3, explain=True)
    assert _ids(hits)[:2] == [question, answer]
    parts = hits[1].explain
    assert parts is not None and parts["neighbour"]["from"] == question
    assert parts["lexical"]["bm25"] == 0.0 and parts["lexical"]["rank"] is None
    assert hits[1].score == pytest.approx(HYBRID.neighbour * HYBRID.lexical)
    assert hits[2].score == 0.0  # "after" neighbours the answer, whose own base is 0
    assert after in result.fact_ids


def test_explain_shows_each_signal(chat: tuple[Memory, dict[str, int]]) -> None:
    memory, ids = chat
    (hit,) = memory.search("When did Caroline go to the support group?", user_id="caroline",
                           k=1, explain=True)
    parts = hit.explain
    assert parts is not None and hit.id == ids["D1:1"]
    assert set(parts) >= {"vector", "lexical", "name", "time", "recency", "neighbour",
                          "validity", "score", "method"}
    assert parts["method"] == "hybrid" and parts["mode"] == "hybrid"
    assert parts["lexical"]["bm25"] > 0 and parts["lexical"]["rank"] == 1
    assert parts["lexical"]["contribution"] == pytest.approx(HYBRID.lexical)
    assert parts["name"] == {"matched": ["Caroline"], "contribution": HYBRID.name}
    assert parts["time"]["mentions_time"] and parts["time"]["contribution"] == HYBRID.time
    assert parts["validity"]["current"] is True and parts["validity"]["as_of"] is None
    total = sum(parts[s]["contribution"] for s in
                ("vector", "lexical", "name", "time", "recency", "neighbour"))
    assert total == pytest.approx(hit.score) and parts["score"] == pytest.approx(hit.score)


def test_no_explain_by_default(chat: tuple[Memory, dict[str, int]]) -> None:
    memory, _ = chat
    assert all(h.explain is None for h in memory.search("dog", user_id="caroline"))


def test_filters_and_scope_on_the_hybrid_path(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    work = memory.add("Coffee meeting with the team", user_id="u", agent_id="work",
                      metadata={"topic": "job"}, infer=False).fact_ids[0]
    home = memory.add("Coffee with my sister at home", user_id="u", agent_id="home",
                      metadata={"topic": "family"}, infer=False).fact_ids[0]
    memory.add("Coffee tasting in Lisbon", user_id="other", infer=False)
    assert set(_ids(memory.search("coffee", user_id="u"))) == {work, home}
    assert _ids(memory.search("coffee", user_id="u", agent_id="home")) == [home]
    assert _ids(memory.search("coffee", user_id="u", filters={"topic": "job"})) == [work]
    assert memory.search("coffee", user_id="u", filters={"topic": {"in": ["none"]}}) == []


def test_narrow_filters_fall_back_to_an_exact_scan(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    for i in range(120):
        memory.add(f"Note {i}: coffee order", user_id="u", metadata={"rare": i == 7},
                   infer=False)
    hits = memory.search("coffee order", user_id="u", k=5, filters={"rare": True},
                         explain=True)
    assert [h.text for h in hits] == ["Note 7: coffee order"]
    assert hits[0].explain is not None and hits[0].explain["method"] == "exact"


def test_as_of_uses_the_versions_valid_then(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    coffee = memory.add("I love coffee", user_id="maria", observed_at="2024-05-01",
                        infer=False).fact_ids[0]
    tea = memory.update(coffee, "I switched to green tea", valid_from="2024-06-01").id
    now = memory.search("coffee or tea", user_id="maria", explain=True)
    assert _ids(now) == [tea]
    then = memory.search("coffee or tea", user_id="maria", as_of="2024-05-15", explain=True)
    assert _ids(then) == [coffee]
    parts = then[0].explain
    assert parts is not None and parts["method"] == "exact"
    assert parts["validity"]["current"] is False and parts["lexical"]["bm25"] > 0
    assert memory.search("coffee", user_id="maria", as_of="2024-01-01") == []


def test_single_signal_modes_and_bad_mode(chat: tuple[Memory, dict[str, int]]) -> None:
    memory, ids = chat
    query = "painted sunrise"
    vector = memory.embedder.embed_query(query)

    def run(mode: str) -> list[int]:
        request = SearchRequest(query, "caroline", None, None, 3, None, None, True, mode)
        return _ids(memory.searcher.search(request, vector))

    assert run("lexical") == [ids["D1:4"]]  # only facts sharing a word
    assert len(run("vector")) == 3  # every fact has a cosine
    with pytest.raises(InvalidInputError):
        run("magic")


def test_the_users_own_name_in_a_query_reads_as_user() -> None:
    from engine.retrieval.search import as_user_query

    assert as_user_query("what does Maria drink?", "maria") == "what does User drink?"
    assert as_user_query("Maria's sister?", "maria") == "User's sister?"
    assert as_user_query("what about Mariana?", "maria") == "what about Mariana?"
    assert as_user_query("anything", "conv-26") == "anything"  # not a name: unchanged


def test_hits_come_from_the_index_documents_and_match_the_store(
    chat: tuple[Memory, dict[str, int]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory, ids = chat
    memory.search("dog", user_id="caroline")  # loads the user's indexes
    calls: list[str] = []
    original = memory.store.query
    monkeypatch.setattr(memory.store, "query",
                        lambda sql, params=None: calls.append(sql) or original(sql, params))
    hits = memory.search("Who loves walks on the beach?", user_id="caroline")
    monkeypatch.undo()
    assert not calls, "an unfiltered search with fresh indexes should not query DuckDB"
    assert hits[0].id == ids["D1:5"]
    stored = memory.get(ids["D1:5"])
    assert (hits[0].text, hits[0].metadata, hits[0].valid_from) == (
        stored.text, stored.metadata, stored.valid_from)
    hits[0].metadata["speaker"] = "someone else"  # a caller editing its hit...
    again = memory.search("Who loves walks on the beach?", user_id="caroline")
    assert again[0].metadata["speaker"] == "Caroline"  # ...does not edit the index


def test_a_write_the_indexes_have_not_seen_is_checked_in_the_store(
    chat: tuple[Memory, dict[str, int]],
) -> None:
    memory, ids = chat
    assert memory.search("dog Oscar", user_id="caroline")[0].id == ids["D1:5"]
    # Retire a fact and bump the generation without telling the indexes: the state
    # between a commit and the index update that follows it.
    with memory.store.transaction() as con:
        con.execute("UPDATE facts SET expired_at = now() WHERE id = ?", [ids["D1:5"]])
        memory.store.bump_generation(["caroline"])
    hits = memory.search("dog Oscar", user_id="caroline")
    assert ids["D1:5"] not in [hit.id for hit in hits]


def test_a_rolled_back_generation_is_forgotten(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    memory.add("I like tea", user_id="u", infer=False)
    known = memory.store.known_generation("u")
    assert known == memory.store.generation("u")
    with pytest.raises(RuntimeError), memory.store.transaction():
        memory.store.bump_generation(["u"])
        raise RuntimeError("abort")
    assert memory.store.known_generation("u") is None
    assert memory.store.generation("u") == known
    assert memory.store.known_generation("u") == known


def test_a_rolled_back_write_leaves_no_trace_in_search(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    memory.add("I keep bees in the garden", user_id="u", infer=False)
    memory.search("bees", user_id="u")  # the user's indexes are loaded
    with pytest.raises(RuntimeError), memory.store.transaction():
        memory.add("I keep goats on the hill", user_id="u", infer=False)
        raise RuntimeError("the caller's transaction fails")
    assert [h.text for h in memory.search("goats on the hill", user_id="u")] == [
        "I keep bees in the garden"]
    memory.add("I keep hens by the barn", user_id="u", infer=False)
    texts = [h.text for h in memory.search("hens goats barn hill", user_id="u")]
    assert "I keep hens by the barn" in texts
    assert "I keep goats on the hill" not in texts


def test_two_memories_on_one_file_see_each_others_deletes(
    make_memory: Callable[..., Memory],
) -> None:
    writer = make_memory()
    fact_id = writer.add("I collect stamps", user_id="u", infer=False).fact_ids[0]
    reader = make_memory()  # same file, same process: DuckDB shares the database
    assert reader.search("stamps", user_id="u")[0].id == fact_id
    writer.delete(fact_id)
    assert reader.search("stamps", user_id="u") == []
