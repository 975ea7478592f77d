"""``python -m benchmarks NAME [args]``: run one benchmark, or ``all`` of them.

Names: ``latency``, ``recall``, ``compare`` (side by side with mem0), ``locomo``
(LoCoMo evidence retrieval), ``lexical_options`` (how the lexical index was chosen),
``extraction`` (fact extraction quality and speed per GGUF model), ``reliability``
(crash, erasure and network evidence), ``chat`` (the chat's memory and answer speed,
``context`` latency), ``serve`` (the HTTP API beside in-process calls), ``write_path``
(a raw add's time outside the embedder, optionally beside another checkout), ``lm_batch``
(what a batch of k tokens costs the LM beside k single steps) and ``all``
(latency, recall, compare, locomo in turn; ``--quick`` is passed on to those that
take it).
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = {
    "latency": "benchmarks.latency",
    "recall": "benchmarks.recall",
    "compare": "benchmarks.compare_mem0",
    "locomo": "benchmarks.locomo",
    "lexical_options": "benchmarks.lexical_options",
    "extraction": "benchmarks.extraction",
    "reliability": "benchmarks.reliability",
    "chat": "benchmarks.chat",
    "serve": "benchmarks.serve",
    "write_path": "benchmarks.write_path",
    "lm_batch": "benchmarks.lm_batch",
}
ALL = ("latency", "recall", "compare", "locomo")
TAKES_QUICK = {"latency", "recall", "compare"}


def _run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(BENCHMARKS[name])
    started = time.perf_counter()
    print(f"== benchmark {name} {' '.join(argv)}", flush=True)
    code = int(module.main(argv) or 0)
    print(f"== {name} finished in {time.perf_counter() - started:.0f} s (exit {code})",
          flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        print("each benchmark has its own --help")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "all":
        quick = ["--quick"] if "--quick" in rest else []
        failed = [n for n in ALL if _run(n, quick if n in TAKES_QUICK else []) != 0]
        if failed:
            print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from {', '.join([*BENCHMARKS, 'all'])}",
              file=sys.stderr)
        return 2
    return _run(name, rest)


if __name__ == "__main__":
    raise SystemExit(main())
