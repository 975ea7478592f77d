"""``python -m benchmarks NAME [args]``: run one benchmark module's ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "lexical_options": "benchmarks.lexical_options",
    "locomo": "benchmarks.locomo",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{','.join(sorted(BENCHMARKS))}}} [args]")
        return 2
    module = importlib.import_module(BENCHMARKS[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
