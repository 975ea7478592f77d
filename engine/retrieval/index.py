"""hnswlib ANN indexes over each user's *current* facts: a rebuildable cache.

One small index per user, so a user's search costs the same whether the store
holds ten other users or ten thousand. Labels are fact ids; vectors are the
unit-norm embeddings, compared by inner product (= cosine similarity).

Each index is saved as ``<dir>/<key>.hnsw`` with a JSON sidecar recording the
store *generation* it reflects and a blake2b digest of the file. On load, a
generation that differs from the store's (a crash between commit and save) or a
digest that does not match (a damaged file) means the index is rebuilt from
DuckDB; a damaged file also raises an :class:`IndexRebuiltWarning`. Nothing is
pickled. Loaded indexes are kept in an LRU; evicted dirty ones are saved first.

New vectors are not inserted into hnswlib on the ``add`` that brings them: a commit puts
them in the user's *write buffer*, searched exactly (numpy) beside the graph, so a fact
is searchable as soon as its unit of work commits. The buffer is folded into hnswlib
when the next unit of work starts, in a background thread: a write's DuckDB statements
run on one thread, so on a small machine the other core inserts into the graph
meanwhile (:meth:`VectorIndex.fold_soon`). The unit's own changes are applied only once
that fold is done, so a run of adds leaves no index work running between them. A buffer
past :data:`BUFFER_LIMIT` is folded at once, and every buffer is folded before an index
is saved, so a saved file always holds all the live vectors its sidecar lists; a crash
loses only the in-memory state, which the generation check rebuilds from DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import VectorIndexError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["HnswParams", "IndexRebuiltWarning", "VectorIndex"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

BUFFER_LIMIT = 1024
"""Vectors a user's write buffer may hold after a commit; past it they are folded into
hnswlib at once (an exact scan of the buffer is part of every search)."""

FOLD_CHUNK = 32
"""Vectors inserted into hnswlib per hold of the index lock by a background fold, so a
search from another thread waits for one chunk at most."""


class IndexRebuiltWarning(UserWarning):
    """A saved index was damaged or unreadable and has been rebuilt from the store."""


@dataclass(frozen=True)
class HnswParams:
    """hnswlib settings; the defaults come from the ef/M sweep in ``benchmarks/``.

    ``python -m benchmarks recall --real 100000``: on 100k MiniLM vectors of look-alike
    facts, M=16 reaches recall@10 0.949 at ef 64, 0.980 at ef 160 and 0.988 at ef 200
    (p50 0.28 ms per query); M=32 needs ef 128 for 0.983 and builds 25% slower. ef_search
    is a query-time setting, so stores built earlier get it too.
    """

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 200
    initial_capacity: int = 256


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_key(user_id: str) -> str:
    """A file-name-safe, fixed-length key for a user id."""
    return hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:20]


class _UserIndex:
    """One user's hnswlib index plus the bookkeeping hnswlib does not do.

    It also keeps its own float32 copy of the vectors (``matrix``, rows by ``row_of``):
    hybrid search needs the cosine of the lexical-only candidates on every query, and
    hnswlib's ``get_items`` costs several microseconds per vector where a numpy gather
    costs nanoseconds. The copy is about as large as the vectors inside hnswlib.
    """

    def __init__(self, dim: int, params: HnswParams, capacity: int) -> None:
        import hnswlib
        import numpy as np

        self.dim = dim
        self.params = params
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(
            max_elements=max(capacity, params.initial_capacity),
            ef_construction=params.ef_construction,
            M=params.m,
            allow_replace_deleted=True,
        )
        self.index.set_ef(params.ef_search)
        self.live: set[int] = set()
        self.deleted: set[int] = set()
        self.generation = 0
        self.dirty = False
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.rows = 0
        self.row_of: dict[int, int] = {}
        # live ids whose vectors are in ``matrix`` but not yet in the hnswlib graph
        self.buffered: dict[int, None] = {}
        self._buffer_view: tuple[list[int], Any] | None = None

    def keep_copies(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Record the vectors of ``ids`` in the numpy copy (latest row wins)."""
        import numpy as np

        end = self.rows + len(ids)
        if end > len(self.matrix):
            grown = np.zeros((max(end, 2 * len(self.matrix), 64), self.dim), dtype=np.float32)
            grown[: self.rows] = self.matrix[: self.rows]
            self.matrix = grown
        self.matrix[self.rows : end] = vectors
        self.row_of.update(zip((int(i) for i in ids), range(self.rows, end), strict=True))
        self.rows = end
        self._buffer_view = None  # it may view the matrix this replaced

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Insert vectors into the hnswlib graph now (building an index)."""
        if not len(ids):
            return
        self._insert(ids, vectors, num_threads=-1)
        self.keep_copies(ids, vectors)
        self.live.update(ids)
        self.dirty = True

    def _insert(self, ids: Sequence[int], vectors: np.ndarray, *, num_threads: int) -> None:
        needed = len(self.live) + len(self.deleted) + len(ids)
        capacity = self.index.get_max_elements()
        if needed > capacity:
            self.index.resize_index(max(needed, capacity * 2))
        reuse = [i for i in ids if i in self.deleted]
        for fact_id in reuse:
            self.index.unmark_deleted(fact_id)
            self.deleted.discard(fact_id)
        self.index.add_items(vectors, list(ids), num_threads=num_threads,
                             replace_deleted=False)

    def buffer(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Make vectors live through the write buffer (searched exactly until folded)."""
        if not len(ids):
            return
        self.keep_copies(ids, vectors)
        for fact_id in ids:
            self.buffered[int(fact_id)] = None
        self.live.update(int(i) for i in ids)
        self._buffer_view = None
        self.dirty = True

    def fold(self, ids: Sequence[int] | None = None, *, num_threads: int = -1) -> int:
        """Insert buffered vectors (all, or those of ``ids`` still buffered) into the
        graph; returns how many were folded."""
        wanted = list(self.buffered) if ids is None else [i for i in ids if i in self.buffered]
        if not wanted:
            return 0
        self._insert(wanted, self.matrix[[self.row_of[i] for i in wanted]],
                     num_threads=num_threads)
        for fact_id in wanted:
            del self.buffered[fact_id]
        self._buffer_view = None
        return len(wanted)

    def remove(self, ids: Sequence[int]) -> None:
        for fact_id in ids:
            if fact_id in self.buffered:
                del self.buffered[fact_id]
                self.live.discard(fact_id)
                self._buffer_view = None
                self.dirty = True
            elif fact_id in self.live:
                self.index.mark_deleted(fact_id)
                self.live.discard(fact_id)
                self.deleted.add(fact_id)
                self.dirty = True

    def _buffer_matrix(self) -> tuple[list[int], Any]:
        """The buffered ids and their rows of ``matrix`` (a view when contiguous)."""
        if self._buffer_view is None:
            ids = list(self.buffered)
            rows = [self.row_of[i] for i in ids]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                block = self.matrix[rows[0] : rows[0] + len(rows)]
            else:
                block = self.matrix[rows]
            self._buffer_view = (ids, block)
        return self._buffer_view

    def search(self, vector: np.ndarray, k: int, ef: int | None) -> tuple[list[int], list[float]]:
        count = len(self.live)
        if count == 0 or k <= 0:
            return [], []
        k = min(k, count)
        in_graph = count - len(self.buffered)
        ids, sims = self._graph_search(vector, min(k, in_graph), ef) if in_graph else ([], [])
        if not self.buffered:
            return ids, sims
        import numpy as np

        buffered, block = self._buffer_matrix()
        exact = block @ np.asarray(vector, np.float32).reshape(-1)
        scores = np.concatenate([np.asarray(sims, np.float64), exact.astype(np.float64)])
        best = np.argsort(-scores, kind="stable")[:k]
        every = ids + buffered
        return [every[i] for i in best], [float(scores[i]) for i in best]

    def _graph_search(self, vector: np.ndarray, k: int,
                      ef: int | None) -> tuple[list[int], list[float]]:
        self.index.set_ef(max(ef or self.params.ef_search, k))
        try:
            labels, distances = self.index.knn_query(vector, k=k)
        except RuntimeError:
            # hnswlib can fail to gather k results on tiny, heavily-deleted graphs (or
            # graphs of many equal vectors): a wider search, then the exact one.
            self.index.set_ef(max(len(self.live), 2 * k))
            try:
                labels, distances = self.index.knn_query(vector, k=k)
            except RuntimeError:
                return self.exact(vector, k, graph_only=True)
        return [int(x) for x in labels[0]], [1.0 - float(d) for d in distances[0]]

    def exact(self, vector: np.ndarray, k: int, *,
              graph_only: bool = False) -> tuple[list[int], list[float]]:
        """The ``k`` live vectors closest to ``vector`` by exact inner product over the
        numpy copy (hnswlib's answer when it cannot give one); ``graph_only`` leaves out
        the buffered ones (which the caller scores itself)."""
        import numpy as np

        ids = sorted(self.live.difference(self.buffered) if graph_only else self.live)
        sims = self.matrix[[self.row_of[i] for i in ids]] @ np.asarray(vector, np.float32)
        best = np.argsort(-sims, kind="stable")[:k]
        return [ids[i] for i in best], [float(sims[i]) for i in best]


