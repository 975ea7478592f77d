"""Run mem0 on a fact set and report ingest, search latency and retrieval quality.

Executed by the mem0 virtual environment's Python (``.venv-mem0/bin/python``), never
imported by the project: ``python mem0_runner.py INPUT.json OUTPUT.json``. It uses the
standard library and mem0 only. mem0 is configured fully locally: the sentence-
transformers embedder from the bundled MiniLM folder, a FAISS store and SQLite history
in a scratch folder, telemetry off, hub access off, and an OpenAI LLM pointed at a
closed loopback port (mem0 builds an LLM client even when ``infer=False`` never uses it).

INPUT: ``{"model": folder, "workdir": path, "facts": [text...], "queries": [[text,
target index]...], "warmup": [text...], "batch": int, "k": int}``.
OUTPUT: ``{"ingest": {...}, "search": {"latencies_s": [...]}, "hit_at_1", "recall_at_10",
"versions": {...}}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _configure(workdir: Path) -> None:
    os.environ["MEM0_TELEMETRY"] = "False"
    os.environ["MEM0_DIR"] = str(workdir / "mem0home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OPENAI_API_KEY", "unused-offline")


def _memory(model: str, workdir: Path, dim: int) -> Any:
    from mem0 import Memory

    return Memory.from_config({
        "embedder": {"provider": "huggingface",
                     "config": {"model": model, "embedding_dims": dim,
                                "model_kwargs": {"device": "cpu"}}},
        "vector_store": {"provider": "faiss",
                         "config": {"collection_name": "bench", "path": str(workdir / "faiss"),
                                    "embedding_model_dims": dim}},
        "llm": {"provider": "openai",
                "config": {"api_key": "unused-offline",
                           "openai_base_url": "http://127.0.0.1:9/v1"}},
        "history_db_path": str(workdir / "history.db"),
    })


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("mem0ai", "faiss-cpu", "sentence-transformers", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Ingest the facts in batches, then search each query once; all timed."""
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    _configure(workdir)
    started = time.perf_counter()
    memory = _memory(spec["model"], workdir, int(spec.get("dim", 384)))
    startup = time.perf_counter() - started
    user, batch, k = "bench-user", int(spec["batch"]), int(spec.get("k", 10))
    facts: list[str] = spec["facts"]
    memory.embedding_model.embed("warm up the model", "add")
    curve, total = [], 0.0
    for start in range(0, len(facts), batch):
        chunk = facts[start : start + batch]
        t0 = time.perf_counter()
        memory.add([{"role": "user", "content": text} for text in chunk], user_id=user,
                   infer=False)
        seconds = time.perf_counter() - t0
        total += seconds
        curve.append({"store_size": start + len(chunk),
                      "facts_per_s": round(len(chunk) / seconds, 1)})
        print(f"mem0 ingest {start + len(chunk)}/{len(facts)}", file=sys.stderr, flush=True)
    for text in spec.get("warmup", []):
        memory.search(text, top_k=k, filters={"user_id": user}, threshold=0.0)
    latencies, hit1, hit10 = [], 0, 0
    for text, target in spec["queries"]:
        t0 = time.perf_counter()
        result = memory.search(text, top_k=k, filters={"user_id": user}, threshold=0.0)
        latencies.append(time.perf_counter() - t0)
        found = [r.get("memory") for r in result.get("results", [])]
        hit1 += bool(found) and found[0] == facts[target]
        hit10 += facts[target] in found
    n = max(len(spec["queries"]), 1)
    return {
        "startup_s": round(startup, 3),
        "ingest": {"facts": len(facts), "seconds": round(total, 3),
                   "facts_per_s": round(len(facts) / total, 1), "curve": curve},
        "search": {"latencies_s": latencies},
        "hit_at_1": round(hit1 / n, 4),
        "recall_at_10": round(hit10 / n, 4),
        "versions": _versions(),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mem0_runner.py INPUT.json OUTPUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
