"""Where things live by default, and the knobs read from the environment.

* ``MEMENGINE_DB``: the DuckDB file (default ``$MEMENGINE_HOME/memory.duckdb``).
* ``MEMENGINE_HOME``: the data folder (default ``$XDG_DATA_HOME/memengine``,
  i.e. ``~/.local/share/memengine``).
* ``MEMENGINE_EMBEDDER``: a model name from the manifest, a folder, or ``hashing``.
* ``MEMENGINE_DEVICE``: ``auto`` (default), ``cpu``, ``cuda``...
* ``MEMENGINE_LM_TIMEOUT_S``: the most seconds one LM call may take (default
  :data:`DEFAULT_LM_TIMEOUT_S`; ``0`` or ``none`` means no limit). A message whose
  extraction runs past it stays stored as pending, with the reason, and is retried.

The vector index of a store lives beside it, in ``<db file>.index/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import InvalidInputError

__all__ = ["DEFAULT_LM_TIMEOUT_S", "MAX_TEXT_CHARS", "default_db_path", "default_device",
           "default_embedder", "index_dir_for", "lm_timeout_s"]

MAX_TEXT_CHARS = 100_000
"""Longest text accepted for one message or fact; longer input is an error, not a cut."""

DEFAULT_LM_TIMEOUT_S = 120.0
"""The default limit of one LM call: far above a normal extraction call of the default
model on a laptop CPU, so it only stops a model that loops or a machine that stalls."""
DEFAULT_LM_DRAFT_TOKENS = 0
"""Prompt-lookup drafting is off by default: on a 2-core CPU a batch of k tokens costs
nearly k single steps, so drafts that are partly refused made generation slower
(``benchmarks/README.md``). Where a batch costs about one step (a GPU), set
``MEMENGINE_LM_DRAFT``."""


def data_home() -> Path:
    """The folder that holds the default store."""
    explicit = os.environ.get("MEMENGINE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "memengine"


def default_db_path() -> Path:
    """The DuckDB file used when none is given."""
    explicit = os.environ.get("MEMENGINE_DB")
    return Path(explicit).expanduser() if explicit else data_home() / "memory.duckdb"


def index_dir_for(db_path: str | Path) -> Path | None:
    """Where a store's vector index lives (None for an in-memory store)."""
    if str(db_path) == ":memory:":
        return None
    return Path(str(db_path) + ".index")


def default_embedder() -> str | None:
    """The embedder named in the environment, or None for the manifest default."""
    return os.environ.get("MEMENGINE_EMBEDDER") or None


def default_device() -> str:
    return os.environ.get("MEMENGINE_DEVICE", "auto")


def lm_draft_tokens() -> int:
    """How many tokens prompt-lookup decoding drafts at a time, from ``MEMENGINE_LM_DRAFT``
    (0: off). Greedy generation only; the output is the model's own either way."""
    raw = os.environ.get("MEMENGINE_LM_DRAFT", "").strip()
    if not raw:
        return DEFAULT_LM_DRAFT_TOKENS
    if not raw.isdigit():
        raise InvalidInputError(
            f"MEMENGINE_LM_DRAFT={raw!r} is not a whole number of tokens; set it to 0 (off) "
            f"or to how many tokens to draft at a time (default {DEFAULT_LM_DRAFT_TOKENS})"
        )
    return int(raw)


def lm_timeout_s() -> float | None:
    """The limit of one LM call in seconds from ``MEMENGINE_LM_TIMEOUT_S`` (None: no limit)."""
    raw = os.environ.get("MEMENGINE_LM_TIMEOUT_S", "").strip()
    if not raw:
        return DEFAULT_LM_TIMEOUT_S
    if raw.lower() == "none":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise InvalidInputError(
            f"MEMENGINE_LM_TIMEOUT_S={raw!r} is not a number of seconds; set it to a positive "
            "number, or to 0 (or none) for no limit"
        )
    return seconds or None
