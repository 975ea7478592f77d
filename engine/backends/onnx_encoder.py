"""A fast CPU path for sentence-transformers models: the same weights run by ONNX Runtime.

Query latency is dominated by one single-sentence encode. Through torch and
sentence-transformers that costs about 5-7 ms on 2 cores; the same network exported
to ONNX and run by ONNX Runtime, with the Rust ``tokenizers`` tokenizer and numpy
pooling, costs about 1-2 ms, and batches run several times faster too.

The export happens once, offline, from the model folder itself (``torch.onnx`` with
the TorchScript exporter, which needs the ``onnx`` package only at export time), and
is saved in the model cache under ``onnx/<folder name>-<key>/`` where the key hashes
the folder path and the weights' size and mtime, so a changed model is re-exported.
At export the ONNX vectors are checked against torch's on probe sentences; an export
that disagrees (cosine below :data:`MIN_AGREEMENT`) is refused and the caller stays on
torch. The model folder is never written to (its sha256 is checked by ``models``).

``quantize=True`` runs an int8 copy instead: ONNX Runtime's dynamic quantisation
(weights of the MatMul/Gemm nodes as int8 per output channel, activations quantised on
the fly) applied once to the float export and saved beside it as :data:`INT8_FILE`.
Per channel matters: per-tensor int8 weights moved MiniLM's vectors to a mean cosine
of 0.96 with the float ones, per channel to 0.99. Its vectors are not the float ones,
so an embedder using it has its own identity and its own stores; whether it is good
enough is judged by retrieval quality in ``benchmarks/``.

Only the usual pipeline is supported: ``Transformer`` then ``Pooling`` (mean or CLS)
then an optional ``Normalize``. Anything else raises :class:`UnsupportedModelError`, and
the embedder keeps using torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["INT8_FILE", "MIN_AGREEMENT", "OnnxEncoder", "UnsupportedModelError", "export_dir_for"]

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.9999
"""Lowest cosine between ONNX and torch vectors on the probe sentences at export."""

_PROBES = (
    "I love coffee in the morning.",
    "My sister moved to Lisbon last May and works as a nurse at the city hospital.",
    "what does maria drink?",
)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

INT8_FILE = "model-int8-per-channel.onnx"
"""The int8 copy's file name in the export folder (it names the quantisation settings)."""


class UnsupportedModelError(Exception):
    """The folder's pipeline or environment cannot use the ONNX path (use torch)."""


