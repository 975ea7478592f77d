"""LoCoMo evidence retrieval: BM25 vs vectors vs the engine's hybrid search.

Raw-turn mode: every turn of a conversation is stored with ``infer=False`` as one fact
``"<speaker>: <text>"`` (the documents the issue's baselines were measured on),
``observed_at`` = its session's date, metadata ``{dia_id, speaker, session}``; one
user per conversation. Each question (categories 1-4; 5 is adversarial and excluded)
is the query and its evidence turns are the answer. Reported per split (``tune``:
the conversations the fusion weights were tuned on, ``held_out``: the others,
``all``) and per category: evidence recall@1/5/10/20 (share of a question's evidence
turns in the top k, averaged) and MRR (first evidence turn, cut at 20).

Facts mode (``--facts``): the LM extracts facts from every turn of the chosen
conversations (``--facts-conversations``, default conv-30; ``--max-turns`` for a
shorter run), one ``add(infer=True)`` per turn with the speaker as the message's name,
so each fact points back to the turn it came from (its ADD/SUPERSEDE/UPDATE/DUPLICATE
events name the turn's message). The same questions are scored on the extracted facts
and on the raw turns; recall counts each evidence turn once however many of its facts
are retrieved. Extraction time per turn and the turns that gave no fact are reported.

``--latency`` also times hybrid, BM25 and vector search end to end (query embedding
by the real MiniLM, uncached, + search + DuckDB fetch of the hits) at 10k and 100k
facts for one user, after a warm-up search has loaded the indexes. The facts are LoCoMo
turns repeated with a counter suffix, whose stored vectors are the real MiniLM vectors
of the turns plus small noise (embedding 100k texts would take most of an hour on 2
cores and would not change search cost).

Run: ``python -m benchmarks locomo [--data PATH] [--latency] [--tune] [--facts]``. The data is
read from ``../shared/data/locomo/locomo_dev.json`` (CC BY-NC 4.0: never copied here).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    default_embedder_spec,
    percentiles,
    progress,
    pyplot,
    save_plot,
    scratch_dir,
    write_results,
)

__all__ = ["main"]

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/locomo/locomo_dev.json"
TUNE = ("conv-26", "conv-30", "conv-41")
MODES = ("lexical", "vector", "hybrid")
KS = (1, 5, 10, 20)
_DIA = re.compile(r"D\d+:\d+")


@dataclass
class Question:
    sample: str
    text: str
    category: int
    evidence: set[str]


@dataclass
class Conversation:
    sample: str
    sessions: list[tuple[datetime, list[dict[str, Any]]]]
    questions: list[Question]


def _session_date(raw: str) -> datetime:
    return datetime.strptime(raw.strip(), "%I:%M %p on %d %B, %Y")


def load(path: Path) -> tuple[list[Conversation], int]:
    """Conversations with their usable questions, and how many questions were dropped
    (no well-formed evidence id naming a real turn)."""
    data = json.loads(path.read_text())
    conversations, dropped = [], 0
    for sample in data:
        conv = sample["conversation"]
        sessions: list[tuple[datetime, list[dict[str, Any]]]] = []
        turn_ids: set[str] = set()
        n = 1
        while f"session_{n}" in conv:
            turns = conv[f"session_{n}"]
            sessions.append((_session_date(conv[f"session_{n}_date_time"]), turns))
            turn_ids.update(t["dia_id"] for t in turns)
            n += 1
        questions = []
        for qa in sample["qa"]:
            if qa.get("category") == 5:
                continue
            evidence = {e for raw in qa.get("evidence", []) for e in _DIA.findall(str(raw))}
            evidence &= turn_ids
            if not evidence:
                dropped += 1
                continue
            questions.append(Question(sample["sample_id"], qa["question"], int(qa["category"]),
                                      evidence))
        conversations.append(Conversation(sample["sample_id"], sessions, questions))
    return conversations, dropped


def ingest(memory: Any, conversation: Conversation) -> dict[int, set[str]]:
    """Store every turn as a fact; returns fact id -> dia_ids (duplicates share a fact)."""
    dia_of: dict[int, set[str]] = {}
    for number, (date, turns) in enumerate(conversation.sessions, start=1):
        messages = [
            {"role": "user", "content": f"{t['speaker']}: {t['text']}",
             "metadata": {"dia_id": t["dia_id"], "speaker": t["speaker"], "session": number}}
            for t in turns
        ]
        result = memory.add(messages, user_id=conversation.sample, observed_at=date,
                            infer=False)
        fact_of = {e.message_id: e.fact_id for e in result.events
                   if e.kind in ("ADD", "DUPLICATE")}
        for turn, message_id in zip(turns, result.message_ids, strict=True):
            dia_of.setdefault(int(fact_of[message_id]), set()).add(turn["dia_id"])
    return dia_of


def ingest_facts(memory: Any, conversation: Conversation, max_turns: int | None = None
                 ) -> tuple[dict[int, set[str]], dict[str, Any]]:
    """Facts mode: each turn is added with ``infer=True`` (the LM extracts facts), one
    turn per call so that every fact points back to the turn it came from (its
    metadata and its ADD/SUPERSEDE/UPDATE/DUPLICATE events name the turn). Returns
    fact id -> dia_ids, and counts: turns, facts, turns that gave none, seconds."""
    dia_of: dict[int, set[str]] = {}
    turns = [(number, date, t) for number, (date, session) in
             enumerate(conversation.sessions, start=1) for t in session][:max_turns]
    seconds: list[float] = []
    with_facts = 0
    for number, date, turn in progress(turns, f"extract {conversation.sample}"):
        start = time.perf_counter()
        result = memory.add(
            [{"role": "user", "name": turn["speaker"], "content": turn["text"],
              "metadata": {"dia_id": turn["dia_id"], "speaker": turn["speaker"],
                           "session": number}}],
            user_id=conversation.sample, observed_at=date, infer=True)
        seconds.append(time.perf_counter() - start)
        found = {e.fact_id for e in result.events if e.fact_id is not None and
                 e.kind in ("ADD", "SUPERSEDE", "CORRECT", "UPDATE", "DUPLICATE")}
        with_facts += bool(found)
        for fact_id in found:
            dia_of.setdefault(int(fact_id), set()).add(turn["dia_id"])
    current, unextracted = memory.store.query(
        "SELECT (SELECT count(*) FROM facts WHERE user_id = ? AND valid_to IS NULL"
        " AND expired_at IS NULL), (SELECT count(*) FROM messages WHERE user_id = ?"
        " AND status IN ('pending', 'failed'))", [conversation.sample] * 2)[0]
    return dia_of, {"turns": len(turns), "turns_with_facts": with_facts,
                    "current_facts": int(current),
                    "messages_not_extracted": int(unextracted),
                    "seconds": round(sum(seconds), 1),
                    "s_per_turn": percentiles(seconds),
                    "ingested": [t["dia_id"] for _, _, t in turns]}


def _gains(hits: Sequence[Any], dia_of: dict[int, set[str]], evidence: set[str]) -> list[int]:
    """How many evidence turns each ranked hit adds that no earlier hit covered (a turn
    can give several facts, and a duplicate fact several turns)."""
    seen: set[str] = set()
    gains = []
    for hit in hits:
        new = (dia_of.get(hit.id, set()) & evidence) - seen
        seen |= new
        gains.append(len(new))
    return gains


def _metrics(rows: Sequence[tuple[int, list[int], int]]) -> dict[str, Any]:
    """rows: (category, evidence turns gained at each rank, evidence count)."""
    def summary(subset: Sequence[tuple[int, list[int], int]]) -> dict[str, float]:
        out: dict[str, float] = {"n": len(subset)}
        for k in KS:
            out[f"recall@{k}"] = round(
                sum(min(sum(g[:k]), n) / n for _, g, n in subset) / max(len(subset), 1), 4)
        out["mrr"] = round(sum(next((1 / (i + 1) for i, x in enumerate(g) if x), 0.0)
                               for _, g, _ in subset) / max(len(subset), 1), 4)
        return out

    result: dict[str, Any] = {"overall": summary(rows)}
    for category in (1, 2, 3, 4):
        result[f"category_{category}"] = summary([r for r in rows if r[0] == category])
    return result


def evaluate(memory: Any, conversations: list[Conversation], dia_of: dict[int, set[str]],
             modes: Sequence[str] = MODES, ingested: set[str] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Metrics per mode and split (``ingested``: only questions whose evidence turns
    are all among these dia_ids)."""
    from engine.retrieval.search import SearchRequest

    per_mode: dict[str, dict[str, list[tuple[int, list[int], int]]]] = {
        m: {"tune": [], "held_out": [], "all": []} for m in modes}
    questions = [q for c in conversations for q in c.questions]
    if ingested is not None:
        questions = [q for q in questions if q.evidence <= ingested]
    for question in progress(questions, "locomo questions"):
        vector = memory.embedder.embed_query(question.text)
        split = "tune" if question.sample in TUNE else "held_out"
        for mode in modes:
            request = SearchRequest(query=question.text, user_id=question.sample, agent_id=None,
                                    run_id=None, k=max(KS), filters=None, as_of=None,
                                    explain=False, mode=mode)
            hits = memory.searcher.search(request, vector)
            row = (question.category, _gains(hits, dia_of, question.evidence),
                   len(question.evidence))
            per_mode[mode][split].append(row)
            per_mode[mode]["all"].append(row)
    return {m: {s: _metrics(rows) for s, rows in splits.items()} for m, splits in
            per_mode.items()}


