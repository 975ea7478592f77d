"""Lexical retrieval: a per-user, in-memory BM25 inverted index kept in step with DuckDB.

Why this and not the alternatives: measured with ``python -m benchmarks lexical_options
--sizes 10000,100000`` (LoCoMo turns repeated to 10k / 100k documents of one user,
LoCoMo questions as queries, 2 shared cores; ``benchmarks/results/lexical_options.json``):

- this index:  build 0.3 s / 3.0 s; insert→searchable 0.08 / 0.26 ms; query p50 0.09 / 0.39 ms
- DuckDB fts:   build 0.4 s / 3.3 s; insert→searchable (full rebuild) 329 / 2,927 ms;
  query p50 16 / 91 ms
- BM25 in SQL:  build 0.4 s / 4.9 s; insert 2.8 / 2.7 ms; query p50 14 / 132 ms

(each pair: 10k / 100k documents)

* DuckDB ``fts`` (``duckdb-extension-fts``, loaded offline from the package): good
  BM25, but ``PRAGMA create_fts_index`` rebuilds the whole index, so in an engine
  that writes after almost every message each write (or the first search after it)
  pays a full rebuild, and even its queries are tens of milliseconds.
* BM25 in SQL over a ``(doc, term, tf)`` table: incremental, but a query is a
  multi-join aggregate over the postings: far over a 10 ms search budget at 100k.
* ``bm25s`` (a frozen scipy sparse matrix: every insert re-indexes the user) and
  ``tantivy`` (incremental, but a second on-disk copy of every text beside DuckDB and
  a commit/reload per write) were not installed: neither is a dependency, and the
  numbers above already leave the in-memory index the only option that is both
  incremental and sub-millisecond. ``lexical_options`` measures bm25s when present.

This index costs microseconds per inserted document, answers in well under 1 ms at
100k documents, needs nothing beyond numpy, and is a pure cache like the hnswlib index:
built lazily from DuckDB on first use, updated by :meth:`LexicalIndex.apply` with the
same per-user *generation* the store bumps on every change, and dropped (rebuilt on
the next search) when a generation is missed, so it is never stale. It also keeps
each current fact's text, source message, valid-from time and speaker-like metadata
(:class:`Document`), so unfiltered hybrid search scores candidates and their
neighbouring turns without SQL; that costs about the size of the texts in memory.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.retrieval.fusion import NAME_KEYS, first_name, mentions_time
from engine.timeutil import micros

if TYPE_CHECKING:
    import numpy as np

    from engine.types import Fact

__all__ = ["BM25Params", "Document", "LexicalIndex", "LexicalScores", "STOPWORDS", "stem",
           "tokenize"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)

_STOPWORD_TEXT = """
    a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't could couldn't did didn't do does
    doesn't doing don't down during each few for from further had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how
    how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most
    mustn't my myself no nor not of off on once only or other ought our ours ourselves
    out over own same shan't she she'd she'll she's should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they they'd
    they'll they're they've this those through to too under until up very was wasn't we
    we'd we'll we're we've were weren't what what's when when's where where's which
    while who who's whom why why's with won't would wouldn't you you'd you'll you're
    you've your yours yourself yourselves s t just also really yeah oh wow hey hi
    """
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def stem(word: str) -> str:
    """A light English suffix stripper (plural, -ing, -ed, -ly, possessive).

    Deliberately milder than Porter: it merges "paint/paints/painted/painting"
    without merging unrelated words; that is what matters for chat turns.
    """
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]  # running -> run, planned -> plan
            return base.rstrip("e")
    if word.endswith("ly") and len(word) > 5:
        return word[:-2]
    if word.endswith("es") and word[-3:-2] in ("s", "x", "z", "h") and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word.rstrip("e") if len(word) > 3 else word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed content words of a text (stopwords removed)."""
    tokens = []
    for raw in _WORD.findall(text.casefold()):
        word = raw.replace("\u2019", "'")
        if word in STOPWORDS:
            continue
        tokens.append(stem(word))
    return tokens


@dataclass(frozen=True)
class Document:
    """A current fact as the lexical index keeps it.

    Besides the text it carries what hybrid fusion needs without a DuckDB round trip:
    the source message (for neighbouring turns), the valid-from time and the
    speaker-like metadata values (see :data:`engine.retrieval.fusion.NAME_KEYS`); ``fact`` is
    the whole current version, so an unfiltered search can return its hits without
    fetching them again (about 0.8 ms of a 10k-fact search).
    """

    fact_id: int
    text: str
    source_message_id: int | None = None
    valid_from: datetime | None = None
    names: Mapping[str, Any] = field(default_factory=dict)
    fact: Fact | None = None


