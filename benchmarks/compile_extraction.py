"""Compile the extraction programs for one model with a DSPy optimizer.

``python -m benchmarks.compile_extraction [--model qwen2.5-coder-0.5b] [--demos 4]
[--candidates 4] [--out engine/extract/compiled/<model>.json]``

Optimizer: DSPy's ``LabeledFewShot`` inside a random search (what
``BootstrapFewShotWithRandomSearch`` does, without its bootstrapped traces): each of
``--candidates`` programs gets ``--demos`` gold examples sampled from a *demo pool* (two
thirds of the train split; for extraction the sample is stratified so every candidate
shows one chit-chat case answered with an empty list and one change of mind with its
``replaces``), is scored with ``dspy.Evaluate`` on the other third (the
*validation* part, never used as demos), and the best candidate (or the zero-shot
program, if no candidate beats it) wins, per predictor. Gold demos are exact
(hand-written); bootstrapping from the model's own traces would only copy a 0.5B
model's mistakes, and a full MIPROv2 run does not fit a
2-core CPU budget. The held-out test split is never seen here: measure it with
``python -m benchmarks extraction``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.extraction import Matcher, candidates_of, load_cases, match, turns_of

_ROOT = Path(__file__).resolve().parent.parent


def _examples(cases: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    from engine.extract.programs import format_candidates, format_conversation
    from engine.lm import import_dspy

    dspy = import_dspy()
    extract, resolve, relate = [], [], []
    for case in cases:
        if case["kind"] == "extract":
            observed, hints, conversation = format_conversation(turns_of(case))
            facts = [{"text": f["text"], "replaces": f.get("replaces") or "",
                      "category": f["category"], "about": f["about"],
                      "valid_from": f["valid_from"] or ""} for f in case["facts"]]
            extract.append(dspy.Example(observation_date=observed, date_hints=hints,
                                        conversation=conversation, facts=facts)
                           .with_inputs("observation_date", "date_hints", "conversation"))
        else:
            labels = [{"alias": i, "label": label} for i, label in enumerate(case["labels"])]
            resolve.append(dspy.Example(new_fact=case["new_fact"],
                                        stored_facts=format_candidates(candidates_of(case)),
                                        labels=labels).with_inputs("new_fact", "stored_facts"))
            for candidate, label in zip(candidates_of(case), case["labels"], strict=True):
                since = candidate.valid_from.date().isoformat()
                relate.append(dspy.Example(stored_fact=f"{candidate.text} (since {since})",
                                           new_fact=case["new_fact"], relation=label)
                              .with_inputs("stored_fact", "new_fact"))
    return extract, resolve, relate


def _stratified(pool: list[Any], k: int, rng: random.Random) -> list[Any]:
    """``k`` demos from ``pool``: one chit-chat, one change of mind, the rest at random."""
    def kind(example: Any) -> str:
        if not example.facts:
            return "chat"
        return "change" if any(f["replaces"] for f in example.facts) else "other"

    picked = [rng.choice([e for e in pool if kind(e) == want]) for want in ("chat", "change")
              if any(kind(e) == want for e in pool)][:k]
    rest = [e for e in pool if e not in picked]
    rng.shuffle(rest)
    demos = picked + rest[: k - len(picked)]
    rng.shuffle(demos)
    return demos


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_extraction")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--predictors", default="extract,resolve,relate",
                        help="which predictors to compile (the others keep --base's state)")
    parser.add_argument("--base", default=None,
                        help="a compiled program to start from (default: zero-shot)")
    args = parser.parse_args(argv)

    from engine.extract.programs import COMPILED_DIR, DspyExtractor
    from engine.lm import import_dspy, schema_adapter

    dspy = import_dspy()
    extractor = DspyExtractor(args.model, n_threads=args.threads,
                              program=args.base or False)
    matcher = Matcher()
    ex_all, rs_all, rl_all = _examples(load_cases("train"))
    # demo pool / validation: every third train case validates, the others are demos
    ex_pool = [e for i, e in enumerate(ex_all) if i % 3 != 2]
    ex_val = [e for i, e in enumerate(ex_all) if i % 3 == 2]
    rs_pool = [e for i, e in enumerate(rs_all) if i % 3 != 2]
    rs_val = [e for i, e in enumerate(rs_all) if i % 3 == 2]
    rl_pool = [e for i, e in enumerate(rl_all) if i % 3 != 2]
    rl_val = [e for i, e in enumerate(rl_all) if i % 3 == 2]

    def extract_metric(example: Any, pred: Any, trace: Any = None) -> float:
        gold = [f["text"] for f in example.facts]
        got = [str(_field(f, "text")) for f in (pred.get("facts") or [])]
        if not gold:
            return 1.0 if not got else 0.0
        if not got:
            return 0.0
        tp = len(match(matcher.sims(got, gold), 0.8))
        p, r = tp / len(got), tp / len(gold)
        return 2 * p * r / (p + r) if p + r else 0.0

    def resolve_metric(example: Any, pred: Any, trace: Any = None) -> float:
        gold = {d["alias"]: d["label"] for d in example["labels"]}  # .labels is a method
        got = {int(_field(d, "alias")): _field(d, "label") for d in (pred.get("labels") or [])}
        return sum(got.get(a, "unrelated") == lab for a, lab in gold.items()) / len(gold)

    def relate_metric(example: Any, pred: Any, trace: Any = None) -> float:
        return float(pred.get("relation") == example.relation)

    report: dict[str, Any] = {"model": args.model, "optimizer":
                              "LabeledFewShot + random search over demo sets (dspy.Evaluate)"}
    program = extractor.program
    with dspy.context(lm=extractor.lm, adapter=schema_adapter()):
        for name, pool, val, metric in (("extract", ex_pool, ex_val, extract_metric),
                                        ("resolve", rs_pool, rs_val, resolve_metric),
                                        ("relate", rl_pool, rl_val, relate_metric)):
            if name not in args.predictors.split(","):
                continue
            started = time.perf_counter()
            evaluate = dspy.Evaluate(devset=val, metric=metric, num_threads=1,
                                     display_progress=False, max_errors=1000)
            student = dspy.Predict(getattr(program, name).signature)
            tried = []
            best, best_score = student, float(evaluate(student).score)
            tried.append({"seed": "zero-shot", "score": round(best_score, 2)})
            for seed in range(args.candidates):
                rng = random.Random(args.seed + seed)
                if name == "extract":
                    shuffled = _stratified(pool, args.demos, rng)
                else:
                    shuffled = list(pool)
                    rng.shuffle(shuffled)
                candidate = dspy.LabeledFewShot(k=args.demos).compile(
                    student, trainset=shuffled, sample=name != "extract")
                score = float(evaluate(candidate).score)
                tried.append({"seed": args.seed + seed, "score": round(score, 2),
                              "demos": [d.get("conversation", d.get("new_fact"))
                                        for d in candidate.demos]})
                print(name, tried[-1], flush=True)
                if score > best_score:
                    best, best_score = candidate, score
            getattr(program, name).demos = list(best.demos)
            report[name] = {"pool": len(pool), "val": len(val), "demos": len(best.demos),
                            "best_val_score": round(best_score, 2), "candidates": tried,
                            "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out) if args.out else COMPILED_DIR / f"{extractor.model_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    report["out"] = str(out.relative_to(_ROOT)) if out.is_relative_to(_ROOT) else str(out)
    (_ROOT / "benchmarks" / "results" / "compile_extraction.json").write_text(
        json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    extractor.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
