"""The HTTP API and its Python client against a real uvicorn on a loopback port.

The server's Memory is a real DuckDB store in a temp dir (hashing embedder); the
client's answers are compared with what the same Memory returns in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.client import MemoryClient
from engine.errors import (
    AuthenticationError,
    FactNotFoundError,
    InvalidInputError,
    ModelError,
    ScopeRequiredError,
    ServerError,
    StateConflictError,
    TooLargeError,
)
from engine.extract import ExtractedFact
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory
from engine.types import AddResult, Context, Event, Fact, SearchHit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(memory: Memory, serve_app: Callable[..., Any]) -> tuple[Memory, MemoryClient]:
    server = serve_app(memory)
    client = MemoryClient(server.url)
    yield memory, client  # type: ignore[misc]
    client.close()


def test_client_answers_what_memory_answers(served: tuple[Memory, MemoryClient]) -> None:
    memory, client = served
    added = client.add(["I love coffee", "I live in Lisbon"], user_id="maria",
                       observed_at="2026-05-01", metadata={"source": "chat"})
    assert isinstance(added, AddResult) and len(added.fact_ids) == 2
    assert all(isinstance(e, Event) and e.kind == "ADD" for e in added.events)
    coffee, lisbon = added.fact_ids

    assert client.get(coffee, user_id="maria") == memory.get(coffee)
    assert isinstance(client.get(coffee, user_id="maria"), Fact)
    assert client.get_all("maria") == memory.get_all("maria")
    hits = client.search("coffee", user_id="maria", k=5, explain=True)
    local = memory.search("coffee", user_id="maria", k=5, explain=True)
    # the same hits; the recency signal moves with the clock between the two calls
    assert [(h.id, h.text, h.valid_from, h.metadata) for h in hits] == [
        (h.id, h.text, h.valid_from, h.metadata) for h in local]
    assert isinstance(hits[0], SearchHit) and hits[0].id == coffee and hits[0].explain

    tea = client.update(coffee, "I drink green tea now", valid_from="2026-06-01",
                        reason="switched", user_id="maria")
    assert tea == memory.get(tea.id) and tea.lineage_id == coffee
    assert client.versions(tea.id, user_id="maria") == memory.versions(tea.id)
    assert [e.kind for e in client.history(tea.id, user_id="maria")] == ["ADD", "UPDATE"]
    assert client.get_all("maria", as_of="2026-05-15") == memory.get_all(
        "maria", as_of="2026-05-15")
    assert client.get_all("maria", include_history=True, limit=10) == memory.get_all(
        "maria", include_history=True, limit=10)
    assert client.get_all("maria", filters={"source": "chat"}) == memory.get_all(
        "maria", filters={"source": "chat"})

    deleted = client.delete(lisbon, reason="moved", user_id="maria")
    assert deleted.kind == "DELETE" and not memory.get(lisbon).is_current
    restored = client.restore(lisbon, user_id="maria")
    assert restored == memory.get(restored.id) and restored.is_current
    assert client.timeline("maria") == memory.timeline("maria")
    block = client.context("what does maria drink?", user_id="maria", max_tokens=200)
    assert block == memory.context("what does maria drink?", user_id="maria", max_tokens=200)
    assert isinstance(block, Context) and "green tea" in block.text
    assert all(isinstance(f, Fact) for f in block.facts) and block.tokens <= 200
    at = memory.get(coffee).recorded_at
    assert client.known_at("maria", at) == memory.known_at("maria", at)
    assert client.stats()["current_facts"] == memory.stats()["current_facts"] == 2
    assert client.status() == memory.status()
    assert client.health()["status"] == "ok"
    assert client.purge("maria") == {"facts": 4, "messages": 2, "events": 5}
    assert memory.get_all("maria") == []


def test_errors_come_back_as_the_same_engine_errors(served: tuple[Memory, MemoryClient]) -> None:
    memory, client = served
    (fact_id,) = client.add("I love coffee", user_id="maria").fact_ids
    with pytest.raises(FactNotFoundError, match="no fact with id 999"):
        client.get(999, user_id="maria")
    client.delete(fact_id, user_id="maria")
    with pytest.raises(StateConflictError, match="not current"):
        client.delete(fact_id, user_id="maria")
    with pytest.raises(StateConflictError):
        memory.delete(fact_id)  # the same class in-process
    with pytest.raises(InvalidInputError, match="ISO 8601"):
        client.search("coffee", user_id="maria", as_of="last tuesday")
    with pytest.raises(ScopeRequiredError):
        client.add("hello", user_id="   ")
    with pytest.raises(InvalidInputError):
        client.get_all("maria", filters={"$bogus": 1})
    with pytest.raises(TooLargeError):
        client.add("x" * 100_001, user_id="maria")


def test_status_codes_and_json_bodies(served: tuple[Memory, MemoryClient]) -> None:
    memory, client = served
    (fact_id,) = client.add("I love coffee", user_id="maria").fact_ids
    client.delete(fact_id, user_id="maria")
    maria = {"user_id": "maria"}
    with httpx.Client(base_url=client.url) as http:
        cases = [
            (http.get("/v1/memories/424242", params=maria), 404, "FactNotFoundError"),
            (http.delete(f"/v1/memories/{fact_id}", params=maria), 409, "StateConflictError"),
            (http.post("/v1/search", json={"query": "x"}), 400, "ScopeRequiredError"),
            (http.post("/v1/search", content=b"{not json", headers={
                "content-type": "application/json"}), 400, "InvalidInputError"),
            (http.get("/v1/memories/0", params=maria), 400, "InvalidInputError"),
            (http.get(f"/v1/memories/{2**70}", params=maria), 400, "InvalidInputError"),
            (http.post("/v1/memories", json={"messages": "x" * 100_001, "user_id": "m"}),
             413, "TooLargeError"),
            (http.post("/v1/memories", json={"messages": ["a"] * 1001, "user_id": "m"}),
             413, "TooLargeError"),
            (http.post("/v1/search", content=b" " * (17 * 1024 * 1024), headers={
                "content-type": "application/json"}), 413, "TooLargeError"),
            (http.post("/v1/import", content=b"not an export\n"), 400, "ImportFormatError"),
            (http.get("/v1/messages/status", params={"ids": 12345, **maria}), 400,
             "InvalidInputError"),
        ]
        for response, status, error in cases:
            assert (response.status_code, response.json()["error"]) == (status, error), (
                response.request.url, response.text[:300])
            assert response.json()["message"]
        assert http.get("/docs").status_code == 200
        assert "swagger-ui-bundle.js" in http.get("/docs").text
        assert http.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
        schema = http.get("/openapi.json").json()
        assert "/v1/search" in schema["paths"] and "/v1/memories" in schema["paths"]
    assert memory.get_all("maria") == []  # nothing was lost or added by the bad requests
    assert memory.stats()["messages"] == 1


def test_auth_refuses_requests_without_the_token(
    memory: Memory, serve_app: Callable[..., Any]
) -> None:
    server = serve_app(memory, api_key="s3cret")
    memory.add("I love coffee", user_id="maria")
    with httpx.Client(base_url=server.url) as http:
        for path in ("/v1/memories?user_id=maria", "/v1/stats", "/v1/export"):
            anonymous = http.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.json()["error"] == "AuthenticationError"
            assert anonymous.headers["www-authenticate"] == "Bearer"
            wrong = http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "coffee" not in wrong.text
        assert http.post("/v1/search", json={"query": "coffee", "user_id": "maria"}
                         ).status_code == 401
        assert http.get("/health").status_code == 200  # liveness stays open
    with MemoryClient(server.url) as anonymous_client, pytest.raises(AuthenticationError):
        anonymous_client.get_all("maria")
    with MemoryClient(server.url, api_key="s3cret") as client:
        assert [f.text for f in client.get_all("maria")] == ["I love coffee"]


def test_two_users_never_cross(served: tuple[Memory, MemoryClient], tmp_path: Path) -> None:
    memory, client = served
    (alice_fact,) = client.add("alice likes apples", user_id="alice").fact_ids
    (bob_fact,) = client.add("bob likes bananas", user_id="bob").fact_ids
    client.update(bob_fact, "bob likes blueberries", user_id="bob")
    bob_texts = ("bananas", "blueberries")

    def no_bob(value: Any) -> None:
        text = json.dumps(value if not hasattr(value, "to_dict") else value.to_dict(),
                          default=lambda o: o.to_dict())
        assert not any(t in text for t in bob_texts) and '"bob"' not in text, text

    no_bob(client.search("bob likes bananas blueberries", user_id="alice", k=50))
    no_bob(client.get_all("alice", include_history=True))
    no_bob(client.timeline("alice"))
    no_bob(client.context("what does bob like?", user_id="alice").to_dict())
    no_bob(client.known_at("alice", "2100-01-01"))
    no_bob(client.history(alice_fact, user_id="alice"))
    no_bob(client.versions(alice_fact, user_id="alice"))
    for call in (lambda: client.get(bob_fact, user_id="alice"),
                 lambda: client.history(bob_fact, user_id="alice"),
                 lambda: client.versions(bob_fact, user_id="alice"),
                 lambda: client.update(bob_fact, "hacked", user_id="alice"),
                 lambda: client.delete(bob_fact, user_id="alice")):
        with pytest.raises(FactNotFoundError):
            call()
    bob_messages = [e.message_id for e in memory.timeline("bob") if e.message_id]
    with pytest.raises(InvalidInputError, match="no message"):
        client.message_status(bob_messages, user_id="alice")
    export = tmp_path / "alice.jsonl"
    counts = client.export(export, user_id="alice")
    assert counts["fact"] == 1
    assert not any(t in export.read_text() for t in bob_texts)
    client.purge("alice")
    assert [f.text for f in memory.get_all("bob")] == ["bob likes blueberries"]


def test_every_id_route_needs_the_user_and_hides_other_users_ids(
    served: tuple[Memory, MemoryClient],
) -> None:
    """Without user_id an id route answers 400; with another user's id it answers exactly
    what it answers for an id that does not exist, and changes nothing."""
    memory, client = served
    (alice_fact,) = client.add("alice likes apples", user_id="alice").fact_ids
    bob_current, bob_gone = client.add(["bob likes bananas", "bob lives in Oslo"],
                                       user_id="bob").fact_ids
    client.delete(bob_gone, user_id="bob")
    bob_messages = [e.message_id for e in memory.timeline("bob") if e.message_id]
    missing = 987_654
    before = (memory.get_all("bob", include_history=True), memory.timeline("bob"))

    def routes(fact_id: int, user: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            ("GET", f"/v1/memories/{fact_id}", {"params": user}),
            ("GET", f"/v1/memories/{fact_id}/history", {"params": user}),
            ("GET", f"/v1/memories/{fact_id}/versions", {"params": user}),
            ("PUT", f"/v1/memories/{fact_id}", {"json": {"text": "hacked", **user}}),
            ("DELETE", f"/v1/memories/{fact_id}", {"params": {"reason": "x", **user}}),
            ("POST", f"/v1/memories/{fact_id}/restore", {"json": user}),
        ]

    with httpx.Client(base_url=client.url) as http:
        for fact_id in (alice_fact, bob_current, bob_gone):
            for method, path, kwargs in routes(fact_id, {}):
                answer = http.request(method, path, **kwargs)
                assert answer.status_code == 400, (method, path, answer.text)
                assert answer.json()["error"] == "ScopeRequiredError"
                assert "user_id is required" in answer.json()["message"]
        alice = {"user_id": "alice"}
        for bob_fact in (bob_current, bob_gone):
            for (method, path, kwargs), (_, missing_path, missing_kwargs) in zip(
                    routes(bob_fact, alice), routes(missing, alice), strict=True):
                crossed = http.request(method, path, **kwargs)
                absent = http.request(method, missing_path, **missing_kwargs)
                assert crossed.status_code == absent.status_code == 404, (method, path)
                assert crossed.json() == {
                    "error": "FactNotFoundError",
                    "message": absent.json()["message"].replace(str(missing), str(bob_fact)),
                }, (method, path)
                assert "bob" not in crossed.text and "banana" not in crossed.text
        status = http.get("/v1/messages/status", params={"ids": bob_messages})
        assert status.status_code == 400 and status.json()["error"] == "ScopeRequiredError"
        status = http.get("/v1/messages/status", params={"ids": bob_messages, **alice})
        assert status.status_code == 400 and "Oslo" not in status.text
        # the owner still reaches every route
        bob = {"user_id": " bob "}  # ids are stripped, as everywhere in the engine
        assert http.get(f"/v1/memories/{bob_current}", params=bob).status_code == 200
        assert http.get(f"/v1/memories/{bob_gone}/versions", params=bob).status_code == 200
        assert http.get("/v1/messages/status",
                        params={"ids": bob_messages, **bob}).json()["done"]
    assert (memory.get_all("bob", include_history=True), memory.timeline("bob")) == before
    for call in (lambda: client.get(bob_current), lambda: client.history(bob_current),
                 lambda: client.versions(bob_current), lambda: client.delete(bob_current),
                 lambda: client.update(bob_current, "hacked"),
                 lambda: client.restore(bob_gone),
                 lambda: client.message_status(bob_messages)):
        with pytest.raises(ScopeRequiredError, match="user_id"):
            call()
    with pytest.raises(FactNotFoundError, match=f"^no fact with id {bob_gone}$"):
        client.restore(bob_gone, user_id="alice")
    assert client.restore(bob_gone, user_id="bob").text == "bob lives in Oslo"


def test_memory_id_methods_take_the_same_user_scope(memory: Memory) -> None:
    """In-process, ``user_id`` is optional (backward compatible); given, it scopes the id
    exactly as the HTTP API does."""
    (alice_fact,) = memory.add("alice likes apples", user_id="alice").fact_ids
    (bob_fact,) = memory.add("bob likes bananas", user_id="bob").fact_ids
    assert memory.get(bob_fact).user_id == "bob"
    assert memory.get(bob_fact, user_id="bob") == memory.get(bob_fact)
    for call in (lambda: memory.get(bob_fact, user_id="alice"),
                 lambda: memory.history(bob_fact, user_id="alice"),
                 lambda: memory.versions(bob_fact, user_id="alice"),
                 lambda: memory.update(bob_fact, "hacked", user_id="alice"),
                 lambda: memory.delete(bob_fact, user_id="alice"),
                 lambda: memory.restore(bob_fact, user_id="alice")):
        with pytest.raises(FactNotFoundError, match=f"^no fact with id {bob_fact}$"):
            call()
    with pytest.raises(ScopeRequiredError):
        memory.get(999_999, user_id=" ")  # a bad scope is refused before the id is looked up
    assert [f.text for f in memory.get_all("bob")] == ["bob likes bananas"]
    assert memory.delete(alice_fact, user_id="alice").kind == "DELETE"


def scripted_memory(make_memory: Callable[..., Memory], tmp_path: Path) -> Memory:
    extractor = ScriptedExtractor({
        "I moved to Porto": [ExtractedFact("User lives in Porto", about="user",
                                           slot="home city", value="Porto")],
    })
    return make_memory(tmp_path / "infer.duckdb", extractor=extractor, infer=True)


def test_add_with_the_lm_answers_202_then_status_says_done(
    make_memory: Callable[..., Memory], serve_app: Callable[..., Any], tmp_path: Path
) -> None:
    memory = scripted_memory(make_memory, tmp_path)
    server = serve_app(memory)
    with httpx.Client(base_url=server.url) as http:
        accepted = http.post("/v1/memories", json={"messages": "I moved to Porto",
                                                   "user_id": "maria"})
        assert accepted.status_code == 202
        body = accepted.json()
        assert body["pending"] == body["message_ids"] and body["events"] == []
        deadline = time.monotonic() + 10
        while True:
            status = http.get(body["status_url"]).json()
            if status["done"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["done"] and status["pending"] == []
        assert [e["new_text"] for e in status["events"]] == ["User lives in Porto"]
        waited = http.post("/v1/memories", json={"messages": "I moved to Porto",
                                                 "user_id": "ana", "wait": True})
        assert waited.status_code == 200 and waited.json()["pending"] == []
        assert [e["kind"] for e in waited.json()["events"]] == ["ADD"]
    with MemoryClient(server.url) as client:
        result = client.add("I moved to Porto", user_id="rui")  # waits, like Memory.add
        assert [e.kind for e in result.events] == ["ADD"]
        later = client.add("I moved to Porto", user_id="eva", wait=False)
        assert later.pending == later.message_ids
        client.flush()
        assert client.message_status(later.message_ids, user_id="eva").pending == []
        assert [f.value for f in client.get_all("eva")] == ["Porto"]


def test_a_missing_model_answers_503_and_keeps_the_message(
    make_memory: Callable[..., Memory], serve_app: Callable[..., Any], tmp_path: Path
) -> None:
    def no_model(content: str, known: object) -> list[ExtractedFact]:
        raise ModelError("model qwen is not installed: run `memengine models install qwen`")

    memory = make_memory(tmp_path / "nomodel.duckdb", extractor=ScriptedExtractor(no_model),
                         infer=True)
    server = serve_app(memory)
    with httpx.Client(base_url=server.url) as http:
        answer = http.post("/v1/memories", json={"messages": "I moved to Porto",
                                                 "user_id": "maria", "wait": True})
    assert answer.status_code == 503 and answer.json()["error"] == "ModelError"
    assert "stored" in answer.json()["message"]
    assert memory.status()["pending_messages"] == 1
    with MemoryClient(server.url) as client, pytest.raises(ModelError):
        client.add("I moved to Lisbon", user_id="maria")


def test_export_and_import_stream_between_servers(
    make_memory: Callable[..., Memory], serve_app: Callable[..., Any], tmp_path: Path
) -> None:
    source = make_memory(tmp_path / "a.duckdb")
    target = make_memory(tmp_path / "b.duckdb")
    source.add(["I love coffee", "I live in Lisbon"], user_id="maria")
    source.update(source.get_all("maria")[0].id, "I drink tea")
    with MemoryClient(serve_app(source).url) as a, MemoryClient(serve_app(target).url) as b:
        counts = a.export(tmp_path / "dump.jsonl")
        assert counts == {"header": 1, "message": 2, "fact": 3, "source": 0, "event": 3} or (
            counts["fact"] == 3)
        sent: list[int] = []
        imported = b.import_(tmp_path / "dump.jsonl", progress=sent.append)
        assert imported["fact"] == 3 and sent[-1] == (tmp_path / "dump.jsonl").stat().st_size
        assert [f.text for f in b.get_all("maria")] == ["I live in Lisbon", "I drink tea"]
        assert [f.text for f in b.search("tea", user_id="maria", k=1)] == ["I drink tea"]


def test_import_over_the_limit_answers_413(
    memory: Memory, serve_app: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve_app(memory, max_import_bytes=1000)
    big = tmp_path / "big.jsonl"
    big.write_text("{}\n" * 1000)
    with MemoryClient(server.url) as client, pytest.raises(TooLargeError, match="1,000"):
        client.import_(big)
    assert memory.stats()["facts"] == 0


def test_searches_run_while_a_write_holds_the_store(served: tuple[Memory, MemoryClient]) -> None:
    memory, client = served
    client.add(["I love coffee", "I live in Lisbon"], user_id="maria")
    client.search("coffee", user_id="maria")  # the user's indexes are loaded
    holding, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with memory.store.transaction():
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert holding.wait(5)
    try:
        started = time.monotonic()
        results = []

        def search() -> None:
            results.append(client.search("coffee", user_id="maria", k=1)[0].text)

        readers = [threading.Thread(target=search) for _ in range(8)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(8)
        assert results == ["I love coffee"] * 8
        assert time.monotonic() - started < 8  # they did not wait for the write
    finally:
        release.set()
        writer.join()


def test_concurrent_adds_and_searches_lose_nothing(served: tuple[Memory, MemoryClient]) -> None:
    memory, client = served
    errors: list[BaseException] = []

    def adder(n: int) -> None:
        try:
            with MemoryClient(client.url) as own:
                for i in range(10):
                    own.add(f"fact {n}-{i} about tea", user_id="maria")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    def searcher() -> None:
        try:
            with MemoryClient(client.url) as own:
                for _ in range(10):
                    own.search("tea", user_id="maria")
        except BaseException as exc:
            errors.append(exc)

    client.add("tea first", user_id="maria")
    threads = [threading.Thread(target=adder, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=searcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(memory.get_all("maria")) == 41
    assert len(client.search("tea", user_id="maria", k=100)) == 41


def test_client_says_when_no_server_answers() -> None:
    with MemoryClient("http://127.0.0.1:9", timeout=2) as client, pytest.raises(
            ServerError, match="memengine serve"):
        client.health()


def test_serve_refuses_a_public_address_without_a_key() -> None:
    from engine.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"], env={
        "MEMENGINE_API_KEY": ""})
    assert result.exit_code == 2
    assert "without an API key" in result.output and "MEMENGINE_API_KEY" in result.output
    from engine.cli.serve_cmd import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_memengine_serve_starts_and_serves(tmp_path: Path) -> None:
    from engine.serving.thread import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "--db", str(tmp_path / "m.duckdb"), "--embedder",
         "hashing", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                       "MEMENGINE_API_KEY": "k"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with MemoryClient(f"http://127.0.0.1:{port}", api_key="k") as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.health()
                    break
                except ServerError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            client.add("I love coffee", user_id="maria", infer=False)
            assert [h.text for h in client.search("coffee", user_id="maria")] == [
                "I love coffee"]
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode in (0, -15), output
    assert "serving" in output
