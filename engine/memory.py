"""The ``Memory`` facade: the one object applications use, and the only orchestrator.

It validates input, then drives the store (DuckDB, the source of truth), the
embedder and the indexes (caches of current facts) so that they stay in step.
Every change is one unit of work (:meth:`engine.storage.store.Store.write`): fact
versions, audit events and a bump of the user's index generation in one
transaction; the vector and lexical indexes are told after the commit.

Typical use::

    from engine import Memory

    with Memory("data/memory.duckdb") as memory:
        memory.add("I love coffee in the morning", user_id="maria", infer=False)
        for hit in memory.search("what does Maria drink?", user_id="maria"):
            print(hit.score, hit.text)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import config
from engine.backends.embed import Embedder, load_embedder
from engine.errors import (
    EngineError,
    FactNotFoundError,
    InvalidInputError,
    ModelError,
    StateConflictError,
)
from engine.extract import Extractor
from engine.ingest.maintain import Decision, apply_decisions
from engine.ingest.pipeline import PendingMessage, decide
from engine.ingest.worker import BackgroundWorker
from engine.retrieval.context import APPROXIMATE, TokenCounter, build_context
from engine.retrieval.filters import compile_filters, validate_filters
from engine.retrieval.index import HnswParams, VectorIndex
from engine.retrieval.search import Searcher, SearchRequest, as_user_query, valid_at_sql
from engine.storage.records import EVENT_COLUMNS, event_from_row, fact_from_row
from engine.storage.store import CURRENT, FACT_COLUMNS, NewFact, Store, content_hash, id_list
from engine.storage.writes import IndexChange
from engine.timeutil import TimeLike, now_utc, to_storage
from engine.types import AddResult, Context, Event, Fact, SearchHit
from engine.validate import (
    InputMessage,
    check_fact_id,
    check_k,
    check_limit,
    check_max_tokens,
    check_metadata,
    check_scope,
    check_text,
    normalise_messages,
)

__all__ = ["Memory"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Extraction attempts before a message is marked failed (it stays stored)."""


