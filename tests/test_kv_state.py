"""Prompt-prefix KV states saved to disk (engine.backends.llamagen.PrefixStore via LlamaCppEngine).

A second engine on the same ``kv_cache_dir`` stands for a restarted process: its first
call must load the static prefix (system prompt and demos) instead of evaluating it, and
answer exactly as the first engine did. Real-model tests use SmolLM2-135M (marked
``model``; skipped when it is not installed unless MEMENGINE_REQUIRE_MODELS=1).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_gguf

from engine.backends.lm import LlamaCppEngine, import_dspy, resolve_kv_dir

dspy = import_dspy()
from dspy.lm15 import Config, Message, Request, TextPart  # noqa: E402

from engine.backends.llamagen import PrefixStore  # noqa: E402

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"]}
SYSTEM = ("You answer arithmetic questions with a JSON object holding the integer answer. "
          "Think of the numbers carefully before answering. ") * 4


def _request(question: str) -> Request:
    """Like DSPy's adapters: system, a demo user/assistant pair, then the final user turn."""
    return Request(
        model="smollm2", system=SYSTEM,
        messages=(Message.user("What is 1 + 1?"),
                  Message.assistant([TextPart('{"answer": 2}')]),
                  Message.user(question)),
        config=Config(max_tokens=16, temperature=0.0,
                      response_format={"type": "json_schema", "schema": SCHEMA}))


def _engine(model: Path, kv_dir: Any) -> LlamaCppEngine:
    return LlamaCppEngine(model, n_ctx=1024, max_tokens=16, kv_cache_dir=kv_dir)


def _ask(engine: LlamaCppEngine, question: str = "What is 3 + 4?") -> str:
    text = engine.complete(_request(question)).text
    assert isinstance(json.loads(text)["answer"], int)
    return text


def _state_files(kv_dir: Path) -> list[Path]:
    return sorted(kv_dir.glob("*" + PrefixStore.SUFFIX))


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return require_gguf("smollm2-135m")


@pytest.fixture
def first_run(smollm2: Path, tmp_path: Path) -> tuple[Path, str]:
    """One engine's answer, its prefix state saved in tmp_path/kv, then the engine closed."""
    kv_dir = tmp_path / "kv"
    engine = _engine(smollm2, kv_dir)
    try:
        text = _ask(engine)
        assert engine.stats.kv_state_saves == 1
        assert engine.stats.reused_tokens == 0
        assert _ask(engine, "What is 2 + 5?")  # a second call still reuses in memory
        assert engine.stats.kv_state_saves == 1
        assert engine.stats.reused_tokens > 0
    finally:
        engine.close()
    assert len(_state_files(kv_dir)) == 1
    return kv_dir, text


@pytest.mark.model
def test_a_restarted_engine_loads_the_prefix_and_answers_the_same(
        smollm2: Path, first_run: tuple[Path, str]) -> None:
    kv_dir, text = first_run
    engine = _engine(smollm2, kv_dir)
    try:
        response = engine.complete(_request("What is 3 + 4?"))
        assert engine.stats.calls == 1
        assert engine.stats.kv_state_loads == 1
        assert engine.stats.kv_state_saves == 0
        assert engine.stats.reused_tokens > 40  # system prompt and demo: not evaluated
        assert response.usage.cache_read_tokens == engine.stats.reused_tokens
        assert response.text == text
    finally:
        engine.close()


@pytest.mark.model
def test_a_corrupt_state_file_is_ignored_and_rewritten(
        smollm2: Path, first_run: tuple[Path, str], caplog: pytest.LogCaptureFixture) -> None:
    kv_dir, text = first_run
    (path,) = _state_files(kv_dir)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # garbage inside the KV values
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    engine = _engine(smollm2, kv_dir)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.backends.llamagen"):
            assert _ask(engine) == text
        assert "checksum mismatch" in caplog.text
        assert engine.stats.kv_state_loads == 0
        assert engine.stats.kv_state_saves == 1  # written again, whole
    finally:
        engine.close()
    (rewritten,) = _state_files(kv_dir)
    assert rewritten.read_bytes() != bytes(data)


