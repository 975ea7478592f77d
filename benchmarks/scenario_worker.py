"""Run the multi-turn update scenarios against one engine checkout; write raw results.

A standalone script, run as a subprocess so that each engine version and model gets a
process (and a peak RSS) of its own::

    python benchmarks/scenario_worker.py --engine-path PATH --model NAME --split test \
        --out result.json [--limit N] [--budget-s S] [--kv-dir DIR] [--raw] \
        [--embedder NAME] [--threads N] [--data FILE] [--db FILE]

``--engine-path`` (a checkout holding the ``engine`` package) goes first on
``sys.path``. Only the public API that old and new engine versions share is used:
``Memory(path, extractor=..., [embedder=...])``, ``memory.add(text, user_id=...,
observed_at=..., infer=...)``, ``memory.search(query, user_id=..., as_of=...)`` and
``DspyExtractor(model)``; anything else (``extractor.engine.load()``, ``engine.stats``,
a ``kv_dir`` keyword) is used only when present. ``--raw`` adds every turn with
``infer=False`` (no LM): a retrieval-only floor, and what the tests run.

Every scenario gets a fresh user id in one DuckDB file. A turn dated ``YYYY-MM-DD`` is
observed at noon UTC of that day (plus one minute per earlier turn on the same day, so
turns stay ordered); an ``as_of`` date means midnight UTC of that day. The JSON written
(see :func:`run_scenarios` and :func:`main`) holds raw outcomes only; scoring and
summaries live in ``benchmarks/scenarios.py``. An exception in one scenario is recorded
in it and the run goes on; at ``--budget-s`` the run stops between turns, marks the
scenario in progress incomplete and lists the ones never started.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "scenarios.jsonl"
SCHEMA = 1
STAT_KEYS = ("calls", "prompt_tokens", "reused_tokens", "completion_tokens")
KV_KWARGS = ("kv_dir", "kv_cache_dir", "state_dir", "prefix_cache_dir")


def load(split: str = "test", path: Path = DATA, limit: int | None = None) -> list[dict[str, Any]]:
    """Scenarios of ``split`` ("train", "val", "test" or "all"), in file order."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if split == "all" or r["split"] == split]
    return rows[:limit] if limit is not None else rows


def turn_times(turns: list[dict[str, Any]]) -> list[datetime]:
    """Observation time of each turn: noon of its date, a minute later per same-day turn."""
    out: list[datetime] = []
    for turn in turns:
        at = turn["at"]
        when = datetime.fromisoformat(at)
        if len(at) == 10:  # a bare date
            when = when.replace(hour=12)
            if out and out[-1].date() == when.date() and out[-1] >= when:
                when = out[-1] + timedelta(minutes=1)
        out.append(when)
    return out


def as_of_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    if len(value) == 10:
        d = date.fromisoformat(value)
        return datetime(d.year, d.month, d.day)
    return datetime.fromisoformat(value)


def passes(check: dict[str, Any], top: str | None) -> bool:
    """A check passes when the top hit contains ``expect`` and not ``expect_not``."""
    if top is None:
        return False
    text = top.lower()
    if check["expect"].lower() not in text:
        return False
    bad = check.get("expect_not")
    return not (bad and bad.lower() in text)


# ------------------------------------------------------------------------- LM statistics


def _stats_of(extractor: Any) -> Any:
    engine = getattr(extractor, "engine", None) if extractor is not None else None
    return getattr(engine, "stats", None) if engine is not None else None


def _snapshot(stats: Any) -> dict[str, float] | None:
    if stats is None:
        return None
    try:
        snap = stats.snapshot() if hasattr(stats, "snapshot") else {}
    except Exception:
        snap = {}
    out = {}
    for key in STAT_KEYS:
        value = snap.get(key) if isinstance(snap, dict) else None
        if value is None:
            value = getattr(stats, key, None)
        if value is None:
            return None
        out[key] = float(value)
    return out


def _delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    if before is None or after is None:
        return {key: None for key in STAT_KEYS}
    return {key: int(after[key] - before[key]) for key in STAT_KEYS}


def _events(result: Any, memory: Any = None) -> list[dict[str, Any]]:
    out = []
    for event in getattr(result, "events", None) or []:
        out.append({"kind": getattr(event, "kind", None),
                    "text": getattr(event, "new_text", None) or getattr(event, "text", None),
                    "old_text": getattr(event, "old_text", None),
                    **_slot_of(memory, getattr(event, "fact_id", None))})
    return out


def _slot_of(memory: Any, fact_id: Any) -> dict[str, Any]:
    """The subject, slot, value and valid time of an event's fact, for reading failures
    (empty for engine versions without slots)."""
    if memory is None or fact_id is None:
        return {}
    try:
        fact = memory.get(fact_id)
    except Exception:  # an old engine, or a fact gone since: nothing to show
        return {}
    return {key: str(getattr(fact, key)) for key in ("subject", "slot", "value", "valid_from",
                                                     "valid_to") if hasattr(fact, key)}


# ------------------------------------------------------------------------- the core loop


_FACT_FIELDS = ("text", "about", "slot", "value", "category", "valid_from", "valid_to")


