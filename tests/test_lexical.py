"""The BM25 lexical index: tokenising, ranking, and staying in step with the store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.memory import Memory
from engine.retrieval.lexical import LexicalIndex, LexicalScores, stem, tokenize
from engine.retrieval.search import SearchRequest


def test_tokenize_drops_stopwords_and_stems() -> None:
    assert tokenize("Caroline's painting classes were on Mondays!") == [
        "carolin", "paint", "class", "monday"]
    assert tokenize("Caroline") == tokenize("caroline's")
    assert stem("running") == "run" and stem("planned") == "plan" and stem("stories") == "story"
    assert stem("dance") == stem("dancing") == stem("danced")


class _Docs:
    """A document source standing in for the store, counting full loads."""

    def __init__(self, docs: dict[int, str]) -> None:
        self.docs = dict(docs)
        self.generation = 1
        self.loads = 0

    def load(self, user_id: str) -> list[tuple[int, str]]:
        self.loads += 1
        return sorted(self.docs.items())


DOCS = {
    1: "I drink coffee in the morning",
    2: "Green tea every afternoon",
    3: "Coffee, coffee beans and more coffee",
    4: "We adopted a dog named Coffee",
}


def _index(source: _Docs) -> LexicalIndex:
    return LexicalIndex(load_documents=source.load, store_generation=lambda u: source.generation)


def test_bm25_ranking_and_scores() -> None:
    source = _Docs(DOCS)
    index = _index(source)
    ids, scores = index.search("u", "coffee", 10)
    assert ids == [3, 1, 4]  # term frequency wins, then the shorter document
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert index.search("u", "tea afternoon", 10)[0] == [2]
    assert index.search("u", "the and of", 10) == ([], [])  # stopwords only
    scored = index.scores("u", "dog")
    assert scored.get(4) > 0 and scored.get(1) == 0.0 and scored.get(99) == 0.0


def test_incremental_apply_without_rebuild() -> None:
    source = _Docs(DOCS)
    index = _index(source)
    assert index.size("u") == 4 and source.loads == 1
    index.apply("u", 2, added=[(5, "espresso after lunch")], removed=[3])
    assert index.search("u", "espresso", 5)[0] == [5]
    assert index.search("u", "coffee", 5)[0] == [1, 4]
    assert index.size("u") == 4 and source.loads == 1  # updated in place
    index.apply("u", 2, added=[(6, "stale")])  # an already-applied generation is ignored
    assert index.search("u", "stale", 5) == ([], [])


def test_missed_generation_rebuilds_from_the_store() -> None:
    source = _Docs(DOCS)
    index = _index(source)
    index.size("u")
    source.docs[7] = "matcha latte"
    source.generation = 3
    index.apply("u", 3, added=[(7, "matcha latte")])  # 1 -> 3 skips a change
    assert not index.is_loaded("u")
    assert index.search("u", "matcha", 5)[0] == [7] and source.loads == 2


def test_scores_over_ad_hoc_documents() -> None:
    scores = LexicalScores.over([(10, "hiking in the alps"), (11, "sailing")], "alps hike")
    assert scores.top(5)[0] == [10]


def _lexical_ids(memory: Memory, query: str, user: str = "maria") -> list[int]:
    request = SearchRequest(query, user, None, None, 10, None, None, False, "lexical")
    return [hit.id for hit in memory.searcher.search(request, memory.embedder.embed_query(query))]


def _in_step(memory: Memory, user: str = "maria") -> bool:
    lexicon = memory.searcher.lexical._loaded[user]
    current = len(memory.get_all(user))
    return lexicon.generation == memory.store.generation(user) and lexicon.count == current


def test_engine_keeps_the_index_in_sync(make_memory: Callable[..., Memory]) -> None:
    memory = make_memory()
    coffee = memory.add("I love coffee", user_id="maria", infer=False).fact_ids[0]
    assert _lexical_ids(memory, "coffee") == [coffee]  # built lazily here
    tea = memory.add("I drink green tea", user_id="maria", infer=False).fact_ids[0]
    assert _lexical_ids(memory, "tea") == [tea] and _in_step(memory)
    updated = memory.update(coffee, "I love espresso now").id
    assert _lexical_ids(memory, "coffee") == []
    assert _lexical_ids(memory, "espresso") == [updated] and _in_step(memory)
    memory.delete(tea)
    assert _lexical_ids(memory, "tea") == [] and _in_step(memory)
    restored = memory.restore(tea).id
    assert _lexical_ids(memory, "tea") == [restored] and _in_step(memory)
    memory.purge("maria")
    assert _lexical_ids(memory, "tea") == []


def test_reopened_store_rebuilds_the_lexical_index(
    make_memory: Callable[..., Memory], db_path: object
) -> None:
    memory = make_memory()
    fact = memory.add("Sailing on Lake Geneva", user_id="maria", infer=False).fact_ids[0]
    memory.close()
    again = make_memory()
    assert _lexical_ids(again, "geneva sailing") == [fact]


@pytest.mark.parametrize("user", ["maria", "other"])
def test_users_are_separate(make_memory: Callable[..., Memory], user: str) -> None:
    memory = make_memory()
    memory.add("Maria plays the cello", user_id="maria", infer=False)
    expected = 1 if user == "maria" else 0
    assert len(_lexical_ids(memory, "cello", user=user)) == expected
