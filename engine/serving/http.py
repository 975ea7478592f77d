"""The HTTP API: one FastAPI app in front of one :class:`~engine.memory.Memory`.

One server process owns the DuckDB file. Endpoints are plain functions that
FastAPI runs on its thread pool, so searches and reads run concurrently (the store
reads on spare cursors while a write holds its connection); changes go through one
lock, so a check-then-change (update a current fact, restore a deleted one) never
races another request. Extraction with the LM runs in the memory's background worker:
``POST /v1/memories`` with inference answers 202 at once with the message ids and a
status URL, or waits when asked (``wait: true``).

Every route names its user: the routes by fact or message id (get, update, delete,
restore, history, versions, message status) require ``user_id``, and an id of another
user answers 404 exactly like an id that does not exist, so a caller scoped to one user
learns nothing about the others. Only the store-wide operator routes (``/v1/status``,
``/v1/stats``, ``/v1/import``, and ``/v1/export`` without ``user_id``) span users.

Every route under ``/v1`` needs the bearer token when the app has an ``api_key``;
``/health``, ``/openapi.json`` and ``/docs`` (bundled assets, no CDN) are open.
Errors are JSON (see :mod:`engine.serving.errors`).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import (
    AuthenticationError,
    InvalidInputError,
    TooLargeError,
)
from engine.serving.errors import error_body, install_error_handlers
from engine.serving.schemas import (
    MAX_ID,
    MAX_LIMIT,
    AddRequest,
    ContextRequest,
    MessageIn,
    PurgeRequest,
    ReasonRequest,
    SearchRequestBody,
    UpdateRequest,
)
from engine.validate import MAX_ID_CHARS

if TYPE_CHECKING:
    from engine.memory import Memory

__all__ = ["MAX_BODY_BYTES", "MAX_IMPORT_BYTES", "create_app"]

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest JSON request body (413 above it)."""

MAX_IMPORT_BYTES = 1024 * 1024 * 1024
"""The largest JSON Lines upload to ``POST /v1/import`` (413 above it)."""

COUNTS_HEADER = "X-Memengine-Counts"
"""Response header of ``GET /v1/export``: the records written per type, as JSON."""

FactPath = PathParam(ge=1, le=MAX_ID, description="A fact id")
ScopeQuery = Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS)]
OptionalScope = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS)]
OwnerQuery = Annotated[str, Query(
    min_length=1, max_length=MAX_ID_CHARS,
    description="The user the id belongs to: another user's id answers 404, like a missing one")]
TimeQuery = Annotated[str | None, Query(max_length=64, description="ISO 8601 date or time")]
LimitQuery = Annotated[int | None, Query(ge=1, le=MAX_LIMIT)]
FiltersQuery = Annotated[
    str | None,
    Query(max_length=MAX_BODY_BYTES, description='Filters as JSON, e.g. {"category": "food"}'),
]


BEARER = HTTPBearer(auto_error=False, description="The server's API key")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