def _pipeline(folder: Path) -> tuple[str, bool, int]:
    """``(pooling, normalize, max_seq_length)`` of a plain sentence-transformers folder."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"no readable modules.json in {folder}") from exc
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedModelError(f"pipeline {kinds} is not Transformer-Pooling[-Normalize]")
    if modules[0].get("path", "") != "":
        raise UnsupportedModelError("the transformer is not at the folder's root")
    pooling_config = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    modes = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        pooling = "mean"
    elif modes == ["pooling_mode_cls_token"]:
        pooling = "cls"
    else:
        raise UnsupportedModelError(f"pooling {modes} is not mean or cls")
    max_len = 512
    try:
        bert_config = json.loads((folder / "sentence_bert_config.json").read_text())
        max_len = int(bert_config.get("max_seq_length") or max_len)
    except (OSError, ValueError):
        pass
    if not (folder / "tokenizer.json").is_file():
        raise UnsupportedModelError("no tokenizer.json (a fast tokenizer is needed)")
    return pooling, kinds[-1] == "Normalize", max_len


def export_dir_for(folder: Path, cache_dir: Path) -> Path:
    """Where the ONNX export of ``folder`` lives inside ``cache_dir``."""
    folder = folder.resolve()
    key = hashlib.sha1(str(folder).encode("utf-8"))
    for name in _WEIGHTS:
        weights = folder / name
        if weights.is_file():
            stat = weights.stat()
            key.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir / "onnx" / f"{folder.name}-{key.hexdigest()[:16]}"


class OnnxEncoder:
    """Encode texts with an ONNX export of a sentence-transformers folder."""

    def __init__(
        self,
        folder: Path,
        cache_dir: Path,
        *,
        threads: int | None = None,
        quantize: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.pooling, self.normalize, self.max_len = _pipeline(self.folder)
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise UnsupportedModelError(f"onnxruntime or tokenizers is missing ({exc})") from exc
        self.export_dir = export_dir_for(self.folder, cache_dir)
        model_path = self.export_dir / "model.onnx"
        if not model_path.is_file():
            self._export(model_path)
        if quantize:
            float_path, model_path = model_path, self.export_dir / INT8_FILE
            if not model_path.is_file():
                _quantize(float_path, model_path)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    # ---- export ----------------------------------------------------------------------

    def _export(self, model_path: Path) -> None:
        """Export the transformer to ONNX, check it against torch, save it atomically."""
        try:
            import onnx  # noqa: F401  (the TorchScript exporter needs it)
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise UnsupportedModelError(f"cannot export to ONNX here ({exc})") from exc
        log.info("exporting %s to ONNX (once) into %s", self.folder, model_path.parent)
        tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).eval()

        class _Wrapper(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        sample = tokenizer(list(_PROBES), return_tensors="pt", padding=True)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        if "token_type_ids" not in sample:
            sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
        model_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
            tmp_path = Path(tmp) / "model.onnx"
            with torch.inference_mode():
                reference = model(**{n: sample[n] for n in names}).last_hidden_state.numpy()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Wrapper(model).eval(),
                    tuple(sample[n] for n in names),
                    str(tmp_path),
                    input_names=names,
                    output_names=["last_hidden_state"],
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names,
                                                                         "last_hidden_state"]},
                    opset_version=17,
                    dynamo=False,
                )
            agreement = self._agreement(tmp_path, sample, names, reference)
            if agreement < MIN_AGREEMENT:
                raise UnsupportedModelError(
                    f"ONNX export disagrees with torch (cosine {agreement:.6f})"
                )
            (Path(tmp) / "export.json").write_text(json.dumps({
                "source": str(self.folder.resolve()),
                "torch": torch.__version__,
                "probe_cosine_min": agreement,
            }, indent=2))
            os.replace(Path(tmp) / "export.json", model_path.parent / "export.json")
            os.replace(tmp_path, model_path)

    def _agreement(
        self, path: Path, sample: Any, names: list[str], reference: np.ndarray
    ) -> float:
        import numpy as np
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {n: sample[n].numpy().astype(np.int64) for n in names}
        hidden = session.run(None, feeds)[0]
        mask = feeds["attention_mask"]
        a = self._pool(hidden, mask)
        b = self._pool(reference, mask)
        return float(np.min(np.sum(a * b, axis=1)))

    # ---- encoding --------------------------------------------------------------------

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.pooling == "cls":
            vectors = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def _run(self, encodings: Sequence[Any]) -> np.ndarray:
        import numpy as np

        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        return self._pool(hidden, mask)

    def encode_one(self, text: str) -> np.ndarray:
        """One text: a unit float32 vector."""
        return self._run([self.tokenizer.encode(text)])[0]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Many texts, batched by length to limit padding: shape ``(len(texts), dim)``."""
        import numpy as np

        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors = self._run([encodings[i] for i in rows])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        return out


def _quantize(float_path: Path, out_path: Path) -> None:
    """Write the int8 dynamic quantisation of ``float_path`` to ``out_path`` atomically."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise UnsupportedModelError(f"cannot quantise here ({exc})") from exc
    log.info("quantising %s to int8 (once) into %s", float_path, out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_path = Path(tmp) / out_path.name
        quantize_dynamic(str(float_path), str(tmp_path), weight_type=QuantType.QInt8,
                         per_channel=True)
        os.replace(tmp_path, out_path)
