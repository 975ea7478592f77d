"""Latency and scale: ingest throughput, search latency end to end and per stage, memory, disk.

For each N (default 1k, 10k, 100k) one user's store is filled with N generated facts
(real MiniLM embeddings, ``infer=False``, batches of ``--batch``), then questions with a
known target are searched. Reported per N: ingest facts/s overall and per batch as the
store grows (flat is the goal), ingest time per stage, index rebuild-from-DuckDB and
load-from-disk times, RSS, disk size, search p50/p95/p99 end to end (query embedding
included, every query unique so the query cache never helps) and per stage (embed, ANN,
DuckDB fetch, lexical when the engine has it, and the rest: fusion and Python glue), the
same with the query cache warm, hit@1 / recall@10 on the targets, and the ANN's recall@10
against exact search over the user's vectors.

Also: multi-tenant (``--users`` x ``--per-user`` facts, searches spread over users) and
the hnswlib index alone over ``--synthetic`` clustered unit vectors (1M by default).
Where torch sees a CUDA device the per-N runs repeat with embeddings on the GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import facts as factgen
from benchmarks.common import (
    VECTOR_CACHE_DIR,
    PrecomputedEmbedder,
    StageTimer,
    Stopwatch,
    args_config,
    cached_embeddings,
    default_embedder_spec,
    dir_size,
    percentiles,
    progress,
    pyplot,
    rss_mb,
    save_plot,
    scratch_dir,
    write_results,
)

__all__ = ["bare_encode", "floor_summary", "ingest_floor", "main", "run", "search_floor"]

USER = "bench-user"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks latency", description=__doc__)
    p.add_argument("--sizes", default="1000,10000,100000", help="facts per run, comma-separated")
    p.add_argument("--queries", type=int, default=300, help="measured searches per size")
    p.add_argument("--batch", type=int, default=1000, help="facts per add() call")
    p.add_argument("--users", type=int, default=1000, help="multi-tenant: users (0 = skip)")
    p.add_argument("--per-user", type=int, default=100, help="multi-tenant: facts per user")
    p.add_argument("--synthetic", type=int, default=1_000_000,
                   help="index-only run over N synthetic vectors (0 = skip)")
    p.add_argument("--embedder", default=None, help="embedder spec (default: bundled MiniLM)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--no-gpu", action="store_true", help="skip the CUDA repeat")
    p.add_argument("--quick", action="store_true",
                   help="1k and 10k facts, 100 users x 100, 100k synthetic")
    p.add_argument("--cached-vectors", nargs="?", type=Path, const=VECTOR_CACHE_DIR,
                   default=None, metavar="DIR",
                   help="fill the stores from fact embeddings computed once and cached in "
                        "DIR (default benchmarks/.vectors): ingest then measures the engine "
                        "without the embedder; searches still encode every query")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--no-plots", action="store_true")
    return p


def _memory(path: Path, embedder: Any) -> Any:
    from engine.memory import Memory

    return Memory(path, embedder=embedder)


def _stage_timer(memory: Any) -> StageTimer:
    """Wrap the engine's parts so a search or add is split into stages."""
    timer = StageTimer()
    timer.wrap(memory.embedder, "embed_query", "embed")
    timer.wrap(memory.embedder, "embed", "embed")
    timer.wrap(memory.index, "search", "ann")
    timer.wrap(memory.index, "apply", "ann")
    timer.wrap_public(memory.store, "duckdb", skip=("transaction",))
    wrapped: set[int] = set()
    for holder in (memory, getattr(memory, "searcher", None)):
        lexical = getattr(holder, "lexical", None)
        if lexical is not None and id(lexical) not in wrapped:
            timer.wrap_public(lexical, "lexical")
            wrapped.add(id(lexical))
    return timer


def _ingest(memory: Any, texts: list[str], batch: int, user: str, label: str) -> dict[str, Any]:
    timer = _stage_timer(memory)
    curve: list[dict[str, float]] = []
    stages: dict[str, float] = {}
    total = 0.0
    for start in progress(range(0, len(texts), batch), f"ingest {label}",
                          total=-(-len(texts) // batch)):
        chunk = texts[start : start + batch]
        with Stopwatch() as sw:
            memory.add(chunk, user_id=user, infer=False)
        total += sw.seconds
        for stage, seconds in timer.lap().items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        curve.append({"store_size": start + len(chunk),
                      "facts_per_s": round(len(chunk) / sw.seconds, 1)})
    timer.restore()
    with Stopwatch() as save:
        memory.flush()
    stages["other"] = max(0.0, total - sum(stages.values()))
    return {
        "facts": len(texts),
        "seconds": round(total, 3),
        "facts_per_s": round(len(texts) / total, 1),
        "curve": curve,
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stages.items())},
        "index_save_s": round(save.seconds, 3),
    }


