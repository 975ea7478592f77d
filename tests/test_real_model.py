"""With the real bundled MiniLM: meaning, not just shared words, decides the ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import EmbedderMismatchError, Memory
from engine.backends.embed import HashingEmbedder, load_embedder

pytestmark = pytest.mark.model


def test_minilm_vectors_are_normalised_and_semantic(minilm) -> None:  # type: ignore[no-untyped-def]
    vectors = minilm.embed(["I drink coffee every morning", "My morning beverage is espresso",
                            "The train to Porto leaves at nine"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert minilm.identity == "sentence-transformers:minilm" and minilm.dim == 384
    query = minilm.embed_query("coffee")
    assert minilm.embed_query("coffee") is query  # cached
    assert np.allclose(query, minilm.embed(["coffee"])[0], atol=1e-6)


def test_story_with_minilm(minilm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Memory(tmp_path / "m.duckdb", embedder=minilm, infer=False) as memory:
        coffee = memory.add("I really love coffee in the morning", user_id="maria",
                            observed_at="2026-05-01").fact_ids[0]
        memory.add(["I live in Lisbon", "I work as a nurse"], user_id="maria",
                   observed_at="2026-05-01")
        memory.add("I love coffee too", user_id="joao", observed_at="2026-05-01")
        tea = memory.update(coffee, "I prefer green tea these days", valid_from="2026-05-31")
        now = memory.search("what does Maria drink?", user_id="maria", k=3)
        assert now[0].id == tea.id
        assert all(hit.user_id == "maria" for hit in now)
        then = memory.search("what does Maria drink?", user_id="maria", k=3, as_of="2026-05-10")
        assert then[0].id == coffee
        job = memory.search("where does she work?", user_id="maria", k=1)
        assert job[0].text == "I work as a nurse"


def test_store_made_with_minilm_refuses_the_hashing_embedder(minilm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    Memory(tmp_path / "m.duckdb", embedder=minilm).close()
    with pytest.raises(EmbedderMismatchError, match="minilm"):
        Memory(tmp_path / "m.duckdb", embedder=HashingEmbedder(384))


def test_load_embedder_by_name_and_by_folder(minilm) -> None:  # type: ignore[no-untyped-def]
    by_name = load_embedder("minilm", device="cpu")
    assert by_name.identity == "sentence-transformers:minilm"
    by_folder = load_embedder(str(minilm.folder), device="cpu")
    assert by_folder.dim == 384
