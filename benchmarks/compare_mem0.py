"""Side by side with mem0 2.2.1 on this machine: same embedder, same facts, same queries.

For each N (1k and 10k by default) one fact set and one question set with known targets
are generated; this engine (a fresh store, ``infer=False``) and mem0 (run by
``.venv-mem0/bin/python benchmarks/mem0_runner.py``: its own virtual environment, the
bundled MiniLM folder through sentence-transformers, local FAISS, telemetry off) ingest
the facts in the same batches, then answer every question once. Reported per N and
system: ingest facts/s, search p50/p95/p99 (end to end, query embedding included), hit@1
and recall@10; and the ratios (ours faster by x, quality difference). Beside this
engine's figures stand their floors, measured as the latency benchmark measures them
(:func:`benchmarks.latency.search_floor`, :func:`benchmarks.latency.ingest_floor`): a bare
encode of each query plus a bare hnswlib query of the same depth, and the embedder's own
throughput on the same facts in the same batches, with the ratio to each.

``--setup`` builds ``.venv-mem0`` first (from PyPI: ``torch==2.13.0`` first so no CUDA
wheels come, then ``mem0ai==2.2.1``, ``faiss-cpu`` and ``sentence-transformers``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import facts as factgen
from benchmarks.common import (
    Stopwatch,
    args_config,
    default_embedder_spec,
    percentiles,
    progress,
    pyplot,
    save_plot,
    scratch_dir,
    write_results,
)
from benchmarks.latency import floor_summary, ingest_floor, search_floor

__all__ = ["main", "run", "setup_venv"]

_REPO = Path(__file__).resolve().parent.parent
MEM0_VENV = _REPO / ".venv-mem0"
MEM0_REQUIREMENTS = ("mem0ai==2.2.1", "faiss-cpu==1.15.1", "sentence-transformers==6.2.0")
USER = "bench-user"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks compare", description=__doc__)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=100, help="facts per add() call, both systems")
    p.add_argument("--mem0-python", type=Path, default=MEM0_VENV / "bin" / "python")
    p.add_argument("--setup", action="store_true", help="build .venv-mem0 first")
    p.add_argument("--embedder", default=None, help="a sentence-transformers folder")
    p.add_argument("--quick", action="store_true", help="500 and 2,000 facts, 100 queries")
    p.add_argument("--skip-mem0", action="store_true", help="measure this engine only")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


def setup_venv(venv: Path = MEM0_VENV) -> None:
    """Create the mem0 virtual environment (PyPI only; CPU torch pinned first)."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *MEM0_REQUIREMENTS], check=True)


def _model_folder(spec: str) -> str:
    """mem0 needs a folder path: resolve a manifest name to its folder."""
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    if spec.startswith("hashing"):
        return spec  # no folder: only this engine can run it (tests use --skip-mem0)
    from engine.backends import models

    return str(models.resolve_model_path(spec, "sentence-transformers"))


