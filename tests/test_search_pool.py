"""The unfiltered hybrid path's candidate pool, gathered from the lexical index's per-slot
columns: the rankings and explanations stay those the per-candidate loops gave (a fixed
expected order on a real store), and each column agrees with the per-document rule it
stands for, through adds, updates and deletes."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from engine.backends.embed import HashingEmbedder
from engine.extract import ExtractedFact as F
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory
from engine.retrieval.fusion import mentions_time, named_speakers, query_features
from engine.retrieval.lexical import Document, LexicalScores

CHAT = [
    ("2023-05-08T13:56:00", [
        ("Caroline", "I went to a LGBTQ support group yesterday and it was so powerful."),
        ("Melanie", "Wow, that sounds amazing. What happened there?"),
        ("Caroline", "The transgender stories were so inspiring, I felt accepted."),
        ("Melanie", "I painted a sunrise over the lake last year."),
        ("Caroline", "My dog Oscar loves long walks on the beach."),
        ("Melanie", "Did you ever see the northern lights?"),
        ("Caroline", "Yes, in Tromso, it was unforgettable."),
    ]),
    ("2023-07-01T10:00:00", [
        ("Melanie", "Caroline and I went camping in the mountains."),
        ("Caroline", "We saw a bear near the tent, it was scary!"),
        ("Melanie", "My kids started pottery classes in June."),
        ("Caroline", "I am researching adoption agencies this month."),
    ]),
]
SCRIPTED = {
    "Hi, I'm Maria from Lisbon and I love coffee.": [
        F("User lives in Lisbon", "place", slot="home city", value="Lisbon"),
        F("User loves coffee in the morning", "preference", slot="daily drink", value="coffee"),
    ],
    "I stopped coffee, it's green tea now. Ana moved to Berlin last May.": [
        F("User drinks green tea", "preference", slot="daily drink", value="green tea"),
        F("User's sister Ana lives in Berlin since last May", "place", about="sister Ana",
          slot="home city", value="Berlin"),
    ],
}
QUERIES = [
    "When did Caroline go to the support group?",
    "What did Melanie paint?",
    "where does the user live?",
    "what does Maria drink?",
    "Did Caroline see the northern lights?",
    "When did Melanie go camping?",
]


class TieFreeEmbedder:
    """The hashing embedder plus one coordinate that differs for every text.

    Facts written from one template have the same hashing cosine to a query, and which of
    several tied facts hnswlib returns at the candidate cut depends on how its
    multi-threaded build linked the graph; a fixed expected order must not depend on that.
    """

    identity = "hashing-v1-256-tie-free"
    dim = 257

    def __init__(self) -> None:
        self._hashing = HashingEmbedder(256)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        extra = [[0.05 + 0.1 * int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4)
                                              .digest(), "little") / 2**32] for t in texts]
        out = np.hstack([self._hashing.embed(texts), np.asarray(extra, dtype=np.float32)])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


# Computed on main before the pool became columns (the per-candidate loops), rounded to
# 6 places: (text, score, vector rank, lexical rank, names matched, mentions a time,
# slot contribution, neighbour the bonus came from, expanded from, neighbour bonus).
EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    'When did Caroline go to the support group?': [
        ('Caroline: I went to a LGBTQ support group yesterday and it was so powerful.', 2.221624,
         2, 1, ['Caroline'], True, 0.0, 'Melanie: Wow, that sounds amazing. What happened there?',
         None, 0.001924),
        ('User drinks green tea', 1.253993, 4, 3, [], False, 0.0, None, None, 0.0),
        ('Inventory 95: weather, traffic, traffic', 1.036668, 1, None, [], False, 0.0,
         'Inventory 94: traffic, harbour, printer', None, 0.032745),
        ('Melanie: Did you ever see the northern lights?', 0.835969, 3, None, [], False, 0.0,
         'Caroline: My dog Oscar loves long walks on the beach.', None, 0.031924),
        ('User lives in Lisbon', 0.729506, 11, 2, [], False, 0.0, None, None, 0.0),
        ("User's sister Ana lives in Berlin since last May", 0.70065, None, 4, [], True, 0.0,
         None, None, 0.0),
    ],
    'What did Melanie paint?': [
        ('Melanie: I painted a sunrise over the lake last year.', 1.530749, 32, 1, ['Melanie'],
         False, 0.0, 'Caroline: My dog Oscar loves long walks on the beach.', None, 0.101978),
        ('Melanie: Wow, that sounds amazing. What happened there?', 1.487515, 4, 2, ['Melanie'],
         False, 0.0, 'Caroline: The transgender stories were so inspiring, I felt accepted.',
         None, 0.099828),
        ('Melanie: Did you ever see the northern lights?', 1.396088, 5, 3, ['Melanie'], False,
         0.0, 'Caroline: My dog Oscar loves long walks on the beach.', None, 0.101978),
        ('Inventory 57: invoice, keyboard, recipe', 1.0051, 1, None, [], False, 0.0,
         'Inventory 56: garden, traffic, invoice', None, 0.001177),
        ('Inventory 131: keyboard, keyboard, weather', 0.915741, 2, None, [], False, 0.0,
         'Inventory 130: traffic, bicycle, pepper', None, 0.001177),
        ('Inventory 96: keyboard, keyboard, cousin', 0.902505, 3, None, [], False, 0.0,
         'Inventory 95: weather, traffic, traffic', None, 0.001177),
    ],
    'where does the user live?': [
        ('User lives in Lisbon', 2.308875, 1, 1, [], False, 0.3, None, None, 0.0),
        # no slot signal since it goes only to whom the question asks about (the user)
        ("User's sister Ana lives in Berlin since last May", 1.102776, 17, 2, [], False, 0.0,
         None, None, 0.0),
        ('User drinks green tea', 0.920638, 5, 3, [], False, 0.0, None, None, 0.0),
        ('Inventory 43: invoice, pepper, concert', 0.870102, 2, None, [], False, 0.0,
         'Inventory 42: cousin, printer, invoice', None, 0.001177),
        ('Inventory 70: printer, pepper, concert', 0.858771, 3, None, [], False, 0.0,
         'Inventory 71: keyboard, traffic, recipe', None, 0.003563),
        ('Caroline: We saw a bear near the tent, it was scary!', 0.611651, 4, None, [], False,
         0.0, 'Melanie: Caroline and I went camping in the Rocky mountains.', None, 0.088593),
    ],
    'what does Maria drink?': [
        ('User drinks green tea', 1.31, None, 1, [], False, 0.3, None, None, 0.0),
        ('Inventory 70: printer, pepper, concert', 1.157322, 1, None, [], False, 0.0,
         'Inventory 69: cousin, invoice, printer', None, 0.153399),
        ('Inventory 67: printer, printer, weather', 1.100185, 3, None, [], False, 0.0,
         'Inventory 66: printer, pepper, bicycle', None, 0.160409),
        ('Inventory 73: pepper, printer, traffic', 1.08157, 4, None, [], False, 0.0,
         'Inventory 72: printer, weather, recipe', None, 0.15529),
        ('Inventory 149: printer, printer, pepper', 0.945535, 2, None, [], False, 0.0,
         'Inventory 148: bicycle, concert, cousin', None, 0.001177),
        ('Inventory 66: printer, pepper, bicycle', 0.816631, 14, None, [], False, 0.0,
         'Inventory 67: printer, printer, weather', None, 0.281933),
    ],
    'Did Caroline see the northern lights?': [
        ('Melanie: Did you ever see the northern lights?', 2.04137, 1, 1, [], False, 0.0,
         'Caroline: Yes, in Tromso, it was unforgettable.', None, 0.034958),
        ('Caroline: Yes, in Tromso, it was unforgettable.', 0.718451, 40, None, ['Caroline'],
         False, 0.0, 'Melanie: Did you ever see the northern lights?', None, 0.601924),
        ('Caroline: My dog Oscar loves long walks on the beach.', 0.708335, None, None,
         ['Caroline'], False, 0.0, 'Melanie: Did you ever see the northern lights?',
         'Melanie: Did you ever see the northern lights?', 0.601924),
        ('User lives in Lisbon', 0.507446, 4, 2, [], False, 0.0, None, None, 0.0),
        ("User's sister Ana lives in Berlin since last May", 0.37221, 14, 4, [], False, 0.0, None,
         None, 0.0),
        ('Caroline: The transgender stories were so inspiring, I felt accepted.', 0.362375, 3,
         None, ['Caroline'], False, 0.0, 'Melanie: I painted a sunrise over the lake last year.',
         None, 0.036425),
    ],
    'When did Melanie go camping?': [
        ('Melanie: Caroline and I went camping in the Rocky mountains.', 1.468038, 14, 1,
         ['Melanie'], False, 0.0, 'Caroline: We saw a bear near the tent, it was scary!', None,
         0.002367),
        ('Inventory 96: keyboard, keyboard, cousin', 1.147114, 2, None, [], False, 0.0,
         'Inventory 95: weather, traffic, traffic', None, 0.158078),
        ('Inventory 131: keyboard, keyboard, weather', 1.052933, 1, None, [], False, 0.0,
         'Inventory 130: traffic, bicycle, pepper', None, 0.04901),
        ('Melanie: Did you ever see the northern lights?', 0.951115, 13, 3, ['Melanie'], False,
         0.0, 'Caroline: My dog Oscar loves long walks on the beach.', None, 0.001924),
        ('Melanie: My kids started pottery classes in July.', 0.847065, None, 5, ['Melanie'],
         True, 0.0, None, None, 0.0),
        ('Inventory 35: traffic, keyboard, weather', 0.838452, 6, None, [], False, 0.0,
         'Inventory 34: traffic, keyboard, recipe', None, 0.184037),
    ],
}


def _filler(i: int) -> str:
    rng = random.Random(i)
    words = ["invoice", "printer", "harbour", "lantern", "pepper", "keyboard", "bicycle",
             "museum", "traffic", "recipe", "cousin", "concert", "weather", "garden"]
    return f"Inventory {i}: {rng.choice(words)}, {rng.choice(words)}, {rng.choice(words)}"


def build(memory: Memory) -> None:
    """Chat turns with speakers over two sessions, 150 unrelated notes (so some neighbours
    are not retrieved and come in only by expansion), facts with slots from a scripted
    extraction (two per message), a correction at the same time, a later one, a delete."""
    memory.add([_filler(i) for i in range(150)], user_id="caroline",
               observed_at="2023-01-01", infer=False)
    for when, turns in CHAT:
        memory.add([{"role": "user", "content": f"{who}: {text}", "metadata": {"speaker": who}}
                    for who, text in turns], user_id="caroline", observed_at=when, infer=False)
    for when, message in zip(("2023-08-01", "2023-09-01"), SCRIPTED, strict=True):
        memory.add(message, user_id="caroline", observed_at=when)
    by_text = {f.text: f for f in memory.get_all("caroline")}
    camping = by_text["Melanie: Caroline and I went camping in the mountains."]
    memory.update(camping.id, "Melanie: Caroline and I went camping in the Rocky mountains.",
                  valid_from=camping.valid_from)
    pottery = by_text["Melanie: My kids started pottery classes in June."]
    memory.update(pottery.id, "Melanie: My kids started pottery classes in July.",
                  valid_from="2023-07-15")
    memory.delete(by_text[_filler(3)].id)


def _summary(memory: Memory, query: str) -> list[tuple[Any, ...]]:
    text = {f.id: f.text for f in memory.get_all("caroline")}
    rows = []
    for hit in memory.search(query, user_id="caroline", k=6, explain=True):
        parts = hit.explain
        assert parts is not None
        neighbour = parts["neighbour"]
        rows.append((
            hit.text, hit.score, parts["vector"]["rank"], parts["lexical"]["rank"],
            parts["name"]["matched"], parts["time"]["mentions_time"],
            parts["slot"]["contribution"], text.get(neighbour["from"]),
            text.get(neighbour["expanded_from"]), neighbour["contribution"],
        ))
    return rows


@pytest.fixture
def store(make_memory: Callable[..., Memory]) -> Memory:
    memory = make_memory(embedder=TieFreeEmbedder(), extractor=ScriptedExtractor(SCRIPTED),
                         infer=True)
    build(memory)
    # the weights the expected rows were computed with (the slot weight has grown since)
    memory.searcher.weights = replace(memory.searcher.weights, slot=0.3)
    return memory


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    return len(got) == len(want) and all(
        len(g) == len(w) and all(
            x == pytest.approx(y, abs=2e-6) if isinstance(y, float) else x == y
            for x, y in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True))


def test_rankings_and_explanations_are_the_per_candidate_ones(store: Memory) -> None:
    for query, want in EXPECTED.items():
        got = _summary(store, query)
        assert _same(got, want), (query, got)
    # the store exercises what the columns stand for: expanded rows, names, times, slots
    rows = [row for rows in EXPECTED.values() for row in rows]
    assert any(row[8] is not None for row in rows) and any(row[4] for row in rows)
    assert any(row[5] for row in rows) and any(row[6] > 0 for row in rows)
    for hit in store.search(QUERIES[0], user_id="caroline", k=6, explain=True):
        parts = hit.explain
        assert parts is not None and parts["method"] == "hybrid"
        total = sum(parts[s]["contribution"] for s in
                    ("vector", "lexical", "name", "time", "recency", "slot", "neighbour"))
        assert total == pytest.approx(hit.score) == parts["score"]


def test_each_column_follows_its_per_document_rule(store: Memory) -> None:
    lexical = store.searcher.lexical
    for query in [*QUERIES, "Caroline Melanie Maria", "home city daily drink"]:
        scored = lexical.scores("caroline", query)
        slots = np.asarray(sorted(scored.slot_of.values()), dtype=np.int64)
        documents = [scored.documents[int(s)] for s in slots]
        features = query_features(query)
        assert scored.ids_at(slots).tolist() == [d.fact_id for d in documents]
        assert scored.named_at(slots, features.words).tolist() == [
            bool(named_speakers(d.names, features)) for d in documents]
        assert scored.timely_at(slots).tolist() == [mentions_time(d.text) for d in documents]
        assert scored.slotted_at(slots, features.slots).tolist() == [
            d.fact is not None and d.fact.slot in features.slots for d in documents]


def _neighbours_by_message(scored: LexicalScores, slots: np.ndarray) -> list[list[int]]:
    """The rule the column gather stands for: the current fact of the adjacent message
    (``slot_by_source``), when it became true at the same time."""
    out = []
    for slot in slots.tolist():
        document = scored.documents[slot]
        row = []
        for delta in (-1, 1):
            other = (None if document.source_message_id is None
                     else scored.slot_by_source(document.source_message_id + delta))
            row.append(-1 if other is None
                       or scored.documents[other].valid_from != document.valid_from else other)
        out.append(row)
    return out


def test_neighbour_slots_follow_the_message_map_through_changes() -> None:
    """Random adds (several facts per message, some sharing a message with a removed one),
    removes and re-adds: the vectorised look-up always agrees with the message map."""
    from datetime import UTC, datetime

    from engine.retrieval.lexical import LexicalIndex

    rng = random.Random(13)
    times = [datetime(2024, 1, day, tzinfo=UTC) for day in (1, 2)]
    docs: dict[int, Document] = {}
    next_id = 1
    for message in range(1, 60):
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            docs[next_id] = Document(next_id, f"fact {next_id}", message, rng.choice(times))
            next_id += 1
    generation = 1
    index = LexicalIndex(load_documents=lambda user: list(docs.values()),
                         store_generation=lambda user: generation)
    for _ in range(40):
        scored = index.scores("u", "fact")
        slots = np.asarray(sorted(scored.slot_of.values()), dtype=np.int64)
        assert scored.neighbour_slots(slots).tolist() == _neighbours_by_message(scored, slots)
        removed = rng.sample(sorted(docs), 3)
        added = []
        for _ in range(3):
            source = rng.choice([None, rng.randrange(1, 62)])
            added.append(Document(next_id, f"fact {next_id}", source, rng.choice(times)))
            next_id += 1
        for fact_id in removed:
            del docs[fact_id]
        docs.update((d.fact_id, d) for d in added)
        generation += 1
        index.apply("u", generation, added=added, removed=removed)
    assert index.size("u") == len(docs)


def test_top_keeps_the_partitions_choice_among_ties() -> None:
    """Thousands of documents tie on BM25: ``top`` picks exactly the facts a partition of
    the whole score array picks (what the fusion weights were tuned with), in order."""
    rng = random.Random(5)
    words = ["coffee", "tea", "milk", "sugar", "cocoa"]
    documents = [(i, " ".join(rng.choice(words) for _ in range(rng.choice((2, 3)))))
                 for i in range(1, 3001)]
    for query in ("coffee", "tea milk", "sugar cocoa coffee", "water"):
        scored = LexicalScores.over(documents, query)
        scores = np.asarray([scored.get(i) for i, _ in documents], dtype=np.float32)
        for k in (1, 10, 50, 700, 2999, 3000, 5000):
            positive = int(np.count_nonzero(scores))
            want = min(k, positive)
            if want <= 0:
                assert scored.top(k) == ([], [])
                continue
            cut = (np.argpartition(-scores, want - 1)[:want] if want < len(scores)
                   else np.flatnonzero(scores > 0))
            order = sorted(cut.tolist(), key=lambda s: (-float(scores[s]), documents[s][0]))
            assert scored.top(k) == ([documents[s][0] for s in order],
                                     [float(scores[s]) for s in order])
