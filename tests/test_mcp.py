"""The MCP server driven by the official SDK's own client: over stdio with
``python -m engine mcp`` as a subprocess, over streamable HTTP on a real uvicorn
bound to a free loopback port, and in-process for the fast cases. The store is the
real DuckDB + hnswlib with the hashing embedder, and no LM (``--raw`` / infer=False)
except where the ScriptedExtractor stands in for it.

Scope is the point: a tool call naming another user is refused, and another user's
fact ids answer exactly like ids that do not exist.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters

from engine import errors
from engine.extract import ExtractedFact
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory
from engine.serving.mcp import build_mcp_server, mount_mcp
from engine.serving.mcp_tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
TOOL_NAMES = {"add_memory", "search_memories", "get_context", "list_memories",
              "update_memory", "delete_memory", "memory_history"}
SCOPE_KEYS = ("user_id", "agent_id", "run_id")


async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, structured result) of one tool call."""
    result = await client.call_tool(name, arguments)
    return result.is_error, result.structured_content


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario)


def test_tool_schemas_name_no_scope_and_forbid_unknown_keys() -> None:
    assert {tool.name for tool in TOOLS} == TOOL_NAMES
    for tool in TOOLS:
        schema = tool.input_schema()
        assert schema["type"] == "object"
        assert schema.get("additionalProperties") is False, tool.name
        assert not set(SCOPE_KEYS) & set(schema.get("properties", {})), tool.name
        assert len(tool.description) > 80, f"{tool.name} needs a description an agent can use"


# ---- stdio: the real `memengine mcp` subprocess ----------------------------------------


def stdio_params(db: Path, *args: str) -> StdioServerParameters:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "engine", "--db", str(db), "--embedder", "hashing", "mcp", *args],
        cwd=str(ROOT), env=env)


def test_stdio_server_adds_searches_updates_deletes_and_keeps_to_its_user(
    tmp_path: Path,
) -> None:
    db = tmp_path / "memory.duckdb"
    with Memory(db, embedder="hashing", infer=False) as memory:
        bobs = memory.add("Bob keeps his savings under the mattress", user_id="bob").fact_ids[0]

    async def scenario() -> None:
        async with Client(stdio_params(db, "--user", "maria", "--raw")) as client:
            listed = await client.list_tools()
            assert {t.name for t in listed.tools} == TOOL_NAMES
            assert "maria" in (client.instructions or "")

            error, added = await call(client, "add_memory", {"text": "I love coffee"})
            assert not error and [e["kind"] for e in added["events"]] == ["ADD"]
            coffee = added["fact_ids"][0]

            error, found = await call(client, "search_memories", {"query": "coffee", "k": 5})
            assert not error
            assert [h["id"] for h in found["results"]] == [coffee]
            assert found["results"][0]["user_id"] == "maria"

            error, context = await call(client, "get_context",
                                        {"query": "what does she drink?", "max_tokens": 200})
            assert not error and "I love coffee" in context["text"]
            assert [f["id"] for f in context["facts"]] == [coffee]
            assert context["tokens"] <= context["max_tokens"] == 200

            error, updated = await call(client, "update_memory", {
                "fact_id": coffee, "text": "I switched to green tea", "reason": "user said"})
            assert not error and updated["text"] == "I switched to green tea"
            tea = updated["id"]

            error, history = await call(client, "memory_history", {"fact_id": coffee})
            assert not error
            assert [v["id"] for v in history["versions"]] == [coffee, tea]
            assert [e["kind"] for e in history["events"]] == ["ADD", "UPDATE"]

            error, deleted = await call(client, "delete_memory", {"fact_id": tea})
            assert not error and deleted["kind"] == "DELETE"
            error, listing = await call(client, "list_memories", {})
            assert not error and listing == {"facts": [], "total": 0, "truncated": False}
            error, listing = await call(client, "list_memories", {"include_history": True})
            assert [f["id"] for f in listing["facts"]] == [coffee, tea]

            # Adversarial calls: scope arguments are refused, foreign ids are "not found".
            error, refused = await call(client, "search_memories",
                                        {"query": "savings", "user_id": "bob"})
            assert error and refused["error"] == "InvalidInputError"
            assert "'user_id' is not an argument" in refused["message"]
            error, found = await call(client, "search_memories", {"query": "savings mattress"})
            assert not error and found["results"] == []
            _, missing = await call(client, "memory_history", {"fact_id": 999_999})
            for name, args in (("memory_history", {}), ("delete_memory", {}),
                               ("update_memory", {"text": "Bob has no savings"})):
                error, result = await call(client, name, {"fact_id": bobs, **args})
                assert error and result["error"] == "FactNotFoundError", name
                assert result["message"] == missing["message"].replace("999999", str(bobs))

    run(scenario)
    with Memory(db, embedder="hashing", infer=False, read_only=True) as memory:
        bob = memory.get(bobs)
        assert bob.is_current and bob.text == "Bob keeps his savings under the mattress"
        assert [e.kind for e in memory.history(bobs)] == ["ADD"]
        assert [e.actor for e in memory.timeline("maria")] == ["mcp"] * 3


