"""``python -m benchmarks chat``: what the chat costs in memory and time.

Measures, for one GGUF (default: the manifest's default LM):

- memory (psutil USS, PSS, RSS) after loading the model's first context, then after a
  second context on the same engine: what a chat context beside the extraction's would
  cost (each context is a llama.cpp model of its own, with its own repacked weights), and
  why the chat answers on the extraction's context instead;
- a streamed answer: seconds to the first piece and pieces per second, with a memory block
  of about 300 tokens in the system prompt;
- ``Memory.context`` latency (p50, p99) on a store of ``--facts`` facts, counting tokens
  with the approximation and with the model's tokenizer.

Writes ``benchmarks/results/chat.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import machine_info, percentiles, scratch_dir, write_results


def _memory_mb() -> dict[str, float]:
    import psutil

    info = psutil.Process().memory_full_info()
    return {"uss_mb": round(info.uss / 2**20, 1), "pss_mb": round(info.pss / 2**20, 1),
            "rss_mb": round(info.rss / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks chat", description=__doc__)
    parser.add_argument("--model", default=None, help="GGUF name or path [default LM]")
    parser.add_argument("--facts", type=int, default=2000, help="facts in the context store")
    parser.add_argument("--queries", type=int, default=100, help="context calls to time")
    parser.add_argument("--answer-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    from engine.backends.embed import HashingEmbedder
    from engine.backends.lm import CHAT_SLOT, LlamaCppEngine, resolve_gguf
    from engine.memory import Memory
    from engine.retrieval.context import APPROXIMATE, TokenCounter, build_context

    path, name = resolve_gguf(args.model)
    engine = LlamaCppEngine(path, name=name)
    results: dict[str, Any] = {"model": name, "before_load": _memory_mb()}
    engine.load(CHAT_SLOT)
    results["chat_context_loaded"] = _memory_mb()
    engine.load("extraction")  # a second context on the same engine
    results["two_contexts_loaded"] = _memory_mb()

    with scratch_dir("chat") as folder:
        memory = Memory(folder / "m.duckdb", embedder=HashingEmbedder(64), infer=False)
        texts = [f"User fact number {i}: likes topic {i % 97} and place {i % 13}"
                 for i in range(args.facts)]
        memory.add(texts, user_id="maria", observed_at="2026-05-01")
        queries = [f"topic {i % 97} place {i % 13}" for i in range(args.queries)]
        block = None
        timings: dict[str, Any] = {}
        counters = {"approximate": APPROXIMATE,
                    "llama_tokenizer": TokenCounter(engine.count_tokens, name)}
        for label, counter in counters.items():
            samples = []
            for query in queries:
                start = time.perf_counter()
                hits = memory.search(query, user_id="maria", k=20)
                block = build_context(memory.store, hits, user_id="maria", max_tokens=300,
                                      counter=counter)
                samples.append(time.perf_counter() - start)
            timings[label] = percentiles(samples)
        results["context_latency_ms"] = timings
        memory.close()

    assert block is not None
    messages = [{"role": "system", "content": "You are a friendly assistant.\n\n" + block.text},
                {"role": "user", "content": "What do you know about me?"}]
    start = time.perf_counter()
    first = None
    pieces = 0
    for _ in engine.chat_stream(messages, max_tokens=args.answer_tokens, temperature=0.0):
        pieces += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    results["answer"] = {
        "system_prompt_tokens": engine.count_tokens(messages[0]["content"]),
        "first_piece_s": round(first or total, 2), "pieces": pieces,
        "pieces_per_s_after_first": round((pieces - 1) / max(total - (first or 0), 1e-9), 1),
        "total_s": round(total, 2),
    }
    engine.close()
    out = write_results("chat", vars(args), results)
    print(f"CPU: {machine_info().get('cpu')}")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"written to {out}")
    return 0