def tune(memory: Any, conversations: list[Conversation], dia_of: dict[int, set[str]]
         ) -> list[dict[str, Any]]:
    """Recall@10 on the tuning split for a small grid around the chosen weights."""
    from engine.retrieval.fusion import HYBRID

    tuning = [c for c in conversations if c.sample in TUNE]
    original = memory.searcher.weights
    grid = []
    for vector in (0.7, 1.0, 1.5):
        for name in (0.0, 0.1, 0.2):
            for time_w in (0.0, 0.3):
                for neighbour in (0.0, 0.3):
                    grid.append(replace(HYBRID, vector=vector, name=name, time=time_w,
                                        neighbour=neighbour))
    results = []
    try:
        for weights in progress(grid, "tuning grid"):
            memory.searcher.weights = weights
            scores = evaluate(memory, tuning, dia_of, modes=("hybrid",))
            results.append({"weights": weights.__dict__,
                            "tune_recall@10": scores["hybrid"]["tune"]["overall"]["recall@10"]})
    finally:
        memory.searcher.weights = original
    return sorted(results, key=lambda r: -r["tune_recall@10"])


class _PrecomputedEmbedder:
    """The real embedder for queries; stored texts take vectors from a lookup table."""

    def __init__(self, real: Any, table: dict[str, Any]) -> None:
        self.real, self.table = real, table
        self.identity, self.dim = real.identity, real.dim

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        missing = [t for t in texts if t not in self.table]  # text normalised by the engine
        if missing:
            self.table.update(zip(missing, self.real.embed(missing), strict=True))
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    def embed_query(self, text: str) -> Any:
        return self.real.embed_query(text)


