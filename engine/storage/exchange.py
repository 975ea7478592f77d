"""Export and import a store as JSON Lines, history included.

The first line is a header naming the format, version, embedder and dimension.
Then one JSON object per line, each with a ``type``: ``message``, ``fact``
(every version, with its embedding as base64 float32 when exported with
``embeddings=True``; ``subject``/``slot``/``value`` may be absent in exports made
before slots existed, and import as None), ``source`` (extra provenance) and ``event``.

Ids are remapped on import (the target store assigns its own, in the same
order), so an export can be imported into a store that already has data. When
the target's embedder differs from the export's, or the export carries no
embeddings, facts are re-embedded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from engine.errors import ImportFormatError, InvalidInputError
from engine.storage.store import Store
from engine.timeutil import to_storage

if TYPE_CHECKING:
    from engine.memory import Memory

__all__ = ["FORMAT", "VERSION", "export_jsonl", "import_jsonl"]

FORMAT = "memengine-export"
VERSION = 1

_MESSAGE_COLS = ["id", "user_id", "agent_id", "run_id", "role", "name", "content", "metadata",
                 "observed_at", "ingested_at", "status", "mode", "error", "attempts"]
_FACT_COLS = ["id", "lineage_id", "user_id", "agent_id", "run_id", "text", "category",
              "metadata", "content_hash", "source_message_id", "valid_from", "valid_to",
              "recorded_at", "expired_at", "superseded_by", "subject", "slot", "value"]
_SOURCE_COLS = ["fact_id", "message_id", "linked_at"]
_EVENT_COLS = ["id", "kind", "fact_id", "lineage_id", "user_id", "agent_id", "run_id",
               "old_text", "new_text", "occurred_at", "actor", "reason", "message_id"]
_INTS = {"id", "lineage_id", "fact_id", "message_id", "source_message_id", "superseded_by"}
_TIMES = {"observed_at", "ingested_at", "valid_from", "valid_to", "recorded_at",
          "expired_at", "linked_at", "occurred_at"}


def _encode(column: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if column == "metadata":
        return json.loads(value) if isinstance(value, str) else (value or {})
    return value


def _rows(store: Store, table: str, columns: list[str], where: str,
          params: list[Any]) -> Iterator[dict[str, Any]]:
    for row in store.query(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY 1", params
    ):
        yield {c: _encode(c, v) for c, v in zip(columns, row, strict=True)}


def export_jsonl(
    memory: Memory,
    path: str | Path,
    *,
    user_id: str | None = None,
    embeddings: bool = True,
) -> dict[str, int]:
    """Write the store (or one user's part of it) to ``path``; returns counts per type."""
    store = memory.store
    where, params = ("user_id = ?", [user_id]) if user_id else ("TRUE", [])
    counts = {"message": 0, "fact": 0, "source": 0, "event": 0}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        header = {"type": "header", "format": FORMAT, "version": VERSION,
                  "embedder": memory.embedder.identity, "dim": memory.embedder.dim,
                  "user_id": user_id}
        out.write(json.dumps(header) + "\n")
        for record in _rows(store, "messages", _MESSAGE_COLS, where, params):
            _write(out, "message", record, counts)
        vectors: dict[int, bytes] = {}
        fact_rows = list(_rows(store, "facts", _FACT_COLS, where, params))
        if embeddings and fact_rows:
            ids, matrix = store.embeddings_for([r["id"] for r in fact_rows])
            vectors = {i: matrix[n].tobytes() for n, i in enumerate(ids)}
        for record in fact_rows:
            if embeddings:
                record["embedding"] = base64.b64encode(vectors[record["id"]]).decode("ascii")
            _write(out, "fact", record, counts)
        source_where = f"fact_id IN (SELECT id FROM facts WHERE {where})"
        for record in _rows(store, "fact_sources", _SOURCE_COLS, source_where, params):
            _write(out, "source", record, counts)
        for record in _rows(store, "events", _EVENT_COLS, where, params):
            _write(out, "event", record, counts)
    return counts


def _write(out: IO[str], kind: str, record: dict[str, Any], counts: dict[str, int]) -> None:
    out.write(json.dumps({"type": kind, **record}, ensure_ascii=False) + "\n")
    counts[kind] += 1


def _read(path: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist or is not a file")
    groups: dict[str, list[dict[str, Any]]] = {"message": [], "fact": [], "source": [],
                                               "event": []}
    header: dict[str, Any] | None = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ImportFormatError(f"{path}:{number}: not valid JSON ({exc})") from exc
            kind = record.get("type") if isinstance(record, dict) else None
            if number == 1:
                if kind != "header" or record.get("format") != FORMAT:
                    raise ImportFormatError(
                        f"{path} is not a memengine export (first line must be its header)"
                    )
                if record.get("version") != VERSION:
                    raise ImportFormatError(
                        f"{path} has export version {record.get('version')}; this engine "
                        f"reads version {VERSION}"
                    )
                header = record
                continue
            if kind not in groups:
                raise ImportFormatError(f"{path}:{number}: unknown record type {kind!r}")
            groups[kind].append(record)
    if header is None:
        raise ImportFormatError(f"{path} is empty")
    return header, groups


def import_jsonl(
    memory: Memory,
    path: str | Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Load an export into ``memory``'s store; returns counts per type."""
    import numpy as np
    import pyarrow as pa

    header, groups = _read(Path(path))
    store = memory.store
    dim = store.dim
    reuse = header.get("embedder") == memory.embedder.identity and header.get("dim") == dim
    facts = groups["fact"]
    try:
        if reuse and all("embedding" in f for f in facts):
            matrix = np.stack(
                [np.frombuffer(base64.b64decode(f["embedding"]), dtype=np.float32)
                 for f in facts]
            ) if facts else np.zeros((0, dim), np.float32)
        else:
            matrix = memory.embedder.embed([f["text"] for f in facts])
        if matrix.shape != (len(facts), dim):
            raise ValueError(f"shape {matrix.shape}, expected ({len(facts)}, {dim})")
    except (KeyError, ValueError, TypeError) as exc:
        raise ImportFormatError(f"{path}: bad fact embeddings ({exc})") from exc

    def remap(ids: list[int], sequence: str) -> dict[int, int]:
        new = store._next_ids(sequence, len(ids))
        return dict(zip(sorted(ids), new, strict=True))

    try:
        with store.write(actor=memory.actor) as tx, store.transaction() as con:
            message_ids = remap([m["id"] for m in groups["message"]], "seq_messages")
            fact_ids = remap([f["id"] for f in facts], "seq_facts")
            event_ids = remap([e["id"] for e in groups["event"]], "seq_events")

            def fid(value: Any) -> Any:
                return None if value is None else fact_ids.get(value, value)

            def mid(value: Any) -> Any:
                return None if value is None else message_ids.get(value, value)

            _insert(con, "messages", _MESSAGE_COLS, [
                {**m, "id": message_ids[m["id"]]} for m in groups["message"]])
            fact_records = [
                {**f, "id": fact_ids[f["id"]], "lineage_id": fid(f["lineage_id"]),
                 "superseded_by": fid(f["superseded_by"]),
                 "source_message_id": mid(f["source_message_id"])}
                for f in facts
            ]
            _insert(con, "facts", _FACT_COLS, fact_records, embedding=(matrix, dim))
            _insert(con, "fact_sources", _SOURCE_COLS, [
                {**s, "fact_id": fid(s["fact_id"]), "message_id": mid(s["message_id"])}
                for s in groups["source"]])
            _insert(con, "events", _EVENT_COLS, [
                {**e, "id": event_ids[e["id"]], "fact_id": fid(e["fact_id"]),
                 "lineage_id": fid(e["lineage_id"]), "message_id": mid(e["message_id"])}
                for e in groups["event"]])
            # the indexes of these users are rebuilt from the store after the commit
            tx.reset(sorted({f["user_id"] for f in facts}))
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise ImportFormatError(f"{path}: a record is missing a field or malformed ({exc})") \
            from exc
    if progress is not None:
        progress(len(facts))
    return {kind: len(records) for kind, records in groups.items()}


def _insert(con: Any, table: str, columns: list[str], records: list[dict[str, Any]],
            embedding: tuple[Any, int] | None = None) -> None:
    import pyarrow as pa

    if not records:
        return
    data: dict[str, Any] = {}
    for column in columns:
        values = [r.get(column) for r in records]
        if column in _TIMES:
            data[column] = pa.array(
                [None if v is None else to_storage(v, name=column) for v in values],
                pa.timestamp("us"),
            )
        elif column == "metadata":
            data[column] = pa.array([json.dumps(v or {}, ensure_ascii=False) for v in values])
        elif column == "attempts":
            data[column] = pa.array(values, pa.int32())
        elif column in _INTS:
            data[column] = pa.array(values, pa.int64())
        else:
            data[column] = pa.array(values, pa.string())
    names = list(columns)
    if embedding is not None:
        matrix, dim = embedding
        flat = pa.array(matrix.astype("float32").reshape(-1))
        data["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        names.append("embedding")
    con.register("_import_rows", pa.table(data))
    try:
        con.execute(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)} FROM _import_rows"
        )
    finally:
        con.unregister("_import_rows")