def bare_encode(embedder: Any, text: str) -> Any:
    """One query encoded by the model alone: no query cache, no engine code around it."""
    embedder = getattr(embedder, "real", embedder)  # a PrecomputedEmbedder's model
    encoder = embedder._onnx_encoder() if hasattr(embedder, "_onnx_encoder") else None
    if encoder is not None:
        return encoder.encode_one(text)
    return embedder.embed([text])[0]


def search_floor(memory: Any, text: str, user: str) -> tuple[float, float]:
    """Seconds of the floor of one search: a bare encode and a bare hnswlib query of the
    depth the engine asks for."""
    from engine.retrieval.search import CANDIDATES

    with Stopwatch() as encode:
        vector = bare_encode(memory.embedder, text)
    with Stopwatch() as ann:
        memory.index.search(user, vector, CANDIDATES)
    return encode.seconds, ann.seconds


def floor_summary(end_to_end: dict[str, float], encode: list[float],
                  ann: list[float]) -> dict[str, Any]:
    """The floor beside a search figure: bare encode + bare ANN p50, what the engine adds
    over them, and the ratio of its p50 to the floor."""
    floor = percentiles(encode)["p50_ms"] + percentiles(ann)["p50_ms"]
    return {"bare_encode": percentiles(encode), "bare_ann": percentiles(ann),
            "floor_p50_ms": round(floor, 3),
            "overhead_p50_ms": round(end_to_end["p50_ms"] - floor, 3),
            "ratio_to_floor": round(end_to_end["p50_ms"] / floor, 2) if floor else None}


def ingest_floor(embedder: Any, texts: list[str], batch: int,
                 facts_per_s: float) -> dict[str, Any]:
    """The embedder's own throughput on (up to 2,000 of) the same facts in the same batch
    size, and the engine's ingest rate as a share of it."""
    sample = texts[:2000]
    with Stopwatch() as sw:
        for start in range(0, len(sample), batch):
            embedder.embed(sample[start : start + batch])
    alone = len(sample) / sw.seconds if sw.seconds else 0.0
    return {"embedder_alone_facts_per_s": round(alone, 1), "sample": len(sample),
            "share_of_embedder": round(facts_per_s / alone, 3) if alone else None}


def _search(memory: Any, queries: list[factgen.Query], fact_texts: list[str], user: str,
            label: str) -> dict[str, Any]:
    timer = _stage_timer(memory)
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    encodes: list[float] = []
    anns: list[float] = []
    hit1 = hit10 = 0
    for query in progress(queries, f"search {label}"):
        encode_s, ann_s = search_floor(memory, query.text, user)
        encodes.append(encode_s)
        anns.append(ann_s)
        timer.lap()
        with Stopwatch() as sw:
            hits = memory.search(query.text, user_id=user, k=10)
        stages = timer.lap()
        stages["other"] = max(0.0, sw.seconds - sum(stages.values()))
        for stage, seconds in stages.items():
            per_stage.setdefault(stage, []).append(seconds)
        totals.append(sw.seconds)
        texts = [h.text for h in hits]
        target = fact_texts[query.target]
        hit1 += bool(texts) and texts[0] == target
        hit10 += target in texts
    timer.restore()
    for stage in per_stage:
        per_stage[stage] += [0.0] * (len(totals) - len(per_stage[stage]))
    n = max(len(queries), 1)
    return {
        "end_to_end": percentiles(totals),
        "floor": floor_summary(percentiles(totals), encodes, anns),
        "stages": {s: percentiles(v) for s, v in sorted(per_stage.items())},
        "hit_at_1": round(hit1 / n, 4),
        "recall_at_10": round(hit10 / n, 4),
    }