def latency(conversations: list[Conversation], spec: str, sizes: Sequence[int],
            queries: int, workdir: Path) -> dict[str, Any]:
    """End-to-end search latency per mode at each store size (one user)."""
    import numpy as np

    from engine.backends.embed import load_embedder
    from engine.memory import Memory
    from engine.retrieval.search import SearchRequest

    real = load_embedder(spec, device="cpu")
    turns = [(date, f"{t['speaker']}: {t['text']}") for c in conversations
             for date, session in c.sessions for t in session]
    base = real.embed([text for _, text in turns])
    rng = np.random.default_rng(0)
    questions = [q.text for c in conversations for q in c.questions]
    out: dict[str, Any] = {}
    for size in sizes:
        table, messages = {}, []
        for i in range(size):
            date, text = turns[i % len(turns)]
            text = f"{text} (#{i // len(turns)})" if i >= len(turns) else text
            vector = base[i % len(turns)] + rng.normal(0, 0.02, base.shape[1])
            table[text] = vector / np.linalg.norm(vector)
            messages.append((date, text))
        fresh = load_embedder(spec, device="cpu")  # an empty query cache for every size
        memory = Memory(workdir / f"latency-{size}.duckdb",
                        embedder=_PrecomputedEmbedder(fresh, table))
        start = time.perf_counter()
        batch = 1000
        for i in range(0, size, batch):
            chunk = messages[i:i + batch]
            memory.add([{"role": "user", "content": t, "observed_at": d} for d, t in chunk],
                       user_id="bench", infer=False)
        ingest_s = time.perf_counter() - start
        memory.search("warm up the indexes", user_id="bench")
        result: dict[str, Any] = {"facts": size, "ingest_s": round(ingest_s, 1)}
        for number, mode in enumerate(MODES):
            # A fresh slice of questions per mode, so no query embedding is cached.
            chosen = questions[number * queries:(number + 1) * queries]
            end_to_end, search_only, embedding = [], [], []
            for q in chosen:
                t0 = time.perf_counter()
                vector = memory.embedder.embed_query(q)
                t1 = time.perf_counter()
                memory.searcher.search(SearchRequest(q, "bench", None, None, 10, None, None,
                                                     False, mode), vector)
                t2 = time.perf_counter()
                end_to_end.append(t2 - t0)
                search_only.append(t2 - t1)
                embedding.append(t1 - t0)
            result[mode] = {"end_to_end": percentiles(end_to_end),
                            "search_only": percentiles(search_only),
                            "query_embedding": percentiles(embedding)}
        out[str(size)] = result
        memory.close()
    return out


