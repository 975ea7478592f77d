"""A fully local, offline memory engine for LLM applications.

``import engine`` is light: DuckDB, hnswlib, torch and the language model load
only when a ``Memory`` is opened or a model is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    DiskFullError,
    EmbedderMismatchError,
    EngineError,
    ExtractionError,
    FactNotFoundError,
    ImportFormatError,
    InvalidInputError,
    ModelError,
    ModelNotInstalledError,
    SchemaVersionError,
    ScopeRequiredError,
    ServerError,
    StateConflictError,
    StoreError,
    StoreLockedError,
    TooLargeError,
    VectorIndexError,
)
from engine.types import AddResult, Context, Event, Fact, Message, SearchHit

if TYPE_CHECKING:
    from engine.backends.embed import HashingEmbedder, SentenceTransformerEmbedder
    from engine.memory import Memory

__version__ = "0.1.0"

__all__ = [
    "AddResult",
    "AuthenticationError",
    "ChecksumMismatchError",
    "Context",
    "DiskFullError",
    "EmbedderMismatchError",
    "EngineError",
    "Event",
    "ExtractionError",
    "Fact",
    "FactNotFoundError",
    "HashingEmbedder",
    "ImportFormatError",
    "InvalidInputError",
    "Memory",
    "Message",
    "ModelError",
    "ModelNotInstalledError",
    "SchemaVersionError",
    "ScopeRequiredError",
    "SearchHit",
    "SentenceTransformerEmbedder",
    "ServerError",
    "StateConflictError",
    "StoreError",
    "StoreLockedError",
    "TooLargeError",
    "VectorIndexError",
    "__version__",
]

_LAZY = {
    "Memory": "engine.memory",
    "HashingEmbedder": "engine.backends.embed",
    "SentenceTransformerEmbedder": "engine.backends.embed",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