@pytest.mark.model
def test_a_truncated_or_foreign_file_is_ignored(smollm2: Path,
                                                first_run: tuple[Path, str]) -> None:
    kv_dir, text = first_run
    (path,) = _state_files(kv_dir)
    path.write_bytes(path.read_bytes()[:1000])
    engine = _engine(smollm2, kv_dir)
    try:
        assert _ask(engine) == text
        assert engine.stats.kv_state_loads == 0
    finally:
        engine.close()
    (path,) = _state_files(kv_dir)
    path.write_bytes(b"not a state file at all")
    engine = _engine(smollm2, kv_dir)
    try:
        assert _ask(engine) == text
        assert engine.stats.kv_state_loads == 0
        assert engine.stats.kv_state_saves == 1
    finally:
        engine.close()


@pytest.mark.model
def test_another_context_size_does_not_use_the_file(smollm2: Path,
                                                    first_run: tuple[Path, str]) -> None:
    kv_dir, _ = first_run
    engine = LlamaCppEngine(smollm2, n_ctx=2048, max_tokens=16, kv_cache_dir=kv_dir)
    try:
        _ask(engine)
        assert engine.stats.kv_state_loads == 0
        assert engine.stats.kv_state_saves == 1
    finally:
        engine.close()
    assert len(_state_files(kv_dir)) == 2


@pytest.mark.model
def test_disabled_kv_cache_writes_nothing(smollm2: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMENGINE_KV_DIR", str(tmp_path / "env-kv"))
    engine = _engine(smollm2, False)
    try:
        assert engine.kv_cache_dir is None
        _ask(engine)
        _ask(engine, "What is 2 + 5?")
        assert engine.stats.kv_state_saves == engine.stats.kv_state_loads == 0
        assert engine.stats.reused_tokens > 0  # in-memory reuse still works
    finally:
        engine.close()
    assert not (tmp_path / "env-kv").exists()


# ------------------------------------------------------------------ no model needed


def test_kv_dir_defaults_to_the_model_cache_and_the_env_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.backends.models import model_cache_dir

    monkeypatch.delenv("MEMENGINE_KV_DIR", raising=False)
    assert resolve_kv_dir() == model_cache_dir() / "kv"
    assert resolve_kv_dir(tmp_path) == tmp_path
    assert resolve_kv_dir(False) is None
    assert resolve_kv_dir("") is None
    monkeypatch.setenv("MEMENGINE_KV_DIR", str(tmp_path / "k"))
    assert resolve_kv_dir() == tmp_path / "k"
    assert resolve_kv_dir(tmp_path / "x") == tmp_path / "x"  # an argument wins
    monkeypatch.setenv("MEMENGINE_KV_DIR", "")
    assert resolve_kv_dir() is None
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    assert LlamaCppEngine(fake).kv_cache_dir is None
    assert LlamaCppEngine(fake, kv_cache_dir=tmp_path).kv_cache_dir == tmp_path


def test_store_keys_depend_on_identity_and_tokens(tmp_path: Path) -> None:
    a = PrefixStore(tmp_path, "model-a")
    b = PrefixStore(tmp_path, "model-b")
    assert a.key([1, 2, 3]) == a.key([1, 2, 3])
    assert a.key([1, 2, 3]) != a.key([1, 2, 4])
    assert a.key([1, 2, 3]) != b.key([1, 2, 3])
    assert a.path([1]).parent == tmp_path


def test_unreadable_files_are_removed_not_raised(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "m")
    tokens = list(range(20))
    path = store.path(tokens)
    assert store._read(path, tokens) is None  # missing: nothing to do
    for junk in (b"", b"MEMKVST1", b"MEMKVST1\xff\xff\xff\xff{", b"MEMKVST1\x02\0\0\0{}"):
        path.write_bytes(junk)
        assert store._read(path, tokens) is None
        assert not path.exists()


def test_prune_keeps_the_most_recently_used_files(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "m", max_files=3)
    now = time.time()
    for i in range(5):
        p = tmp_path / f"{i}{PrefixStore.SUFFIX}"
        p.write_bytes(b"x")
        os.utime(p, (now - 100 + i, now - 100 + i))
    (tmp_path / "other.txt").write_bytes(b"kept")
    store._prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{i}{PrefixStore.SUFFIX}" for i in (2, 3, 4)] + ["other.txt"]
