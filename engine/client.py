"""A Python client for ``memengine serve`` with the :class:`~engine.memory.Memory` API.

Same method names, argument names, return types (:class:`~engine.types.Fact`,
:class:`~engine.types.SearchHit`, :class:`~engine.types.Event`,
:class:`~engine.types.AddResult`) and errors (the server's
:class:`~engine.errors.EngineError` subclass, rebuilt from its JSON answer), so code
moves between in-process and served memory by changing one line::

    memory = Memory("data/memory.duckdb")              # in-process
    memory = MemoryClient("http://127.0.0.1:8765")     # served

Methods that take a fact or message id take ``user_id`` too, and the server requires it
(:class:`~engine.errors.ScopeRequiredError` without it): a fact of another user answers
:class:`~engine.errors.FactNotFoundError` exactly like a missing id. ``Memory`` takes the
same optional ``user_id``, so ``get(7, user_id="maria")`` runs on both. The client adds
:meth:`MemoryClient.health`; :class:`~engine.errors.ServerError` means the server could
not be reached, :class:`~engine.errors.AuthenticationError` that it refused the key.
``transport`` is for tests and embedding (an ``httpx`` transport; None: the network).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx

from engine.errors import EngineError, ServerError
from engine.timeutil import TimeLike
from engine.types import AddResult, Context, Event, Fact, SearchHit

__all__ = ["MemoryClient"]

COUNTS_HEADER = "X-Memengine-Counts"
CHUNK_BYTES = 1 << 20


def _time(value: TimeLike | None) -> str | None:
    """A time argument as the ISO string the server parses (None stays None)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value  # the server says what is wrong with it


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters without the Nones; JSON for dicts, lowercase for booleans."""
    params: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = json.dumps(dict(value))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        params[key] = value
    return params


class MemoryClient:
    """A served memory store, used like :class:`~engine.memory.Memory`.

    ``url`` is the server's base URL (``http://127.0.0.1:8765``); ``api_key`` the
    bearer token it was started with (default: none). ``timeout`` is per request in
    seconds; adds that wait for the LM use ``wait_timeout``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8765",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        wait_timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.wait_timeout = wait_timeout
        self._pending_ids: list[int] = []
        self._pending_user: str | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport, trust_env=False)

    # ---- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections (the server and its store stay up)."""
        self._http.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- transport -------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(
                f"cannot reach the memory server at {self.url} ({exc}); is `memengine serve` "
                "running there?"
            ) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ---- writing ---------------------------------------------------------------------

    def add(
        self,
        text_or_messages: str | Mapping[str, Any] | list[Any],
        *,
        user_id: str,
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        observed_at: TimeLike | None = None,
        infer: bool | None = None,
        wait: bool = True,
        category: str | None = None,
    ) -> AddResult:
        """Remember messages for a user (see :meth:`engine.memory.Memory.add`).

        ``wait=False`` returns once the server stored the messages; poll
        :meth:`message_status` with the ids (or :meth:`flush`)."""
        messages: Any = text_or_messages
        if isinstance(messages, Mapping):
            messages = _jsonable_message(messages)
        elif isinstance(messages, list):
            messages = [_jsonable_message(m) if isinstance(m, Mapping) else m for m in messages]
        body = {"messages": messages, "user_id": user_id, "agent_id": agent_id,
                "run_id": run_id, "metadata": None if metadata is None else dict(metadata),
                "observed_at": _time(observed_at), "infer": infer, "wait": wait,
                "category": category}
        timeout = self.wait_timeout if wait else httpx.USE_CLIENT_DEFAULT
        data = self._json("POST", "/v1/memories", json=_drop_none(body), timeout=timeout)
        result = AddResult.from_dict(data)
        self._pending_ids = list(result.pending)
        self._pending_user = user_id
        return result

    def message_status(
        self, message_ids: Sequence[int], *, user_id: str | None = None
    ) -> AddResult:
        """Where ``user_id``'s messages added without waiting stand (``pending`` empty:
        done); the server requires ``user_id``."""
        data = self._json("GET", "/v1/messages/status",
                          params=[("ids", int(i)) for i in message_ids]
                          + list(_params(user_id=user_id).items()))
        return AddResult.from_dict(data)

    def flush(self, message_ids: Sequence[int] | None = None, *, user_id: str | None = None,
              poll: float = 0.2) -> None:
        """Wait until the messages (default: the last ``add``'s pending ones) are
        extracted or failed, polling the server; gives up after ``wait_timeout``.
        ``user_id`` defaults to the last ``add``'s user."""
        ids = list(message_ids if message_ids is not None else self._pending_ids)
        owner = user_id if user_id is not None else self._pending_user
        deadline = time.monotonic() + self.wait_timeout
        while ids:
            ids = self.message_status(ids, user_id=owner).pending
            if not ids:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"messages {ids} still pending after "
                                  f"{self.wait_timeout:.0f} s")
            time.sleep(poll)

    def update(
        self,
        fact_id: int,
        text: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        valid_from: TimeLike | None = None,
        reason: str | None = None,
        value: str | None = None,
        user_id: str | None = None,
    ) -> Fact:
        """Replace a current fact with a new version (see :meth:`Memory.update`)."""
        body = {"text": text, "metadata": None if metadata is None else dict(metadata),
                "valid_from": _time(valid_from), "reason": reason, "value": value,
                "user_id": user_id}
        return Fact.from_dict(self._json("PUT", f"/v1/memories/{int(fact_id)}",
                                         json=_drop_none(body)))

    def delete(self, fact_id: int, *, reason: str | None = None,
               user_id: str | None = None) -> Event:
        """Retire a current fact (it stays in history)."""
        return Event.from_dict(self._json("DELETE", f"/v1/memories/{int(fact_id)}",
                                          params=_params(reason=reason, user_id=user_id)))

    def restore(self, fact_id: int, *, reason: str | None = None,
                user_id: str | None = None) -> Fact:
        """Bring back a deleted fact as a new current version."""
        return Fact.from_dict(self._json("POST", f"/v1/memories/{int(fact_id)}/restore",
                                         json=_drop_none({"reason": reason,
                                                          "user_id": user_id})))

    def purge(self, user_id: str) -> dict[str, int]:
        """Erase everything stored about a user; cannot be undone."""
        return dict(self._json("POST", "/v1/purge", json={"user_id": user_id}))

    # ---- reading ---------------------------------------------------------------------

    def get(self, fact_id: int, *, user_id: str | None = None) -> Fact:
        """One fact version by id (current or not)."""
        return Fact.from_dict(self._json("GET", f"/v1/memories/{int(fact_id)}",
                                         params=_params(user_id=user_id)))

    def get_all(
        self,
        user_id: str,
        *,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
        include_history: bool = False,
        as_of: TimeLike | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """A user's facts, oldest first: current ones, all versions, or those valid at a time."""
        data = self._json("GET", "/v1/memories", params=_params(
            user_id=user_id, agent_id=agent_id, run_id=run_id, filters=filters,
            include_history=include_history or None, as_of=_time(as_of), limit=limit))
        return [Fact.from_dict(f) for f in data["facts"]]

    def known_at(
        self,
        user_id: str,
        at: TimeLike,
        *,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Fact]:
        """What the engine believed at time ``at`` (transaction time), oldest first."""
        data = self._json("GET", "/v1/known_at", params=_params(
            user_id=user_id, at=_time(at), agent_id=agent_id, run_id=run_id, filters=filters))
        return [Fact.from_dict(f) for f in data["facts"]]

    def versions(self, fact_id: int, *, user_id: str | None = None) -> list[Fact]:
        """Every version of the fact's lineage, oldest first."""
        data = self._json("GET", f"/v1/memories/{int(fact_id)}/versions",
                          params=_params(user_id=user_id))
        return [Fact.from_dict(f) for f in data["facts"]]

    def history(self, fact_id: int, *, user_id: str | None = None) -> list[Event]:
        """The audit events of a fact's whole lineage, oldest first."""
        data = self._json("GET", f"/v1/memories/{int(fact_id)}/history",
                          params=_params(user_id=user_id))
        return [Event.from_dict(e) for e in data["events"]]

    def timeline(
        self,
        user_id: str,
        *,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Every event for a user in time order."""
        data = self._json("GET", "/v1/timeline", params=_params(
            user_id=user_id, since=_time(since), until=_time(until), limit=limit))
        return [Event.from_dict(e) for e in data["events"]]

    def search(
        self,
        query: str,
        *,
        user_id: str,
        agent_id: str | None = None,
        run_id: str | None = None,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        as_of: TimeLike | None = None,
        explain: bool = False,
    ) -> list[SearchHit]:
        """The ``k`` facts of a user most relevant to ``query``, best first."""
        body = {"query": query, "user_id": user_id, "agent_id": agent_id, "run_id": run_id,
                "k": k, "filters": None if filters is None else dict(filters),
                "as_of": _time(as_of), "explain": explain}
        data = self._json("POST", "/v1/search", json=_drop_none(body))
        return [SearchHit.from_dict(h) for h in data["results"]]

    def context(
        self,
        query: str,
        *,
        user_id: str,
        agent_id: str | None = None,
        run_id: str | None = None,
        max_tokens: int = 1000,
        as_of: TimeLike | None = None,
        k: int = 20,
    ) -> Context:
        """The prompt-ready block of memories about ``query``, within ``max_tokens``."""
        body = {"query": query, "user_id": user_id, "agent_id": agent_id, "run_id": run_id,
                "max_tokens": max_tokens, "as_of": _time(as_of), "k": k}
        return Context.from_dict(self._json("POST", "/v1/context", json=_drop_none(body)))

    # ---- exchange and service --------------------------------------------------------

    def export(
        self, path: str | Path, *, user_id: str | None = None, embeddings: bool = True
    ) -> dict[str, int]:
        """Download the store (or one user) as a JSON Lines file at ``path``."""
        params = _params(user_id=user_id, embeddings=embeddings)
        target = Path(path)
        try:
            with self._http.stream("GET", "/v1/export", params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        out.write(chunk)
                counts = json.loads(response.headers.get(COUNTS_HEADER, "{}"))
        except httpx.HTTPError as exc:
            raise ServerError(f"export from {self.url} failed ({exc})") from exc
        return {str(k): int(v) for k, v in counts.items()}

    def import_(
        self, path: str | Path, *, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Upload a JSON Lines export (streamed); ``progress`` gets the bytes sent so far."""
        source = Path(path)

        def chunks() -> Iterator[bytes]:
            sent = 0
            with source.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent)

        if not source.is_file():
            from engine.errors import InvalidInputError

            raise InvalidInputError(f"no file at {source}; pass the path of an export")
        data = self._json("POST", "/v1/import", content=chunks(),
                          headers={"Content-Type": "application/x-ndjson"},
                          timeout=self.wait_timeout)
        return {str(k): int(v) for k, v in data.items()}

    def status(self, *, limit: int = 20) -> dict[str, Any]:
        """Messages waiting for extraction or failed, with their errors."""
        return dict(self._json("GET", "/v1/status", params={"limit": limit}))

    def stats(self) -> dict[str, Any]:
        """Counts, identity and paths of the served store."""
        return dict(self._json("GET", "/v1/stats"))

    def health(self) -> dict[str, Any]:
        """The server's liveness answer (no auth needed)."""
        return dict(self._json("GET", "/health"))


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _jsonable_message(message: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(message)
    if "observed_at" in data:
        data["observed_at"] = _time(data["observed_at"])
    return _drop_none(data)


def _error_from(response: httpx.Response) -> EngineError:
    """The engine error a server's error answer names (ServerError when it names none)."""
    from engine.serving.errors import error_class

    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        return ServerError(f"the server answered {response.status_code}: "
                           f"{response.text[:500]}")
    cls = error_class(body.get("error"))
    return cls(str(body.get("message", "")))
