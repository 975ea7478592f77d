"""ANN recall against exact search, and the ef / M sweep the index defaults come from.

For each dataset (real MiniLM embeddings of generated facts, queried with the generated
questions; and clustered synthetic unit vectors) and each M, one hnswlib index is built
exactly as the engine builds it (inner product, ``ef_construction`` from
:class:`engine.retrieval.index.HnswParams`); then for each ef the single-query latency (as the
engine calls it: one ``knn_query`` per search) and recall@10 against brute force are
measured. The chosen defaults are the fastest (M, ef) whose recall@10 is at least
``--target`` on every dataset; the engine's current defaults are reported beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import facts as factgen
from benchmarks.common import (
    Stopwatch,
    args_config,
    cached_embeddings,
    default_embedder_spec,
    percentiles,
    progress,
    pyplot,
    save_plot,
    write_results,
)
from benchmarks.latency import exact_top_k, synthetic_vectors

__all__ = ["choose_defaults", "main", "sweep"]

EFS = (10, 16, 24, 32, 48, 64, 96, 128, 200)
MS = (8, 16, 32)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks recall", description=__doc__)
    p.add_argument("--real", type=int, default=20_000, help="facts embedded with MiniLM")
    p.add_argument("--synthetic", type=int, default=100_000, help="synthetic vectors")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--ms", default=",".join(map(str, MS)))
    p.add_argument("--efs", default=",".join(map(str, EFS)))
    p.add_argument("--ef-constructions", default=None,
                   help="build-time ef values to sweep (default: the engine's)")
    p.add_argument("--target", type=float, default=0.98, help="recall@10 the defaults must reach")
    p.add_argument("--embedder", default=None)
    p.add_argument("--quick", action="store_true", help="5k real, 20k synthetic, 200 queries")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


def real_dataset(n: int, queries: int, spec: str) -> tuple[Any, Any]:
    """MiniLM vectors of ``n`` generated facts and of ``queries`` questions about them."""
    from engine.backends.embed import load_embedder

    embedder = load_embedder(spec, device="cpu")
    facts, qs = factgen.generate(n, queries, seed=42)
    data = cached_embeddings(embedder, [f.text for f in facts])
    probes = embedder.embed([q.text for q in qs])
    return data, probes


def sweep(data: Any, probes: Any, ms: list[int], efs: list[int], label: str,
          k: int = 10, ef_constructions: list[int] | None = None) -> list[dict[str, Any]]:
    """Build per (M, ef_construction), measure recall@k and latency per ef."""
    import hnswlib
    import numpy as np

    from engine.retrieval.index import HnswParams

    truth = exact_top_k(data, probes, k)
    rows = []
    builds = [(m, efc) for m in ms for efc in ef_constructions or [HnswParams().ef_construction]]
    for m, efc in builds:
        index = hnswlib.Index(space="ip", dim=data.shape[1])
        index.init_index(max_elements=len(data), ef_construction=efc, M=m,
                         allow_replace_deleted=True)
        with Stopwatch() as build:
            index.add_items(data, np.arange(len(data)))
        for ef in progress(efs, f"{label} M={m} efc={efc}"):
            index.set_ef(max(ef, k))
            latencies, found = [], 0
            for row, probe in enumerate(probes):
                with Stopwatch() as sw:
                    labels, _ = index.knn_query(probe, k=k)
                latencies.append(sw.seconds)
                found += len(set(labels[0].tolist()) & set(truth[row].tolist()))
            rows.append({"dataset": label, "n": len(data), "m": m, "ef_construction": efc,
                         "ef": ef, "build_s": round(build.seconds, 2),
                         "recall_at_10": round(found / (k * len(probes)), 4),
                         "latency": percentiles(latencies)})
    return rows


def choose_defaults(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The (M, ef_construction, ef) with the lowest worst-dataset p50 among those reaching
    ``target``.

    Only real-embedding datasets vote (synthetic vectors are reported, not chosen on).
    """
    settings: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    rows = [r for r in rows if not r["dataset"].startswith("synthetic")] or rows
    for row in rows:
        settings.setdefault((row["m"], row["ef_construction"], row["ef"]), []).append(row)
    datasets = {row["dataset"] for row in rows}
    good = [
        (max(r["latency"]["p50_ms"] for r in group), key, group)
        for key, group in settings.items()
        if len(group) == len(datasets) and min(r["recall_at_10"] for r in group) >= target
    ]
    if not good:
        return None
    p50, (m, efc, ef), group = min(good)
    return {"m": m, "ef_construction": efc, "ef_search": ef, "worst_p50_ms": p50,
            "recall_at_10": {r["dataset"]: r["recall_at_10"] for r in group}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.retrieval.index import HnswParams

    if args.quick:
        args.real, args.synthetic, args.queries = 5_000, 20_000, 200
    ms = [int(x) for x in str(args.ms).split(",")]
    efs = [int(x) for x in str(args.efs).split(",")]
    rows: list[dict[str, Any]] = []
    efcs = ([int(x) for x in str(args.ef_constructions).split(",")]
            if args.ef_constructions else None)
    if args.real:
        data, probes = real_dataset(args.real, args.queries, args.embedder
                                    or default_embedder_spec())
        rows += sweep(data, probes, ms, efs, f"minilm-{args.real // 1000}k",
                      ef_constructions=efcs)
    if args.synthetic:
        data = synthetic_vectors(args.synthetic, 384, seed=1)
        probes = synthetic_vectors(args.queries, 384, seed=2)
        rows += sweep(data, probes, ms, efs, f"synthetic-{args.synthetic // 1000}k",
                      ef_constructions=efcs)
    current = HnswParams()
    at_current = [r for r in rows if r["m"] == current.m and r["ef"] == current.ef_search]
    return {
        "sweep": rows,
        "chosen": choose_defaults(rows, args.target),
        "target_recall_at_10": args.target,
        "engine_defaults": {"m": current.m, "ef_construction": current.ef_construction,
                            "ef_search": current.ef_search},
        "at_engine_defaults": {r["dataset"]: {"recall_at_10": r["recall_at_10"],
                                              "p50_ms": r["latency"]["p50_ms"]}
                               for r in at_current},
    }


def plot(results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """recall.png: recall@10 against p50 latency, one curve per dataset and M."""
    plt = pyplot()
    datasets = sorted({r["dataset"] for r in results["sweep"]})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    defaults = results["engine_defaults"]
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = [r for r in results["sweep"] if r["dataset"] == dataset]
        for m in sorted({r["m"] for r in rows}):
            curve = sorted((r for r in rows if r["m"] == m), key=lambda r: r["ef"])
            ax.plot([r["latency"]["p50_ms"] for r in curve], [r["recall_at_10"] for r in curve],
                    "o-", label=f"M={m}")
            for r in curve:
                ax.annotate(str(r["ef"]), (r["latency"]["p50_ms"], r["recall_at_10"]),
                            fontsize=7, xytext=(3, -8), textcoords="offset points")
        for r in rows:
            if r["m"] == defaults["m"] and r["ef"] == defaults["ef_search"]:
                ax.plot(r["latency"]["p50_ms"], r["recall_at_10"], "k*", markersize=14,
                        label=f"default M={r['m']} ef={r['ef']}")
        ax.axhline(results["target_recall_at_10"], color="grey", linestyle=":")
        ax.set_xlabel("p50 latency of one knn_query, ms (labels: ef)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{dataset} (n={rows[0]['n']:,})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    path = save_plot(fig, "recall", out_dir)
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = run(args)
    config = args_config(args)
    path = write_results("recall", config, results, args.out)
    print(f"wrote {path}")
    if not args.no_plots:
        print(f"wrote {plot(results, args.out)}")
    print("engine defaults:", results["engine_defaults"], results["at_engine_defaults"])
    print("chosen:", results["chosen"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
