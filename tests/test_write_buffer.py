"""The vector index's write buffer: new vectors are searched exactly beside the hnswlib
graph until a later unit of work folds them in, with the same answers all along."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine import Memory
from engine.retrieval import index as index_module
from engine.retrieval.index import HnswParams, VectorIndex, _UserIndex


def _unit_vectors(n: int, dim: int = 32, seed: int = 3) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _loaded(memory: Memory, user: str) -> _UserIndex:
    return memory.index._loaded[user]


def test_a_fact_is_searchable_from_the_buffer_as_soon_as_add_returns(
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory()
    memory.add([f"filler fact {i} about gardening" for i in range(30)], user_id="u")
    memory.search("gardening", user_id="u")  # the index is loaded (built from the store)
    (new_id,) = memory.add("a zebra crossed the road", user_id="u").fact_ids
    index = _loaded(memory, "u")
    assert list(index.buffered) == [new_id]  # in the buffer, not yet in the graph
    assert memory.search("zebra crossed", user_id="u", k=1)[0].id == new_id
    assert memory.index.ids("u") == {f.id for f in memory.get_all("u")}
    memory.add("one more fact about a kettle", user_id="u")  # the next unit folds
    assert new_id not in index.buffered
    assert new_id in index.index.get_ids_list()
    assert memory.search("zebra crossed", user_id="u", k=1)[0].id == new_id


def test_a_buffered_fact_deleted_leaves_the_buffer_and_never_reaches_the_graph() -> None:
    vectors = _unit_vectors(12)
    index = VectorIndex(None, 32, load_vectors=lambda _u: (list(range(1, 11)), vectors[:10]),
                        store_generation=lambda _u: 0)
    index.search("u", vectors[0], 3)  # loaded: ids 1..10 in the graph
    index.apply("u", 1, add_ids=[11, 12], add_vectors=vectors[10:])
    assert list(index._loaded["u"].buffered) == [11, 12]
    assert index.search("u", vectors[11], 1)[0] == [12]
    index.apply("u", 2, remove_ids=[12, 3])  # one buffered, one in the graph
    graph = index._loaded["u"]
    assert list(graph.buffered) == [11] and 12 not in graph.index.get_ids_list()
    ids, _ = index.search("u", vectors[11], 12)
    assert sorted(ids) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    index.fold_all()
    assert index.search("u", vectors[11], 12)[0] == ids and not graph.buffered


def test_delete_and_update_of_new_facts_through_memory(
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory()
    memory.add([f"filler fact {i} about gardening" for i in range(30)], user_id="u")
    memory.search("gardening", user_id="u")
    doomed, kept = memory.add(["a zebra crossed the road", "a zebra ate grass"],
                              user_id="u").fact_ids
    assert set(_loaded(memory, "u").buffered) == {doomed, kept}
    memory.delete(doomed)
    query = memory.embedder.embed_query("a zebra crossed the road")
    ids, _ = memory.index.search("u", query, 50)
    assert doomed not in ids and kept in ids
    newer = memory.update(kept, "a zebra ate hay").id
    ids, _ = memory.index.search("u", memory.embedder.embed_query("a zebra ate grass"), 50)
    assert kept not in ids and newer in ids
    assert newer in _loaded(memory, "u").buffered
    assert [h.id for h in memory.search("zebra hay", user_id="u", k=1)] == [newer]
    memory.delete(newer)
    assert memory.index.ids("u") == {f.id for f in memory.get_all("u")}
    assert all(h.id != newer for h in memory.search("zebra hay", user_id="u", k=50))


def test_searches_give_the_same_answers_before_and_after_a_fold_as_an_immediate_insert() -> None:
    vectors = _unit_vectors(400)
    ids = list(range(1, 401))
    immediate = _UserIndex(32, HnswParams(), 64)
    immediate.add(ids, vectors)
    buffered = _UserIndex(32, HnswParams(), 64)
    buffered.add(ids[:300], vectors[:300])
    buffered.buffer(ids[300:], vectors[300:])
    buffered.remove([305, 17])
    immediate.remove([305, 17])
    queries = _unit_vectors(20, seed=11)
    before = [buffered.search(q, 10, None) for q in queries]
    assert len(buffered.buffered) == 99
    assert buffered.fold() == 99 and not buffered.buffered
    after = [buffered.search(q, 10, None) for q in queries]
    expected = [immediate.search(q, 10, None) for q in queries]
    for (b_ids, b_sims), (a_ids, a_sims), (e_ids, e_sims) in zip(before, after, expected,
                                                                 strict=True):
        assert b_ids == a_ids == e_ids
        assert np.allclose(b_sims, e_sims, atol=1e-5) and np.allclose(a_sims, e_sims, atol=1e-5)
    assert buffered.live == immediate.live


def test_a_buffer_past_its_limit_is_folded_at_once(
    make_memory: Callable[..., Memory], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index_module, "BUFFER_LIMIT", 50)
    memory = make_memory()
    memory.add("seed fact", user_id="u")
    memory.search("seed", user_id="u")
    memory.add([f"small batch {i}" for i in range(40)], user_id="u")
    assert len(_loaded(memory, "u").buffered) == 40
    memory.index.wait_for_fold()
    memory.add([f"big batch {i}" for i in range(60)], user_id="u")  # 60 > 50 once applied
    assert not _loaded(memory, "u").buffered
    assert memory.index.size("u") == 101
    assert memory.search("big batch 59", user_id="u", k=1)[0].text == "big batch 59"


def test_a_saved_index_holds_its_buffer_and_a_crash_with_one_unfolded_rebuilds(
    make_memory: Callable[..., Memory], db_path: Path,
) -> None:
    memory = make_memory()
    first = memory.add([f"old fact {i} about a bicycle" for i in range(20)],
                       user_id="u").fact_ids
    memory.search("bicycle", user_id="u")
    buffered = memory.add("a walrus on the beach", user_id="u").fact_ids[0]
    assert _loaded(memory, "u").buffered
    memory.close()  # save folds the buffer first: a clean reopen loads the file as is
    reopened = make_memory()
    assert reopened.search("walrus beach", user_id="u", k=1)[0].id == buffered
    assert not _loaded(reopened, "u").buffered and reopened.index.size("u") == 21
    # Now crash with a buffered, unfolded vector and a deleted one: nothing is saved.
    reopened.delete(first[0])
    crashed = reopened.add("a narwhal in the fjord", user_id="u").fact_ids[0]
    assert list(_loaded(reopened, "u").buffered) == [crashed]
    reopened.index.wait_for_fold()
    reopened.store.close()  # no index.save(): the process "dies" here
    reopened._closed = True
    again = make_memory()
    assert again.search("narwhal fjord", user_id="u", k=1)[0].id == crashed
    current = {f.id for f in again.get_all("u")}
    assert again.index.ids("u") == current and first[0] not in current
    assert len(current) == 21


def test_concurrent_searches_while_adds_fold_see_every_committed_fact(
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory()
    memory.add([f"base fact {i} about the sea" for i in range(200)], user_id="u")
    memory.search("sea", user_id="u")
    committed: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                known = list(committed)
                if known:
                    target = memory.get(known[-1])
                    hits = memory.index.search("u", memory.embedder.embed_query(target.text),
                                               5)[0]
                    assert known[-1] in hits, (known[-1], hits)
                memory.search("batch fact", user_id="u", k=5)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for batch in range(15):
            ids = memory.add([f"batch {batch} unique token q{batch}x{i}" for i in range(40)],
                             user_id="u").fact_ids
            committed.extend(ids)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert memory.index.ids("u") == {f.id for f in memory.get_all("u")}
    memory.index.fold_all()
    assert not _loaded(memory, "u").buffered


def test_fold_soon_never_waits_for_a_busy_index() -> None:
    """A unit of work starts holding the store, and a search may hold the index while it
    loads from the store: the fold must step aside rather than wait (a deadlock)."""
    vectors = _unit_vectors(10)
    index = VectorIndex(None, 32, load_vectors=lambda _u: (list(range(1, 11)), vectors),
                        store_generation=lambda _u: 0)
    index.search("u", vectors[0], 3)
    index.apply("u", 1, add_ids=[11], add_vectors=_unit_vectors(1, seed=5))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with index._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    index.fold_soon()  # returns at once: the index is busy
    assert index._folding is None
    release.set()
    holder.join()
    index.fold_soon()
    index.wait_for_fold()
    assert not index._loaded["u"].buffered and index.size("u") == 11


def test_a_fold_that_cannot_start_a_thread_leaves_the_write_alone(
    make_memory: Callable[..., Memory], monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = make_memory()
    memory.add("seed fact", user_id="u")
    memory.search("seed", user_id="u")
    first = memory.add("a zebra crossed the road", user_id="u").fact_ids[0]

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    (second,) = memory.add("a walrus on the beach", user_id="u").fact_ids
    assert memory.index._folding is None
    assert set(_loaded(memory, "u").buffered) == {first, second}
    assert memory.search("walrus beach", user_id="u", k=1)[0].id == second
    monkeypatch.undo()
    memory.add("a kettle on the stove", user_id="u")
    memory.index.wait_for_fold()
    assert first not in _loaded(memory, "u").buffered
    assert memory.index.ids("u") == {f.id for f in memory.get_all("u")}


def test_a_fold_that_fails_while_saving_leaves_no_file_and_the_index_is_rebuilt(
    make_memory: Callable[..., Memory], monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = make_memory()
    memory.add([f"old fact {i} about a bicycle" for i in range(20)], user_id="u")
    memory.search("bicycle", user_id="u")
    buffered = memory.add("a walrus on the beach", user_id="u").fact_ids[0]
    memory.index.wait_for_fold()
    assert list(_loaded(memory, "u").buffered) == [buffered]

    def failing_fold(self: _UserIndex, *args: object, **kwargs: object) -> None:
        raise RuntimeError("hnswlib could not grow the graph")  # say, out of memory

    monkeypatch.setattr(_UserIndex, "fold", failing_fold)
    memory.index.save()  # logs the failure, drops the half-folded index, saves nothing
    assert "u" not in memory.index._loaded
    monkeypatch.undo()
    assert memory.search("walrus beach", user_id="u", k=1)[0].id == buffered  # rebuilt
    memory.close()
    reopened = make_memory()
    assert reopened.search("walrus beach", user_id="u", k=1)[0].id == buffered
    assert reopened.index.ids("u") == {f.id for f in reopened.get_all("u")}
