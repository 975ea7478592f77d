"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis):
whatever a client sends that the schema allows, or nearly allows, the server answers
without a 500 and keeps running. Bounded (few examples per operation) for ``make test``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from engine.backends.embed import HashingEmbedder
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory

KEY = "fuzz-key"


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """The import body: whatever the fuzzer made, as bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def fuzz_url(tmp_path: Path) -> Iterator[str]:
    from engine.serving.http import create_app
    from engine.serving.thread import ThreadedServer

    memory = Memory(tmp_path / "memory.duckdb", embedder=HashingEmbedder(64), infer=False,
                    extractor=ScriptedExtractor())
    memory.add(["I love coffee", "I live in Lisbon"], user_id="maria")
    server = ThreadedServer(create_app(memory, api_key=KEY))
    try:
        yield server.url
    finally:
        server.stop()
        memory.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_server_fail(fuzz_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    fuzzed = 0
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                body = response.json()
                assert body["error"] and body["message"], body

        try:
            run()
        except Unsatisfiable:  # nothing negative to send (an operation without inputs)
            assert mode is GenerationMode.NEGATIVE
            continue
        fuzzed += 1
    assert fuzzed >= 10
    with httpx.Client(base_url=fuzz_url) as http:  # still up, and the data is intact
        assert http.get("/health").status_code == 200
