"""Multi-turn update scenarios: does memory stay true as the user's facts change?

``benchmarks/data/scenarios.jsonl`` holds hand-written conversations (English,
Portuguese, Spanish, German, French) in which facts change, implicitly ("we just got the
keys to our flat in Porto") or with cue words, get corrected, arrive late about the past,
accumulate (a second pet) or carry numbers; each has checks, English questions whose top
search hit must contain ``expect`` (case-insensitive) and not ``expect_not``, now or
``as_of`` a date between turns.

Run one engine checkout and model per subprocess, then summarise::

    python -m benchmarks.scenarios run --engine-path . --models qwen2.5-coder-0.5b \
        [--split test] [--limit N] [--budget-s S] [--kv-dir DIR] [--raw] [--out-dir D]
    python -m benchmarks.scenarios summarise result.json [more.json ...]
    python -m benchmarks.scenarios replay result.json [--engine-path .]

``run`` starts ``benchmarks/scenario_worker.py`` (which uses only the public API shared
by old and new engine versions) per model and writes ``scenarios-<label>.json`` (raw)
plus a summary; ``summarise`` prints :func:`summarise` of raw result files as JSON and a
Markdown table; ``replay`` gives the facts a run extracted to another engine's rules and
search without the LM (:mod:`benchmarks.scenario_replay`) and lists the checks that changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "scenarios.jsonl"
WORKER = Path(__file__).resolve().parent / "scenario_worker.py"
REPLAY = Path(__file__).resolve().parent / "scenario_replay.py"
SPLITS = ("train", "val", "test")
LANGS = ("en", "pt", "es", "de", "fr")
TAGS = ("implicit", "explicit", "move", "employer", "routine", "version", "phone", "people",
        "correction", "late-past", "multi-valued", "number", "multi-fact", "chit-chat")
"""Every tag a scenario may carry. ``implicit``: the change has no cue word; ``explicit``:
stopped/quit/switched; ``move``, ``employer``, ``routine``, ``version``, ``phone``: what
changes; ``people``: a fact about someone the user mentions; ``correction``: the user
corrects an earlier turn (the corrected value holds ``as_of`` any date); ``late-past``:
news about an earlier period that must not replace the current fact; ``multi-valued``: a
slot with several values (pets, hobbies), each must stay findable; ``number``: a number
changes; ``multi-fact``: several facts in one message; ``chit-chat``: turns with no
facts in between."""

REQUIRED = {"id": str, "split": str, "lang": str, "tags": list, "turns": list, "checks": list}


def load_scenarios(split: str = "test", path: Path = DATA) -> list[dict[str, Any]]:
    """The scenarios of ``split`` ("train", "val", "test" or "all"), in file order."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if split == "all" or r["split"] == split]


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


def problems(scenario: dict[str, Any]) -> list[str]:
    """What is wrong with one scenario (empty when it is well formed)."""
    out = []
    for key, kind in REQUIRED.items():
        if not isinstance(scenario.get(key), kind):
            out.append(f"{key} missing or not a {kind.__name__}")
    if out:
        return out
    if scenario["split"] not in SPLITS:
        out.append(f"split {scenario['split']!r}")
    if scenario["lang"] not in LANGS:
        out.append(f"lang {scenario['lang']!r}")
    out += [f"unknown tag {t!r}" for t in scenario["tags"] if t not in TAGS]
    turns, checks = scenario["turns"], scenario["checks"]
    if not 2 <= len(turns) <= 4:
        out.append(f"{len(turns)} turns (2-4)")
    if not 2 <= len(checks) <= 4:
        out.append(f"{len(checks)} checks (2-4)")
    days = []
    for t in turns:
        if not (isinstance(t.get("content"), str) and t["content"].strip() and t.get("at")):
            out.append(f"bad turn {t!r}")
            continue
        if t.get("role", "user") not in ("user", "assistant"):
            out.append(f"role {t.get('role')!r}")
        days.append(_day(t["at"]))
    if days != sorted(days):
        out.append("turn dates out of order")
    if not any(c.get("as_of") is None for c in checks):
        out.append("no check of the current state")
    for c in checks:
        if not (isinstance(c.get("query"), str) and isinstance(c.get("expect"), str)
                and c["expect"].strip()):
            out.append(f"bad check {c!r}")
            continue
        if c.get("as_of") is None or not days:
            continue
        when = _day(c["as_of"])
        if "late-past" in scenario["tags"] and when < days[0]:
            continue  # a date in the past the late news is about
        if not days[0] < when <= days[-1] or when in days:
            out.append(f"as_of {c['as_of']} does not fall between turns")
    return out


