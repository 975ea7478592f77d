"""Faults and concurrency: each fault gives a clear EngineError, loses no acknowledged
data, and the store works again once the fault is gone."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from benchmarks.crash_harness import scripted_extractor
from engine.backends.embed import HashingEmbedder
from engine.errors import ModelError, StoreError
from engine.extract import ExtractedFact, KnownFact, Turn
from engine.memory import Memory
from engine.retrieval.index import IndexRebuiltWarning

REPO = Path(__file__).resolve().parent.parent


class ExplodingExtractor:
    """An LM back-end that fails the way third-party code does (not an EngineError)."""

    identity = "exploding"
    show_known = False

    def extract(self, turns: list[Turn], known: Sequence[KnownFact] = ()) -> list[ExtractedFact]:
        raise RuntimeError("llama_decode returned -1")


class FailingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(64)
        self.broken = True

    def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
        if self.broken:
            raise RuntimeError("CUDA error: out of memory")
        return super().embed(texts)


def test_an_lm_that_crashes_keeps_the_message_pending_until_a_working_one_runs(
    make_memory: Callable[..., Memory],
) -> None:
    """Found: a non-engine exception from the extractor escaped ``add`` as itself."""
    broken = make_memory(extractor=ExplodingExtractor())
    result = broken.add("ana says tokZ", user_id="ana", infer=True)
    assert result.pending == result.message_ids and "RuntimeError" in result.errors[0]
    assert broken.status()["pending_messages"] == 1
    broken.close()
    fixed = make_memory(extractor=scripted_extractor())
    fixed.flush()
    assert [f.text for f in fixed.get_all("ana")] == ["User noted tokZ"]


def test_a_failing_embedder_is_a_model_error_and_stores_nothing(
    make_memory: Callable[..., Memory],
) -> None:
    """Found: the embedder's own exception escaped ``add`` and ``search`` as itself."""
    embedder = FailingEmbedder()
    memory = make_memory(embedder=embedder)
    with pytest.raises(ModelError, match="nothing was stored"):
        memory.add("I live in Porto", user_id="ana")
    assert memory.stats()["messages"] == 0
    embedder.broken = False
    memory.add("I live in Porto", user_id="ana")
    assert memory.search("Porto", user_id="ana")[0].text == "I live in Porto"


def test_a_damaged_database_file_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database" * 500)
    with pytest.raises(StoreError, match="not a valid DuckDB"):
        Memory(bad, embedder=HashingEmbedder(64))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "sidecar"])
def test_damaged_or_missing_index_files_are_rebuilt(
    make_memory: Callable[..., Memory], db_path: Path, damage: str
) -> None:
    memory = make_memory()
    memory.add([f"fact number {n}" for n in range(30)], user_id="ana")
    memory.search("fact", user_id="ana")  # load the index, so close saves it
    memory.close()
    index_dir = Path(str(db_path) + ".index")
    data = next(index_dir.glob("*.hnsw"))
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "garbage":
        data.write_bytes(b"\x00" * data.stat().st_size)
    elif damage == "delete":
        data.unlink()
    else:
        next(index_dir.glob("*.json")).write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuiltWarning)
        reopened = make_memory()
        assert reopened.search("fact number 7", user_id="ana")[0].text == "fact number 7"
    assert len(reopened.index.ids("ana")) == 30


def test_threads_adding_and_searching_at_once_lose_nothing(
    make_memory: Callable[..., Memory],
) -> None:
    memory = make_memory()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(20):
                memory.add(f"worker {worker} fact {n}", user_id=f"u{worker % 2}")
                hits = memory.search(f"worker {worker} fact {n}", user_id=f"u{worker % 2}", k=3)
                assert any(h.text == f"worker {worker} fact {n}" for h in hits)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for user in ("u0", "u1"):
        current = {f.id for f in memory.get_all(user)}
        assert len(current) == 60
        assert memory.index.ids(user) == current == memory.searcher.lexical.ids(user)


def test_a_second_process_gets_store_locked_with_the_fix(
    make_memory: Callable[..., Memory], db_path: Path
) -> None:
    """DuckDB lets one process write a file or several read it, never both: a read-only
    open beside a writer is refused too (found: the message advised exactly that)."""
    memory = make_memory()
    memory.add("held by this process", user_id="ana")
    code = ("import sys\nfrom engine.backends.embed import HashingEmbedder\n"
            "from engine.memory import Memory\nfrom engine.errors import StoreLockedError\n"
            "try:\n    Memory(sys.argv[1], embedder=HashingEmbedder(64), read_only="
            "sys.argv[2] == 'ro')\nexcept StoreLockedError as exc:\n    print(exc)\n")
    for mode in ("rw", "ro"):
        out = subprocess.run([sys.executable, "-c", code, str(db_path), mode], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert "open for writing in another process" in out and "server" in out
    memory.close()
    out = subprocess.run([sys.executable, "-c", code + "else:\n    print('opened')\n",
                          str(db_path), "ro"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "opened" in out