def record_extractions(extractor: Any) -> list[dict[str, Any]]:
    """Make ``extractor`` note what each of its calls returned, in the list returned
    (cleared by :func:`run_scenarios` before each turn), so that
    ``python -m benchmarks.scenarios replay`` can run the same facts through other rules
    without the LM."""
    noted: list[dict[str, Any]] = []
    extract = extractor.extract

    def noting(*args: Any, **kwargs: Any) -> Any:
        facts = extract(*args, **kwargs)
        for fact in facts:
            noted.append({key: (value.isoformat() if isinstance(value, datetime) else value)
                          for key in _FACT_FIELDS
                          if (value := getattr(fact, key, None)) is not None})
        return facts

    extractor.extract = noting
    return noted


def run_scenarios(scenarios: list[dict[str, Any]], memory: Any, *, extractor: Any = None,
                  raw: bool = False, budget_s: float | None = None, k: int = 10,
                  user_prefix: str = "scn", started: float | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  extracted: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Add each scenario's turns to ``memory`` and run its checks; raw outcomes.

    Returns ``{"scenarios": [...], "not_run": [ids], "timed_out": bool,
    "first_add_s": float | None}``. Each scenario: ``id, split, lang, tags, user_id,
    complete, error, wall_s, n_checks, check_kinds, turns: [{index, at, observed_at, chars,
    wall_s, calls, prompt_tokens, reused_tokens, completion_tokens, events: [{kind, text,
    old_text}], error}], checks: [{index, query, as_of, expect, expect_not, passed, top, top_k,
    rank, search_s, error}]``, and each turn ``extracted`` (what the extractor returned)
    when ``extracted`` is the list of :func:`record_extractions`. ``rank`` is the 1-based
    position of the first hit that passes the check (None: none of the ``k``). Statistics
    are None when the extractor exposes no ``engine.stats``.
    """
    started = clock() if started is None else started
    stats = _stats_of(extractor)
    out: dict[str, Any] = {"scenarios": [], "not_run": [], "timed_out": False,
                           "first_add_s": None}
    from tqdm import tqdm

    bar = tqdm(total=len(scenarios), desc="scenarios", unit="scenario", leave=False,
               file=sys.stderr, disable=bool(os.environ.get("MEMENGINE_BENCH_QUIET")))
    for n, scenario in enumerate(scenarios):
        bar.update(int(n > 0))
        if budget_s is not None and clock() - started > budget_s:
            out["timed_out"] = True
            out["not_run"] = [s["id"] for s in scenarios[n:]]
            break
        user = f"{user_prefix}-{n:03d}-{scenario['id']}"
        rec: dict[str, Any] = {"id": scenario["id"], "split": scenario.get("split"),
                               "lang": scenario.get("lang"), "tags": scenario.get("tags", []),
                               "user_id": user, "complete": False, "error": None,
                               "n_checks": len(scenario.get("checks", [])),
                               "check_kinds": ["as_of" if c.get("as_of") else "current"
                                               for c in scenario.get("checks", [])],
                               "turns": [], "checks": []}
        t_scenario = clock()
        try:
            times = turn_times(scenario["turns"])
            for i, (turn, when) in enumerate(zip(scenario["turns"], times, strict=True)):
                if budget_s is not None and clock() - started > budget_s:
                    out["timed_out"] = True
                    raise TimeoutError("budget reached during the scenario")
                content: Any = turn["content"]
                if turn.get("role", "user") != "user":
                    content = {"role": turn["role"], "content": turn["content"]}
                before = _snapshot(stats)
                if extracted is not None:
                    extracted.clear()
                t0 = clock()
                error = None
                result = None
                try:
                    result = memory.add(content, user_id=user, observed_at=when,
                                        infer=not raw)
                except TimeoutError:
                    raise
                except Exception as exc:  # the turn failed: record it, go on
                    error = f"{type(exc).__name__}: {exc}"[:500]
                wall = clock() - t0
                if out["first_add_s"] is None:
                    out["first_add_s"] = wall
                rec["turns"].append({"index": i, "at": turn["at"], "observed_at": when.isoformat(),
                                     "chars": len(turn["content"]), "wall_s": wall,
                                     **_delta(before, _snapshot(stats)),
                                     "events": _events(result, memory), "error": error,
                                     **({} if extracted is None
                                        else {"extracted": list(extracted)})})
            for i, check in enumerate(scenario["checks"]):
                rec["checks"].append(_run_check(memory, user, i, check, k, clock))
            rec["complete"] = True
        except Exception as exc:  # one scenario's failure is recorded, not fatal
            rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
            rec["traceback"] = traceback.format_exc()[-2000:]
        rec["wall_s"] = clock() - t_scenario
        out["scenarios"].append(rec)
        if out["timed_out"]:
            out["not_run"] = [s["id"] for s in scenarios[n + 1:]]
            break
    bar.close()
    return out


def _run_check(memory: Any, user: str, index: int, check: dict[str, Any], k: int,
               clock: Callable[[], float]) -> dict[str, Any]:
    rec: dict[str, Any] = {"index": index, "query": check["query"], "as_of": check.get("as_of"),
                           "expect": check["expect"], "expect_not": check.get("expect_not"),
                           "passed": False, "top": None, "top_k": [], "rank": None,
                           "search_s": None, "error": None}
    t0 = clock()
    try:
        as_of = as_of_time(check.get("as_of"))
        kwargs: dict[str, Any] = {"user_id": user, "k": k}
        if as_of is not None:
            kwargs["as_of"] = as_of
        hits = memory.search(check["query"], **kwargs)
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return rec
    rec["search_s"] = clock() - t0
    texts = [str(getattr(h, "text", h)) for h in hits]
    rec["top_k"] = texts[:5]
    rec["top"] = texts[0] if texts else None
    rec["passed"] = passes(check, rec["top"])
    rec["rank"] = next((r for r, t in enumerate(texts, 1) if passes(check, t)), None)
    return rec


# ------------------------------------------------------------------------- process side


def _kv_kwarg(cls: Any) -> str | None:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in KV_KWARGS if name in params), None)


def _build_extractor(model: str, threads: int | None, kv_dir: str | None) -> tuple[Any, str | None]:
    from engine.extract.programs import DspyExtractor

    kwargs: dict[str, Any] = {}
    mode = None
    if threads is not None and "n_threads" in inspect.signature(DspyExtractor).parameters:
        kwargs["n_threads"] = threads
    if kv_dir is not None:
        Path(kv_dir).mkdir(parents=True, exist_ok=True)
        os.environ["MEMENGINE_KV_DIR"] = str(kv_dir)
        name = _kv_kwarg(DspyExtractor)
        if name is not None:
            kwargs[name] = kv_dir
            mode = f"kwarg:{name}"
        else:
            mode = "env:MEMENGINE_KV_DIR"
    return DspyExtractor(model, **kwargs), mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-path", required=True, help="checkout holding engine/")
    parser.add_argument("--model", default=None, help="GGUF manifest name or path")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--kv-dir", default=None)
    parser.add_argument("--raw", action="store_true", help="add turns with infer=False")
    parser.add_argument("--embedder", default=None, help="passed to Memory (default: its own)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--db", type=Path, default=None, help="DuckDB file (default: a temp one)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    engine_path = str(Path(args.engine_path).resolve())
    sys.path.insert(0, engine_path)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("LITELLM_LOCAL_MODEL_COST_MAP", "True")):
        os.environ.setdefault(key, value)

    import engine
    from engine import Memory

    scenarios = load(args.split, args.data, args.limit)
    result: dict[str, Any] = {
        "schema": SCHEMA, "argv": sys.argv[1:] if argv is None else argv,
        "engine_path": engine_path, "engine_file": engine.__file__,
        "engine_version": getattr(engine, "__version__", None),
        "model": None if args.raw else args.model, "mode": "raw" if args.raw else "lm",
        "split": args.split, "data": str(args.data), "n_scenarios": len(scenarios),
        "budget_s": args.budget_s, "kv_dir": args.kv_dir, "kv_dir_mode": None,
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "processor": platform.processor(), "cpus": os.cpu_count()},
        "extractor_identity": None, "load_s": None, "memory_open_s": None,
        "embedder_warm_s": None, "first_add_s": None, "error": None,
    }
    tmp = tempfile.TemporaryDirectory(prefix="scenarios-")
    db = args.db or Path(tmp.name) / "scenarios.duckdb"
    memory = None
    extractor = None
    try:
        if not args.raw:
            t0 = time.perf_counter()
            extractor, result["kv_dir_mode"] = _build_extractor(args.model, args.threads,
                                                                args.kv_dir)
            lm_engine = getattr(extractor, "engine", None)
            if lm_engine is not None and hasattr(lm_engine, "load"):
                lm_engine.load()
            result["load_s"] = time.perf_counter() - t0
            result["extractor_identity"] = getattr(extractor, "identity", None)
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if extractor is not None:
            kwargs["extractor"] = extractor
        if args.embedder is not None:
            kwargs["embedder"] = args.embedder
        memory = Memory(str(db), **kwargs)
        result["memory_open_s"] = time.perf_counter() - t0
        embedder = getattr(memory, "embedder", None)
        if embedder is not None and hasattr(embedder, "embed_query"):
            t0 = time.perf_counter()
            embedder.embed_query("warm up")
            result["embedder_warm_s"] = time.perf_counter() - t0
        budget = None if args.budget_s is None else args.budget_s - (time.perf_counter() - started)
        noted = None if extractor is None else record_extractions(extractor)
        result.update(run_scenarios(scenarios, memory, extractor=extractor, raw=args.raw,
                                    budget_s=budget, k=args.k, extracted=noted))
    except Exception as exc:  # set-up failed: still write what we know
        result["error"] = f"{type(exc).__name__}: {exc}"[:1000]
        result["traceback"] = traceback.format_exc()[-4000:]
        result.setdefault("scenarios", [])
        result.setdefault("not_run", [s["id"] for s in scenarios])
    finally:
        for obj in (memory, extractor):
            try:
                if obj is not None and hasattr(obj, "close"):
                    obj.close()
            except Exception:
                pass
        tmp.cleanup()
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