# ------------------------------------------------------------------------- scoring


def _rate(passed: int, total: int) -> dict[str, Any]:
    return {"passed": passed, "total": total,
            "rate": round(passed / total, 4) if total else None}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[k], 4)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one worker result (the JSON ``scenario_worker.py`` writes).

    ``checks``: passed / total over the checks of every scenario that ran (a scenario
    that failed or was cut off counts its checks as failed); ``by_tag``, ``by_lang``,
    ``by_split`` and ``by_kind`` ("current" vs "as_of") the same per group;
    ``turn_s``: median / p95 / mean wall seconds per added turn; ``lm_calls_per_turn``,
    ``completion_tokens_per_turn``, ``prompt_tokens_per_turn``, ``reused_tokens_per_turn``:
    means over turns with LM statistics (None without); ``first_add_s``, ``load_s``,
    ``peak_rss_mb`` as measured; ``scenarios``: ran, complete, errors, not run.
    """
    total = passed = 0
    groups: dict[str, dict[str, list[int]]] = {
        "by_tag": defaultdict(lambda: [0, 0]), "by_lang": defaultdict(lambda: [0, 0]),
        "by_split": defaultdict(lambda: [0, 0]), "by_kind": defaultdict(lambda: [0, 0]),
    }
    turn_s: list[float] = []
    per_stat: dict[str, list[float]] = defaultdict(list)
    errors = complete = turn_errors = 0
    for sc in raw.get("scenarios", []):
        complete += bool(sc.get("complete"))
        errors += sc.get("error") is not None
        for turn in sc.get("turns", []):
            turn_errors += turn.get("error") is not None
            if turn.get("wall_s") is not None:
                turn_s.append(float(turn["wall_s"]))
            for key in ("calls", "completion_tokens", "prompt_tokens", "reused_tokens"):
                if turn.get(key) is not None:
                    per_stat[key].append(float(turn[key]))
        checks = sc.get("checks") or []
        if sc.get("complete", True):
            ok = [bool(c.get("passed")) for c in checks]
            kinds = ["as_of" if c.get("as_of") else "current" for c in checks]
        else:  # failed or cut off: every check it should have run counts as failed
            kinds = sc.get("check_kinds") or ["current"] * sc.get("n_checks", len(checks))
            ok = [False] * len(kinds)
        keys = ([("by_tag", t) for t in sc.get("tags", [])]
                + [("by_lang", sc.get("lang")), ("by_split", sc.get("split"))])
        for good, kind in zip(ok, kinds, strict=False):
            total += 1
            passed += good
            for group, key in [*keys, ("by_kind", kind)]:
                groups[group][key][0] += good
                groups[group][key][1] += 1
    out: dict[str, Any] = {
        "label": raw.get("label") or raw.get("model") or raw.get("mode"),
        "engine_path": raw.get("engine_path"), "model": raw.get("model"),
        "mode": raw.get("mode"), "split": raw.get("split"),
        "checks": _rate(passed, total),
    }
    for group, counts in groups.items():
        out[group] = {k: _rate(p, t) for k, (p, t) in sorted(counts.items(), key=str)}
    out["turn_s"] = {"median": _pct(turn_s, 0.5), "p95": _pct(turn_s, 0.95),
                     "mean": _mean(turn_s), "n": len(turn_s)}
    out["lm_calls_per_turn"] = _mean(per_stat["calls"])
    out["completion_tokens_per_turn"] = _mean(per_stat["completion_tokens"])
    out["prompt_tokens_per_turn"] = _mean(per_stat["prompt_tokens"])
    out["reused_tokens_per_turn"] = _mean(per_stat["reused_tokens"])
    for key in ("first_add_s", "load_s", "embedder_warm_s", "peak_rss_mb", "wall_s"):
        value = raw.get(key)
        out[key] = round(float(value), 4) if value is not None else None
    out["scenarios"] = {"ran": len(raw.get("scenarios", [])), "complete": complete,
                        "errors": errors, "turn_errors": turn_errors,
                        "not_run": len(raw.get("not_run", []))}
    out["timed_out"] = bool(raw.get("timed_out"))
    out["error"] = raw.get("error")
    return out


def failures(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed check with its scenario, query and top hit (for reading by eye)."""
    out = []
    for sc in raw.get("scenarios", []):
        for c in sc.get("checks", []):
            if not c.get("passed"):
                out.append({"id": sc["id"], "lang": sc.get("lang"), "query": c["query"],
                            "as_of": c.get("as_of"), "expect": c["expect"],
                            "expect_not": c.get("expect_not"), "top": c.get("top"),
                            "rank": c.get("rank")})
        if sc.get("error"):
            out.append({"id": sc["id"], "error": sc["error"]})
    return out


