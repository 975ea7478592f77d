"""The MCP server: the memory tools of :mod:`engine.serving.mcp_tools` over MCP.

Built on the official SDK's low-level ``Server`` so that each tool's input schema
is exactly its argument model (``additionalProperties: false``): a call carrying a
``user_id`` is refused, never silently dropped. The scope is the server's own.

Two transports:

* stdio (:func:`run_stdio`), for desktop assistants and IDE agents that start
  ``memengine mcp`` as a subprocess;
* streamable HTTP (:func:`mount_mcp`) at ``/mcp`` of an existing FastAPI app, e.g.
  the one ``memengine serve`` runs. Stateless with JSON responses: every request
  stands alone, so no session has to survive between calls.

Tool results are JSON (``structuredContent`` and the same JSON as text). Engine
errors come back as tool errors (``isError``) whose text starts with the error's
class, e.g. ``FactNotFoundError: no fact with id 7``, so the model can correct
itself; the structured part is ``{"error": class, "message": ...}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)

import engine
from engine.errors import EngineError
from engine.serving.mcp_tools import TOOLS, ScopedMemory, call_tool

if TYPE_CHECKING:
    from fastapi import FastAPI

    from engine.memory import Memory

__all__ = ["build_mcp_server", "mount_mcp", "run_stdio"]

log = logging.getLogger(__name__)


def _instructions(scope: ScopedMemory) -> str:
    whose = f"user {scope.user_id!r}" + (
        f" as seen by agent {scope.agent_id!r}" if scope.agent_id else "")
    return (
        f"Long-term memory of {whose}, kept locally with its history. Search it (or get "
        "context) before answering questions that depend on the user; add what the user "
        "shares about themselves; update or delete facts that changed or are wrong. This "
        "server only ever reads and writes this one user's memory."
    )


def _result(data: dict[str, Any]) -> CallToolResult:
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _error(exc: EngineError) -> CallToolResult:
    name = type(exc).__name__
    return CallToolResult(content=[TextContent(type="text", text=f"{name}: {exc}")],
                          structured_content={"error": name, "message": str(exc)},
                          is_error=True)


def build_mcp_server(
    memory: Memory, *, user_id: str, agent_id: str | None = None
) -> Server[Any]:
    """An MCP server whose tools read and write ``memory`` for one user (and agent).

    ``user_id`` and ``agent_id`` are fixed here; no tool argument can change them.
    Tool calls run on worker threads (the engine is synchronous and thread-safe).
    """
    scope = ScopedMemory.of(memory, user_id, agent_id)
    tools = [
        Tool(name=spec.name, title=spec.title, description=spec.description,
             input_schema=spec.input_schema(),
             annotations=ToolAnnotations(title=spec.title, read_only_hint=spec.read_only,
                                         destructive_hint=spec.destructive,
                                         idempotent_hint=spec.read_only,
                                         open_world_hint=False))
        for spec in TOOLS
    ]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def run_tool(ctx: ServerRequestContext[Any],
                       params: CallToolRequestParams) -> CallToolResult:
        try:
            data = await anyio.to_thread.run_sync(
                partial(call_tool, scope, params.name, params.arguments))
        except EngineError as exc:
            log.info("tool %s failed: %s: %s", params.name, type(exc).__name__, exc)
            return _error(exc)
        return _result(data)

    return Server(
        "memengine",
        version=engine.__version__,
        title="memengine memory",
        instructions=_instructions(scope),
        on_list_tools=list_tools,
        on_call_tool=run_tool,
    )


async def run_stdio(server: Server[Any]) -> None:
    """Serve ``server`` over this process's stdin and stdout until stdin closes.

    While it runs the SDK points file descriptor 1 at stderr, so stray output from
    libraries (llama.cpp...) cannot corrupt the protocol.
    """
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def mount_mcp(
    app: FastAPI,
    memory: Memory,
    *,
    user_id: str,
    agent_id: str | None = None,
    path: str = "/mcp",
    host: str = "127.0.0.1",
) -> None:
    """Serve the MCP tools for ``user_id`` over streamable HTTP at ``path`` of ``app``.

    The SDK's session manager needs a task group that lives as long as the app, and
    Starlette does not run the lifespan of a mounted sub-application, so the manager
    is entered in ``app``'s own lifespan, around whatever lifespan it already had.
    ``host`` is the address the app is bound to: on loopback the SDK rejects
    requests whose ``Host``/``Origin`` headers name another site (DNS rebinding).
    The route is a plain ASGI route, so it stays out of the OpenAPI schema; app
    middleware (such as bearer-token auth) applies to it like to any route.
    """
    server = build_mcp_server(memory, user_id=user_id, agent_id=agent_id)
    mcp_app = server.streamable_http_app(streamable_http_path=path, stateless_http=True,
                                         json_response=True, host=host)
    session_manager = server.session_manager
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        async with session_manager.run(), outer(scope_app) as state:
            yield state

    app.router.lifespan_context = lifespan
    # Starlette's Route serves any ASGI app given as its endpoint; FastAPI types it narrower.
    app.router.add_route(path, cast(Any, mcp_app), include_in_schema=False)
