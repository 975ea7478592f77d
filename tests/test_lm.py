"""engine.backends.lm: llama.cpp as a DSPy 3.4 engine (in-process and server), errors, laziness.

Real-model tests load the small SmolLM2 GGUF (marked ``model``; skipped when it is not
installed unless MEMENGINE_REQUIRE_MODELS=1). The server engine is tested against a
stdlib HTTP server that answers like an OpenAI-compatible one.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest
from click.testing import CliRunner
from conftest import require_gguf

from engine.backends.lm import (
    LlamaCppEngine,
    LlamaServerEngine,
    import_dspy,
    make_lm,
    schema_adapter,
)
from engine.errors import ModelError

dspy = import_dspy()
from dspy.lm15 import Config, Message, Request  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEngine]:
    # no prefix states in the shared model cache (tests/test_kv_state.py covers them)
    engine = LlamaCppEngine(require_gguf("smollm2-135m"), n_ctx=2048, max_tokens=128,
                            kv_cache_dir=False)
    yield engine
    engine.close()


class Pet(BaseModel):
    name: str
    kind: Literal["cat", "dog", "other"]


class PetsSignature(dspy.Signature):
    """List the pets mentioned in the text."""

    text: str = dspy.InputField()
    pets: Annotated[list[Pet], Field(max_length=3)] = dspy.OutputField()


# ------------------------------------------------------------------ real model


@pytest.mark.model
def test_signature_output_is_schema_valid_json(smollm2: LlamaCppEngine) -> None:
    lm = make_lm(smollm2, max_tokens=128)
    with dspy.context(lm=lm, adapter=schema_adapter()):
        prediction = dspy.Predict(PetsSignature)(text="I have a cat called Luna and a dog, Rex.")
    assert all(isinstance(p, Pet) for p in prediction.pets)
    raw = lm.history[-1]["outputs"][0]
    data = json.loads(raw)  # the raw text itself is JSON, not repaired by the adapter
    assert set(data) == {"pets"}
    assert len(data["pets"]) <= 3  # maxItems from Field(max_length=3) is enforced
    for item in data["pets"]:
        Pet.model_validate(item)


@pytest.mark.model
def test_engine_constrains_a_raw_request_and_reuses_the_prefix(
        smollm2: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"]}
    fmt = {"type": "json_schema", "schema": schema}
    system = "You answer arithmetic questions. " * 10

    def ask(question: str) -> Any:
        return smollm2.complete(Request(
            model="smollm2", system=system, messages=(Message.user(question),),
            config=Config(max_tokens=24, temperature=0.0, response_format=fmt)))

    first = ask("What is 2 + 2?")
    second = ask("What is 3 + 5?")
    for response in (first, second):
        assert isinstance(json.loads(response.text)["answer"], int)
        assert response.usage.output_tokens >= 1
    # the second prompt shares the system prompt: its KV cache is reused, not re-evaluated
    assert second.usage.cache_read_tokens > 20


@pytest.mark.model
def test_gguf_that_llama_cpp_cannot_load_gives_model_error(tmp_path: Path) -> None:
    source = require_gguf("smollm2-135m")
    truncated = tmp_path / "truncated.gguf"
    with source.open("rb") as fh:
        truncated.write_bytes(fh.read(1 << 20))  # valid magic and header, no weights
    engine = LlamaCppEngine(truncated)
    with pytest.raises(ModelError, match="could not load"):
        engine.load()


# ------------------------------------------------------------------ no model needed


def test_missing_file_gives_model_error_with_guidance(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="memengine models install"):
        LlamaCppEngine(tmp_path / "nope.gguf")


def test_a_file_that_is_not_gguf_gives_model_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelError, match="not a GGUF"):
        LlamaCppEngine(bogus)


def test_llama_cpp_not_installed_gives_model_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    engine = LlamaCppEngine(fake)
    with pytest.raises(ModelError, match="make install"):
        engine.load()


def test_importing_engine_modules_loads_neither_dspy_nor_llama_cpp() -> None:
    code = ("import sys, engine, engine.backends.lm, engine.extract.programs, engine.cli.lm_cmd; "
            "print(sorted(m for m in ('dspy', 'llama_cpp', 'litellm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


class _FakeOpenAIServer(http.server.BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like an OpenAI-compatible server; records bodies."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        type(self).bodies.append({"path": self.path, **body})
        reply = {"id": "x1", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                     "role": "assistant",
                     "content": json.dumps({"pets": [{"name": "Luna", "kind": "cat"}]})}}],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    _FakeOpenAIServer.bodies = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeOpenAIServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_engine_sends_the_signature_schema(fake_server: str) -> None:
    engine = LlamaServerEngine(fake_server, model="tiny")
    lm = make_lm(engine)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(PetsSignature)(text="My cat Luna.")
    assert prediction.pets == [Pet(name="Luna", kind="cat")]
    body = _FakeOpenAIServer.bodies[-1]
    assert body["path"] == "/v1/chat/completions"
    fmt = body["response_format"]
    assert fmt["type"] == "json_object"
    assert fmt["schema"]["properties"]["pets"]["type"] == "array"
    assert engine.stats.prompt_tokens == 11


def test_server_engine_refuses_remote_hosts() -> None:
    with pytest.raises(ModelError, match="loopback"):
        LlamaServerEngine("http://example.com:8000")
    LlamaServerEngine("http://[::1]:8000")  # loopback v6 is fine


def test_server_engine_unreachable_is_an_lm_error() -> None:
    engine = LlamaServerEngine("http://127.0.0.1:9", timeout=2)
    lm = make_lm(engine)
    with pytest.raises(Exception, match="cannot reach the LM server"):
        lm("hello")


def test_serve_lm_binds_loopback_only(tmp_path: Path) -> None:
    from engine.cli.lm_cmd import serve_lm

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    result = CliRunner().invoke(serve_lm, [str(gguf), "--port", "8799", "--print-command"])
    if "llama-cpp-python is not installed" in result.output or "needs" in result.output:
        pytest.skip(result.output.strip())
    assert result.exit_code == 0, result.output
    assert "--host 127.0.0.1 --port 8799" in result.output
    assert CliRunner().invoke(serve_lm, ["--help"]).exit_code == 0