class Memory:
    """A memory store for LLM applications: facts per user, searchable, versioned.

    ``path`` is a DuckDB file (created if missing; default from
    :func:`engine.config.default_db_path`) or ``":memory:"``. ``embedder`` is a
    model name from the manifest, a sentence-transformers folder, ``"hashing"``
    or an :class:`~engine.backends.embed.Embedder` instance (default: the bundled MiniLM).
    ``actor`` is recorded on every event this object writes.

    ``extractor`` turns messages into facts when ``add`` infers: an
    :class:`~engine.extract.Extractor`, a GGUF model name or path for the
    built-in DSPy + llama.cpp extractor, or None for the default model (loaded
    on first use). ``infer`` is the default of ``add(infer=...)`` (on: messages are
    turned into facts by the LM; ``infer=False`` stores each message as one fact). With
    ``process_pending`` (default), messages left unprocessed by an earlier
    process are extracted in the background after opening.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        embedder: str | Embedder | None = None,
        device: str | None = None,
        index_params: HnswParams | None = None,
        read_only: bool = False,
        actor: str = "api",
        extractor: Extractor | str | None = None,
        infer: bool = True,
        process_pending: bool = True,
    ) -> None:
        self.path = str(path) if path is not None else str(config.default_db_path())
        self.embedder = load_embedder(
            embedder if embedder is not None else config.default_embedder(),
            device=device or config.default_device(),
        )
        self.actor = actor
        self.read_only = read_only
        self.store = Store(
            self.path,
            embedder_identity=self.embedder.identity,
            dim=self.embedder.dim,
            read_only=read_only,
        )
        self.index = VectorIndex(
            None if read_only else config.index_dir_for(self.path),
            self.embedder.dim,
            load_vectors=self.store.current_vectors,
            store_generation=self.store.generation,
            params=index_params,
        )
        self.searcher = Searcher(self.store, self.index)
        self.infer = infer
        self._extractor_spec = extractor
        self._extractor: Extractor | None = (
            extractor if extractor is not None and not isinstance(extractor, str) else None
        )
        self._extractor_lock = threading.Lock()
        self.store.on_rollback(self._drop_indexes)
        self.store.on_commit(self._update_indexes)
        self.store.on_write(self.index.fold_soon)
        self._worker = BackgroundWorker(self._process)
        self._closed = False
        if process_pending and not read_only:
            batches = self.store.pending_batches(max_attempts=MAX_ATTEMPTS)
            if batches:
                log.info("%d messages wait for extraction; processing them",
                         sum(map(len, batches)))
            for batch in batches:
                self._worker.submit(batch)

    # ---- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Save the vector index and close the database. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._worker.stop()
            if not self.read_only:
                self.index.save()
        finally:
            self.store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def flush(self) -> None:
        """Wait for background extraction to finish, then persist the vector index."""
        self._worker.flush()
        self.index.save()

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
        """Remember messages for a user.

        ``text_or_messages`` is a string, a message dict (``role``, ``content``,
        optional ``observed_at``, ``metadata``, ``name``) or a list of them.
        With ``infer=True`` (or a Memory opened with ``infer=True``) the
        messages are stored first, then the LM extracts
        standalone facts, each is compared with the user's related facts, and
        the changes (added, superseded, duplicate...) are applied in one
        transaction and returned as events. ``wait=False`` returns as soon as
        the messages are stored and extracts in the background (see ``flush``).
        A message whose extraction fails stays stored as pending, never lost.

        With ``infer=False`` each message becomes one fact as given, valid from
        its ``observed_at`` (default now); an exact duplicate of a current fact
        in the same scope adds provenance (a DUPLICATE event) instead of a copy.
        """
        user, agent, run = check_scope(user_id, agent_id, run_id)
        when = now_utc() if observed_at is None else to_storage(observed_at, name="observed_at")
        messages = normalise_messages(
            text_or_messages, observed_at=when, metadata=check_metadata(metadata)
        )
        if self.infer if infer is None else infer:
            return self._add_inferred(messages, user, agent, run, wait=wait)
        vectors = self._embed([m.content for m in messages])
        hashes = [content_hash(m.content) for m in messages]
        with self.store.write(actor=self.actor) as tx:
            message_ids = self.store.insert_messages(
                [(user, agent, run, m.role, m.name, m.content, m.metadata, m.observed_at)
                 for m in messages],
                status="processed",
                mode="raw",
            )
            existing = self.store.current_by_hash(user, agent, run, hashes)
            new_facts: list[NewFact] = []
            new_rows: list[int] = []
            duplicates: list[tuple[int, int, str]] = []  # (message id, fact id, text)
            pending: dict[str, int] = {}
            for row, (message, message_id, digest) in enumerate(
                zip(messages, message_ids, hashes, strict=True)
            ):
                if digest in existing:
                    duplicates.append((message_id, existing[digest], message.content))
                    continue
                if digest in pending:
                    duplicates.append((message_id, -pending[digest] - 1, message.content))
                    continue
                pending[digest] = len(new_facts)
                new_rows.append(row)
                new_facts.append(
                    NewFact(
                        text=message.content,
                        user_id=user,
                        agent_id=agent,
                        run_id=run,
                        category=category,
                        metadata=message.metadata,
                        valid_from=message.observed_at,
                        source_message_id=message_id,
                    )
                )
            fact_ids = tx.insert(new_facts, vectors[new_rows])
            for fact_id, fact in zip(fact_ids, new_facts, strict=True):
                tx.event("ADD", user_id=user, agent_id=agent, run_id=run, fact_id=fact_id,
                         lineage_id=fact_id, new_text=fact.text,
                         reason="stored as given (infer=False)",
                         message_id=fact.source_message_id)
            for message_id, target, text in duplicates:
                fact_id = target if target > 0 else fact_ids[-target - 1]
                tx.add_source(fact_id, message_id)
                tx.event("DUPLICATE", user_id=user, agent_id=agent, run_id=run,
                         fact_id=fact_id, new_text=text, reason="same text as a current fact",
                         message_id=message_id)
        return AddResult(message_ids=message_ids, events=tx.events)

    def _add_inferred(
        self, messages: list[InputMessage], user: str, agent: str | None, run: str | None,
        *, wait: bool,
    ) -> AddResult:
        message_ids = self.store.insert_messages(
            [(user, agent, run, m.role, m.name, m.content, m.metadata, m.observed_at)
             for m in messages],
            status="pending",
            mode="infer",
        )
        if not wait:
            self._worker.submit(message_ids)
            return AddResult(message_ids=message_ids, pending=list(message_ids))
        self._worker.flush()  # keep the order of earlier background batches
        return self._process(message_ids)

    @property
    def extractor(self) -> Extractor:
        """The extraction back-end, built on first use (loads the LM lazily)."""
        with self._extractor_lock:
            if self._extractor is None:
                from engine.extract.programs import DspyExtractor

                spec = self._extractor_spec
                self._extractor = DspyExtractor(model=spec if isinstance(spec, str) else None)
            return self._extractor

    def _process(self, message_ids: list[int]) -> AddResult:
        """Extract, resolve and apply the pending messages among ``message_ids``."""
        rows = self.store.pending_messages(message_ids)
        if not rows:
            return AddResult(message_ids=list(message_ids))
        pending = [
            PendingMessage(id=int(r[0]), user_id=r[1], agent_id=r[2], run_id=r[3], role=r[4],
                           name=r[5], content=r[6], metadata=json.loads(r[7] or "{}"),
                           observed_at=r[8])
            for r in rows
        ]
        ids = [m.id for m in pending]
        attempts = max(int(r[9]) for r in rows) + 1
        try:
            decisions = decide(pending, store=self.store, index=self.index,
                               embedder=self.embedder, extractor=self.extractor)
        except ModelError as exc:
            self.store.set_message_status(ids, "pending", f"LM unavailable: {exc}",
                                          count_attempt=False)
            raise ModelError(
                f"{exc} (the {len(ids)} message(s) are stored and will be processed once an "
                "LM is available: run `make install` or pass extractor=...)"
            ) from exc
        except Exception as exc:  # the extractor is third-party code: any failure is one
            reason = str(exc) if isinstance(exc, EngineError) else \
                f"the extractor failed ({type(exc).__name__}: {exc})"
            status = "failed" if attempts >= MAX_ATTEMPTS else "pending"
            self.store.set_message_status(ids, status, reason)
            log.warning("extraction failed for messages %s (%s); kept as %s", ids, reason, status)
            return AddResult(message_ids=list(message_ids), pending=ids, errors=[reason])
        events = self._apply(decisions, actor=self._actor_for_inference(), processed=ids)
        return AddResult(message_ids=list(message_ids), events=events)

    def _apply(
        self,
        decisions: list[Decision],
        *,
        actor: str,
        processed: Sequence[int] = (),
        recorded: datetime | None = None,
    ) -> list[Event]:
        """Apply decided facts in one unit of work (marking ``processed`` messages done);
        returns the events written."""
        with self.store.write(actor=actor, recorded=recorded) as tx:
            apply_decisions(tx, decisions)
            self.store.set_message_status(processed, "processed")
        return tx.events

    def _actor_for_inference(self) -> str:
        return f"{self.actor}:extract:{self.extractor.identity}"

    def status(self, *, limit: int = 20) -> dict[str, Any]:
        """Messages waiting for extraction or failed, with their errors."""
        rows = self.store.query(
            "SELECT id, user_id, status, attempts, error, content FROM messages"
            " WHERE status IN ('pending', 'failed') ORDER BY id LIMIT ?", [limit])
        counts = self.store.stats()
        return {
            "pending_messages": counts["pending_messages"],
            "failed_messages": counts["failed_messages"],
            "messages": [
                {"id": int(r[0]), "user_id": r[1], "status": r[2], "attempts": int(r[3]),
                 "error": r[4], "content": r[5]}
                for r in rows
            ],
        }

    def message_status(
        self, message_ids: Sequence[int], *, user_id: str | None = None
    ) -> AddResult:
        """Where messages stored by ``add(..., wait=False)`` stand: the events their
        extraction wrote so far, the ids still ``pending`` (waiting for extraction, or
        for a retry) and ``errors`` ("message 7 failed: ..." for one that gave up after
        its attempts). With ``user_id``, other users' message ids count as unknown.

        A caller that did not wait polls it until ``pending`` is empty.
        """
        ids = list(message_ids)
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids):
            raise InvalidInputError(
                f"message ids must be one or more positive integers, got {ids!r}"
            )
        clauses = [f"id IN {id_list(ids)}"]
        params: list[Any] = []
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(check_scope(user_id)[0])
        rows = self.store.query(
            f"SELECT id, status, error FROM messages WHERE {' AND '.join(clauses)} ORDER BY id",
            params,
        )
        unknown = sorted(set(ids) - {int(r[0]) for r in rows})
        if unknown:
            raise InvalidInputError(
                f"no message with id {', '.join(map(str, unknown))}"
                + (f" for user {user_id!r}" if user_id is not None else "")
                + "; pass the message_ids that add() returned"
            )
        events = self.store.query(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE message_id IN {id_list(ids)}"
            " ORDER BY occurred_at, id"
        )
        return AddResult(
            message_ids=list(ids),
            events=[event_from_row(row) for row in events],
            pending=[int(r[0]) for r in rows if r[1] == "pending"],
            errors=[f"message {r[0]} {r[1]}: {r[2]}" for r in rows
                    if r[1] != "processed" and r[2]],
        )

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
        """Replace a current fact with a new version; the old one is kept as history.

        The old version's ``valid_to`` becomes the new ``valid_from`` (default now)
        and it is retired (``expired_at``) and linked through ``superseded_by``.
        The new version keeps the old one's ``subject`` and ``slot``; its ``value`` is
        ``value`` (None unless given: the old value may not describe the new text).
        With ``user_id``, a fact of another user is "not found" (see :meth:`get`).
        """
        check_fact_id(fact_id)
        text = check_text(text)
        old = self.get(fact_id, user_id=user_id)
        if not old.is_current:
            raise StateConflictError(
                f"fact {fact_id} is not current (it was "
                f"{'superseded by ' + str(old.superseded_by) if old.superseded_by else 'deleted'})"
                "; update the current version instead"
            )
        start = now_utc() if valid_from is None else to_storage(valid_from, name="valid_from")
        old_start = old.valid_from.replace(tzinfo=None)
        if start < old_start:
            raise InvalidInputError(
                f"valid_from {start.isoformat()} is before the current version's "
                f"{old_start.isoformat()}; a replacement cannot start before what it replaces"
            )
        meta = old.metadata if metadata is None else check_metadata(metadata)
        if value is not None:
            value = check_text(value, "value")
        vector = self._embed([text])
        with self.store.write(actor=self.actor) as tx:
            (new_id,) = tx.insert(
                [NewFact(text, old.user_id, old.agent_id, old.run_id, old.category, meta,
                         start, old.source_message_id, lineage_id=old.lineage_id,
                         subject=old.subject, slot=old.slot, value=value)],
                vector,
            )
            tx.retire(fact_id, old.user_id, valid_to=start, superseded_by=new_id)
            tx.event("UPDATE", **_scope(old), fact_id=new_id, lineage_id=old.lineage_id,
                     old_text=old.text, new_text=text, reason=reason)
        return self.get(new_id)

    def delete(self, fact_id: int, *, reason: str | None = None,
               user_id: str | None = None) -> Event:
        """Retire a current fact (it stays in history; ``purge`` erases for real)."""
        check_fact_id(fact_id)
        fact = self.get(fact_id, user_id=user_id)
        if not fact.is_current:
            raise StateConflictError(f"fact {fact_id} is not current; nothing to delete")
        with self.store.write(actor=self.actor) as tx:
            tx.retire(fact_id, fact.user_id)
            tx.event("DELETE", **_scope(fact), fact_id=fact_id, lineage_id=fact.lineage_id,
                     old_text=fact.text, reason=reason)
        return tx.events[0]

    def restore(self, fact_id: int, *, reason: str | None = None,
                user_id: str | None = None) -> Fact:
        """Bring back a deleted fact as a new current version of its lineage."""
        check_fact_id(fact_id)
        fact = self.get(fact_id, user_id=user_id)
        if fact.is_current or fact.superseded_by is not None:
            raise StateConflictError(
                f"fact {fact_id} was not deleted (it is current or was superseded)"
            )
        current = self.store.query(
            f"SELECT count(*) FROM facts WHERE lineage_id = ? AND {CURRENT}", [fact.lineage_id]
        )[0][0]
        if current:
            raise StateConflictError(f"fact {fact_id} already has a current version")
        _, vector = self.store.embeddings_for([fact_id])
        with self.store.write(actor=self.actor) as tx:
            (new_id,) = tx.insert(
                [NewFact(fact.text, fact.user_id, fact.agent_id, fact.run_id, fact.category,
                         fact.metadata, fact.valid_from.replace(tzinfo=None),
                         fact.source_message_id, lineage_id=fact.lineage_id,
                         subject=fact.subject, slot=fact.slot, value=fact.value)],
                vector,
            )
            tx.event("RESTORE", **_scope(fact), fact_id=new_id, lineage_id=fact.lineage_id,
                     new_text=fact.text, reason=reason)
        return self.get(new_id)

    def purge(self, user_id: str) -> dict[str, int]:
        """Erase everything stored about a user: facts, history, messages, index.

        This is real deletion for privacy requests; it cannot be undone.
        Returns how many rows of each kind were removed.
        """
        user, _, _ = check_scope(user_id)
        counts = self.store.purge_user(user)
        self.index.forget(user)
        self.searcher.forget(user)
        return counts

    # ---- reading ---------------------------------------------------------------------

    def get(self, fact_id: int, *, user_id: str | None = None) -> Fact:
        """One fact version by id (current or not).

        With ``user_id`` the fact must be that user's: another user's fact raises the
        same :class:`~engine.errors.FactNotFoundError` as an id that does not exist, so
        a caller scoped to one user learns nothing about the others (every id method
        takes ``user_id``; the HTTP API requires it).
        """
        owner = None if user_id is None else check_scope(user_id)[0]
        fact = fact_from_row(self.store.get_fact(check_fact_id(fact_id)))
        if owner is not None and fact.user_id != owner:
            raise FactNotFoundError(f"no fact with id {fact_id}")
        return fact

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
        user, agent, run = check_scope(user_id, agent_id, run_id)
        if include_history and as_of is not None:
            raise InvalidInputError("pass either include_history or as_of, not both")
        clauses, params = self._scope_clauses(user, agent, run, filters)
        if as_of is not None:
            when = to_storage(as_of, name="as_of")
            clauses.append(valid_at_sql())
            params += [when, when]
        elif not include_history:
            clauses.append(CURRENT)
        sql = f"SELECT {FACT_COLUMNS} FROM facts WHERE {' AND '.join(clauses)} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {check_limit(limit)}"
        return [fact_from_row(row) for row in self.store.query(sql, params)]

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
        user, agent, run = check_scope(user_id, agent_id, run_id)
        when = to_storage(at, name="at")
        clauses, params = self._scope_clauses(user, agent, run, filters)
        clauses.append("recorded_at <= ? AND (expired_at IS NULL OR expired_at > ?)")
        params += [when, when]
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS} FROM facts WHERE {' AND '.join(clauses)} ORDER BY id", params
        )
        return [fact_from_row(row) for row in rows]

    def versions(self, fact_id: int, *, user_id: str | None = None) -> list[Fact]:
        """Every version of the fact's lineage, oldest first."""
        fact = self.get(fact_id, user_id=user_id)
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS} FROM facts WHERE lineage_id = ? ORDER BY recorded_at, id",
            [fact.lineage_id],
        )
        return [fact_from_row(row) for row in rows]

    def history(self, fact_id: int, *, user_id: str | None = None) -> list[Event]:
        """The audit events of a fact's whole lineage (all versions), oldest first."""
        fact = self.get(fact_id, user_id=user_id)
        rows = self.store.query(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE lineage_id = ? OR fact_id IN "
            "(SELECT id FROM facts WHERE lineage_id = ?) ORDER BY occurred_at, id",
            [fact.lineage_id, fact.lineage_id],
        )
        return [event_from_row(row) for row in rows]

    def timeline(
        self,
        user_id: str,
        *,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Every event for a user in time order (optionally between two times)."""
        user, _, _ = check_scope(user_id)
        clauses: list[str] = ["user_id = ?"]
        params: list[Any] = [user]
        if since is not None:
            clauses.append("occurred_at >= ?")
            params.append(to_storage(since, name="since"))
        if until is not None:
            clauses.append("occurred_at <= ?")
            params.append(to_storage(until, name="until"))
        where = " AND ".join(clauses)
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY occurred_at, id"
        if limit is not None:
            sql += f" LIMIT {check_limit(limit)}"
        return [event_from_row(row) for row in self.store.query(sql, params)]

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
        """The ``k`` facts of a user most relevant to ``query``, best first.

        ``as_of`` searches the facts that were true at that time instead of the
        current ones; ``explain=True`` adds each signal's score to every hit. The
        user's own id in the query ("Maria" for user "maria") is read as "User", the
        name extracted facts give the speaker (:func:`engine.retrieval.search.as_user_query`).
        """
        query = check_text(query, "query")
        user, agent, run = check_scope(user_id, agent_id, run_id)
        request = SearchRequest(
            query=as_user_query(query, user),
            said=query,
            user_id=user,
            agent_id=agent,
            run_id=run,
            k=check_k(k),
            filters=validate_filters(filters) or None,
            as_of=None if as_of is None else to_storage(as_of, name="as_of"),
            explain=bool(explain),
        )
        try:
            vector = self.embedder.embed_query(request.query)
        except EngineError:
            raise
        except Exception as exc:
            raise ModelError(f"the embedder failed on the query ({type(exc).__name__}: {exc});"
                             " check the embedder's model and device") from exc
        return self.searcher.search(request, vector)

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
        """The block of memories to put in a prompt about ``query``, within ``max_tokens``.

        It holds the ``k`` most relevant current facts (or those true at ``as_of``),
        about the user first, then about each person the user knows, each with the date
        it became true and what was true before it (:mod:`engine.retrieval.context`).
        Tokens are counted with the local LM's tokenizer when this Memory has loaded one,
        else approximated; ``Context.token_count`` says which.
        """
        budget = check_max_tokens(max_tokens)
        hits = self.search(query, user_id=user_id, agent_id=agent_id, run_id=run_id, k=k,
                           as_of=as_of)
        return build_context(
            self.store, hits, user_id=check_scope(user_id)[0], max_tokens=budget,
            counter=self.token_counter(),
            as_of=None if as_of is None else to_storage(as_of, name="as_of"),
        )

    def token_counter(self) -> TokenCounter:
        """How ``context`` counts tokens: the tokenizer of the local LM when this Memory's
        extractor has loaded one, else the documented approximation."""
        engine = getattr(self._extractor, "engine", None)
        if engine is not None and getattr(engine, "loaded", False) and hasattr(
                engine, "count_tokens"):
            return TokenCounter(engine.count_tokens, f"llama tokenizer ({engine.name})")
        return APPROXIMATE

    def export(
        self, path: str | Path, *, user_id: str | None = None, embeddings: bool = True
    ) -> dict[str, int]:
        """Write the store (or one user) to a JSON Lines file, history included."""
        from engine.storage.exchange import export_jsonl

        if user_id is not None:
            user_id = check_scope(user_id)[0]
        return export_jsonl(self, path, user_id=user_id, embeddings=embeddings)

    def import_(
        self, path: str | Path, *, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Load a JSON Lines export (ids are remapped; facts re-embedded if needed)."""
        from engine.storage.exchange import import_jsonl

        return import_jsonl(self, path, progress=progress)

    def stats(self) -> dict[str, Any]:
        """Counts, identity and paths of this store."""
        data = self.store.stats()
        data["index_dir"] = str(config.index_dir_for(self.path))
        return data

    # ---- internals -------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> Any:
        """Embed texts before anything is written, so a failing embedder stores nothing."""
        try:
            return self.embedder.embed(texts)
        except EngineError:
            raise
        except Exception as exc:
            raise ModelError(
                f"the embedder failed ({type(exc).__name__}: {exc}); nothing was stored. "
                "Check the embedder's model and device, then add again"
            ) from exc

    def _update_indexes(self, changes: list[IndexChange]) -> None:
        """Tell both indexes what a committed unit of work changed."""
        for change in changes:
            user = change.user_id
            if change.reset:
                self.index.invalidate(user)
                self.searcher.forget(user)
                continue
            self.index.apply(user, change.generation, add_ids=change.added,
                             add_vectors=change.vectors, remove_ids=change.removed)
            self.searcher.on_change(user, change.generation, added=change.facts,
                                    remove_ids=change.removed)

    def _drop_indexes(self, user_ids: set[str]) -> None:
        """Forget users' in-memory indexes (rebuilt from the store on their next search)."""
        for user_id in user_ids:
            self.index.invalidate(user_id)
            self.searcher.lexical.invalidate(user_id)

    @staticmethod
    def _scope_clauses(
        user: str, agent: str | None, run: str | None, filters: Mapping[str, Any] | None
    ) -> tuple[list[str], list[Any]]:
        clauses, params = ["user_id = ?"], [user]
        if agent is not None:
            clauses.append("agent_id = ?")
            params.append(agent)
        if run is not None:
            clauses.append("run_id = ?")
            params.append(run)
        filter_sql, filter_params = compile_filters(filters)
        clauses.append(filter_sql)
        return clauses, params + filter_params


def _scope(fact: Fact) -> dict[str, Any]:
    """A fact's scope, as :meth:`engine.storage.writes.WriteTx.event` takes it."""
    return {"user_id": fact.user_id, "agent_id": fact.agent_id, "run_id": fact.run_id}
