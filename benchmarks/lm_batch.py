"""What a batch of k tokens costs the LM, beside k single steps: the floor that decides
whether prompt-lookup decoding (``MEMENGINE_LM_DRAFT``) can pay on this machine.

``python -m benchmarks lm_batch [--model NAME] [--sizes 1,2,4,9,16] [--context 2000]
[--repeats 5]``

A context of ``--context`` tokens is evaluated once; then, interleaved ``--repeats``
times, a batch of k tokens is evaluated after it with the logits of every position kept
(what checking k-1 drafted tokens needs) and the context trimmed back. Drafting pays only
where a batch costs much less than k steps and most drafted tokens are accepted. Writes
``benchmarks/results/lm_batch.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from benchmarks.common import cpu_model, write_results


def measure(model: str | None, sizes: list[int], context: int, repeats: int) -> dict[str, Any]:
    """Seconds per batch (min and median over ``repeats``) for each size in ``sizes``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from engine.backends.lm import LlamaCppEngine, resolve_gguf

    path, name = resolve_gguf(model)
    engine = LlamaCppEngine(path, n_ctx=max(4096, context + max(sizes) + 8), name=name,
                            kv_cache_dir=False)
    engine.load()
    generator = next(iter(engine._contexts.values()))
    llm = generator.llm
    text = b"I moved to Porto last week; my sister Ana still lives in Lisbon with her cat. "
    tokens = llm.tokenize(text * (context // 10 + 10), add_bos=True)[: context + max(sizes)]
    llm.eval(tokens[:context])
    seconds: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(repeats):
        for k in sizes:
            generator._keep(context)
            started = time.perf_counter()
            generator._eval_rows(tokens[context: context + k])
            seconds[k].append(time.perf_counter() - started)
    engine.close()
    one = min(seconds[sizes[0]]) if sizes[0] == 1 else None
    rows = []
    for k in sizes:
        best = min(seconds[k])
        rows.append({"tokens": k, "min_s": round(best, 4),
                     "median_s": round(statistics.median(seconds[k]), 4),
                     "steps_of_one": round(best / one, 2) if one else None})
    return {"model": name, "context": context, "batches": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks lm_batch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="manifest name or GGUF path")
    parser.add_argument("--sizes", default="1,2,4,9,16")
    parser.add_argument("--context", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = sorted({int(x) for x in args.sizes.split(",")} | {1})
    results = measure(args.model, sizes, args.context, args.repeats)
    print(f"CPU: {cpu_model()}; {results['model']}, context {results['context']} tokens")
    for row in results["batches"]:
        print(f"  {row['tokens']:>3} tokens: {row['min_s'] * 1000:7.1f} ms "
              f"(median {row['median_s'] * 1000:.1f}), {row['steps_of_one']} single steps")
    write_results("lm_batch", vars(args), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
