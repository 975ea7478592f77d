"""Erasure that erases: after ``purge(user)`` none of the user's strings are in the bytes
of anything the store keeps on disk (the DuckDB file, its WAL, the index folder), and the
other users' data is unchanged (export before == export after, and it imports back)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.extract import ExtractedFact
from engine.extract.scripted import ScriptedExtractor
from engine.memory import Memory


def store_files(db_path: Path) -> list[Path]:
    """Every file the store keeps: the database, its WAL and the index folder."""
    return sorted(p for p in db_path.parent.rglob("*") if p.is_file())


def leftovers(db_path: Path, needles: list[str]) -> list[str]:
    """The needles found in the raw bytes of the store's files (UTF-8 and UTF-16)."""
    found = []
    blobs = [p.read_bytes() for p in store_files(db_path)]
    for needle in needles:
        forms = (needle.encode("utf-8"), needle.encode("utf-16-le"))
        if any(form in blob for blob in blobs for form in forms):
            found.append(needle)
    return found


def fill(memory: Memory, user: str, tokens: list[str]) -> None:
    for n, token in enumerate(tokens):
        if n % 3 == 0:
            memory.add(f"{user} note {token}", user_id=user, infer=True)
        else:
            memory.add(f"{user} fact {token} with some words", user_id=user, infer=False,
                       metadata={"secret": f"meta-{token}"})
    memory.search(f"note {tokens[0]}", user_id=user)  # build both indexes


def test_purge_leaves_no_byte_of_the_user_on_disk(
    make_memory: Callable[..., Memory], db_path: Path, tmp_path: Path
) -> None:
    victim = [uuid.uuid4().hex for _ in range(60)]
    keeper = [uuid.uuid4().hex for _ in range(20)]
    extractor = ScriptedExtractor(lambda content, known: [
        ExtractedFact(text=f"User wrote {content.split()[-1]}", slot="note",
                      value=content.split()[-1])])
    memory = make_memory(extractor=extractor)
    fill(memory, "victim-user-7f3a", victim)
    fill(memory, "keeper", keeper)
    memory.flush()
    memory.store.query("CHECKPOINT")
    before = tmp_path / "keeper-before.jsonl"
    memory.export(before, user_id="keeper")
    keeper_current = len(memory.get_all("keeper"))
    assert len(leftovers(db_path, victim)) == len(victim)  # they were on disk

    counts = memory.purge("victim-user-7f3a")
    assert counts["facts"] == 60 and counts["messages"] == 60
    assert leftovers(db_path, [*victim, "victim-user-7f3a"]) == []  # open
    after = tmp_path / "keeper-after.jsonl"
    memory.export(after, user_id="keeper")
    assert after.read_text() == before.read_text()
    # still searchable (where it ranks among 20 look-alike random tokens is not the point)
    assert any(h.text.endswith(f"{keeper[1]} with some words")
               for h in memory.search(f"fact {keeper[1]}", user_id="keeper"))
    assert memory.get_all("victim-user-7f3a") == []
    memory.add("keeper goes on", user_id="keeper", infer=False)  # the store still writes
    memory.close()
    assert leftovers(db_path, [*victim, "victim-user-7f3a"]) == []  # closed

    reopened = make_memory()
    assert len(reopened.get_all("keeper")) == keeper_current + 1
    copy = make_memory(tmp_path / "copy" / "copy.duckdb")
    copy.import_(after)
    texts = [(f.text, f.valid_from, f.metadata) for f in copy.get_all("keeper")]
    assert texts == [(f.text, f.valid_from, f.metadata)
                     for f in reopened.get_all("keeper")][:keeper_current]


def test_purge_refuses_while_another_memory_has_the_file_open(
    make_memory: Callable[..., Memory],
) -> None:
    first = make_memory()
    first.add("secret of maria", user_id="maria", infer=False)
    second = make_memory()
    with pytest.raises(StoreError, match="Close the others"):
        first.purge("maria")
    assert [f.text for f in second.get_all("maria")] == ["secret of maria"]  # nothing lost
    second.close()
    assert first.purge("maria")["facts"] == 1