def run_ours(model: str, texts: list[str], queries: list[factgen.Query],
             warmup: list[str], batch: int, workdir: Path) -> dict[str, Any]:
    """This engine on one fact set: a fresh store, batched ingest, one search per query."""
    from engine.memory import Memory

    memory = Memory(workdir / "ours.duckdb", embedder=model)
    try:
        memory.embedder.embed(["warm up the model"])
        memory.embedder.embed_query("warm up the query path")
        total, curve = 0.0, []
        for start in progress(range(0, len(texts), batch), f"ours ingest {len(texts):,}",
                              total=-(-len(texts) // batch)):
            chunk = texts[start : start + batch]
            with Stopwatch() as sw:
                memory.add(chunk, user_id=USER, infer=False)
            total += sw.seconds
            curve.append({"store_size": start + len(chunk),
                          "facts_per_s": round(len(chunk) / sw.seconds, 1)})
        ingest_rate = len(texts) / total
        floor_ingest = ingest_floor(memory.embedder, texts, batch, ingest_rate)
        for text in warmup:
            memory.search(text, user_id=USER, k=10)
        latencies, encodes, anns, hit1, hit10 = [], [], [], 0, 0
        for query in progress(queries, f"ours search {len(texts):,}"):
            encode_s, ann_s = search_floor(memory, query.text, USER)
            encodes.append(encode_s)
            anns.append(ann_s)
            with Stopwatch() as sw:
                hits = memory.search(query.text, user_id=USER, k=10)
            latencies.append(sw.seconds)
            found = [h.text for h in hits]
            hit1 += bool(found) and found[0] == texts[query.target]
            hit10 += texts[query.target] in found
        backend = getattr(memory.embedder, "resolved_backend", "n/a")
    finally:
        memory.close()
    n = max(len(queries), 1)
    search = percentiles(latencies)
    return {
        "ingest": {"facts": len(texts), "seconds": round(total, 3),
                   "facts_per_s": round(ingest_rate, 1), "curve": curve,
                   "floor": floor_ingest},
        "search": search,
        "search_floor": floor_summary(search, encodes, anns),
        "hit_at_1": round(hit1 / n, 4),
        "recall_at_10": round(hit10 / n, 4),
        "query_backend": backend,
    }


def run_mem0(python: Path, model: str, texts: list[str], queries: list[factgen.Query],
             warmup: list[str], batch: int, workdir: Path) -> dict[str, Any]:
    """mem0 on the same fact set, in its own interpreter."""
    spec = {"model": model, "workdir": str(workdir / "mem0"), "facts": texts,
            "queries": [[q.text, q.target] for q in queries], "warmup": warmup,
            "batch": batch, "k": 10}
    spec_path, out_path = workdir / "mem0_in.json", workdir / "mem0_out.json"
    spec_path.write_text(json.dumps(spec))
    runner = Path(__file__).resolve().parent / "mem0_runner.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), str(runner), str(spec_path), str(out_path)], check=True,
                   env=env, cwd=str(workdir))
    raw = json.loads(out_path.read_text())
    return {
        "ingest": raw["ingest"],
        "search": percentiles(raw["search"]["latencies_s"]),
        "hit_at_1": raw["hit_at_1"],
        "recall_at_10": raw["recall_at_10"],
        "startup_s": raw["startup_s"],
        "versions": raw["versions"],
    }


def _ratios(ours: dict[str, Any], mem0: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {
        "ingest_speedup": ratio(ours["ingest"]["facts_per_s"], mem0["ingest"]["facts_per_s"]),
        "search_p50_speedup": ratio(mem0["search"]["p50_ms"], ours["search"]["p50_ms"]),
        "search_p99_speedup": ratio(mem0["search"]["p99_ms"], ours["search"]["p99_ms"]),
        "ours_p50_over_mem0_p50": ratio(ours["search"]["p50_ms"], mem0["search"]["p50_ms"]),
        "hit_at_1_diff": round(ours["hit_at_1"] - mem0["hit_at_1"], 4),
        "recall_at_10_diff": round(ours["recall_at_10"] - mem0["recall_at_10"], 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.sizes, args.queries = "500,2000", 100
    if args.setup:
        setup_venv()
    model = _model_folder(args.embedder or default_embedder_spec())
    have_mem0 = not args.skip_mem0 and Path(args.mem0_python).exists()
    results: dict[str, Any] = {"model_folder": model, "sizes": []}
    if not have_mem0:
        results["mem0_skipped"] = (
            "--skip-mem0" if args.skip_mem0 else
            f"{args.mem0_python} not found: run `python -m benchmarks compare --setup`"
        )
    for n in [int(s) for s in str(args.sizes).split(",") if s]:
        facts, queries = factgen.generate(n, args.queries + 10, seed=n + 17)
        texts = [f.text for f in facts]
        warmup = [q.text for q in queries[:10]]
        queries = queries[10:]
        entry: dict[str, Any] = {"n": n, "queries": len(queries), "batch": args.batch}
        with scratch_dir(f"compare-{n}") as workdir:
            entry["ours"] = run_ours(model, texts, queries, warmup, args.batch, workdir)
            if have_mem0:
                entry["mem0"] = run_mem0(args.mem0_python, model, texts, queries, warmup,
                                         args.batch, workdir)
                entry["ratios"] = _ratios(entry["ours"], entry["mem0"])
        results["sizes"].append(entry)
        if args.out_partial:
            write_results("compare", _config(args), results, args.out)
    return results


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return args_config(args)


def plot(results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """compare.png: ingest facts/s, search p50/p99 and hit@1 for both systems by N."""
    plt = pyplot()
    sizes = [s for s in results["sizes"] if "mem0" in s] or results["sizes"]
    labels = [f"{s['n']:,}" for s in sizes]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("ingest facts/s (higher is better)", lambda r: r["ingest"]["facts_per_s"]),
              ("search p50 ms (lower is better)", lambda r: r["search"]["p50_ms"]),
              ("hit@1 (higher is better)", lambda r: r["hit_at_1"]))
    width = 0.38
    for ax, (title, value) in zip(axes, panels, strict=True):
        xs = list(range(len(sizes)))
        ax.bar([x - width / 2 for x in xs], [value(s["ours"]) for s in sizes], width,
               label="memengine")
        if any("mem0" in s for s in sizes):
            ax.bar([x + width / 2 for x in xs], [value(s["mem0"]) for s in sizes], width,
                   label="mem0 2.2.1")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("facts")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.suptitle("memengine vs mem0, same MiniLM, same facts and queries, same machine")
    return save_plot(fig, "compare", out_dir)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out_partial = True  # rewrite the JSON after each size: mem0 at 10k takes long
    results = run(args)
    path = write_results("compare", _config(args), results, args.out)
    print(f"wrote {path}")
    if not args.no_plots:
        print(f"wrote {plot(results, args.out)}")
    for s in results["sizes"]:
        ours, floor = s["ours"], s["ours"]["search_floor"]
        ingest_floor_ = ours["ingest"]["floor"]
        line = (f"N={s['n']:,} ours: {ours['ingest']['facts_per_s']} facts/s (embedder alone "
                f"{ingest_floor_['embedder_alone_facts_per_s']}, share "
                f"{ingest_floor_['share_of_embedder']}), p50 {ours['search']['p50_ms']} ms "
                f"(floor {floor['floor_p50_ms']}: encode {floor['bare_encode']['p50_ms']} + ANN "
                f"{floor['bare_ann']['p50_ms']}; x{floor['ratio_to_floor']}, "
                f"+{floor['overhead_p50_ms']} ms), hit@1 {ours['hit_at_1']}")
        if "mem0" in s:
            line += (f" | mem0: {s['mem0']['ingest']['facts_per_s']} facts/s, "
                     f"p50 {s['mem0']['search']['p50_ms']} ms, hit@1 {s['mem0']['hit_at_1']}"
                     f" | ratios {s['ratios']}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
