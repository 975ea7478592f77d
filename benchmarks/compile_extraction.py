"""Compile the extraction program: few-shot demos from the labeled train material.

``python -m benchmarks.compile_extraction [--demos benchmarks/data/extraction_demos.jsonl]
[--out engine/extract/compiled/default.json]``

Optimizer: DSPy's ``LabeledFewShot`` over a hand-written demo pool (train material only:
never a validation or test case). Each demo is a message, the known facts shown beside it
(none: the extractor does not show them by default, see ``DspyExtractor(show_known=)``)
and the gold answer: one ``sentence | subject | slot | value [| date]`` line per fact.
The pool covers what the model must learn to copy: a first message with several facts and
specifics, chit-chat with no facts, a move with no
cue word, a change of drink, a Portuguese message about a brother, a correction, late
news about the past, and a German message with numbers. The demos' people and places are
not those of the labeled validation and test sets.

The inputs are formatted by the same functions the extractor uses
(:func:`engine.extract.programs.format_conversation`, ``format_known``), so demos and
live calls look alike. No model is loaded: measure the result on the held-out split with
``python -m benchmarks extraction``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
DEMOS = _ROOT / "benchmarks" / "data" / "extraction_demos.jsonl"


def demo_examples(path: Path = DEMOS) -> list[Any]:
    """The demo pool as ``dspy.Example`` objects with the extractor's input formatting."""
    from engine.backends.lm import import_dspy
    from engine.extract import KnownFact, Turn
    from engine.extract.programs import format_conversation, format_known

    dspy = import_dspy()
    examples = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        case = json.loads(line)
        when = datetime.fromisoformat(case["observed_at"]).replace(hour=12)
        turns = [Turn(t["role"], t["content"], when, t.get("name")) for t in case["turns"]]
        known = [KnownFact(k["text"], k["subject"], k["slot"], k["value"],
                           datetime.fromisoformat(k["valid_from"])) for k in case["known"]]
        observed, hints, conversation = format_conversation(turns)
        examples.append(dspy.Example(observation_date=observed, date_hints=hints,
                                     known=format_known(known), conversation=conversation,
                                     facts=case["facts"])
                        .with_inputs("observation_date", "date_hints", "known", "conversation"))
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_extraction",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", default=str(DEMOS), help="the demo pool (JSON Lines)")
    parser.add_argument("--k", type=int, default=16, help="at most this many demos")
    parser.add_argument("--out", default=None,
                        help="default: engine/extract/compiled/default.json")
    args = parser.parse_args(argv)

    from engine.backends.lm import import_dspy
    from engine.extract.programs import COMPILED_DIR, signatures

    dspy = import_dspy()
    if not Path(args.demos).is_file():
        parser.error(f"no demo pool at {args.demos} (JSON Lines, as in {DEMOS})")
    pool = demo_examples(Path(args.demos))
    program = signatures().FactProgram()
    compiled = dspy.LabeledFewShot(k=args.k).compile(program.extract, trainset=pool,
                                                     sample=False)
    program.extract.demos = list(compiled.demos)
    out = Path(args.out) if args.out else COMPILED_DIR / "default.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    print(f"wrote {out} with {len(program.extract.demos)} demos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
