"""DuckDB storage: the source of truth for messages, fact versions and events.

The store knows nothing of embedders beyond their identity and dimension (kept
in ``meta``) and nothing of the vector index beyond a per-user *generation*
counter that every change to a user's current facts bumps, in the same
transaction. The index records the generation it reflects, so a stale index
is detected and rebuilt instead of trusted.

All SQL lives here. Changes to facts happen in a unit of work,
:meth:`Store.write` (see :mod:`engine.storage.writes`), which runs inside
:meth:`Store.transaction`; reads may happen anywhere. The main connection is
guarded by a re-entrant lock so one ``Memory`` can be shared by threads: writes are
serialized on it, and a read that finds it busy (another thread writing or reading)
runs on one of a few reader cursors instead, so reads from many threads (a server's
searches) run concurrently and never wait for a write. A reader cursor sees the last
committed state.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import (
    DiskFullError,
    EmbedderMismatchError,
    EngineError,
    FactNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreLockedError,
)
from engine.storage.records import fact_from_row
from engine.storage.schema import SCHEMA_VERSION, migrations
from engine.storage.writes import IndexChange, NewEvent, WriteTx
from engine.timeutil import now_utc, to_aware, to_storage
from engine.types import Fact

if TYPE_CHECKING:
    import duckdb
    import numpy as np

__all__ = ["CURRENT", "FACT_COLUMNS", "NewEvent", "NewFact", "Store", "WriteTx", "content_hash",
           "id_list"]

READER_CURSORS = 4
"""Extra DuckDB cursors for reads that find the main connection busy."""

CHECKPOINT_THRESHOLD = "256MB"
"""WAL size at which DuckDB checkpoints a store opened for writing."""

_MIRRORS: dict[str, dict[str, int]] = {}
_MIRRORS_LOCK = threading.Lock()
_OPEN_WRITERS: dict[str, int] = {}
"""Writable ``Store`` objects open per database file in this process (a purge rewrites
the file, which is only safe when it holds the one connection)."""

REWRITE_SUFFIX = ".rewrite"
"""The fresh copy a purge writes beside the database before swapping it in."""


def _generation_mirror(path: str) -> dict[str, int]:
    """The in-process record of users' committed generations for one database file.

    DuckDB shares one database between all connections a process opens on a file, so
    every ``Store`` on that file shares one mirror (``:memory:`` stores are private).
    """
    if path == ":memory:":
        return {}
    key = str(Path(path).resolve())
    with _MIRRORS_LOCK:
        return _MIRRORS.setdefault(key, {})

FACT_COLUMNS = (
    "id, text, user_id, agent_id, run_id, category, metadata, valid_from, valid_to, "
    "recorded_at, expired_at, superseded_by, lineage_id, source_message_id, subject, slot, "
    "value"
)
CURRENT = "valid_to IS NULL AND expired_at IS NULL"


def id_list(ids: Sequence[int]) -> str:
    """Ids as an inline SQL list, e.g. ``(1, 2, 3)``.

    Binding a Python list as a parameter makes the duckdb client probe for
    pandas once per element, which costs far more than the query itself; ints
    are safe to inline.
    """
    return "(" + ", ".join(str(int(i)) for i in ids) + ")" if ids else "(NULL)"


_HEX = re.compile(r"[0-9a-f]+")


def _hex_literal(value: str) -> str:
    if _HEX.fullmatch(value) is None:
        raise ValueError(f"not a content hash: {value!r}")
    return f"'{value}'"


def content_hash(text: str) -> str:
    """A stable hash of a fact's normalised text, used to spot exact duplicates."""
    normalised = " ".join(text.casefold().split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class NewFact:
    """A fact about to be inserted (ids are assigned by the store).

    ``subject``/``slot``/``value`` name the attribute the fact sets (``"user"``,
    ``"home city"``, ``"Porto"``); None for a fact without a slot.
    """

    text: str
    user_id: str
    agent_id: str | None
    run_id: str | None
    category: str | None
    metadata: dict[str, Any]
    valid_from: datetime
    source_message_id: int | None
    lineage_id: int | None = None
    valid_to: datetime | None = None
    subject: str | None = None
    slot: str | None = None
    value: str | None = None

    def record(self, fact_id: int, recorded_at: datetime) -> Fact:
        """The public record of this version once inserted as ``fact_id``: what
        ``fact_from_row`` would read back, built without reading it back (the indexes
        take new facts from here on commit)."""
        valid_from = to_aware(to_storage(self.valid_from))
        recorded = to_aware(to_storage(recorded_at))
        assert valid_from is not None and recorded is not None
        return Fact(
            id=fact_id, text=self.text, user_id=self.user_id, agent_id=self.agent_id,
            run_id=self.run_id, category=self.category,
            metadata=_loads(_dumps(self.metadata)), valid_from=valid_from,
            valid_to=None if self.valid_to is None else to_aware(to_storage(self.valid_to)),
            recorded_at=recorded, expired_at=None, superseded_by=None,
            lineage_id=fact_id if self.lineage_id is None else self.lineage_id,
            source_message_id=self.source_message_id, subject=self.subject, slot=self.slot,
            value=self.value,
        )


def _dumps(metadata: dict[str, Any] | None) -> str:
    return json.dumps(metadata or {}, ensure_ascii=False, sort_keys=True, default=str)


def _loads(raw: str | None) -> dict[str, Any]:
    return json.loads(raw) if raw else {}


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_DISK_FULL_WORDS = ("no space left on device", "file too large", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or a DuckDB error quoting one) means no space is left."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(words in text for words in _DISK_FULL_WORDS)


def disk_full_error(path: str, exc: BaseException) -> DiskFullError:
    """The error for a write to the store at ``path`` that failed for lack of space."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DiskFullError(
        f"no space left to write {path}: the disk is full or a file size limit was reached "
        f"({detail}). This change was not stored; everything stored before it is intact. "
        "Free some space (or move the store to a bigger disk with --db / MEMENGINE_DB), "
        "then retry"
    )


def not_writable_error(path: str, detail: str) -> StoreError:
    """The error for a store whose folder or file this process may not write."""
    return StoreError(
        f"cannot write the store at {path} ({detail}): a store opened for writing needs a "
        "folder it can write, for the database file, its write-ahead log and its index. "
        "Use a writable folder (--db / MEMENGINE_DB), or open the store read-only "
        "(Memory(path, read_only=True)) to search it"
    )


def _permission_denied(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError) or "permission denied" in str(exc).lower()


class Store:
    """A DuckDB database file (or ``:memory:``) holding one memory store.

    A write that fails for lack of space raises :class:`~engine.errors.DiskFullError`
    (the transaction rolled back); DuckDB reports it as an IO or transaction error that
    quotes the operating system's message. A folder this process may not write is refused
    when opening for writing (DuckDB would open the file, then fail at the first commit,
    when it creates the write-ahead log); a read-only open works there.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        embedder_identity: str,
        dim: int,
        read_only: bool = False,
    ) -> None:
        import duckdb

        self.path = str(path)
        self.dim = dim
        self._lock = threading.RLock()
        if self.path != ":memory:":
            if read_only and not Path(self.path).exists():
                raise StoreError(
                    f"no store at {self.path} yet: add something first (memengine add ...), "
                    "or pass the right --db"
                )
            folder = Path(self.path).parent
            if not read_only:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise not_writable_error(self.path, f"cannot create {folder}: "
                                             f"{exc.strerror or exc}") from exc
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise not_writable_error(self.path, f"no permission to write in {folder}")
        try:
            self._con: duckdb.DuckDBPyConnection = duckdb.connect(
                self.path, read_only=read_only
            )
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" in message.lower():
                raise StoreLockedError(
                    f"{self.path} is open for writing in another process "
                    f"({message.splitlines()[0]}). DuckDB lets one process write a file or "
                    "several read it, never both: close that process, or reach the store "
                    "through it (one server process for all clients). A read-only open "
                    "works once no process has it open for writing."
                ) from exc
            if _permission_denied(exc) and not read_only:
                raise not_writable_error(self.path, message.splitlines()[0]) from exc
            raise StoreError(f"cannot open {self.path}: {message}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._read_only = read_only
        self._closed = False
        if not read_only and self.path != ":memory:":
            _remove_database_files(Path(self.path + REWRITE_SUFFIX))  # a purge cut short
            with _MIRRORS_LOCK:
                key = str(Path(self.path).resolve())
                _OPEN_WRITERS[key] = _OPEN_WRITERS.get(key, 0) + 1
        self._in_transaction = False
        self._generations = _generation_mirror(self.path)
        self._pending_generations: dict[str, int] = {}
        self._rollback_listeners: list[Callable[[set[str]], None]] = []
        self._commit_listeners: list[Callable[[list[IndexChange]], None]] = []
        self._write_listeners: list[Callable[[], None]] = []
        self._pending_changes: list[IndexChange] = []
        self._write: WriteTx | None = None
        self._threads: int | None = None
        self._lowered = False  # threads set to 1 by a write and not yet given back
        if not read_only:
            self._configure()
        self._migrate(embedder_identity, dim, read_only)
        # Made now, while no other thread uses the connection.
        self._readers: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._open_readers()

    def _open_readers(self) -> None:
        """Cursors on the main connection for reads while a write holds it."""
        for _ in range(READER_CURSORS):
            self._readers.put(self._con.cursor())

    def _close_readers(self) -> None:
        """Take every reader cursor back (waiting for those in use) and close it."""
        for _ in range(READER_CURSORS):
            self._readers.get().close()

    def _configure(self) -> None:
        # Every checkpoint rewrites the primary-key indexes whole, so at DuckDB's 16 MB
        # default a growing store checkpoints every ~7k facts at a cost that grows with
        # it (0.9 s per checkpoint at 100k facts). 256 MB: 100k facts ingest in 6.0 s
        # instead of 11.8 s (hashing embedder, batches of 1,000); close still checkpoints.
        self._con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        self._threads = int(self._scalar("SELECT current_setting('threads')"))
        self._lowered = False

    # ---- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if not self._read_only and self.path != ":memory:":
                with _MIRRORS_LOCK:
                    key = str(Path(self.path).resolve())
                    _OPEN_WRITERS[key] = max(0, _OPEN_WRITERS.get(key, 1) - 1)
            self._closed = True
            self._parallel_reads()  # closing checkpoints; another Store may share the database
            self._close_readers()
            self._con.close()

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def _migrate(self, identity: str, dim: int, read_only: bool) -> None:
        con = self._con
        has_meta = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
        ).fetchone()
        if has_meta is not None and has_meta[0]:
            stored_identity = self._meta("embedder")
            stored_dim = int(self._meta("dim") or 0)
            if stored_identity != identity or stored_dim != dim:
                raise EmbedderMismatchError(
                    f"{self.path} was created with embedder {stored_identity!r} "
                    f"(dimension {stored_dim}); this Memory uses {identity!r} (dimension "
                    f"{dim}). Open it with the same embedder, or export it and import the "
                    "export into a new store to re-embed."
                )
            version = int(self._meta("schema_version") or 0)
        else:
            if read_only:
                raise StoreError(f"{self.path} is not a memory store (no meta table)")
            version = 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {version}; this engine knows up to "
                f"{SCHEMA_VERSION}. Upgrade the engine to open it."
            )
        if version == SCHEMA_VERSION:
            return
        if read_only:
            raise SchemaVersionError(
                f"{self.path} needs migrating to schema {SCHEMA_VERSION}; open it writable once"
            )
        with self.transaction():
            if version == 0:
                con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [["embedder", identity], ["dim", str(dim)], ["schema_version", "0"],
                     ["created_at", now_utc().isoformat()]],
                )
            for statements in migrations(dim)[version:]:
                for statement in statements:
                    con.execute(statement)
            con.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)]
            )

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run the block in one DuckDB transaction (nested calls join the outer one)."""
        rolled_back: set[str] = set()
        committed: list[IndexChange] = []
        try:
            with self._lock:
                if self._in_transaction:
                    yield self._con
                    return
                with self._one_thread():
                    self._con.execute("BEGIN TRANSACTION")
                    self._in_transaction = True
                    try:
                        yield self._con
                    except BaseException:
                        self._in_transaction = False
                        rolled_back = self._forget_pending_generations()
                        self._con.execute("ROLLBACK")
                        raise
                    self._in_transaction = False
                    pending = dict(self._pending_generations)
                    try:
                        self._con.execute("COMMIT")
                    except BaseException:
                        rolled_back = self._forget_pending_generations()
                        raise
                self._pending_generations.clear()
                self._generations.update(pending)
                committed, self._pending_changes = self._pending_changes, []
        except Exception as exc:
            if isinstance(exc, EngineError):
                raise
            if is_disk_full(exc):
                raise disk_full_error(self.path, exc) from exc
            if _permission_denied(exc):
                raise not_writable_error(self.path, str(exc).splitlines()[0]) from exc
            raise
        finally:
            # Outside the lock: listeners take index locks, which are held while
            # indexes load from the store.
            if rolled_back:
                for listener in self._rollback_listeners:
                    listener(rolled_back)
        if committed:
            for on_commit in self._commit_listeners:
                on_commit(committed)

    @contextmanager
    def _one_thread(self) -> Iterator[None]:
        """Run a transaction on one DuckDB thread; reads get their threads back lazily.

        A write's statements touch a few hundred rows: waking DuckDB's worker threads for
        them costs more than they save, and on a busy machine (the embedder and other
        processes on the same cores) an ``add`` of 100 facts ran about 20% faster with one
        thread (``benchmarks/results/write_path.json`` measures the write path). Setting
        the thread count stops or starts DuckDB's workers, which costs a few milliseconds
        each way, so the count stays at one after the write and is raised again only when
        a read runs on the main connection (:meth:`_parallel_reads`): a run of writes with
        no read between them pays for one change, not two per write.
        """
        if self._threads is not None and self._threads > 1 and not self._lowered:
            self._con.execute("SET threads = 1")
            self._lowered = True
        yield

    def _parallel_reads(self) -> None:
        """Give reads DuckDB's configured threads back after writes lowered them (call with
        the main connection held and no transaction open)."""
        import duckdb

        if self._lowered and not self._in_transaction:
            self._lowered = False
            with contextlib.suppress(duckdb.Error):
                self._con.execute(f"SET threads = {self._threads}")

    @contextmanager
    def write(self, *, actor: str, recorded: datetime | None = None) -> Iterator[WriteTx]:
        """A unit of work (see :mod:`engine.storage.writes`): fact versions, provenance and
        events, stamped ``actor`` and ``recorded`` (default now), with generations and
        index changes handled at the end. A write inside another joins it (and its
        actor and time)."""
        with self.transaction():
            if self._write is not None:
                yield self._write
                return
            unit = WriteTx(self, actor=actor, recorded=now_utc() if recorded is None
                           else recorded)
            self._write = unit
            try:
                for on_write in self._write_listeners:
                    on_write()
                yield unit
                self._pending_changes.extend(unit.finish())
            finally:
                self._write = None

    def _forget_pending_generations(self) -> set[str]:
        """A transaction that bumped generations did not commit: those are unknown now.
        Returns the users whose in-memory indexes may hold its changes."""
        users = set(self._pending_generations)
        for user_id in users:
            self._generations.pop(user_id, None)
        self._pending_generations.clear()
        self._pending_changes.clear()
        return users

    def on_rollback(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(user_ids)`` when a transaction that bumped those users'
        generations rolls back (their in-memory indexes may hold uncommitted changes)."""
        self._rollback_listeners.append(listener)

    def on_commit(self, listener: Callable[[list[IndexChange]], None]) -> None:
        """Call ``listener(changes)`` after a transaction whose units of work changed
        users' current facts commits (to bring the in-memory indexes up to date)."""
        self._commit_listeners.append(listener)

    def on_write(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when a unit of work begins, inside its transaction (the
        vector index folds its write buffer meanwhile). It must not block: this thread
        holds the store."""
        self._write_listeners.append(listener)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows.

        On the main connection when it is free or this thread holds it (a read inside
        a transaction sees its own writes), else on a reader cursor.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._parallel_reads()
                return self._con.execute(sql, params or []).fetchall()
            finally:
                self._lock.release()
        reader = self._readers.get()
        try:
            return reader.execute(sql, params or []).fetchall()
        finally:
            self._readers.put(reader)

    # ---- messages --------------------------------------------------------------------

    def insert_messages(
        self,
        rows: Sequence[
            tuple[str, str | None, str | None, str, str | None, str, dict[str, Any], datetime]
        ],
        *,
        status: str,
        mode: str,
    ) -> list[int]:
        """Insert messages ``(user, agent, run, role, name, content, metadata, observed_at)``."""
        import pyarrow as pa

        ingested = now_utc()
        with self.transaction() as con:
            ids = self._next_ids("seq_messages", len(rows))
            columns = list(zip(*rows, strict=True))
            table = pa.table({
                "id": pa.array(ids, pa.int64()),
                "user_id": pa.array(columns[0], pa.string()),
                "agent_id": pa.array(columns[1], pa.string()),
                "run_id": pa.array(columns[2], pa.string()),
                "role": pa.array(columns[3], pa.string()),
                "name": pa.array(columns[4], pa.string()),
                "content": pa.array(columns[5], pa.string()),
                "metadata": pa.array([_dumps(m) for m in columns[6]], pa.string()),
                "observed_at": pa.array(columns[7], pa.timestamp("us")),
                "ingested_at": pa.array([ingested] * len(rows), pa.timestamp("us")),
                "status": pa.array([status] * len(rows), pa.string()),
                "mode": pa.array([mode] * len(rows), pa.string()),
            })
            con.register("_new_messages", table)
            try:
                con.execute(
                    "INSERT INTO messages (id, user_id, agent_id, run_id, role, name, content,"
                    " metadata, observed_at, ingested_at, status, mode) SELECT id, user_id,"
                    " agent_id, run_id, role, name, content, metadata, observed_at,"
                    " ingested_at, status, mode FROM _new_messages"
                )
            finally:
                con.unregister("_new_messages")
        return ids

    def pending_messages(
        self, ids: Sequence[int] | None = None, *, max_attempts: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Messages waiting for extraction (optionally only these ids), oldest first.

        Rows: id, user_id, agent_id, run_id, role, name, content, metadata,
        observed_at, attempts.
        """
        clauses = ["status = 'pending'", "mode = 'infer'"]
        params: list[Any] = []
        if ids is not None:
            clauses.append(f"id IN {id_list(ids)}")
        if max_attempts is not None:
            clauses.append("attempts < ?")
            params.append(max_attempts)
        return self.query(
            "SELECT id, user_id, agent_id, run_id, role, name, content, metadata, observed_at,"
            f" attempts FROM messages WHERE {' AND '.join(clauses)} ORDER BY id",
            params,
        )

    def pending_batches(self, *, max_attempts: int) -> list[list[int]]:
        """Ids of the messages waiting for extraction, one list per ``add`` that stored
        them (same scope, same ingestion time), oldest first.

        Each batch must be extracted on its own: merged, separate adds would read as one
        conversation, their facts credited to the last message and dated from it.
        """
        rows = self.query(
            "SELECT list(id ORDER BY id) FROM messages WHERE status = 'pending'"
            " AND mode = 'infer' AND attempts < ?"
            " GROUP BY user_id, agent_id, run_id, ingested_at ORDER BY min(id)",
            [max_attempts],
        )
        return [[int(i) for i in row[0]] for row in rows]

    def set_message_status(
        self, ids: Sequence[int], status: str, error: str | None = None,
        *, count_attempt: bool = True,
    ) -> None:
        """Mark messages processed, pending (with the error) or failed."""
        if not ids:
            return
        with self.transaction() as con:
            con.execute(
                "UPDATE messages SET status = ?, error = ?, attempts = attempts + ? "
                f"WHERE id IN {id_list(ids)}",
                [status, error, 1 if count_attempt else 0],
            )

    def _next_ids(self, sequence: str, count: int) -> list[int]:
        if count == 0:
            return []
        # An int literal, not a bound parameter: binding costs more than this query.
        rows = self._con.execute(
            f"SELECT nextval('{sequence}') FROM range({int(count)})"
        ).fetchall()
        return [int(r[0]) for r in rows]

    # ---- facts -----------------------------------------------------------------------

    def insert_facts(
        self, facts: Sequence[NewFact], embeddings: np.ndarray, *, recorded_at: datetime
    ) -> list[int]:
        """Insert fact versions with their embeddings; returns the new ids."""
        import pyarrow as pa

        with self.transaction() as con:
            ids = self._next_ids("seq_facts", len(facts))
            flat = pa.array(embeddings.astype("float32", copy=False).reshape(-1))
            table = pa.table(
                {
                    "id": pa.array(ids, pa.int64()),
                    "lineage_id": pa.array(
                        [f.lineage_id if f.lineage_id is not None else i
                         for f, i in zip(facts, ids, strict=True)],
                        pa.int64(),
                    ),
                    "user_id": [f.user_id for f in facts],
                    "agent_id": pa.array([f.agent_id for f in facts], pa.string()),
                    "run_id": pa.array([f.run_id for f in facts], pa.string()),
                    "text": [f.text for f in facts],
                    "category": pa.array([f.category for f in facts], pa.string()),
                    "metadata": [_dumps(f.metadata) for f in facts],
                    "content_hash": [content_hash(f.text) for f in facts],
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                    "source_message_id": pa.array(
                        [f.source_message_id for f in facts], pa.int64()
                    ),
                    "valid_from": pa.array([f.valid_from for f in facts], pa.timestamp("us")),
                    "valid_to": pa.array([f.valid_to for f in facts], pa.timestamp("us")),
                    "recorded_at": pa.array([recorded_at] * len(facts), pa.timestamp("us")),
                    "subject": pa.array([f.subject for f in facts], pa.string()),
                    "slot": pa.array([f.slot for f in facts], pa.string()),
                    "value": pa.array([f.value for f in facts], pa.string()),
                }
            )
            con.register("_new_facts", table)
            try:
                con.execute(
                    "INSERT INTO facts (id, lineage_id, user_id, agent_id, run_id, text, category,"
                    " metadata, content_hash, embedding, source_message_id, valid_from, valid_to,"
                    " recorded_at, subject, slot, value) SELECT id, lineage_id, user_id,"
                    " agent_id, run_id, text, category, metadata, content_hash, embedding,"
                    " source_message_id, valid_from, valid_to, recorded_at, subject, slot,"
                    " value FROM _new_facts"
                )
            finally:
                con.unregister("_new_facts")
            sources = [
                [i, f.source_message_id, recorded_at]
                for f, i in zip(facts, ids, strict=True)
                if f.source_message_id is not None
            ]
            if sources:
                self._insert_sources(sources)
        return ids

    def _insert_sources(self, rows: list[list[Any]]) -> None:
        import pyarrow as pa

        table = pa.table(
            {
                "fact_id": pa.array([r[0] for r in rows], pa.int64()),
                "message_id": pa.array([r[1] for r in rows], pa.int64()),
                "linked_at": pa.array([r[2] for r in rows], pa.timestamp("us")),
            }
        )
        self._con.register("_new_sources", table)
        try:
            self._con.execute("INSERT INTO fact_sources SELECT * FROM _new_sources")
        finally:
            self._con.unregister("_new_sources")

    def add_source(self, fact_id: int, message_id: int, at: datetime) -> None:
        with self.transaction() as con:
            con.execute("INSERT INTO fact_sources VALUES (?, ?, ?)", [fact_id, message_id, at])

    def current_by_hash(
        self, user_id: str, agent_id: str | None, run_id: str | None, hashes: Sequence[str]
    ) -> dict[str, int]:
        """Map content hash → id of a current fact with that text in exactly this scope."""
        if not hashes:
            return {}
        rows = self.query(
            f"SELECT content_hash, min(id) FROM facts WHERE user_id = ? AND {CURRENT}"
            " AND agent_id IS NOT DISTINCT FROM ? AND run_id IS NOT DISTINCT FROM ?"
            f" AND content_hash IN ({', '.join(_hex_literal(h) for h in set(hashes))})"
            " GROUP BY content_hash",
            [user_id, agent_id, run_id],
        )
        return {str(h): int(i) for h, i in rows}

    def current_slotted(
        self,
        user_id: str,
        agent_id: str | None = None,
        *,
        subject: str | None = None,
        slot: str | None = None,
    ) -> list[Fact]:
        """A user's current facts that have a slot, ordered by subject, slot, then age.

        The agent is matched exactly (None: facts without an agent), as candidates are;
        ``subject`` and ``slot`` narrow the list, compared without case or outer spaces.
        """
        clauses = ["user_id = ?", CURRENT, "slot IS NOT NULL", "agent_id IS NOT DISTINCT FROM ?"]
        params: list[Any] = [user_id, agent_id]
        for column, wanted in (("subject", subject), ("slot", slot)):
            if wanted is not None:
                clauses.append(f"lower(trim({column})) = ?")
                params.append(wanted.strip().lower())
        rows = self.query(
            f"SELECT {FACT_COLUMNS} FROM facts WHERE {' AND '.join(clauses)}"
            " ORDER BY lower(subject), lower(slot), valid_from, id",
            params,
        )
        return [fact_from_row(row) for row in rows]

    def retire(
        self,
        fact_id: int,
        *,
        at: datetime,
        valid_to: datetime | None = None,
        superseded_by: int | None = None,
    ) -> None:
        """Close a fact version in transaction time (and in valid time if given)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE facts SET expired_at = ?, valid_to = coalesce(?, valid_to),"
                " superseded_by = ? WHERE id = ?",
                [at, valid_to, superseded_by, fact_id],
            )

    def get_fact(self, fact_id: int) -> tuple[Any, ...]:
        """The fact row (FACT_COLUMNS order) or FactNotFoundError."""
        rows = self.query(f"SELECT {FACT_COLUMNS} FROM facts WHERE id = ?", [fact_id])
        if not rows:
            raise FactNotFoundError(f"no fact with id {fact_id}")
        return rows[0]

    def embeddings_for(self, fact_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        import numpy as np

        with self._lock:
            self._parallel_reads()
            table = self._con.execute(
                f"SELECT id, embedding FROM facts WHERE id IN {id_list(fact_ids)}",
            ).to_arrow_table()
        return _ids_and_matrix(table, self.dim, np)

    def current_vectors(self, user_id: str) -> tuple[list[int], np.ndarray]:
        """Ids and embeddings of a user's current facts, for (re)building the index."""
        import numpy as np

        with self._lock:
            self._parallel_reads()
            table = self._con.execute(
                f"SELECT id, embedding FROM facts WHERE user_id = ? AND {CURRENT} ORDER BY id",
                [user_id],
            ).to_arrow_table()
        return _ids_and_matrix(table, self.dim, np)

    # ---- events ----------------------------------------------------------------------

    def insert_events(self, rows: Sequence[NewEvent]) -> list[int]:
        """Append audit events (use :meth:`WriteTx.event` rather than this)."""
        import pyarrow as pa

        if not rows:
            return []
        with self.transaction() as con:
            ids = self._next_ids("seq_events", len(rows))
            columns = ["kind", "fact_id", "lineage_id", "user_id", "agent_id", "run_id",
                       "old_text", "new_text", "occurred_at", "actor", "reason", "message_id"]
            types = {"fact_id": pa.int64(), "lineage_id": pa.int64(), "message_id": pa.int64(),
                     "occurred_at": pa.timestamp("us")}
            data = {"id": pa.array(ids, pa.int64())}
            for column in columns:
                key = "at" if column == "occurred_at" else column
                data[column] = pa.array([getattr(r, key) for r in rows],
                                        types.get(column, pa.string()))
            con.register("_new_events", pa.table(data))
            try:
                con.execute(
                    f"INSERT INTO events (id, {', '.join(columns)}) "
                    f"SELECT id, {', '.join(columns)} FROM _new_events"
                )
            finally:
                con.unregister("_new_events")
        return ids

    # ---- index generations -----------------------------------------------------------

    def bump_generation(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Increment and return the index generation of each user (in a transaction)."""
        result: dict[str, int] = {}
        with self.transaction() as con:
            for user_id in sorted(set(user_ids)):
                # An UPDATE, then an INSERT for a new user, costs half of DuckDB's upsert.
                row = con.execute(
                    "UPDATE index_state SET generation = generation + 1 WHERE user_id = ?"
                    " RETURNING generation",
                    [user_id],
                ).fetchone()
                if row is None:
                    con.execute("INSERT INTO index_state VALUES (?, 1)", [user_id])
                    row = (1,)
                result[user_id] = int(row[0])
            self._pending_generations.update(result)
        return result

    def generation(self, user_id: str) -> int:
        """The user's index generation, read from the store (and remembered)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT generation FROM index_state WHERE user_id = ?", [user_id]
            ).fetchall()
            generation = int(rows[0][0]) if rows else 0
            self._generations[user_id] = generation
        return generation

    def known_generation(self, user_id: str) -> int | None:
        """The user's generation as this process last committed or read it, with no query.

        DuckDB lets one process write a store and this mirror is shared by every
        ``Store`` the process opens on the file, so it is exact; None when unknown.
        """
        return self._generations.get(user_id)

    # ---- erasure ---------------------------------------------------------------------

    def purge_user(self, user_id: str) -> dict[str, int]:
        """Erase every row of one user (privacy requests). Returns counts per table.

        Deleting rows is not enough: DuckDB keeps freed blocks in the file without zeroing
        them, so the user's text would still be readable in its bytes. After the delete
        commits, the database is copied into a fresh file that is swapped in
        (:meth:`_rewrite_file`); that costs time proportional to the store's size.
        """
        self._check_sole_writer("purge")
        counts: dict[str, int] = {}
        with self._lock:
            counts = self._delete_user_rows(user_id)
            self._rewrite_file()
        self._generations.pop(user_id, None)
        return counts

    def _check_sole_writer(self, what: str) -> None:
        if self.path == ":memory:":
            return
        with _MIRRORS_LOCK:
            writers = _OPEN_WRITERS.get(str(Path(self.path).resolve()), 0)
        if writers > 1:
            raise StoreError(
                f"cannot {what} {self.path}: {writers} Memory objects have it open in this "
                "process, and erasure rewrites the file. Close the others and retry."
            )

    def _rewrite_file(self) -> None:
        """Copy the database into a fresh file and swap it in, leaving no freed block behind.

        The copy is written beside the database, synced, then renamed over it, so a crash
        leaves either the old file (its rows already deleted) or the new one, never half of
        each; a leftover copy is removed on the next open.
        """
        if self.path == ":memory:":
            return
        import duckdb

        path = Path(self.path)
        fresh = Path(self.path + REWRITE_SUFFIX)
        _remove_database_files(fresh)
        self._parallel_reads()  # the delete's transaction left one thread for the copy
        try:
            self._con.execute("CHECKPOINT")
            name = str(self._scalar("SELECT current_database()"))
            self._con.execute(f"ATTACH {_sql_string(str(fresh))} AS memengine_fresh")
            try:
                self._con.execute(f"COPY FROM DATABASE {_sql_name(name)} TO memengine_fresh")
            finally:
                self._con.execute("DETACH memengine_fresh")
            _fsync(fresh)
        except (duckdb.Error, OSError) as exc:
            _remove_database_files(fresh)
            cls = DiskFullError if is_disk_full(exc) else StoreError
            raise cls(
                f"the rows were deleted but {self.path} could not be rewritten ({exc}), so "
                "their bytes may remain in the file: free some disk space and purge again"
            ) from exc
        self._close_readers()
        self._con.close()
        wal = Path(self.path + ".wal")
        if wal.exists():  # closing checkpointed everything; a stale WAL must not replay
            wal.unlink()
        os.replace(fresh, path)
        _fsync(path.parent)
        try:
            self._con = duckdb.connect(self.path)
        except duckdb.Error as exc:
            raise StoreError(f"cannot reopen {self.path} after the purge: {exc}") from exc
        self._configure()
        self._open_readers()

    def _scalar(self, sql: str) -> Any:
        row = self._con.execute(sql).fetchone()
        return None if row is None else row[0]

    def _delete_user_rows(self, user_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.transaction() as con:
            counts["facts"] = self._count("facts", user_id)
            counts["messages"] = self._count("messages", user_id)
            counts["events"] = self._count("events", user_id)
            con.execute(
                "DELETE FROM fact_sources WHERE fact_id IN (SELECT id FROM facts WHERE user_id=?)",
                [user_id],
            )
            for table in ("facts", "messages", "events", "index_state"):
                con.execute(f"DELETE FROM {table} WHERE user_id = ?", [user_id])
        return counts

    def _count(self, table: str, user_id: str) -> int:
        row = self._con.execute(
            f"SELECT count(*) FROM {table} WHERE user_id = ?", [user_id]
        ).fetchone()
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        """Row counts and identity, for ``memengine stats``."""
        facts = self.query(
            f"SELECT count(*), count(*) FILTER ({CURRENT}), count(DISTINCT user_id) FROM facts"
        )[0]
        messages = self.query(
            "SELECT count(*), count(*) FILTER (status = 'pending'),"
            " count(*) FILTER (status = 'failed') FROM messages"
        )[0]
        events = self.query("SELECT count(*) FROM events")[0][0]
        return {
            "path": self.path,
            "embedder": self._meta("embedder"),
            "dim": self.dim,
            "schema_version": int(self._meta("schema_version") or 0),
            "facts": int(facts[0]),
            "current_facts": int(facts[1]),
            "users": int(facts[2]),
            "messages": int(messages[0]),
            "pending_messages": int(messages[1]),
            "failed_messages": int(messages[2]),
            "events": int(events),
        }


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_name(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_database_files(path: Path) -> None:
    for leftover in (path, Path(str(path) + ".wal")):
        leftover.unlink(missing_ok=True)


def _ids_and_matrix(table: Any, dim: int, np: Any) -> tuple[list[int], Any]:
    ids = table.column("id").to_pylist()
    if not ids:
        return [], np.zeros((0, dim), dtype=np.float32)
    values = table.column("embedding").combine_chunks().flatten().to_numpy()
    return ids, np.asarray(values, dtype=np.float32).reshape(len(ids), dim)


def row_time(value: datetime | None) -> datetime | None:
    """Stored naive UTC → aware UTC (re-exported for modules that build records)."""
    return to_aware(value)