class BodyLimit:
    """ASGI middleware: answer 413 for a request body over ``limit`` bytes (``/v1/import``
    has its own, larger limit), whether or not the client sent Content-Length."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                from starlette.exceptions import HTTPException

                raise HTTPException(413, f"the request body is over {self.limit:,} bytes")
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        error_body("TooLargeError", f"the request body is over {limit:,} bytes; "
                   "send less at once (split the messages into several requests)"),
        status_code=413,
    )


def create_app(
    memory: Memory,
    *,
    api_key: str | None = None,
    mcp_user: str | None = None,
    mcp_agent: str | None = None,
    mcp_host: str = "127.0.0.1",
    max_body_bytes: int = MAX_BODY_BYTES,
    max_import_bytes: int = MAX_IMPORT_BYTES,
) -> FastAPI:
    """The HTTP API over ``memory`` (which the caller opens and closes).

    ``api_key``: the bearer token every ``/v1`` request must carry (None: no auth,
    for loopback only; :mod:`engine.cli.serve_cmd` enforces that). ``mcp_user``
    (and ``mcp_agent``): also serve the MCP tools at ``/mcp`` for that fixed scope, behind
    the same bearer token; ``mcp_host`` is the host the server binds (the MCP transport
    checks the ``Host`` header against it).
    """
    from fastapi import APIRouter
    from fastapi_offline import FastAPIOffline

    import engine

    app = FastAPIOffline(
        title="memengine",
        version=engine.__version__,
        description="A local, offline memory for LLM applications: facts per user, "
        "searchable, versioned in valid and transaction time.",
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes, exempt=("/v1/import",))
    install_error_handlers(app)
    writes = threading.Lock()

    def authorize(credentials: Credentials) -> None:
        if api_key is None:
            return
        if credentials is None:
            raise AuthenticationError(
                "this server needs an API key: send the header 'Authorization: Bearer <key>'"
                " (MemoryClient(url, api_key=...))")
        if not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise AuthenticationError("wrong API key: use the key the server was started with")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @contextmanager
    def writing() -> Iterator[None]:
        with writes:
            yield

    def parse_filters(raw: str | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InvalidInputError(f"filters must be a JSON object ({exc})") from exc
        if not isinstance(value, dict):
            raise InvalidInputError("filters must be a JSON object, e.g. {\"category\": \"food\"}")
        return value

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness: the server answers (no auth, no user data)."""
        return {"status": "ok", "version": engine.__version__}

    @v1.post("/memories", tags=["write"], status_code=200,
             responses={202: {"description": "Stored; extraction runs in the background"}})
    def add(body: AddRequest, request: Request, response: Response) -> dict[str, Any]:
        """Remember messages for a user (``Memory.add``).

        Without inference each message becomes one fact (200). With it the messages
        are stored, then extracted by the LM in the background: 202 with the message
        ids and a ``status_url`` to poll, or 200 when done if ``wait`` is true.
        """
        infer = memory.infer if body.infer is None else body.infer
        payload: Any = body.messages
        if isinstance(payload, MessageIn):
            payload = payload.model_dump(exclude_none=True)
        elif isinstance(payload, list):
            payload = [m.model_dump(exclude_none=True) if isinstance(m, MessageIn) else m
                       for m in payload]
        kwargs: dict[str, Any] = {
            "user_id": body.user_id, "agent_id": body.agent_id, "run_id": body.run_id,
            "metadata": body.metadata, "observed_at": body.observed_at, "infer": infer,
            "category": body.category,
        }
        if infer and body.wait:
            result = memory.add(payload, wait=True, **kwargs)  # serialized by the worker
        else:
            with writing():
                result = memory.add(payload, wait=False, **kwargs)
        data = result.to_dict()
        if infer and not body.wait:
            response.status_code = 202
            query = urlencode([("ids", i) for i in result.message_ids]
                              + [("user_id", body.user_id.strip())])
            data["status_url"] = f"{request.url_for('message_status').path}?{query}"
        return data

    @v1.get("/messages/status", tags=["write"], name="message_status")
    def message_status(
        ids: Annotated[list[int], Query(min_length=1, max_length=10_000)],
        user_id: OwnerQuery,
    ) -> dict[str, Any]:
        """Where messages added without waiting stand (``Memory.message_status``):
        ``done`` once none is pending."""
        if any(not 1 <= i <= MAX_ID for i in ids):
            raise InvalidInputError("message ids are positive integers")
        result = memory.message_status(ids, user_id=user_id)
        return {"done": not result.pending, **result.to_dict()}

    @v1.post("/search", tags=["read"])
    def search(body: SearchRequestBody) -> dict[str, Any]:
        """The ``k`` facts most relevant to the query, best first (``Memory.search``)."""
        hits = memory.search(body.query, user_id=body.user_id, agent_id=body.agent_id,
                             run_id=body.run_id, k=body.k, filters=body.filters,
                             as_of=body.as_of, explain=body.explain)
        return {"results": [hit.to_dict() for hit in hits]}

    @v1.post("/context", tags=["read"])
    def context(body: ContextRequest) -> dict[str, Any]:
        """The prompt-ready block of memories about the query (``Memory.context``)."""
        block = memory.context(body.query, user_id=body.user_id, agent_id=body.agent_id,
                               run_id=body.run_id, max_tokens=body.max_tokens,
                               as_of=body.as_of, k=body.k)
        return block.to_dict()

    @v1.get("/memories", tags=["read"])
    def get_all(
        user_id: ScopeQuery,
        agent_id: OptionalScope = None,
        run_id: OptionalScope = None,
        filters: FiltersQuery = None,
        include_history: bool = False,
        as_of: TimeQuery = None,
        limit: LimitQuery = None,
    ) -> dict[str, Any]:
        """A user's facts, oldest first: current, all versions, or valid at ``as_of``."""
        facts = memory.get_all(user_id, agent_id=agent_id, run_id=run_id,
                               filters=parse_filters(filters),
                               include_history=include_history, as_of=as_of, limit=limit)
        return {"facts": [fact.to_dict() for fact in facts]}

    @v1.get("/memories/{fact_id}", tags=["read"])
    def get(fact_id: Annotated[int, FactPath], user_id: OwnerQuery) -> dict[str, Any]:
        """One fact version by id, if it is ``user_id``'s."""
        return memory.get(fact_id, user_id=user_id).to_dict()

    @v1.put("/memories/{fact_id}", tags=["write"])
    def update(fact_id: Annotated[int, FactPath], body: UpdateRequest) -> dict[str, Any]:
        """Replace a current fact with a new version; the old one stays as history."""
        with writing():
            fact = memory.update(fact_id, body.text, metadata=body.metadata,
                                 valid_from=body.valid_from, reason=body.reason,
                                 value=body.value, user_id=body.user_id)
        return fact.to_dict()

    @v1.delete("/memories/{fact_id}", tags=["write"])
    def delete(
        fact_id: Annotated[int, FactPath],
        user_id: OwnerQuery,
        reason: Annotated[str | None, Query(max_length=10_000)] = None,
    ) -> dict[str, Any]:
        """Retire a current fact (kept in history; ``/v1/purge`` erases for real)."""
        with writing():
            event = memory.delete(fact_id, reason=reason, user_id=user_id)
        return event.to_dict()

    @v1.post("/memories/{fact_id}/restore", tags=["write"])
    def restore(fact_id: Annotated[int, FactPath], body: ReasonRequest) -> dict[str, Any]:
        """Bring back a deleted fact as a new current version."""
        with writing():
            fact = memory.restore(fact_id, reason=body.reason, user_id=body.user_id)
        return fact.to_dict()

    @v1.get("/memories/{fact_id}/history", tags=["read"])
    def history(fact_id: Annotated[int, FactPath], user_id: OwnerQuery) -> dict[str, Any]:
        """The audit events of the fact's whole lineage, oldest first."""
        return {"events": [event.to_dict()
                           for event in memory.history(fact_id, user_id=user_id)]}

    @v1.get("/memories/{fact_id}/versions", tags=["read"])
    def versions(fact_id: Annotated[int, FactPath], user_id: OwnerQuery) -> dict[str, Any]:
        """Every version of the fact's lineage, oldest first."""
        return {"facts": [fact.to_dict()
                          for fact in memory.versions(fact_id, user_id=user_id)]}

    @v1.get("/timeline", tags=["read"])
    def timeline(user_id: ScopeQuery, since: TimeQuery = None, until: TimeQuery = None,
                 limit: LimitQuery = None) -> dict[str, Any]:
        """Every event of a user in time order."""
        events = memory.timeline(user_id, since=since, until=until, limit=limit)
        return {"events": [event.to_dict() for event in events]}

    @v1.get("/known_at", tags=["read"])
    def known_at(
        user_id: ScopeQuery,
        at: Annotated[str, Query(max_length=64, description="ISO 8601 date or time")],
        agent_id: OptionalScope = None,
        run_id: OptionalScope = None,
        filters: FiltersQuery = None,
    ) -> dict[str, Any]:
        """What the engine believed at time ``at`` (transaction time)."""
        facts = memory.known_at(user_id, at, agent_id=agent_id, run_id=run_id,
                                filters=parse_filters(filters))
        return {"facts": [fact.to_dict() for fact in facts]}

    @v1.post("/purge", tags=["write"])
    def purge(body: PurgeRequest) -> dict[str, int]:
        """Erase everything stored about a user (privacy requests; cannot be undone)."""
        with writing():
            return memory.purge(body.user_id)

    @v1.get("/export", tags=["exchange"], response_class=FileResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "The JSON Lines export"}})
    def export(user_id: OptionalScope = None, embeddings: bool = True) -> FileResponse:
        """Download the store (or one user) as JSON Lines, history included; the
        ``X-Memengine-Counts`` header holds the records per type."""
        handle, name = tempfile.mkstemp(prefix="memengine-export-", suffix=".jsonl")
        os.close(handle)
        try:
            counts = memory.export(name, user_id=user_id, embeddings=embeddings)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return FileResponse(name, media_type="application/x-ndjson",
                            filename="memengine-export.jsonl",
                            headers={COUNTS_HEADER: json.dumps(counts)},
                            background=BackgroundTask(Path(name).unlink, missing_ok=True))

    @v1.post("/import", tags=["exchange"], openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        "description": "A JSON Lines export (GET /v1/export or `memengine export`)"}})
    async def import_(request: Request) -> dict[str, int]:
        """Load a JSON Lines export (streamed upload; ids are remapped)."""
        handle, name = tempfile.mkstemp(prefix="memengine-import-", suffix=".jsonl")
        try:
            size = 0
            with os.fdopen(handle, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_import_bytes:
                        raise TooLargeError(
                            f"the upload is over {max_import_bytes:,} bytes; export and "
                            "import fewer users at a time")
                    out.write(chunk)
            if size == 0:
                raise InvalidInputError("the upload is empty; send a JSON Lines export")

            def load() -> dict[str, int]:
                with writing():
                    return memory.import_(name)

            return await run_in_threadpool(load)
        finally:
            Path(name).unlink(missing_ok=True)

    @v1.get("/status", tags=["service"])
    def status(limit: Annotated[int, Query(ge=1, le=10_000)] = 20) -> dict[str, Any]:
        """Messages waiting for extraction or failed, with their errors."""
        return memory.status(limit=limit)

    @v1.get("/stats", tags=["service"])
    def stats() -> dict[str, Any]:
        """Counts and identity of the store."""
        return memory.stats()

    app.include_router(v1)
    if mcp_user is not None:
        from engine.serving.mcp import mount_mcp

        mount_mcp(app, memory, user_id=mcp_user, agent_id=mcp_agent, host=mcp_host)
        if api_key is not None:
            app.add_middleware(BearerOnPath, api_key=api_key, prefix="/mcp")
    return app


class BearerOnPath:
    """ASGI middleware: requests under ``prefix`` need ``Authorization: Bearer <api_key>``.

    The ``/mcp`` route is a plain ASGI app, outside the ``/v1`` router's dependency, so
    its token check sits here; the refusal has the same JSON body as every other error.
    """

    def __init__(self, app: Any, *, api_key: str, prefix: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.prefix):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                body = json.dumps({
                    "error": "AuthenticationError",
                    "message": "this server needs an API key: send the header "
                    "'Authorization: Bearer <key>'",
                }).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