DocumentLike = Document | tuple[int, str]

_DELTAS = (-1, 1)  # the message before and the message after


def _as_document(item: DocumentLike) -> Document:
    return item if isinstance(item, Document) else Document(int(item[0]), str(item[1]))


class BM25Params:
    """Okapi BM25 constants. ``k1``/``b`` were swept on the LoCoMo tuning split
    (k1 in 0.6..2.0, b in 0.3..0.9); short chat turns like a low ``b``."""

    k1: float = 1.2
    b: float = 0.5


class _UserLexicon:
    """One user's postings: term -> (slots, term frequencies), plus document lengths.

    Documents live in integer *slots*; removing one only marks its slot dead (and
    drops it from the length statistics), so inserts and deletes are O(terms).
    Posting lists are Python lists (cheap appends) with a cached numpy copy that is
    refreshed only for terms whose list changed since the last query.
    """

    def __init__(self, *, times_at_add: bool = False) -> None:
        import numpy as np

        self.times_at_add = times_at_add
        """Whether ``add`` checks each text for a time: a user's cached index does, so a
        write pays one regex search per fact instead of a search paying one per candidate
        it has not met before; ad-hoc lexicons over scanned rows leave it to the first
        query that asks (most never do)."""
        self.slot_of: dict[int, int] = {}
        self.ids: list[int] = []
        self.documents: list[Document] = []
        self.by_source: dict[int, int] = {}  # source message id -> live slot
        self.lengths = np.zeros(256, dtype=np.float32)
        self.alive = np.zeros(256, dtype=bool)
        self.valid_us = np.zeros(256, dtype=np.int64)  # valid-from, microseconds since 1970
        # What hybrid fusion reads of each slot, as columns, so a query's candidate pool
        # is gathered by slot in a few numpy calls instead of a Python loop over
        # documents (see Searcher._in_memory):
        self.fact_ids = np.zeros(256, dtype=np.int64)
        self.sources = np.full(256, -1, dtype=np.int64)  # source message id, -1: none
        self.head = np.zeros(256, dtype=bool)  # by_source names this slot for its source
        self.timely = np.full(256, -1, dtype=np.int8)  # mentions_time(text), -1: not yet known
        self.name_codes = np.full((256, len(NAME_KEYS)), -1, dtype=np.int32)  # per NAME_KEYS
        self.slot_codes = np.full(256, -1, dtype=np.int32)  # the fact's slot, -1: none
        self.name_code: dict[str, int] = {}  # case-folded first name -> code
        self.slot_code: dict[str, int] = {}  # slot name -> code
        self.postings: dict[str, tuple[list[int], list[int]]] = {}
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.total_length = 0.0
        self.count = 0
        self.generation = 0
        self._norm_key: tuple[float, ...] | None = None
        self._norm_cache = np.zeros(0, dtype=np.float32)

    def _grow(self) -> None:
        """Double the per-slot columns (new slots: dead, no source, nothing known)."""
        import numpy as np

        size = len(self.lengths)

        def widened(column: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((2 * size, *column.shape[1:]), fill, dtype=column.dtype)
            out[:size] = column
            return out

        self.lengths = widened(self.lengths, 0)
        self.alive = widened(self.alive, False)
        self.valid_us = widened(self.valid_us, 0)
        self.fact_ids = widened(self.fact_ids, 0)
        self.sources = widened(self.sources, -1)
        self.head = widened(self.head, False)
        self.timely = widened(self.timely, -1)
        self.name_codes = widened(self.name_codes, -1)
        self.slot_codes = widened(self.slot_codes, -1)

    def add(self, document: Document) -> None:
        fact_id, text = document.fact_id, document.text
        if fact_id in self.slot_of:
            return
        slot = len(self.ids)
        if slot >= len(self.lengths):
            self._grow()
        source = document.source_message_id
        # The columns are filled before the slot is published in ``slot_of``: a search
        # reading them outside the lock never sees a half-added slot.
        self.fact_ids[slot] = fact_id
        self.sources[slot] = -1 if source is None else source
        self.valid_us[slot] = 0 if document.valid_from is None else micros(document.valid_from)
        self.timely[slot] = mentions_time(text) if self.times_at_add else -1
        if document.names:
            codes = []
            for key in NAME_KEYS:
                value = document.names.get(key)
                first = first_name(value) if isinstance(value, str) else None
                codes.append(-1 if first is None
                             else self.name_code.setdefault(first, len(self.name_code)))
            self.name_codes[slot] = codes
        else:
            self.name_codes[slot] = -1
        fact_slot = None if document.fact is None else document.fact.slot
        self.slot_codes[slot] = (-1 if fact_slot is None
                                 else self.slot_code.setdefault(fact_slot, len(self.slot_code)))
        counts: dict[str, int] = {}
        tokens = tokenize(text)
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
        for token, tf in counts.items():
            slots, tfs = self.postings.setdefault(token, ([], []))
            slots.append(slot)
            tfs.append(tf)
            self.cache.pop(token, None)
        self.lengths[slot] = len(tokens)
        self.alive[slot] = True
        self.total_length += len(tokens)
        self.count += 1
        self.ids.append(fact_id)
        self.documents.append(document)
        if source is not None:
            previous = self.by_source.get(source)
            if previous is not None:
                self.head[previous] = False
            self.by_source[source] = slot
            self.head[slot] = True
        self.slot_of[fact_id] = slot

    def remove(self, fact_id: int) -> None:
        slot = self.slot_of.pop(fact_id, None)
        if slot is None or not self.alive[slot]:
            return
        source = self.documents[slot].source_message_id
        if source is not None and self.by_source.get(source) == slot:
            del self.by_source[source]
            self.head[slot] = False
        self.alive[slot] = False
        self.total_length -= float(self.lengths[slot])
        self.count -= 1

    def _posting(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        import numpy as np

        cached = self.cache.get(term)
        if cached is not None:
            return cached
        entry = self.postings.get(term)
        if entry is None:
            return None
        cached = (np.asarray(entry[0], dtype=np.int64), np.asarray(entry[1], dtype=np.float32))
        self.cache[term] = cached
        return cached

    def _norm(self, params: type[BM25Params]) -> np.ndarray:
        """BM25's per-slot length normalisation, recomputed only after a change."""
        key = (len(self.ids), self.count, self.total_length, params.k1, params.b)
        if self._norm_key != key:
            avg = max(self.total_length / self.count, 1.0)
            size = len(self.ids)
            self._norm_cache = params.k1 * (1.0 - params.b + params.b * self.lengths[:size] / avg)
            self._norm_key = key
        return self._norm_cache

    def scores(self, terms: Sequence[str], params: type[BM25Params]) -> np.ndarray:
        """BM25 score of every slot (0 for dead slots and non-matching ones)."""
        import numpy as np

        size = len(self.ids)
        total = np.zeros(size, dtype=np.float32)
        if not self.count:
            return total
        norm = self._norm(params)
        alive = self.alive[:size]
        for term in dict.fromkeys(terms):  # each distinct query term once
            posting = self._posting(term)
            if posting is None:
                continue
            slots, tfs = posting
            live = alive[slots]
            df = int(np.count_nonzero(live))
            if df == 0:
                continue
            if df != len(slots):
                slots, tfs = slots[live], tfs[live]
            idf = math.log(1.0 + (self.count - df + 0.5) / (df + 0.5))
            total[slots] += idf * tfs * (params.k1 + 1.0) / (tfs + norm[slots])
        return total


class LexicalScores:
    """One query's BM25 scores over one lexicon: top-k and lookups by fact id."""

    def __init__(self, lexicon: _UserLexicon, scores: np.ndarray) -> None:
        # References, not copies (a copy costs milliseconds at 100k facts): slots are
        # append-only, so a write racing with this query can only hide new facts.
        self._slot_of = lexicon.slot_of
        self._lexicon = lexicon
        self._scores = scores
        self.generation = lexicon.generation
        """The store generation the index reflected when the query was scored."""

    @classmethod
    def over(
        cls, documents: Iterable[DocumentLike], query: str,
        params: type[BM25Params] = BM25Params,
    ) -> LexicalScores:
        """Scores over an ad-hoc set of documents (point-in-time and filtered scans)."""
        lexicon = _UserLexicon()
        for document in documents:
            lexicon.add(_as_document(document))
        return cls(lexicon, lexicon.scores(tokenize(query), params))

    @property
    def slot_of(self) -> Mapping[int, int]:
        """Fact id -> slot of the current facts (slots index :attr:`documents`)."""
        return self._slot_of

    @property
    def documents(self) -> Sequence[Document]:
        """The indexed documents by slot (dead slots included)."""
        return self._lexicon.documents

    def slot_by_source(self, source_message_id: int) -> int | None:
        """The slot of the current fact stored from a given message, or None."""
        return self._lexicon.by_source.get(source_message_id)

    def at_slots(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores (float64) and valid-from microseconds of these slots."""
        import numpy as np

        scores = self._scores
        inside = slots < len(scores)
        bm25 = np.zeros(len(slots), dtype=np.float64)
        bm25[inside] = scores[slots[inside]]
        return bm25, self._lexicon.valid_us[slots]

    def document(self, fact_id: int) -> Document | None:
        """The indexed document of a current fact, or None."""
        slot = self._slot_of.get(int(fact_id))
        return None if slot is None else self._lexicon.documents[slot]

    def by_source(self, source_message_id: int) -> Document | None:
        """The current fact stored from a given message, or None."""
        slot = self._lexicon.by_source.get(source_message_id)
        return None if slot is None else self._lexicon.documents[slot]

    def get(self, fact_id: int) -> float:
        """The score of one fact (0 when it does not match or is not indexed)."""
        slot = self._slot_of.get(int(fact_id))
        if slot is None or slot >= len(self._scores):
            return 0.0
        return float(self._scores[slot])

    def top(self, k: int) -> tuple[list[int], list[float]]:
        """The k best-scoring facts with a positive score, best first (ties by id).

        Which of several facts tied at the k-th score make the cut is numpy's
        ``argpartition``'s choice over the whole score array (kept as it is, so rankings
        stay those the fusion weights were tuned with). Facts with no score are dropped
        after the partition rather than counted before it: when fewer than k facts
        score, the partition's first k hold all of them either way, and counting the
        non-zero scores is a second pass over every slot.
        """
        slots = self.top_slots(k)
        return self._lexicon.fact_ids[slots].tolist(), self._scores[slots].tolist()

    def top_slots(self, k: int) -> np.ndarray:
        """The slots of :meth:`top`'s facts, in its order (int64)."""
        import numpy as np

        scores = self._scores
        if k <= 0 or not len(scores):
            return np.zeros(0, dtype=np.int64)
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[scores[top] > 0]
        else:
            top = np.flatnonzero(scores > 0)
        return top[np.lexsort((self._lexicon.fact_ids[top], -scores[top]))].astype(np.int64)

    def alive_at(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot still holds a current fact (a removal may have landed since
        the query was scored)."""
        return self._lexicon.alive[slots]

    # ---- what hybrid fusion reads of a pool of slots -----------------------------------

    def ids_at(self, slots: np.ndarray) -> np.ndarray:
        """The fact ids of these slots (int64)."""
        return self._lexicon.fact_ids[slots]

    def neighbour_slots(self, slots: np.ndarray) -> np.ndarray:
        """For each slot, the slots of its neighbouring turns, as an ``(n, 2)`` array:
        column 0 the current fact stored from the message just before its own, column 1
        from the message just after, each only when it became true at the same time
        (-1: none). The fact of a message is :meth:`slot_by_source`'s.

        A user's messages are mostly stored one after another, so the neighbour is
        first looked for in the adjacent slot (one vectorised check that the slot is the
        one its message maps to); only the slots where that fails ask the dict.
        """
        import numpy as np

        lexicon = self._lexicon
        size = len(lexicon.ids)
        valid_us = lexicon.valid_us[slots]
        sources = lexicon.sources[slots]
        known = (sources >= 0)[:, None]
        adjacent = slots[:, None] + _DELTAS  # (n, 2): the slot before, the slot after
        wanted = sources[:, None] + _DELTAS  # the messages they should come from
        inside = (adjacent >= 0) & (adjacent < size)
        adjacent[~inside] = 0
        # head: by_source names the slot for its message, so a matching source proves it
        found = known & inside & lexicon.head[adjacent] & (lexicon.sources[adjacent] == wanted)
        out = np.where(found, adjacent, -1)
        for at in np.flatnonzero(known & ~found).tolist():
            other = lexicon.by_source.get(int(wanted.flat[at]))
            if other is not None:
                out.flat[at] = other
        linked = out >= 0
        out[linked & (lexicon.valid_us[np.where(linked, out, 0)] != valid_us[:, None])] = -1
        return out

    def timely_at(self, slots: np.ndarray) -> np.ndarray:
        """Whether the text of each slot mentions a time (``fusion.mentions_time``),
        remembered per slot after the first query that asks."""
        import numpy as np

        lexicon = self._lexicon
        timely = lexicon.timely[slots]
        for row in np.flatnonzero(timely < 0).tolist():
            slot = int(slots[row])
            timely[row] = lexicon.timely[slot] = mentions_time(lexicon.documents[slot].text)
        return timely.astype(bool)

    def named_at(self, slots: np.ndarray, words: Iterable[str]) -> np.ndarray:
        """Whether each slot's speaker-like metadata names someone among ``words`` (the
        query's case-folded words): ``bool(fusion.named_speakers(...))`` per slot."""
        import numpy as np

        codes = [code for word in words
                 if (code := self._lexicon.name_code.get(word)) is not None]
        if not codes:
            return np.zeros(len(slots), dtype=bool)
        return np.logical_or.reduce(np.isin(self._lexicon.name_codes[slots], codes), axis=1)

    def subjects_at(self, slots: np.ndarray) -> list[str | None]:
        """The subject of each slot's fact (None for a fact without one)."""
        documents = self._lexicon.documents
        return [None if (fact := documents[int(s)].fact) is None else fact.subject
                for s in slots]

    def slotted_at(self, slots: np.ndarray, wanted: Iterable[str]) -> np.ndarray:
        """Whether each slot's fact is filed under one of the ``wanted`` slot names."""
        import numpy as np

        codes = [code for name in wanted
                 if (code := self._lexicon.slot_code.get(name)) is not None]
        if not codes:
            return np.zeros(len(slots), dtype=bool)
        return np.isin(self._lexicon.slot_codes[slots], codes)


class LexicalIndex:
    """Per-user BM25 indexes over current facts: a cache rebuilt from the store.

    ``load_documents(user_id)`` returns the user's current facts (:class:`Document`
    or ``(id, text)`` pairs) and
    ``store_generation(user_id)`` the store's generation for the user. Indexes are
    kept in an LRU of ``max_loaded`` users.
    """

    def __init__(
        self,
        *,
        load_documents: Callable[[str], Iterable[DocumentLike]],
        store_generation: Callable[[str], int],
        max_loaded: int = 512,
        params: type[BM25Params] = BM25Params,
    ) -> None:
        self._load_documents = load_documents
        self._store_generation = store_generation
        self._loaded: OrderedDict[str, _UserLexicon] = OrderedDict()
        self._max_loaded = max_loaded
        self._lock = threading.RLock()
        self.params = params

    def _get(self, user_id: str) -> _UserLexicon:
        lexicon = self._loaded.get(user_id)
        if lexicon is not None:
            self._loaded.move_to_end(user_id)
            return lexicon
        lexicon = _UserLexicon(times_at_add=True)
        # Generation first: a write landing between the two reads is re-applied
        # idempotently by apply(), never lost.
        lexicon.generation = self._store_generation(user_id)
        for document in self._load_documents(user_id):
            lexicon.add(_as_document(document))
        self._loaded[user_id] = lexicon
        while len(self._loaded) > self._max_loaded:
            self._loaded.popitem(last=False)
        return lexicon

    def is_loaded(self, user_id: str) -> bool:
        """Whether this user's index is in memory (writes to others need no work)."""
        with self._lock:
            return user_id in self._loaded

    def apply(
        self,
        user_id: str,
        generation: int,
        *,
        added: Sequence[DocumentLike] = (),
        removed: Sequence[int] = (),
    ) -> None:
        """Apply one committed store change (new generation) to a loaded index."""
        with self._lock:
            lexicon = self._loaded.get(user_id)
            if lexicon is None:
                return  # built on the next search, at the store's generation
            if generation <= lexicon.generation:
                return  # already reflected (the index was built after this commit)
            if lexicon.generation + 1 != generation:
                self._loaded.pop(user_id, None)  # missed a change: rebuild lazily
                return
            for fact_id in removed:
                lexicon.remove(int(fact_id))
            for document in added:
                lexicon.add(_as_document(document))
            lexicon.generation = generation

    def scores(self, user_id: str, query: str) -> LexicalScores:
        """BM25 scores of all the user's current facts for a query (one pass)."""
        with self._lock:
            lexicon = self._get(user_id)
            return LexicalScores(lexicon, lexicon.scores(tokenize(query), self.params))

    def search(self, user_id: str, query: str, k: int) -> tuple[list[int], list[float]]:
        """Top-k current fact ids by BM25, best first (ties: lower id first)."""
        return self.scores(user_id, query).top(k)

    def size(self, user_id: str) -> int:
        """How many current documents the user's index holds."""
        with self._lock:
            return self._get(user_id).count

    def ids(self, user_id: str) -> set[int]:
        """The fact ids the user's index holds (to check it against the store)."""
        with self._lock:
            return set(self._get(user_id).slot_of)

    def forget(self, user_id: str) -> None:
        """Drop a user's index (after a purge)."""
        with self._lock:
            self._loaded.pop(user_id, None)

    def invalidate(self, user_id: str) -> None:
        """Drop a user's index so the next search rebuilds it from the store."""
        self.forget(user_id)