def facts_mode(conversations: list[Conversation], spec: str, args: argparse.Namespace,
               workdir: Path, raw_dia_of: dict[int, set[str]]) -> dict[str, Any]:
    """Facts mode on the chosen conversations, beside raw-turn mode on the same questions."""
    from engine.memory import Memory

    wanted = [c.strip() for c in args.facts_conversations.split(",") if c.strip()]
    chosen = [c for c in conversations if c.sample in wanted]
    if not chosen:
        raise SystemExit(f"no conversation named {wanted} in the data")
    memory = Memory(workdir / "locomo-facts.duckdb", embedder=spec, device="cpu",
                    extractor=args.lm, actor="locomo")
    dia_of: dict[int, set[str]] = {}
    extraction: dict[str, Any] = {}
    ingested: set[str] = set()
    try:
        for conversation in chosen:
            found, counts = ingest_facts(memory, conversation, args.max_turns)
            dia_of.update(found)
            ingested.update(counts.pop("ingested"))
            extraction[conversation.sample] = counts
        facts = evaluate(memory, chosen, dia_of, ingested=ingested)
    finally:
        memory.close()
    raw = Memory(workdir / "locomo.duckdb", embedder=spec, device="cpu", read_only=True)
    try:
        turns = evaluate(raw, chosen, raw_dia_of, ingested=ingested)
    finally:
        raw.close()
    return {"conversations": wanted, "lm": args.lm or "manifest default",
            "max_turns": args.max_turns, "extraction": extraction,
            "facts": {mode: facts[mode]["all"] for mode in MODES},
            "raw_turns_same_questions": {mode: turns[mode]["all"] for mode in MODES}}