def _ann_recall(memory: Any, queries: list[factgen.Query], user: str, k: int = 10) -> float:
    """Recall@k of the engine's hnswlib index against exact search over the same vectors."""
    import numpy as np

    ids, matrix = memory.store.current_vectors(user)
    id_array = np.asarray(ids)
    found = 0
    for query in queries:
        vector = memory.embedder.embed_query(query.text)
        exact = set(id_array[np.argsort(-(matrix @ vector))[:k]].tolist())
        approx, _ = memory.index.search(user, vector, k)
        found += len(exact & set(approx))
    return round(found / (k * max(len(queries), 1)), 4)


def _index_rebuild(memory: Any, user: str) -> dict[str, float]:
    """Time a rebuild from DuckDB (no saved copy), then a load of the copy it saved."""
    memory.index.forget(user)
    with Stopwatch() as build:
        memory.index.size(user)
    memory.flush()
    memory.index.invalidate(user)
    with Stopwatch() as load:
        memory.index.size(user)
    return {"load_from_disk_s": round(load.seconds, 3),
            "build_from_duckdb_s": round(build.seconds, 3)}


def run_size(n: int, embedder: Any, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One N: ingest, rebuild, search, quality, memory and disk."""
    facts, queries = factgen.generate(n, args.queries + 20, seed=n)
    warm, queries = queries[:20], queries[20:]
    texts = [f.text for f in facts]
    path = workdir / f"n{n}.duckdb"
    if args.cached_vectors:
        embedder = PrecomputedEmbedder(embedder, texts, cached_embeddings(
            embedder, texts, cache_dir=args.cached_vectors))
    rss_before = rss_mb()
    memory = _memory(path, embedder)
    try:
        ingest = _ingest(memory, texts, args.batch, USER, f"{n:,}")
        if args.cached_vectors:
            ingest["vectors_precomputed"] = True
            ingest["floor"] = {"skipped": "vectors precomputed: ingest excludes embedding"}
        else:
            ingest["floor"] = ingest_floor(memory.embedder, texts, args.batch,
                                           ingest["facts_per_s"])
        index = _index_rebuild(memory, USER)
        for query in warm:
            memory.search(query.text, user_id=USER, k=10)
        cold = _search(memory, queries, texts, USER, f"{n:,}")
        cached = _search(memory, queries, texts, USER, f"{n:,} cached")
        ann = _ann_recall(memory, queries, USER)
        rss_after = rss_mb()
    finally:
        memory.close()
    return {
        "n": n,
        "ingest": ingest,
        "index": index,
        "search": cold,
        "search_query_cached": cached["end_to_end"],
        "ann_recall_at_10_vs_exact": ann,
        "rss_mb": rss_after,
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "disk_bytes": dir_size(path, Path(str(path) + ".wal"), Path(str(path) + ".index")),
    }


def run_multi_tenant(users: int, per_user: int, queries: int, embedder: Any,
                     workdir: Path) -> dict[str, Any]:
    """Many small users in one store; searches go to random users."""
    import random

    path = workdir / "tenants.duckdb"
    memory = _memory(path, embedder)
    per_user_facts: list[list[factgen.Fact]] = []
    timer_total = 0.0
    try:
        for u in progress(range(users), "ingest tenants"):
            facts = factgen.generate_facts(per_user, seed=100_000 + u)
            per_user_facts.append(facts)
            with Stopwatch() as sw:
                memory.add([f.text for f in facts], user_id=f"user-{u}", infer=False)
            timer_total += sw.seconds
        memory.flush()
        rng = random.Random(5)
        plan = [(u, factgen.make_queries(per_user_facts[u], 1, seed=i)[0])
                for i, u in enumerate(rng.choices(range(users), k=queries))]
        latencies, first_touch, warm = [], [], []
        seen: set[int] = set()
        hit1 = 0
        for u, query in progress(plan, "search tenants"):
            with Stopwatch() as sw:
                hits = memory.search(query.text, user_id=f"user-{u}", k=10)
            latencies.append(sw.seconds)
            (warm if u in seen else first_touch).append(sw.seconds)
            seen.add(u)
            hit1 += bool(hits) and hits[0].text == per_user_facts[u][query.target].text
        rss = rss_mb()
    finally:
        memory.close()
    return {
        "users": users,
        "facts_per_user": per_user,
        "ingest_facts_per_s": round(users * per_user / timer_total, 1),
        "search": percentiles(latencies),
        "search_first_touch_of_user": percentiles(first_touch),
        "search_user_already_loaded": percentiles(warm),
        "hit_at_1": round(hit1 / max(queries, 1), 4),
        "rss_mb": rss,
        "disk_bytes": dir_size(path, Path(str(path) + ".wal"), Path(str(path) + ".index")),
    }


def synthetic_vectors(n: int, dim: int, *, seed: int, clusters: int = 2000,
                      latent: int = 48) -> Any:
    """Unit vectors shaped like sentence embeddings: clustered, low intrinsic dimension.

    Points are drawn around random centres in a ``latent``-dimensional space, mapped
    to ``dim`` dimensions by one fixed random projection, with a little full-rank
    noise. (Isotropic noise in all 384 dimensions would be far harder for any ANN
    than real embeddings are.) Data and queries drawn with different seeds share
    the centres and the projection.
    """
    import numpy as np

    shared = np.random.default_rng(12345)
    centres = shared.standard_normal((clusters, latent)).astype(np.float32)
    projection = shared.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        points = centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal(
            (m, latent), dtype=np.float32)
        block = points @ projection + 0.1 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top_k(data: Any, queries: Any, k: int) -> Any:
    """Brute-force top-k by inner product, in blocks."""
    import numpy as np

    best = np.empty((len(queries), k), dtype=np.int64)
    for row in range(0, len(queries), 64):
        sims = queries[row : row + 64] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
        best[row : row + 64] = np.take_along_axis(part, order, axis=1)
    return best


def run_synthetic(n: int, dim: int = 384, queries: int = 200) -> dict[str, Any]:
    """The hnswlib index alone (engine default parameters) over N synthetic vectors."""
    import hnswlib
    import numpy as np

    from engine.retrieval.index import HnswParams

    params = HnswParams()
    data = synthetic_vectors(n, dim, seed=1)
    probes = synthetic_vectors(queries, dim, seed=2)
    rss_before = rss_mb()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=params.ef_construction, M=params.m,
                     allow_replace_deleted=True)
    step = max(n // 50, 1000)
    with Stopwatch() as build:
        for start in progress(range(0, n, step), f"build hnsw {n:,}", total=-(-n // step)):
            index.add_items(data[start : start + step], np.arange(start, min(start + step, n)))
    index.set_ef(params.ef_search)
    rss_index = round(rss_mb() - rss_before, 1)
    latencies, found = [], 0
    truth = exact_top_k(data, probes, 10)
    for row, probe in enumerate(probes):
        with Stopwatch() as sw:
            labels, _ = index.knn_query(probe, k=10)
        latencies.append(sw.seconds)
        found += len(set(labels[0].tolist()) & set(truth[row].tolist()))
    return {
        "n": n,
        "dim": dim,
        "params": {"m": params.m, "ef_construction": params.ef_construction,
                   "ef_search": params.ef_search},
        "build_s": round(build.seconds, 2),
        "build_vectors_per_s": round(n / build.seconds, 1),
        "index_memory_mb": rss_index,
        "search": percentiles(latencies),
        "recall_at_10_vs_exact": round(found / (10 * queries), 4),
    }


def _embedder(spec: str, device: str, backend: str) -> Any:
    from engine.backends.embed import load_embedder

    embedder = load_embedder(spec, device=device, backend=backend)
    embedder.embed(["warm up the model"])
    embedder.embed_query("warm up the query path")
    return embedder


def _describe(embedder: Any) -> dict[str, Any]:
    return {"identity": embedder.identity,
            "backend": getattr(embedder, "resolved_backend", "n/a"),
            "device": getattr(embedder, "resolved_device", "cpu")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.sizes, args.users, args.per_user = "1000,10000", 100, 100
        args.synthetic = min(args.synthetic, 100_000) if args.synthetic else 0
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    spec = args.embedder or default_embedder_spec()
    results: dict[str, Any] = {}
    with scratch_dir("latency") as workdir:
        embedder = _embedder(spec, "cpu", args.backend)
        results["cpu"] = {"embedder": _describe(embedder),
                          "sizes": [run_size(n, embedder, args, workdir) for n in sizes]}
        if args.users:
            results["multi_tenant"] = run_multi_tenant(args.users, args.per_user,
                                                       args.queries, embedder, workdir)
        results["gpu"] = _gpu_runs(spec, sizes, args, workdir)
    if args.synthetic:
        results["synthetic_index"] = run_synthetic(args.synthetic)
    return results


def _gpu_runs(spec: str, sizes: list[int], args: argparse.Namespace,
              workdir: Path) -> dict[str, Any]:
    if args.no_gpu:
        return {"skipped": "--no-gpu"}
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch on this machine"}
    embedder = _embedder(spec, "cuda", "auto")
    gpu_dir = workdir / "gpu"
    gpu_dir.mkdir()
    return {"device_name": torch.cuda.get_device_name(0), "embedder": _describe(embedder),
            "sizes": [run_size(n, embedder, args, gpu_dir) for n in sizes]}


def plot(results: dict[str, Any], out_dir: Path | None = None) -> list[Path]:
    """latency.png (search percentiles and stages by N) and latency_ingest.png."""
    plt = pyplot()
    runs = results["cpu"]["sizes"]
    ns = [r["n"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        left.plot(ns, [r["search"]["end_to_end"][key] for r in runs], style,
                  label=f"CPU {key[:3]}")
    gpu = results.get("gpu", {})
    if gpu.get("sizes"):
        left.plot([r["n"] for r in gpu["sizes"]],
                  [r["search"]["end_to_end"]["p50_ms"] for r in gpu["sizes"]], "o-",
                  label=f"GPU p50 ({gpu.get('device_name')})")
    left.set_xscale("log")
    left.set_xlabel("facts in the user's store")
    left.set_ylabel("search latency, ms (query embedding included)")
    left.set_title("Search latency end to end")
    left.grid(alpha=0.3)
    left.legend()
    stages = sorted({s for r in runs for s in r["search"]["stages"]})
    bottom = [0.0] * len(runs)
    labels = [f"{n:,}" for n in ns]
    for stage in stages:
        values = [r["search"]["stages"].get(stage, {}).get("p50_ms", 0.0) for r in runs]
        right.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_xlabel("facts")
    right.set_ylabel("median ms per stage")
    right.set_title("Where a search spends its time (p50 of each stage)")
    right.legend()
    first = save_plot(fig, "latency", out_dir)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        curve = r["ingest"]["curve"]
        ax.plot([c["store_size"] for c in curve], [c["facts_per_s"] for c in curve], ".-",
                label=f"N={r['n']:,}")
    ax.set_xscale("log")
    ax.set_xlabel("facts already in the store")
    ax.set_ylabel("ingest facts/s (infer=False, batched add)")
    ax.set_title("Ingest throughput as the store grows")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    second = save_plot(fig, "latency_ingest", out_dir)
    return [first, second]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = run(args)
    config = args_config(args)
    path = write_results("latency", config, results, args.out)
    print(f"wrote {path}")
    if not args.no_plots:
        for png in plot(results, args.out):
            print(f"wrote {png}")
    _print_summary(results)
    return 0


def _print_summary(results: dict[str, Any]) -> None:
    print(f"{'N':>9} {'ingest/s':>9} {'p50 ms':>8} {'floor ms':>8} {'x floor':>7} "
          f"{'+ms':>6} {'p95 ms':>8} {'p99 ms':>8} {'hit@1':>6} {'ann r@10':>8} {'RSS MB':>8}")
    for r in results["cpu"]["sizes"]:
        e = r["search"]["end_to_end"]
        f = r["search"]["floor"]
        print(f"{r['n']:>9,} {r['ingest']['facts_per_s']:>9} {e['p50_ms']:>8} "
              f"{f['floor_p50_ms']:>8} {f['ratio_to_floor']:>7} {f['overhead_p50_ms']:>6} "
              f"{e['p95_ms']:>8} {e['p99_ms']:>8} {r['search']['hit_at_1']:>6} "
              f"{r['ann_recall_at_10_vs_exact']:>8} {r['rss_mb']:>8}")
    for r in results["cpu"]["sizes"]:
        f = r["ingest"]["floor"]
        if "skipped" in f:
            print(f"ingest {r['n']:,}: {r['ingest']['facts_per_s']} facts/s ({f['skipped']})")
            continue
        print(f"ingest {r['n']:,}: {r['ingest']['facts_per_s']} facts/s = "
              f"{f['share_of_embedder']} of the embedder alone "
              f"({f['embedder_alone_facts_per_s']} facts/s on the same facts)")
    print("floor = a bare encode of the same query + a bare hnswlib query of the same depth;"
          " +ms = what the engine adds over it (p50)")


if __name__ == "__main__":
    raise SystemExit(main())
