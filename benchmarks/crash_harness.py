"""Crash safety: a child process ingests while the parent kills it with SIGKILL at random.

The child (``python -m benchmarks.crash_harness child ...``) opens a store and loops over
random operations on a few users: raw adds, ``infer=True`` adds that wait and that do not,
``flush`` (which saves the vector index), searches, and the purge of a scratch user (a
rewrite of the whole file). After each operation *returns* it appends an acknowledgement
line to a file and fsyncs it before going on, so whatever the file holds was promised.

After each kill :func:`verify` opens the store the way a user would (pending messages are
extracted on open) and checks every promise against DuckDB and both indexes. The store
is kept between kills, so later rounds run on a store that has been through earlier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KillResult", "kill_round", "scripted_extractor", "verify"]

REPO = Path(__file__).resolve().parent.parent
USERS = ("ana", "bruno", "carla")
DIM = 64


def scripted_extractor() -> Any:
    """One fact per message, naming the message's token (so it stays grounded)."""
    from engine.extract import ExtractedFact
    from engine.extract.scripted import ScriptedExtractor

    return ScriptedExtractor(lambda content, known: [
        ExtractedFact(text=f"User noted {content.split()[-1]}")])


def open_memory(db: Path, lm: str | None, **kwargs: Any) -> Any:
    from engine.backends.embed import HashingEmbedder
    from engine.memory import Memory

    extractor = lm if lm else scripted_extractor()
    return Memory(db, embedder=HashingEmbedder(DIM), extractor=extractor, **kwargs)


def _ack(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def child(db: Path, acks: Path, seed: int, lm: str | None, ops: int) -> None:
    """Run random operations until killed (or ``ops`` of them), acknowledging each."""
    rng = random.Random(seed)
    memory = open_memory(db, lm)
    with acks.open("a", encoding="utf-8") as handle:
        print("ready", flush=True)
        for step in range(ops):
            token = f"tok{seed}x{step}"
            user = rng.choice(USERS)
            roll = rng.random()
            if roll < 0.40:
                texts = [f"{user} remembers {token}n{n}" for n in range(rng.randint(1, 3))]
                result = memory.add(texts, user_id=user, infer=False)
                _ack(handle, {"op": "raw", "user": user, "message_ids": result.message_ids,
                              "contents": texts, "fact_ids": _fact_ids(result)})
            elif roll < 0.70:
                text = f"{user} says {token}"
                result = memory.add(text, user_id=user, infer=True)
                _ack(handle, {"op": "infer", "user": user, "message_ids": result.message_ids,
                              "contents": [text], "fact_ids": _fact_ids(result),
                              "pending": result.pending, "lm": bool(lm)})
            elif roll < 0.85:
                text = f"{user} mentions {token}"
                result = memory.add(text, user_id=user, infer=True, wait=False)
                _ack(handle, {"op": "background", "user": user,
                              "message_ids": result.message_ids, "contents": [text],
                              "lm": bool(lm)})
            elif roll < 0.93:
                memory.flush()
                _ack(handle, {"op": "flush"})
            elif roll < 0.97:
                memory.search(f"what did {user} say?", user_id=user)
            else:
                scratch = f"scratch{seed}x{step}"
                secret = f"secret{seed}x{step}"
                memory.add(f"{scratch} whispers {secret}", user_id=scratch, infer=False)
                _ack(handle, {"op": "scratch", "user": scratch, "secret": secret})
                memory.purge(scratch)
                _ack(handle, {"op": "purge", "user": scratch, "secret": secret})
    memory.close()


def _fact_ids(result: Any) -> list[int]:
    return sorted({e.fact_id for e in result.events if e.fact_id is not None})


@dataclass
class KillResult:
    """What one kill-and-reopen round found (``problems`` empty: nothing lost)."""

    acknowledged: int = 0
    pending_on_open: int = 0
    problems: list[str] = field(default_factory=list)
    rebuilt_indexes: int = 0
    purged_bytes_left: int = 0
    seconds_alive: float = 0.0
    requests: int = 0
    """Requests answered before the kill (server rounds only)."""


def _read_acks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by the kill was never acknowledged
    return records


def verify(db: Path, acks: Path, lm: str | None = None) -> KillResult:
    """Open the store after a kill and check every acknowledged promise."""
    from engine.retrieval.index import IndexRebuiltWarning

    result = KillResult()
    records = _read_acks(acks)
    result.acknowledged = len(records)
    problems = result.problems
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexRebuiltWarning)
        memory = open_memory(db, lm, process_pending=False)
        try:
            result.pending_on_open = len(memory.store.pending_messages(max_attempts=3))
            memory.close()
            memory = open_memory(db, lm)  # the way a user opens it: pending extracted
            memory.flush()
            q = memory.store.query
            left = q("SELECT count(*) FROM messages WHERE status = 'pending' AND mode = 'infer'"
                     " AND attempts < 3")[0][0]
            if left:
                problems.append(f"{left} pending messages not processed after open")
            messages = {int(i): (u, c, s) for i, u, c, s in
                        q("SELECT id, user_id, content, status FROM messages")}
            facts = {int(r[0]): r for r in q(
                "SELECT id, user_id, text, source_message_id, superseded_by FROM facts")}
            sources = {}
            for fact_id, message_id in q("SELECT fact_id, message_id FROM fact_sources"):
                sources.setdefault(int(message_id), set()).add(int(fact_id))
            purged = {r["user"]: r["secret"] for r in records if r["op"] == "purge"}
            for record in records:
                _check_record(record, messages, facts, sources, purged, problems)
            problems.extend(_duplicates(q))
            problems.extend(_event_problems(q, facts))
            users = [str(r[0]) for r in q("SELECT DISTINCT user_id FROM facts")]
            problems.extend(_index_problems(memory, users))
            result.purged_bytes_left = _purged_left(db, list(purged.values()))
            if result.purged_bytes_left:
                problems.append(f"{result.purged_bytes_left} purged secrets still on disk")
        finally:
            memory.close()
    result.rebuilt_indexes = sum(issubclass(w.category, IndexRebuiltWarning) for w in caught)
    return result