def _plot(results: dict[str, Any], name: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["overall", "category_1", "category_2", "category_3", "category_4"]
    for ax, split in zip(axes, ("held_out", "all"), strict=True):
        width = 0.27
        for i, mode in enumerate(MODES):
            values = [results[mode][split][label]["recall@10"] for label in labels]
            ax.bar([x + (i - 1) * width for x in range(len(labels))], values, width,
                   label={"lexical": "BM25"}.get(mode, mode))
        ax.set_xticks(range(len(labels)), [label.replace("category_", "cat ") for label in labels])
        ax.set_ylim(0, 1)
        ax.set_title(f"LoCoMo evidence recall@10 ({split})")
        ax.legend()
    path = save_plot(fig, name)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m benchmarks locomo``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks locomo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--embedder", default=None, help="default: the bundled MiniLM")
    parser.add_argument("--results-name", default="locomo",
                        help="results file name (e.g. locomo_int8 for another embedder's run)")
    parser.add_argument("--tune", action="store_true", help="also run the weight grid")
    parser.add_argument("--latency", action="store_true", help="also time 10k/100k facts")
    parser.add_argument("--latency-only", action="store_true",
                        help="time 10k/100k facts and keep the saved recall results")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per mode")
    parser.add_argument("--facts", action="store_true",
                        help="also run facts mode: the LM extracts facts from every turn")
    parser.add_argument("--facts-conversations", default="conv-30",
                        help="conversations for facts mode, comma-separated (default conv-30,"
                             " the shortest: about 30 minutes with the default LM on 2 cores)")
    parser.add_argument("--lm", default=None, help="facts mode LM (default: the manifest's)")
    parser.add_argument("--max-turns", type=int, default=None,
                        help="facts mode: extract only the first N turns of each conversation"
                             " (questions whose evidence lies beyond them are skipped)")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} not found (pass --data PATH)")
    from engine.memory import Memory

    spec = args.embedder or default_embedder_spec()
    conversations, dropped = load(args.data)
    results: dict[str, Any] = {}
    if args.latency_only:
        with scratch_dir("locomo") as workdir:
            sizes = [int(s) for s in args.sizes.split(",") if s]
            timing = latency(conversations, spec, sizes, args.queries, workdir)
        saved = json.loads((RESULTS_DIR / "locomo.json").read_text())
        saved["results"]["latency"] = timing
        write_results("locomo", saved["config"], saved["results"])
        print(json.dumps(timing, indent=1))
        return 0
    with scratch_dir("locomo") as workdir:
        memory = Memory(workdir / "locomo.duckdb", embedder=spec, device="cpu")
        start = time.perf_counter()
        dia_of: dict[int, set[str]] = {}
        for conversation in progress(conversations, "ingest"):
            dia_of.update(ingest(memory, conversation))
        results["ingest_s"] = round(time.perf_counter() - start, 1)
        results.update(evaluate(memory, conversations, dia_of))
        if args.tune:
            results["tuning_grid"] = tune(memory, conversations, dia_of)
        memory.close()
        if args.latency:
            sizes = [int(s) for s in args.sizes.split(",") if s]
            results["latency"] = latency(conversations, spec, sizes, args.queries, workdir)
        if args.facts:
            results["facts_mode"] = facts_mode(conversations, spec, args, workdir,
                                               raw_dia_of=dia_of)
    results["questions"] = sum(len(c.questions) for c in conversations)
    results["questions_dropped"] = dropped
    config = {"data": str(args.data), "embedder": spec, "tune_split": list(TUNE),
              "held_out_split": [c.sample for c in conversations if c.sample not in TUNE],
              "modes": {"lexical": "BM25 alone", "vector": "hnswlib MiniLM alone",
                        "hybrid": "engine default (engine.retrieval.fusion.HYBRID)"}}
    path = write_results(args.results_name, config, results)
    _plot(results, args.results_name)
    for split in ("held_out", "all"):
        print(f"[{split}]")
        for mode in MODES:
            row = results[mode][split]
            print(f"  {mode:8s} " + "  ".join(
                f"{label[-1] if label != 'overall' else 'all'}:"
                f"{row[label]['recall@10']:.3f}" for label in
                ("overall", "category_1", "category_2", "category_3", "category_4"))
                  + f"  mrr {row['overall']['mrr']:.3f}")
    if "facts_mode" in results:
        for label, key in (("facts", "facts"), ("raw turns", "raw_turns_same_questions")):
            row = results["facts_mode"][key]["hybrid"]["overall"]
            print(f"[{label}, {','.join(results['facts_mode']['conversations'])}] hybrid "
                  f"n={row['n']} " + "  ".join(f"r@{k}:{row[f'recall@{k}']:.3f}" for k in KS)
                  + f"  mrr {row['mrr']:.3f}")
    print(f"wrote {path}")
    return 0
