"""Every error the engine raises, under one base class.

Catch :class:`EngineError` to handle anything the engine reports. The tree::

    EngineError
    ├── InvalidInputError            (also ValueError)  bad text, ids, dates, filters
    │   ├── ScopeRequiredError                          user_id missing or empty
    │   ├── TooLargeError                               a text, list or upload over its limit
    │   └── StateConflictError                          the fact's state forbids the change
    ├── FactNotFoundError            (also KeyError)    unknown fact id
    ├── StoreError                                      DuckDB problems
    │   ├── StoreLockedError                            another process holds the file
    │   ├── DiskFullError                               no space (or a file size limit)
    │   ├── EmbedderMismatchError                       store made with another embedder
    │   └── SchemaVersionError                          store from a newer engine
    ├── VectorIndexError                                hnswlib index problems
    ├── ImportFormatError            (also ValueError)  a bad export file
    ├── ModelError                                      model manifest, files, loading
    │   ├── ModelNotInstalledError                      a known model not yet installed
    │   └── ChecksumMismatchError                       files do not match the manifest
    ├── ExtractionError                                 the LM could not produce facts
    └── ServerError                                     a memory server failed or is unreachable
        └── AuthenticationError                         the server refused the API key

Third-party exceptions (duckdb, hnswlib, sentence-transformers, llama.cpp) are
translated into these at one boundary each, with ``raise ... from exc`` so the
original stays visible in tracebacks.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChecksumMismatchError",
    "DiskFullError",
    "EmbedderMismatchError",
    "EngineError",
    "ExtractionError",
    "FactNotFoundError",
    "ImportFormatError",
    "InvalidInputError",
    "ModelError",
    "ModelNotInstalledError",
    "SchemaVersionError",
    "ScopeRequiredError",
    "ServerError",
    "StateConflictError",
    "StoreError",
    "StoreLockedError",
    "TooLargeError",
    "VectorIndexError",
]


class EngineError(Exception):
    """Base class of every error raised by the memory engine."""


class InvalidInputError(EngineError, ValueError):
    """An argument is empty, of the wrong type, too large or malformed."""


class ScopeRequiredError(InvalidInputError):
    """An operation needs a ``user_id`` (the scope every fact belongs to)."""


class TooLargeError(InvalidInputError):
    """A text, a list or an upload is over its size limit (split it and send the parts)."""


class StateConflictError(InvalidInputError):
    """The fact exists but its state forbids the change: updating or deleting a version
    that is no longer current, restoring one that was not deleted."""


class FactNotFoundError(EngineError, KeyError):
    """No fact has the given id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "fact not found"


class StoreError(EngineError):
    """The DuckDB store could not be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process has the DuckDB file open for writing."""


class DiskFullError(StoreError):
    """A write failed for lack of space: the disk is full (ENOSPC), or a file reached the
    size limit of the process (EFBIG) or a quota (EDQUOT). The change that failed was not
    stored; what was stored before it is intact."""


class EmbedderMismatchError(StoreError):
    """The store was created with a different embedder or dimension."""


class SchemaVersionError(StoreError):
    """The store was written by a newer version of the engine."""


class VectorIndexError(EngineError):
    """The vector index could not be built, loaded or queried."""


class ImportFormatError(EngineError, ValueError):
    """An import file is not a valid engine export."""


class ModelError(EngineError):
    """A model is unknown, cannot be found on disk or cannot be loaded."""


class ModelNotInstalledError(ModelError):
    """A model from the manifest has not been installed into the model cache."""


class ChecksumMismatchError(ModelError):
    """A model file's sha256 does not match the pinned value in the manifest."""


class ExtractionError(EngineError):
    """The language model failed to produce valid facts for a message."""


class ServerError(EngineError):
    """A memory server (``memengine serve``) could not be reached or failed a request.

    Raised by :class:`engine.client.MemoryClient` only; errors the server reports for
    a request come back as the engine error the server raised.
    """


class AuthenticationError(ServerError):
    """The memory server refused the request's API key (missing or wrong)."""