def _check_record(record: dict[str, Any], messages: dict[int, Any], facts: dict[int, Any],
                  sources: dict[int, set[int]], purged: dict[str, str],
                  problems: list[str]) -> None:
    op = record["op"]
    if op in ("raw", "infer", "background"):
        for message_id, content in zip(record["message_ids"], record["contents"], strict=True):
            stored = messages.get(int(message_id))
            if stored is None or stored[1] != content:
                problems.append(f"acknowledged message {message_id} ({content!r}) lost")
            elif (op != "raw" and not record.get("lm") and stored[2] == "processed"
                  and not sources.get(int(message_id))):
                problems.append(f"message {message_id} processed but has no fact")
        for fact_id in record.get("fact_ids", []):
            if int(fact_id) not in facts:
                problems.append(f"acknowledged fact {fact_id} lost")
    elif op == "scratch" and record["user"] not in purged:
        present = [m for m in messages.values() if m[0] == record["user"]]
        if len(present) > 1:
            problems.append(f"scratch user {record['user']} has {len(present)} messages")
    elif op == "purge":
        left = [m for m in messages.values() if m[0] == record["user"]]
        left += [f for f in facts.values() if f[1] == record["user"]]
        if left:
            problems.append(f"purged user {record['user']} still has {len(left)} rows")


def _duplicates(q: Any) -> list[str]:
    rows = q("SELECT user_id, content_hash, count(*) FROM facts WHERE valid_to IS NULL AND"
             " expired_at IS NULL GROUP BY user_id, agent_id, run_id, content_hash"
             " HAVING count(*) > 1")
    twice = q("SELECT source_message_id, text, count(*) FROM facts GROUP BY"
              " source_message_id, text HAVING count(*) > 1 AND source_message_id IS NOT NULL")
    return ([f"duplicate current fact for {r[0]} ({r[2]} copies)" for r in rows]
            + [f"message {r[0]} extracted twice ({r[1]!r})" for r in twice])


def _event_problems(q: Any, facts: dict[int, Any]) -> list[str]:
    problems = []
    created = {int(r[0]) for r in q(
        "SELECT DISTINCT fact_id FROM events WHERE kind IN"
        " ('ADD', 'SUPERSEDE', 'UPDATE', 'CORRECT', 'RESTORE') AND fact_id IS NOT NULL")}
    for fact_id in sorted(set(facts) - created):
        problems.append(f"fact {fact_id} has no event that created it")
    referenced = {int(r[0]) for r in q("SELECT DISTINCT fact_id FROM events"
                                       " WHERE fact_id IS NOT NULL")}
    for fact_id in sorted(referenced - set(facts)):
        problems.append(f"an event names fact {fact_id}, which does not exist")
    for fact_id, row in facts.items():
        if row[4] is not None and int(row[4]) not in facts:
            problems.append(f"fact {fact_id} is superseded by a missing fact {row[4]}")
    return problems


def _index_problems(memory: Any, users: Sequence[str]) -> list[str]:
    """Both indexes must hold exactly the user's current fact ids, as DuckDB says."""
    problems = []
    for user in users:
        current = {int(r[0]) for r in memory.store.query(
            "SELECT id FROM facts WHERE user_id = ? AND valid_to IS NULL AND expired_at IS NULL",
            [user])}
        for name, held in (("vector", memory.index.ids(user)),
                           ("lexical", memory.searcher.lexical.ids(user))):
            if held != current:
                problems.append(f"{name} index of {user} disagrees with DuckDB: missing "
                                f"{sorted(current - held)[:5]}, extra {sorted(held - current)[:5]}")
    return problems


def _purged_left(db: Path, secrets: Sequence[str]) -> int:
    if not secrets:
        return 0
    blobs = [p.read_bytes() for p in db.parent.rglob("*") if p.is_file()
             and not p.name.endswith(".acks")]
    return sum(any(s.encode() in blob for blob in blobs) for s in secrets)


def kill_round(db: Path, acks: Path, *, seed: int, max_delay: float, lm: str | None = None,
               timeout: float = 120.0) -> KillResult:
    """Start a child on ``db``, SIGKILL it after a random delay once it is ready, verify."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "MEMENGINE_KV_DIR": os.environ.get("MEMENGINE_KV_DIR", "")}
    command = [sys.executable, "-m", "benchmarks.crash_harness", "child", "--db", str(db),
               "--acks", str(acks), "--seed", str(seed)]
    if lm:
        command += ["--lm", lm]
    child_process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
    assert child_process.stdout is not None
    started = time.perf_counter()
    line = child_process.stdout.readline()
    if line.strip() != "ready":
        child_process.wait(timeout=timeout)
        result = KillResult()
        result.problems.append(f"child did not start (exit {child_process.returncode})")
        return result
    time.sleep(rng.uniform(0.0, max_delay))
    child_process.send_signal(signal.SIGKILL)
    child_process.wait(timeout=timeout)
    alive = time.perf_counter() - started
    result = verify(db, acks, lm)
    result.seconds_alive = alive
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crash_harness")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("child", help="ingest until killed (run by the harness)")
    run.add_argument("--db", type=Path, required=True)
    run.add_argument("--acks", type=Path, required=True)
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--lm", default=None)
    run.add_argument("--ops", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    child(args.db, args.acks, args.seed, args.lm, args.ops)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
