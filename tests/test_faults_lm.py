"""Faults of the LM during extraction, through ``Memory.add``: an LM that hangs past the
call limit (``MEMENGINE_LM_TIMEOUT_S``), and one that answers junk or cuts its JSON short.

In every case the message stays stored (pending, with the reason), nothing of the failed
extraction is applied, only an :class:`EngineError` is reported, and a later open with a
working LM processes the message. The hanging LM is a real HTTP server on loopback that
accepts the call and never answers (the engine's own :class:`LlamaServerEngine` talks to
it); the junk comes from a scripted DSPy engine; the real GGUF test stops SmolLM2 itself.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import config
from engine.backends.lm import LlamaCppEngine, LlamaServerEngine
from engine.errors import InvalidInputError
from engine.extract import ExtractedFact
from engine.extract.programs import DspyExtractor
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory

SAID = "I moved to Porto last week and I adopted a cat named Luna"
WORKING = ScriptedExtractor({SAID: [ExtractedFact("User lives in Porto", slot="home city",
                                                  value="Porto")]})


@pytest.fixture
def hanging_lm() -> Iterator[str]:
    """The URL of an LM server on loopback that takes each call and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)  # read the request, answer nothing
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def _messages(memory: Memory) -> list[tuple[Any, ...]]:
    return memory.store.query("SELECT content, status, attempts, error FROM messages")


def _nothing_applied(memory: Memory) -> None:
    assert memory.store.query("SELECT count(*) FROM facts")[0][0] == 0
    assert memory.store.query("SELECT count(*) FROM events")[0][0] == 0
    assert memory.index.ids("ana") == set()


def test_the_call_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMENGINE_LM_TIMEOUT_S", raising=False)
    assert config.lm_timeout_s() == config.DEFAULT_LM_TIMEOUT_S
    for raw, seconds in (("2.5", 2.5), ("0", None), ("none", None)):
        monkeypatch.setenv("MEMENGINE_LM_TIMEOUT_S", raw)
        assert config.lm_timeout_s() == seconds
        assert LlamaServerEngine("http://127.0.0.1:9").timeout == seconds
    assert LlamaServerEngine("http://127.0.0.1:9", timeout=7).timeout == 7
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("MEMENGINE_LM_TIMEOUT_S", bad)
        with pytest.raises(InvalidInputError, match="MEMENGINE_LM_TIMEOUT_S"):
            config.lm_timeout_s()


def test_an_lm_that_hangs_is_cut_off_and_the_message_retried(
    make_memory: Callable[..., Memory], hanging_lm: str
) -> None:
    engine = LlamaServerEngine(hanging_lm, timeout=0.5)
    memory = make_memory(extractor=DspyExtractor(engine=engine, program=False), infer=True)
    started = time.monotonic()
    result = memory.add(SAID, user_id="ana")
    assert time.monotonic() - started < 10  # not the minutes a hung call would take
    assert result.pending == result.message_ids and result.events == []
    assert "0.5 s limit" in result.errors[0] and "MEMENGINE_LM_TIMEOUT_S" in result.errors[0]
    ((content, status, attempts, error),) = _messages(memory)
    assert (content, status, attempts) == (SAID, "pending", 1)
    assert "limit" in error
    _nothing_applied(memory)
    background = memory.add(SAID + " too", user_id="ana", wait=False)
    memory.flush()
    assert memory.message_status(background.message_ids).pending == background.message_ids
    memory.close()
    healed = make_memory(extractor=WORKING, infer=True)
    healed.flush()
    assert [f.text for f in healed.get_all("ana")] == ["User lives in Porto"]
    assert healed.status()["pending_messages"] == 0


class JunkEngine:
    """A DSPy engine whose every answer is ``reply(call number)``: an LM gone wrong."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens", "seed"})
    name = "junk"

    def __init__(self, reply: Callable[[int], str]) -> None:
        self.reply = reply
        self.calls = 0

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        self.calls += 1
        return Response(id=None, model=self.name,
                        message=Message.assistant([TextPart(self.reply(self.calls))]),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return iter(response_to_events(self.complete(request)))

    def close(self) -> None:
        pass


GOOD = json.dumps({"facts": ["User lives in Porto | user | home city | Porto"]})
JUNK: dict[str, Callable[[int], str]] = {
    "not json": lambda n: "Sure! Here are the facts you asked for:",
    "json cut in half": lambda n: GOOD[: len(GOOD) // 2],
    "json cut mid-line": lambda n: GOOD[:-12],
    "no sentence": lambda n: json.dumps({"facts": [" | | | "]}),
    "wrong types": lambda n: json.dumps({"facts": {"home": ["Porto", 3, None]}}),
    "binary noise": lambda n: "\x00\ufffd\x1b[2J" * 50,
    "huge": lambda n: json.dumps({"facts": ["x" * 200_000]}),
    "good, then cut off": lambda n: GOOD if n == 1 else '{"facts": ["User adopted a c',
}


@pytest.mark.parametrize("kind", list(JUNK))
def test_junk_or_truncated_answers_keep_the_message_and_apply_nothing(
    make_memory: Callable[..., Memory], kind: str
) -> None:
    """"good, then cut off": the message is two chunks; the first answer is valid, the
    second is cut: nothing of the first may be applied on its own."""
    engine = JunkEngine(JUNK[kind])
    extractor = DspyExtractor(engine=engine, program=False, retries=1, max_chunk_chars=40)
    memory = make_memory(extractor=extractor, infer=True)
    result = memory.add(SAID, user_id="ana")
    assert result.pending == result.message_ids and result.events == []
    assert result.errors and "attempts" in result.errors[0]
    assert engine.calls >= 2  # an invalid answer is asked again before giving up
    ((content, status, _, error),) = _messages(memory)
    assert (content, status) == (SAID, "pending") and error
    _nothing_applied(memory)
    memory.close()
    healed = make_memory(extractor=WORKING, infer=True)
    healed.flush()
    assert [f.text for f in healed.get_all("ana")] == ["User lives in Porto"]


@pytest.mark.model
def test_a_real_gguf_past_its_limit_is_stopped_and_the_message_retried(
    make_memory: Callable[..., Memory], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.conftest import require_gguf

    path = require_gguf("smollm2-135m")
    monkeypatch.setenv("MEMENGINE_KV_DIR", str(tmp_path / "kv"))
    monkeypatch.setenv("MEMENGINE_LM_TIMEOUT_S", "0.05")
    memory = make_memory(extractor=str(path), infer=True)
    started = time.monotonic()
    result = memory.add(SAID, user_id="ana")
    extractor = memory.extractor
    engine = extractor.engine  # type: ignore[attr-defined]
    assert isinstance(engine, LlamaCppEngine) and engine.timeout == 0.05
    assert time.monotonic() - started < 60
    assert result.pending == result.message_ids
    assert "0.05 s limit" in result.errors[0]
    ((_, status, attempts, _),) = _messages(memory)
    assert (status, attempts) == ("pending", 1)
    _nothing_applied(memory)
    memory.close()
    engine.timeout = 120.0  # the fault is gone: the same model, with time to answer
    healed = make_memory(extractor=extractor, infer=True)
    healed.flush()
    ((_, status, attempts, error),) = _messages(healed)
    assert (status, attempts, error) == ("processed", 2, None)  # the timeout, the retry
    engine.close()
