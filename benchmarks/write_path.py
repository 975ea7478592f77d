"""The write path against its floor: how much of a raw ``add`` is spent outside the embedder.

One store is filled with ``--store-size`` generated facts (their MiniLM vectors computed
once and cached, see :func:`benchmarks.common.cached_embeddings`), then ``--adds`` more
adds of ``--batch`` new facts each are measured with the real embedder. Before each add
the same batch is embedded by the embedder alone, so every add has its floor measured
beside it on the same texts at the same moment (a shared machine drifts; side by side
the ratio holds). Reported: the share of each add's time spent outside the embedder
(target: at most 0.15), the ingest rate as a share of the embedder's own throughput
(target: at least 0.85), and where the time outside goes (DuckDB, the vector index, the
lexical index, the rest).

``--baseline PATH`` measures another checkout's engine too (e.g. ``main``), each engine
in its own process, in the order A B B A so that drift affects both alike.

Work an engine leaves for later is charged to the adds: the vector index folds one add's
new vectors into hnswlib during the next add (its write buffer), so after the last add
the rest is folded and timed as that add's ``ann``. Nothing runs in the background while
the embedder alone is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PrecomputedEmbedder,
    StageTimer,
    Stopwatch,
    args_config,
    default_embedder_spec,
    progress,
    scratch_dir,
    write_results,
)

__all__ = ["main", "measure"]

USER = "bench-user"
_REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks write_path", description=__doc__)
    p.add_argument("--store-size", type=int, default=10_000, help="facts before measuring")
    p.add_argument("--adds", type=int, default=40, help="measured adds per engine and round")
    p.add_argument("--batch", type=int, default=100, help="facts per measured add")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout holding engine/, measured side by side")
    p.add_argument("--embedder", default=None, help="embedder spec (default: bundled MiniLM)")
    p.add_argument("--vector-cache", type=Path, default=None,
                   help="folder for the cached prefill vectors (default benchmarks/.vectors)")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--engine-path", type=Path, default=_REPO, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p


def measure(memory: Any, embedder: Any, batches: list[list[str]]) -> dict[str, Any]:
    """Time each batch embedded alone, then added; split each add into stages."""
    timer = StageTimer()
    timer.wrap(memory.embedder, "embed", "embed")
    timer.wrap(memory.index, "apply", "ann")
    timer.wrap_public(memory.store, "duckdb", skip=("transaction",))
    timer.wrap_public(memory.searcher.lexical, "lexical")
    alone: list[float] = []
    adds: list[float] = []
    stages: dict[str, float] = {}
    for batch in progress(batches, "measured adds"):
        with Stopwatch() as sw:
            embedder.embed(batch)
        alone.append(sw.seconds)
        timer.lap()
        with Stopwatch() as sw:
            memory.add(batch, user_id=USER, infer=False)
        adds.append(sw.seconds)
        for stage, seconds in timer.lap().items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    settle = getattr(memory.index, "fold_all", None)  # engines with a write buffer
    if settle is not None and adds:
        with Stopwatch() as sw:
            settle()
        adds[-1] += sw.seconds
        stages["ann"] = stages.get("ann", 0.0) + sw.seconds
    timer.restore()
    total, embed = sum(adds), stages.get("embed", 0.0)
    outside = total - embed
    stages["other"] = max(0.0, total - sum(stages.values()))
    facts = sum(len(b) for b in batches)
    per_add = {k: round(1000 * v / len(batches), 2) for k, v in sorted(stages.items())}
    per_add["outside_embedder"] = round(1000 * outside / len(batches), 2)
    per_add["total"] = round(1000 * total / len(batches), 2)
    per_add["embedder_alone"] = round(1000 * sum(alone) / len(batches), 2)
    return {
        "adds": len(batches),
        "facts": facts,
        "share_outside_embedder": round(outside / total, 4),
        "ingest_facts_per_s": round(facts / total, 1),
        "embedder_alone_facts_per_s": round(facts / sum(alone), 1),
        "share_of_embedder_throughput": round(sum(alone) / total, 4),
        "ms_per_add": per_add,
    }


def _worker(args: argparse.Namespace) -> int:
    """One engine checkout (first on sys.path), one store, one measurement, as JSON."""
    sys.path.insert(0, str(args.engine_path.resolve()))
    import engine
    from benchmarks import facts as factgen
    from benchmarks.common import cached_embeddings
    from engine.backends.embed import load_embedder
    from engine.memory import Memory

    real = load_embedder(args.embedder or default_embedder_spec(), device="cpu")
    real.embed(["warm up the model"])
    texts = [f.text for f in factgen.generate_facts(args.store_size + 50_000, seed=7)]
    prefill = texts[: args.store_size]
    fresh = texts[args.store_size + args.seed * args.adds * args.batch:]
    batches = [fresh[i * args.batch : (i + 1) * args.batch] for i in range(args.adds)]
    filler = PrecomputedEmbedder(real, prefill, cached_embeddings(real, prefill,
                                                                 cache_dir=args.vector_cache))
    with scratch_dir("write-path") as workdir:
        memory = Memory(workdir / "store.duckdb", embedder=filler, process_pending=False)
        try:
            for start in progress(range(0, len(prefill), 1000), "prefill"):
                memory.add(prefill[start : start + 1000], user_id=USER, infer=False)
            memory.search("warm up both indexes", user_id=USER)
            result = measure(memory, real, batches)
        finally:
            memory.close()
    result["engine_file"] = engine.__file__
    args.worker.write_text(json.dumps(result))
    return 0


def _git_commit(path: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one engine as one figure (time-weighted, like one longer run)."""
    adds = sum(p["adds"] for p in parts)
    facts = sum(p["facts"] for p in parts)
    ms = {k: round(sum(p["ms_per_add"][k] * p["adds"] for p in parts) / adds, 2)
          for k in parts[0]["ms_per_add"] if all(k in p["ms_per_add"] for p in parts)}
    return {
        "adds": adds,
        "facts": facts,
        "share_outside_embedder": round(ms["outside_embedder"] / ms["total"], 4),
        "share_of_embedder_throughput": round(ms["embedder_alone"] / ms["total"], 4),
        "ingest_facts_per_s": round(1000 * facts / (ms["total"] * adds), 1),
        "embedder_alone_facts_per_s": round(1000 * facts / (ms["embedder_alone"] * adds), 1),
        "ms_per_add": ms,
        "rounds": parts,
        "engine_file": parts[0]["engine_file"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    engines = {"this": _REPO}
    if args.baseline is not None:
        engines["baseline"] = args.baseline.resolve()
    order = ["this"] if len(engines) == 1 else ["baseline", "this", "this", "baseline"]
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    with scratch_dir("write-path-runs") as runs:
        for round_no, name in enumerate(order):
            out = runs / f"{round_no}-{name}.json"
            cmd = [sys.executable, "-m", "benchmarks.write_path", "--worker", str(out),
                   "--engine-path", str(engines[name]), "--store-size", str(args.store_size),
                   "--adds", str(args.adds), "--batch", str(args.batch),
                   "--seed", str(round_no)]
            if args.embedder:
                cmd += ["--embedder", args.embedder]
            if args.vector_cache:
                cmd += ["--vector-cache", str(args.vector_cache)]
            print(f"round {round_no + 1}/{len(order)}: {name} ({engines[name]})", flush=True)
            subprocess.run(cmd, check=True, cwd=str(_REPO))
            parts[name].append(json.loads(out.read_text()))
    return {name: {"engine_path": str(path), "git_commit": _git_commit(path),
                   **_combine(parts[name])} for name, path in engines.items()}


def _print_summary(results: dict[str, Any]) -> None:
    print(f"{'engine':>9} {'commit':>8} {'ms/add':>7} {'embed':>7} {'outside':>7} "
          f"{'share out':>9} {'of embedder':>11} {'duckdb':>7} {'ann':>6} {'lexical':>7} "
          f"{'other':>6}")
    for name, r in results.items():
        ms = r["ms_per_add"]
        print(f"{name:>9} {r['git_commit'] or '?':>8} {ms['total']:>7} {ms['embed']:>7} "
              f"{ms['outside_embedder']:>7} {r['share_outside_embedder']:>9} "
              f"{r['share_of_embedder_throughput']:>11} {ms.get('duckdb', 0):>7} "
              f"{ms.get('ann', 0):>6} {ms.get('lexical', 0):>7} {ms.get('other', 0):>6}")
    print("share out = time outside the embedder / add time (target <= 0.15); of embedder ="
          " embedder-alone time on the same batches / add time (target >= 0.85)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker is not None:
        return _worker(args)
    results = run(args)
    config = args_config(args)
    path = write_results("write_path", config, results, args.out)
    print(f"wrote {path}")
    _print_summary(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
