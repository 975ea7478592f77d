"""Export and import round-trip the whole history; bad files get clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ImportFormatError, InvalidInputError, Memory
from engine.backends.embed import HashingEmbedder

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                min_size=1, max_size=40).filter(lambda t: t.strip())
operations = st.lists(
    st.tuples(st.sampled_from(["add", "update", "delete"]), st.sampled_from(["u1", "u2"]),
              texts, st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9),
                                     max_size=2)),
    min_size=1, max_size=12,
)


def _apply(memory: Memory, ops: list[tuple[str, str, str, dict[str, int]]]) -> None:
    for op, user, text, meta in ops:
        current = memory.get_all(user)
        if op == "add" or not current:
            memory.add(text, user_id=user, metadata=meta)
        elif op == "update":
            if text.strip() != current[0].text:
                memory.update(current[0].id, text)
        else:
            memory.delete(current[-1].id)


def _normalised(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_round_trip_keeps_everything(tmp_path: Path, ops) -> None:  # type: ignore[no-untyped-def]
    case = tmp_path / f"case-{abs(hash(str(ops)))}"
    with Memory(case / "a.duckdb", embedder=HashingEmbedder(32), infer=False) as source:
        _apply(source, ops)
        source.export(case / "a.jsonl")
        before = {u: [f.text for f in source.get_all(u)] for u in ("u1", "u2")}
    with Memory(case / "b.duckdb", embedder=HashingEmbedder(32), infer=False) as target:
        counts = target.import_(case / "a.jsonl")
        target.export(case / "b.jsonl")
        assert {u: [f.text for f in target.get_all(u)] for u in ("u1", "u2")} == before
        for user, current in before.items():
            if current:
                assert target.search(current[0], user_id=user, k=1)
    assert _normalised(case / "a.jsonl") == _normalised(case / "b.jsonl")
    assert counts["fact"] == sum(1 for line in _normalised(case / "a.jsonl")
                                 if '"type": "fact"' in line)


def test_import_into_a_non_empty_store_remaps_ids(make_memory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = make_memory(tmp_path / "src.duckdb")
    fact_id = source.add("coffee", user_id="maria").fact_ids[0]
    source.update(fact_id, "green tea")
    source.export(tmp_path / "export.jsonl")
    target = make_memory(tmp_path / "dst.duckdb")
    target.add(["x", "y", "z"], user_id="other")
    target.import_(tmp_path / "export.jsonl")
    (tea,) = target.get_all("maria")
    assert tea.text == "green tea"
    assert [v.text for v in target.versions(tea.id)] == ["coffee", "green tea"]
    old = target.versions(tea.id)[0]
    assert old.superseded_by == tea.id and old.lineage_id == old.id
    assert [e.kind for e in target.history(tea.id)] == ["ADD", "UPDATE"]


def test_import_with_another_embedder_re_embeds(make_memory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = make_memory(tmp_path / "src.duckdb", embedder=HashingEmbedder(32))
    source.add(["apples are red", "the sky is blue"], user_id="u")
    source.export(tmp_path / "e.jsonl", embeddings=False)
    target = make_memory(tmp_path / "dst.duckdb", embedder=HashingEmbedder(48))
    target.import_(tmp_path / "e.jsonl")
    assert target.search("sky blue", user_id="u", k=1)[0].text == "the sky is blue"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty"),
        ("not json\n", "not valid JSON"),
        ('{"type": "fact"}\n', "not a memengine export"),
        ('{"type": "header", "format": "memengine-export", "version": 99}\n', "version"),
        ('{"type": "header", "format": "memengine-export", "version": 1, "embedder": "x",'
         ' "dim": 3}\n{"type": "alien"}\n', "unknown record type"),
        ('{"type": "header", "format": "memengine-export", "version": 1, "embedder": "x",'
         ' "dim": 3}\n{"type": "fact", "text": "t"}\n', "missing a field|malformed"),
    ],
)
def test_bad_import_files(memory: Memory, tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ImportFormatError, match=match):
        memory.import_(path)
    assert memory.stats()["facts"] == 0


def test_import_of_a_missing_file(memory: Memory, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        memory.import_(tmp_path / "nope.jsonl")


def test_export_one_user(memory: Memory, tmp_path: Path) -> None:
    memory.add("mine", user_id="a")
    memory.add("theirs", user_id="b")
    counts = memory.export(tmp_path / "a.jsonl", user_id="a")
    assert counts == {"message": 1, "fact": 1, "source": 1, "event": 1}
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {line["user_id"] for line in lines[1:] if "user_id" in line} == {"a"}
