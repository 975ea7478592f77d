"""Embedders: turn texts into L2-normalised float32 vectors.

Two implementations share one small protocol:

* :class:`SentenceTransformerEmbedder` - the real one, a sentence-transformers
  folder on disk (the bundled all-MiniLM-L6-v2 by default), loaded lazily on
  first use, on CUDA when available or the device you name.
* :class:`HashingEmbedder` - deterministic feature hashing with no model at all.
  It exists for fast unit tests and as a dependency-free fallback; its vectors
  only capture shared words, not meaning.

A store records ``identity`` and ``dim`` and refuses an embedder that differs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engine.errors import InvalidInputError, ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Embedder", "HashingEmbedder", "QUANTIZED_SUFFIX", "SentenceTransformerEmbedder",
           "load_embedder"]

log = logging.getLogger(__name__)

QUANTIZED_SUFFIX = ":int8"
"""Appended to a model name (``minilm:int8``) for its int8 ONNX variant."""

_TOKEN = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """What the engine needs from an embedder."""

    @property
    def identity(self) -> str:
        """A stable name for the model and its settings, stored with the data."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed many texts: a float32 array of shape (len(texts), dim), rows of norm 1."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one search query: a float32 vector of shape (dim,) and norm 1."""
        ...


class HashingEmbedder:
    """Deterministic signed feature hashing of words and word bigrams.

    Same text, same vector, on every machine; texts sharing words are close.
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise InvalidInputError("HashingEmbedder dim must be at least 8")
        self._dim = dim

    @property
    def identity(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = [w.casefold() for w in _TOKEN.findall(text)]
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self._dim] += 1.0 if (value >> 63) & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm == 0.0:
                out[row, 0] = 1.0
            else:
                out[row] /= norm
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def _read_dimension(folder: Path) -> int | None:
    """The output dimension of a sentence-transformers folder, without loading it."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    dim: int | None = None
    for module in modules:
        config = folder / module.get("path", "") / "config.json"
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        for key in ("out_features", "word_embedding_dimension"):
            if isinstance(data.get(key), int):
                dim = int(data[key])
    return dim


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a folder on disk, loaded on first use.

    ``device`` is ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"``,
    ``"cuda"`` or any torch device string. Single-query embeddings are cached
    (LRU) because applications repeat queries.

    ``backend`` is ``"auto"`` (default), ``"onnx"`` or ``"torch"``. On CPU, ``auto``
    runs the same weights through ONNX Runtime (:mod:`engine.backends.onnx_encoder`: exported
    once into the model cache, vectors within cosine 0.9999 of torch's, several times
    faster per query) and falls back to torch when that is not possible; on CUDA it
    uses torch. ``"onnx"`` makes a failed ONNX setup an error instead.

    ``quantize=True`` encodes stored and query texts alike with an int8 copy of the
    ONNX export (see :mod:`engine.backends.onnx_encoder`); it always runs on ONNX
    Runtime and has its own identity (``...:int8``), so a store made with the float
    model keeps refusing it and vice versa. ``load_embedder("minilm:int8")`` makes one.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        query_cache_size: int = 1024,
        backend: str = "auto",
        quantize: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not (self.folder / "modules.json").is_file() and not (
            self.folder / "config.json"
        ).is_file():
            raise ModelError(
                f"{self.folder} is not a sentence-transformers folder (no modules.json or "
                "config.json). Pass a folder saved by SentenceTransformer.save(), or a model "
                "name from `memengine models list`."
            )
        self.name = name or self.folder.name
        self.device = device
        self.batch_size = batch_size
        self._dim = _read_dimension(self.folder)
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = query_cache_size
        if backend not in ("auto", "onnx", "torch"):
            raise InvalidInputError(f"backend must be auto, onnx or torch, not {backend!r}")
        if quantize and backend == "torch":
            raise InvalidInputError("an int8 embedder runs on ONNX Runtime: use backend "
                                    "auto or onnx with quantize")
        self.quantize = quantize
        self.backend = "onnx" if quantize else backend
        self._onnx: Any = None
        self._onnx_checked = backend == "torch"

    @property
    def identity(self) -> str:
        suffix = QUANTIZED_SUFFIX if self.quantize else ""
        return f"sentence-transformers:{self.name}{suffix}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._load().get_sentence_embedding_dimension())
        return self._dim

    def _resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                try:
                    import transformers
                    from sentence_transformers import SentenceTransformer

                    transformers.utils.logging.disable_progress_bar()

                    self._model = SentenceTransformer(
                        str(self.folder), device=self._resolve_device(), local_files_only=True
                    )
                except Exception as exc:  # translate whatever the loader raised
                    raise ModelError(f"cannot load embedder from {self.folder}: {exc}") from exc
            return self._model

    def _onnx_encoder(self) -> Any:
        """The ONNX Runtime encoder, or None when this embedder runs on torch."""
        if self._onnx_checked:
            return self._onnx
        with self._load_lock:
            if not self._onnx_checked:
                self._onnx = self._make_onnx()
                self._onnx_checked = True
        return self._onnx

    def _make_onnx(self) -> Any:
        if self.backend == "auto" and self._resolve_device() != "cpu":
            return None
        from engine.backends import models
        from engine.backends.onnx_encoder import OnnxEncoder, UnsupportedModelError

        try:
            return OnnxEncoder(self.folder, models.model_cache_dir(), quantize=self.quantize)
        except (UnsupportedModelError, OSError, RuntimeError) as exc:
            if self.backend == "onnx":
                raise ModelError(f"cannot use the ONNX backend for {self.folder}: {exc}") from exc
            log.info("ONNX backend unavailable for %s (%s); using torch", self.folder, exc)
            return None

    @property
    def resolved_backend(self) -> str:
        """``"onnx"`` or ``"torch"`` (sets the backend up)."""
        return "onnx" if self._onnx_encoder() is not None else "torch"

    @property
    def resolved_device(self) -> str:
        """The device the model runs on (loads the model)."""
        if self._onnx_encoder() is not None:
            return "cpu"
        return str(self._load().device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoder = self._onnx_encoder()
        if encoder is not None:
            return encoder.encode(list(texts), batch_size=self.batch_size)
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        encoder = self._onnx_encoder()
        vector = encoder.encode_one(text) if encoder is not None else self.embed([text])[0]
        vector.setflags(write=False)
        self._cache[text] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return vector


def load_embedder(
    spec: str | Embedder | None = None, *, device: str = "auto", backend: str = "auto"
) -> Embedder:
    """Build an embedder from a manifest name, a folder path, ``"hashing"`` or an instance.

    ``None`` means the default embedder from the model manifest (the bundled MiniLM).
    A name or folder ending in ``:int8`` (``minilm:int8``) is that model's int8 ONNX
    variant.
    """
    if spec is not None and not isinstance(spec, str):
        if isinstance(spec, Embedder):
            return spec
        raise InvalidInputError(
            f"embedder must be a name, a folder path or an Embedder, got {type(spec).__name__}"
        )
    if spec is not None and (spec == "hashing" or spec.startswith("hashing-")):
        dim = int(spec.split("-")[-1]) if spec.startswith("hashing-v1-") else 256
        return HashingEmbedder(dim)
    from engine.backends import models

    if spec is None:
        spec = models.default_model("embedder").name
    quantize = spec.endswith(QUANTIZED_SUFFIX)
    if quantize:
        spec = spec[: -len(QUANTIZED_SUFFIX)]
    path = models.resolve_model_path(spec, "sentence-transformers")
    try:
        name = models.get_spec(spec).name
    except ModelError:
        name = path.name
    return SentenceTransformerEmbedder(path, name=name, device=device, backend=backend,
                                       quantize=quantize)