class VectorIndex:
    """Per-user hnswlib indexes kept consistent with the store.

    ``load_vectors(user_id)`` returns that user's current ``(ids, matrix)`` and
    ``store_generation(user_id)`` the store's generation for the user: both are
    callbacks into the store so the index never needs SQL of its own.
    ``directory=None`` keeps indexes in memory only (for ``:memory:`` stores).
    """

    def __init__(
        self,
        directory: Path | None,
        dim: int,
        *,
        load_vectors: Callable[[str], tuple[list[int], np.ndarray]],
        store_generation: Callable[[str], int],
        params: HnswParams | None = None,
        max_loaded: int = 512,
    ) -> None:
        self.directory = directory
        self.dim = dim
        self.params = params or HnswParams()
        self._load_vectors = load_vectors
        self._store_generation = store_generation
        self._loaded: OrderedDict[str, _UserIndex] = OrderedDict()
        self._max_loaded = max_loaded
        self._lock = threading.RLock()
        self._fold_lock = threading.Lock()  # guards _folding only
        self._folding: tuple[threading.Thread, threading.Event] | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    # ---- paths -----------------------------------------------------------------------

    def _paths(self, user_id: str) -> tuple[Path, Path]:
        assert self.directory is not None
        key = user_key(user_id)
        return self.directory / f"{key}.hnsw", self.directory / f"{key}.json"

    # ---- loading ---------------------------------------------------------------------

    def _get(self, user_id: str) -> _UserIndex:
        with self._lock:
            index = self._loaded.get(user_id)
            if index is not None:
                self._loaded.move_to_end(user_id)
                return index
            index = self._load_or_build(user_id)
            self._loaded[user_id] = index
            while len(self._loaded) > self._max_loaded:
                evicted_user, evicted = self._loaded.popitem(last=False)
                if evicted.dirty:
                    self._save_one(evicted_user, evicted)
            return index

    def _load_or_build(self, user_id: str) -> _UserIndex:
        generation = self._store_generation(user_id)
        if self.directory is not None:
            loaded = self._try_load(user_id, generation)
            if loaded is not None:
                return loaded
        return self._build(user_id, generation)

    def _try_load(self, user_id: str, generation: int) -> _UserIndex | None:
        data_path, meta_path = self._paths(user_id)
        if not meta_path.exists() and not data_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT_VERSION or meta.get("dim") != self.dim:
                log.info("index for %s has an old format; rebuilding", user_id)
                return None
            if int(meta["generation"]) != generation:
                log.info("index for %s is stale (%s != %s); rebuilding",
                         user_id, meta["generation"], generation)
                return None
            if _file_digest(data_path) != meta["digest"]:
                raise ValueError("digest mismatch")
            index = _UserIndex(self.dim, self.params, int(meta["capacity"]))
            index.index.load_index(str(data_path), max_elements=int(meta["capacity"]))
            index.index.set_ef(self.params.ef_search)
            index.live = set(meta["live"])
            index.deleted = set(meta["deleted"])
            index.generation = generation
            ids, vectors = self._load_vectors(user_id)
            if set(ids) != index.live:
                log.info("index for %s does not hold the store's current facts; rebuilding",
                         user_id)
                return None
            index.keep_copies(ids, vectors)
            return index
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            message = (
                f"vector index for user {user_id!r} at {data_path} is damaged ({exc}); "
                "rebuilding it from the store"
            )
            log.warning(message)
            warnings.warn(message, IndexRebuiltWarning, stacklevel=4)
            return None

    def _build(self, user_id: str, generation: int) -> _UserIndex:
        ids, vectors = self._load_vectors(user_id)
        index = _UserIndex(self.dim, self.params, len(ids) + 16)
        index.add(ids, vectors)
        index.generation = generation
        index.dirty = bool(ids) or self.directory is not None
        return index

    # ---- updates ---------------------------------------------------------------------

    def apply(
        self,
        user_id: str,
        generation: int,
        *,
        add_ids: Sequence[int] = (),
        add_vectors: np.ndarray | None = None,
        remove_ids: Sequence[int] = (),
    ) -> None:
        """Apply one committed store change to a user's index: removals at once, new
        vectors into the write buffer (searchable from now on)."""
        self.wait_for_fold()
        with self._lock:
            index = self._loaded.get(user_id)
            if index is None:
                # Not in memory: the next search loads it and sees the new generation.
                return
            if index.generation + 1 != generation:
                # Missed an update somewhere: trust the store, not the cache.
                self._loaded.pop(user_id, None)
                return
            try:
                index.remove(remove_ids)
                if add_ids:
                    assert add_vectors is not None
                    index.buffer(add_ids, add_vectors)
                if len(index.buffered) > BUFFER_LIMIT:
                    index.fold()
            except RuntimeError as exc:
                self._loaded.pop(user_id, None)
                raise VectorIndexError(f"cannot update the index of {user_id!r}: {exc}") from exc
            index.generation = generation

    # ---- folding the write buffers -----------------------------------------------------

    def fold_soon(self) -> None:
        """Start folding every write buffer into hnswlib in a background thread.

        Called when a unit of work starts: its DuckDB statements run on one thread, so the
        fold uses a core the write leaves idle. Never blocks: when another thread holds
        the index (a search, or a load that reads the store, whose lock the caller may
        hold) it does nothing, and the buffers wait for a later chance.
        """
        with self._fold_lock:
            if self._folding is not None and self._folding[0].is_alive():
                return
            if not self._lock.acquire(blocking=False):
                return
            try:
                work = [(user, index, list(index.buffered))
                        for user, index in self._loaded.items() if index.buffered]
                if not work:
                    return
                hurry = threading.Event()
                thread = threading.Thread(target=self._fold, args=(work, hurry), daemon=True,
                                          name="memengine-index-fold")
                thread.start()
                self._folding = (thread, hurry)
            except Exception as exc:  # no thread to be had: the buffers wait, the write goes on
                log.warning("cannot start folding the write buffers (%s)", exc)
            finally:
                self._lock.release()

    def _fold(self, work: list[tuple[str, _UserIndex, list[int]]],
              hurry: threading.Event) -> None:
        """The background fold: chunk by chunk on one hnswlib thread, all at once with
        every thread when someone waits for it."""
        for user_id, index, ids in work:
            for start in range(0, len(ids), FOLD_CHUNK):
                with self._lock:
                    if self._loaded.get(user_id) is not index:
                        break  # dropped or rebuilt meanwhile: nothing of ours to fold
                    try:
                        if hurry.is_set():
                            index.fold(ids[start:], num_threads=-1)
                            break
                        index.fold(ids[start : start + FOLD_CHUNK], num_threads=1)
                    except Exception as exc:  # half-folded: only a rebuild is sure
                        log.warning("cannot fold the write buffer of %r into its index (%s);"
                                    " it is rebuilt from the store", user_id, exc)
                        self._loaded.pop(user_id, None)
                        break

    def wait_for_fold(self) -> None:
        """Let a background fold finish (hurried onto every core) before going on."""
        with self._fold_lock:
            folding, self._folding = self._folding, None
        if folding is not None:
            folding[1].set()
            folding[0].join()

    def fold_all(self) -> None:
        """Fold every write buffer into hnswlib now."""
        self.wait_for_fold()
        with self._lock:
            for index in self._loaded.values():
                index.fold()

    def search(
        self, user_id: str, vector: np.ndarray, k: int, *, ef: int | None = None
    ) -> tuple[list[int], list[float]]:
        """Top-k current fact ids of one user by cosine similarity, best first."""
        with self._lock:
            return self._get(user_id).search(vector, k, ef)

    def vectors(self, user_id: str, ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """Stored vectors of those ``ids`` that are current in the user's index.

        Hybrid search uses it to get the cosine of lexical-only candidates without a
        DuckDB round trip. Returns the ids found (in the given order) and their rows.
        """
        import numpy as np

        with self._lock:
            index = self._get(user_id)
            live, row_of = index.live, index.row_of
            found = [i for i in map(int, ids) if i in live]
            if not found:
                return [], np.zeros((0, self.dim), dtype=np.float32)
            return found, index.matrix[[row_of[i] for i in found]]

    def size(self, user_id: str) -> int:
        with self._lock:
            return len(self._get(user_id).live)

    def ids(self, user_id: str) -> set[int]:
        """The fact ids the user's index holds (to check it against the store)."""
        with self._lock:
            return set(self._get(user_id).live)

    def forget(self, user_id: str) -> None:
        """Drop a user's index from memory and disk (after a purge)."""
        with self._lock:
            self._loaded.pop(user_id, None)
            if self.directory is not None:
                for path in self._paths(user_id):
                    path.unlink(missing_ok=True)

    def invalidate(self, user_id: str) -> None:
        """Drop a user's loaded index so the next search rebuilds or reloads it."""
        with self._lock:
            self._loaded.pop(user_id, None)

    # ---- persistence -----------------------------------------------------------------

    def _save_one(self, user_id: str, index: _UserIndex) -> None:
        if self.directory is None:
            index.dirty = False
            return
        try:
            index.fold()  # the file holds every live vector its sidecar lists
        except Exception as exc:  # half-folded: only a rebuild is sure; the file stays stale
            log.warning("cannot fold the write buffer of %r into its index (%s); it is "
                        "rebuilt from the store", user_id, exc)
            if self._loaded.get(user_id) is index:
                self._loaded.pop(user_id)
            return
        data_path, meta_path = self._paths(user_id)
        tmp_data = data_path.with_suffix(".hnsw.tmp")
        index.index.save_index(str(tmp_data))
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "user_id": user_id,
            "dim": self.dim,
            "generation": index.generation,
            "capacity": index.index.get_max_elements(),
            "live": sorted(index.live),
            "deleted": sorted(index.deleted),
            "digest": _file_digest(tmp_data),
        }
        tmp_meta = meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta))
        tmp_data.replace(data_path)
        tmp_meta.replace(meta_path)
        index.dirty = False

    def save(self) -> None:
        """Write every changed index to disk (their write buffers folded first)."""
        self.wait_for_fold()
        with self._lock:
            for user_id, index in list(self._loaded.items()):
                if index.dirty:
                    self._save_one(user_id, index)