def test_stdio_server_reports_a_store_it_cannot_open(tmp_path: Path) -> None:
    import subprocess

    db = tmp_path / "memory.duckdb"
    with Memory(db, embedder="hashing", infer=False) as memory:
        memory.add("made with the hashing embedder", user_id="maria")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--db", str(db), "--embedder", "hashing-v1-32",
         "mcp", "--user", "maria", "--raw"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, input="",
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == "", "stdout belongs to the protocol"
    assert "created with embedder" in proc.stderr


# ---- streamable HTTP: mount_mcp on a FastAPI app under a real uvicorn ------------------


@contextmanager
def uvicorn_on_loopback(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port (the socket is bound first, so
    no other process can take the port in between); yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def test_http_mount_serves_two_users_that_never_cross(make_memory) -> None:  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    memory = make_memory()
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> Any:
        events.append("app started")
        yield
        events.append("app stopped")

    app = FastAPI(lifespan=app_lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    mount_mcp(app, memory, user_id="maria")
    mount_mcp(app, memory, user_id="bob", path="/mcp-bob")

    async def scenario(base: str) -> None:
        async with Client(f"{base}/mcp") as maria, Client(f"{base}/mcp-bob") as bob:
            _, added = await call(maria, "add_memory", {"text": "Maria loves coffee"})
            marias = added["fact_ids"][0]
            _, added = await call(bob, "add_memory", {"messages": [
                {"role": "user", "content": "Bob loves coffee too"}]})
            bobs = added["fact_ids"][0]

            _, found = await call(maria, "search_memories", {"query": "loves coffee"})
            assert [h["id"] for h in found["results"]] == [marias]
            _, found = await call(bob, "search_memories", {"query": "loves coffee"})
            assert [h["id"] for h in found["results"]] == [bobs]
            _, found = await call(maria, "search_memories",
                                  {"query": "coffee", "filters": {"user_id": "bob"}})
            assert found["results"] == []
            _, context = await call(bob, "get_context", {"query": "who loves coffee?"})
            assert [f["id"] for f in context["facts"]] == [bobs]
            assert "Maria" not in context["text"]
            _, listing = await call(bob, "list_memories", {"include_history": True})
            assert [f["id"] for f in listing["facts"]] == [bobs]

            for name, args in (("update_memory", {"text": "Maria hates coffee"}),
                               ("delete_memory", {}), ("memory_history", {})):
                error, result = await call(bob, name, {"fact_id": marias, **args})
                assert error and result == {"error": "FactNotFoundError",
                                            "message": f"no fact with id {marias}"}, name
            error, result = await call(bob, "add_memory",
                                       {"text": "Maria now hates coffee", "user_id": "maria"})
            assert error and result["error"] == "InvalidInputError"

    with uvicorn_on_loopback(app) as base:
        assert events == ["app started"]
        run(lambda: scenario(base))
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        assert "/mcp" not in httpx.get(f"{base}/openapi.json").json()["paths"]
        rebinding = httpx.post(f"{base}/mcp", json={}, headers={"Host": "evil.example:80"})
        assert rebinding.status_code in (400, 403, 421)
    assert events == ["app started", "app stopped"]
    assert memory.get_all("maria")[0].text == "Maria loves coffee"
    assert [f.text for f in memory.get_all("bob")] == ["Bob loves coffee too"]


# ---- in-process: agent scope, inference default, errors --------------------------------


def in_process(memory: Memory, **scope: Any) -> AbstractAsyncContextManager[Client]:
    return Client(build_mcp_server(memory, **scope))


def test_agent_scope_hides_the_same_users_other_agents(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    other = memory.add("Maria told the travel agent she fears flying", user_id="maria",
                       agent_id="travel").fact_ids[0]

    async def scenario() -> None:
        async with in_process(memory, user_id="maria", agent_id="cooking") as client:
            _, added = await call(client, "add_memory", {"text": "Maria fears cilantro"})
            _, found = await call(client, "search_memories", {"query": "Maria fears"})
            assert [h["id"] for h in found["results"]] == added["fact_ids"]
            assert found["results"][0]["agent_id"] == "cooking"
            error, result = await call(client, "delete_memory", {"fact_id": other})
            assert error and result["error"] == "FactNotFoundError"
            error, result = await call(client, "list_memories", {"agent_id": "travel"})
            assert error and result["error"] == "InvalidInputError"

    run(scenario)
    assert memory.get(other).is_current


def test_add_infers_by_default_when_the_memory_does(make_memory) -> None:  # type: ignore[no-untyped-def]
    said = "Hi, I'm Maria and I live in Lisbon"
    extractor = ScriptedExtractor({said: [ExtractedFact(
        "Maria lives in Lisbon", "place", slot="home city", value="Lisbon")]})
    memory = make_memory(extractor=extractor, infer=True)

    async def scenario() -> None:
        async with in_process(memory, user_id="maria") as client:
            _, inferred = await call(client, "add_memory",
                                     {"text": said, "observed_at": "2026-05-01"})
            assert [e["new_text"] for e in inferred["events"]] == ["Maria lives in Lisbon"]
            _, raw = await call(client, "add_memory", {"text": "raw note", "infer": False})
            assert [e["new_text"] for e in raw["events"]] == ["raw note"]
            _, later = await call(client, "add_memory", {"text": "ok bye", "wait": False})
            assert later["pending"] == later["message_ids"] and later["events"] == []

    run(scenario)
    memory.flush()  # the background extraction of "ok bye"
    assert len(extractor.extract_calls) == 2  # the raw note never reached the LM
    assert memory.status()["pending_messages"] == 0


def test_engine_errors_come_back_as_tool_errors_with_their_class(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()

    async def scenario() -> None:
        async with in_process(memory, user_id="maria") as client:
            _, added = await call(client, "add_memory", {"text": "Maria lives in Lisbon"})
            fact_id = added["fact_ids"][0]
            await call(client, "delete_memory", {"fact_id": fact_id})
            cases = [
                ("search_memories", {"query": "Lisbon", "as_of": "not a date"}),
                ("search_memories", {"query": "   "}),
                ("search_memories", {"query": "Lisbon", "filters": {"rating": {"near": 3}}}),
                ("add_memory", {}),
                ("add_memory", {"text": "x", "messages": [{"content": "y"}]}),
                ("add_memory", {"messages": [{"role": "narrator", "content": "y"}]}),
                ("update_memory", {"fact_id": fact_id, "text": "Maria lives in Porto"}),
                ("delete_memory", {"fact_id": "seven"}),
                ("forget_everything", {}),
            ]
            for name, args in cases:
                result = await client.call_tool(name, args)
                assert result.is_error, (name, args)
                kind = result.structured_content["error"]
                assert issubclass(getattr(errors, kind), errors.InvalidInputError), (name, args)
                text = result.content[0].text  # type: ignore[union-attr]
                assert text.startswith(f"{kind}: "), text

    run(scenario)
    assert [e.kind for e in memory.timeline("maria")] == ["ADD", "DELETE"]


def test_served_mcp_route_needs_the_servers_api_key(make_memory) -> None:  # type: ignore[no-untyped-def]
    from engine.serving.http import create_app
    from engine.serving.thread import ThreadedServer

    memory = make_memory()
    server = ThreadedServer(create_app(memory, api_key="s3cret", mcp_user="maria"))
    try:
        hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}
        headers = {"accept": "application/json, text/event-stream"}
        refused = httpx.post(f"{server.url}/mcp", json=hello, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "AuthenticationError"
        wrong = httpx.post(f"{server.url}/mcp", json=hello,
                           headers={**headers, "authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = httpx.post(f"{server.url}/mcp", json=hello, follow_redirects=True,
                             headers={**headers, "authorization": "Bearer s3cret"})
        assert allowed.status_code == 200, allowed.text
        assert "serverInfo" in allowed.text
    finally:
        server.stop()
