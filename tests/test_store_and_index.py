"""The store's identity checks and locking, and the index as a rebuildable cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine import EmbedderMismatchError, Memory, StoreError, StoreLockedError
from engine.backends.embed import HashingEmbedder
from engine.retrieval.index import IndexRebuiltWarning, user_key


def index_files(db_path: Path, user: str) -> tuple[Path, Path]:
    directory = Path(str(db_path) + ".index")
    key = user_key(user)
    return directory / f"{key}.hnsw", directory / f"{key}.json"


def test_store_refuses_another_embedder(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    make_memory(embedder=HashingEmbedder(64)).close()
    with pytest.raises(EmbedderMismatchError, match="hashing-v1-64"):
        make_memory(embedder=HashingEmbedder(32))


def test_read_only_open_of_a_missing_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="add something first"):
        Memory(tmp_path / "none.duckdb", embedder="hashing", read_only=True)


def test_store_locked_by_another_process(db_path: Path) -> None:
    Memory(db_path, embedder=HashingEmbedder(64)).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time, duckdb
            con = duckdb.connect({str(db_path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="another process"):
            Memory(db_path, embedder=HashingEmbedder(64))
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)


def _filled(make_memory, n: int = 40):  # type: ignore[no-untyped-def]
    memory = make_memory()
    ids = memory.add([f"fact number {i} about topic {i % 7}" for i in range(n)],
                     user_id="u").fact_ids
    return memory, ids


def test_index_is_saved_and_reused(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    memory, _ids = _filled(make_memory)
    expected = [h.id for h in memory.search("topic 3", user_id="u", k=5)]
    memory.close()
    data, meta = index_files(db_path, "u")
    assert data.exists() and meta.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load must not warn
        reopened = make_memory()
        assert [h.id for h in reopened.search("topic 3", user_id="u", k=5)] == expected


def test_corrupt_index_is_rebuilt_with_a_warning(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    memory, _ = _filled(make_memory)
    expected = [h.id for h in memory.search("topic 3", user_id="u", k=5)]
    memory.close()
    data, _ = index_files(db_path, "u")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    data.write_bytes(bytes(raw))
    reopened = make_memory()
    with pytest.warns(IndexRebuiltWarning, match="damaged"):
        hits = reopened.search("topic 3", user_id="u", k=5)
    assert [h.id for h in hits] == expected


def test_truncated_and_missing_index_files(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    memory, _ = _filled(make_memory)
    expected = [h.id for h in memory.search("topic 5", user_id="u", k=5)]
    memory.close()
    data, meta = index_files(db_path, "u")
    data.write_bytes(data.read_bytes()[:100])
    reopened = make_memory()
    with pytest.warns(IndexRebuiltWarning):
        assert [h.id for h in reopened.search("topic 5", user_id="u", k=5)] == expected
    reopened.close()
    data.unlink()
    meta.unlink()
    again = make_memory()
    assert [h.id for h in again.search("topic 5", user_id="u", k=5)] == expected


def test_stale_index_after_a_crash_is_rebuilt(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    memory, _ = _filled(make_memory)
    memory.close()  # index saved at this generation
    # A second process writes but "crashes" before saving its index.
    writer = make_memory()
    new_id = writer.add("brand new zebra fact", user_id="u").fact_ids[0]
    writer.store.close()  # no index.save(): simulates the crash
    writer._closed = True
    reopened = make_memory()
    assert reopened.search("zebra", user_id="u", k=1)[0].id == new_id


def test_ann_matches_exact_search_on_a_small_user(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory, _ = _filled(make_memory, n=200)
    _ids, matrix = memory.store.current_vectors("u")
    for query in ("topic 1", "fact number 150", "number 42 topic"):
        vector = memory.embedder.embed_query(query)
        _, ann = memory.index.search("u", vector, 10)
        exact = np.sort(matrix @ vector)[::-1][:10]
        # hashing vectors tie a lot, so compare scores rather than ids
        assert np.allclose(ann, exact, atol=1e-5)


def test_many_users_have_separate_indexes(make_memory, db_path) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    for user in range(30):
        memory.add([f"user {user} likes item {i}" for i in range(5)], user_id=f"user-{user}")
    for user in (0, 17, 29):
        hits = memory.search("likes item", user_id=f"user-{user}", k=10)
        assert len(hits) == 5 and all(h.user_id == f"user-{user}" for h in hits)
    memory.close()
    assert len(list(Path(str(db_path) + ".index").glob("*.hnsw"))) == 3  # only searched ones


def test_index_grows_past_its_initial_capacity(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    memory.add("seed", user_id="u")
    memory.search("seed", user_id="u")  # load the index, then grow it incrementally
    for batch in range(4):
        memory.add([f"grow {batch} {i}" for i in range(200)], user_id="u")
    assert memory.index.size("u") == 801
    assert memory.search("grow 3 199", user_id="u", k=1)[0].text == "grow 3 199"


def test_an_index_search_hnswlib_cannot_answer_falls_back_to_the_exact_one() -> None:
    """hnswlib raises "Cannot return the results in a contiguous 2D array" on some small
    graphs; the search answers exactly from the vectors' copy instead of failing."""
    import numpy as np

    from engine.retrieval.index import HnswParams, _UserIndex

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(30, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = _UserIndex(16, HnswParams(), 64)
    index.add(list(range(1, 31)), vectors)
    index.remove([1, 2, 3])
    expected = index.search(vectors[5], 5, None)

    class Refusing:
        """The hnswlib index as it behaves when it cannot gather k results."""

        def __init__(self, real: object) -> None:
            self.real = real

        def set_ef(self, ef: int) -> None:
            pass

        def knn_query(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Cannot return the results in a contiguous 2D array.")

    index.index = Refusing(index.index)  # type: ignore[assignment]
    ids, sims = index.search(vectors[5], 5, None)
    assert ids == expected[0]
    assert sims == pytest.approx(expected[1], abs=1e-5)
    assert not {1, 2, 3} & set(ids)
