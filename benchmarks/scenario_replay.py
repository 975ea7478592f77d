"""Replay a scenario run without the LM: the same extracted facts through another engine's
rules and search.

A run of :mod:`benchmarks.scenario_worker` notes what the extractor returned for each turn
(``extracted``). Replaying gives those facts, turn by turn, to a fresh store of the engine
at ``--engine-path`` through a scripted extractor, so everything after the LM (the decision
rules, the temporal rules, search and its fusion) is what that engine does, and a change to
them is measured in a minute instead of a run of the model. What it cannot measure is a
change to what the model is shown (the prompt, the demos): that needs a real run.

Runs written before the worker noted ``extracted`` are replayed from their events (each
event's text, subject, slot, value and times), which reproduces them closely but not
exactly: a fact dropped by a rule left no event, and a duplicate's event shows the fact
it matched.

Usage (normally through ``python -m benchmarks.scenarios replay RAW.json``)::

    python benchmarks/scenario_replay.py --engine-path . --raw RAW.json --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _time(value: Any) -> datetime | None:
    """A stored time as the extractor gives it: naive UTC."""
    if value in (None, "None"):
        return None
    moment = datetime.fromisoformat(str(value))
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _from_events(turn: dict[str, Any]) -> list[dict[str, Any]]:
    """What the extractor most likely returned, read back from a turn's events."""
    observed = _time(turn["observed_at"])
    facts = []
    for event in turn.get("events", []):
        if "subject" not in event:
            continue  # an engine without slots: nothing to replay
        start, end = _time(event.get("valid_from")), _time(event.get("valid_to"))
        if event["kind"] in ("DUPLICATE", "CORRECT"):  # their times are the matched fact's
            start = end = None
        if start is not None and observed is not None and abs(
                (start - observed).total_seconds()) <= 86_400:
            start = None  # "from when it was said"
        facts.append({"text": event["text"], "about": event.get("subject") or "user",
                      "slot": event.get("slot"), "value": event.get("value"),
                      "valid_from": start,
                      "valid_to": end if event["kind"] == "ADD" else None})
    return facts


def scripted_turns(raw: dict[str, Any]) -> tuple[dict[tuple[str, int], list[dict[str, Any]]],
                                                  bool]:
    """``(scenario id, turn index) -> facts`` of a raw run, and whether they were noted by
    the worker (True) or read back from events (False)."""
    noted = all("extracted" in t for sc in raw.get("scenarios", []) for t in sc["turns"])
    script = {}
    for sc in raw.get("scenarios", []):
        for turn in sc["turns"]:
            script[(sc["id"], turn["index"])] = (turn["extracted"] if noted
                                                 else _from_events(turn))
    return script, noted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scenario_replay", description=__doc__)
    parser.add_argument("--engine-path", required=True, help="checkout holding engine/")
    parser.add_argument("--raw", required=True, type=Path, help="a worker's raw result file")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--embedder", default=None, help="passed to Memory (default: its own)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(_HERE.parent))
    sys.path.insert(0, str(Path(args.engine_path).resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MEMENGINE_BENCH_QUIET", "1")  # one bar per scenario is noise

    from benchmarks.scenario_worker import DATA, load, run_scenarios
    from engine import Memory
    from engine.extract import ExtractedFact

    raw = json.loads(args.raw.read_text())
    script, noted = scripted_turns(raw)
    ran = {sc["id"] for sc in raw.get("scenarios", [])}
    scenarios = [s for s in load("all", Path(raw.get("data") or DATA)) if s["id"] in ran]

    class Replayed:
        """The noted facts of the turn being added."""

        identity = f"replay of {raw.get('extractor_identity') or raw.get('model')}"
        show_known = False
        key: tuple[str, int] = ("", 0)

        def extract(self, turns: Any, known: Any = ()) -> list[Any]:
            return [ExtractedFact(**{**fact, "valid_from": _time(fact.get("valid_from")),
                                     "valid_to": _time(fact.get("valid_to"))})
                    for fact in script.get(self.key, [])]

    extractor = Replayed()
    result: dict[str, Any] = {**{k: raw.get(k) for k in ("model", "split", "data")},
                              "mode": "replay", "replayed": str(args.raw),
                              "engine_path": str(Path(args.engine_path).resolve()),
                              "noted": noted, "scenarios": []}
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        memory = Memory(str(Path(tmp) / "replay.duckdb"), extractor=extractor,
                        **({} if args.embedder is None else {"embedder": args.embedder}))
        add = memory.add
        try:
            for scenario in scenarios:
                turns = iter(range(len(scenario["turns"])))

                def add_turn(content: Any, *, _turns: Any = turns, _id: str = scenario["id"],
                             **kwargs: Any) -> Any:
                    extractor.key = (_id, next(_turns))
                    return add(content, **kwargs)

                memory.add = add_turn  # type: ignore[method-assign]
                result["scenarios"] += run_scenarios([scenario], memory,
                                                     user_prefix=f"rp-{scenario['id']}")[
                    "scenarios"]
        finally:
            memory.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