def markdown(summaries: list[dict[str, Any]]) -> str:
    """One table row per summary, then pass rates per tag and language."""
    def pct(r: dict[str, Any] | None) -> str:
        if not r or r["rate"] is None:
            return "-"
        return f"{100 * r['rate']:.0f}% ({r['passed']}/{r['total']})"

    def num(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = ["| run | checks | current | as_of | turn s p50 | p95 | LM calls/turn | "
             "gen tokens/turn | first add s | load s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s['label']} | {pct(s['checks'])} | {pct(s['by_kind'].get('current'))} | "
            f"{pct(s['by_kind'].get('as_of'))} | {num(s['turn_s']['median'])} | "
            f"{num(s['turn_s']['p95'])} | {num(s['lm_calls_per_turn'])} | "
            f"{num(s['completion_tokens_per_turn'], '{:.0f}')} | {num(s['first_add_s'])} | "
            f"{num(s['load_s'])} | {num(s['peak_rss_mb'], '{:.0f}')} |")
    for group in ("by_tag", "by_lang"):
        keys = sorted({k for s in summaries for k in s[group]})
        lines += ["", f"| {group[3:]} | " + " | ".join(s["label"] for s in summaries) + " |",
                  "|---|" + "---|" * len(summaries)]
        lines += [f"| {k} | " + " | ".join(pct(s[group].get(k)) for s in summaries) + " |"
                  for k in keys]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- CLI


def worker_command(engine_path: str, out: Path, *, model: str | None = None,
                   split: str = "test", limit: int | None = None,
                   budget_s: float | None = None, kv_dir: str | None = None,
                   raw: bool = False, embedder: str | None = None,
                   threads: int | None = None) -> list[str]:
    cmd = [sys.executable, str(WORKER), "--engine-path", engine_path, "--split", split,
           "--out", str(out)]
    for flag, value in (("--model", model), ("--limit", limit), ("--budget-s", budget_s),
                        ("--kv-dir", kv_dir), ("--embedder", embedder),
                        ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + (["--raw"] if raw else [])


def changed_checks(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks that pass in one raw result and fail in the other (same scenarios)."""
    passed = {(sc["id"], c["index"]): c for sc in after.get("scenarios", [])
              for c in sc.get("checks", [])}
    out = []
    for sc in before.get("scenarios", []):
        for c in sc.get("checks", []):
            now = passed.get((sc["id"], c["index"]))
            if now is not None and bool(now.get("passed")) != bool(c.get("passed")):
                out.append({"id": sc["id"], "query": c["query"], "as_of": c.get("as_of"),
                            "now": "passes" if now.get("passed") else "fails",
                            "top": now.get("top")})
    return out


def _replay(raw_path: Path, engine_path: str, out: Path | None) -> int:
    out = out or raw_path.with_name(raw_path.stem + "-replay.json")
    cmd = [sys.executable, str(REPLAY), "--engine-path", engine_path, "--raw", str(raw_path),
           "--out", str(out)]
    print("$", " ".join(cmd), file=sys.stderr)
    if subprocess.run(cmd, check=False).returncode != 0:
        return 1
    before, after = json.loads(raw_path.read_text()), json.loads(out.read_text())
    if not after.get("noted"):
        print("note: this run did not note what the extractor returned; its facts were read "
              "back from its events, which is close but not exact", file=sys.stderr)
    summaries = [summarise({**before, "label": "run"}), summarise({**after, "label": "replay"})]
    print(markdown(summaries))
    print(json.dumps(changed_checks(before, after), indent=1, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenarios")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the worker per model, then summarise")
    run.add_argument("--engine-path", default=".")
    run.add_argument("--models", default="", help="comma-separated; none with --raw")
    run.add_argument("--split", default="test", choices=(*SPLITS, "all"))
    run.add_argument("--limit", type=int)
    run.add_argument("--budget-s", type=float)
    run.add_argument("--kv-dir")
    run.add_argument("--raw", action="store_true")
    run.add_argument("--embedder")
    run.add_argument("--threads", type=int)
    run.add_argument("--label", default=None, help="prefix of the output names")
    run.add_argument("--out-dir", type=Path,
                     default=Path(__file__).resolve().parent / "results")
    rep = sub.add_parser("replay", help="the facts a run extracted through another engine's "
                         "rules and search, without the LM (benchmarks/scenario_replay.py)")
    rep.add_argument("raw", type=Path, help="a raw result file of `run`")
    rep.add_argument("--engine-path", default=".")
    rep.add_argument("--out", type=Path, default=None,
                     help="where the replay's raw result goes (default: beside RAW)")
    summ = sub.add_parser("summarise", help="summarise raw result files")
    summ.add_argument("files", nargs="+", type=Path)
    summ.add_argument("--failures", action="store_true", help="also list failed checks")
    args = parser.parse_args(argv)

    if args.command == "replay":
        return _replay(args.raw, args.engine_path, args.out)
    if args.command == "summarise":
        raws = [json.loads(p.read_text()) for p in args.files]
        summaries = [summarise(r) for r in raws]
        print(json.dumps(summaries, indent=1))
        print(markdown(summaries))
        if args.failures:
            for raw in raws:
                print(json.dumps(failures(raw), indent=1, ensure_ascii=False))
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()] or [None]
    if not args.raw and models == [None]:
        parser.error("--models is required without --raw")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for model in models:
        label = "-".join(x for x in (args.label, model or "raw") if x).replace("/", "_")
        out = args.out_dir / f"scenarios-{label}.json"
        cmd = worker_command(args.engine_path, out, model=model, split=args.split,
                             limit=args.limit, budget_s=args.budget_s, kv_dir=args.kv_dir,
                             raw=args.raw, embedder=args.embedder, threads=args.threads)
        print("$", " ".join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, check=False)
        if not out.exists():
            print(f"{label}: the worker wrote nothing (exit {proc.returncode})", file=sys.stderr)
            continue
        raw = json.loads(out.read_text())
        raw["label"] = label
        summaries.append(summarise(raw))
    stem = f"scenarios-{args.label}-summary" if args.label else "scenarios-summary"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(summaries, indent=1))
    (args.out_dir / f"{stem}.md").write_text(markdown(summaries))
    print(markdown(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
