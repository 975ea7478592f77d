"""The disk filling up mid-write, and a data folder without write permission.

Disk full: a child process whose file size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ``
ignored so writes fail with EFBIG, as on a full disk) is just above its store's size adds
until a write fails. The failure must be a :class:`DiskFullError` that says what to do;
after reopening without the limit every acknowledged add is there (checked by the crash
harness's ``verify``) and the store works again.

Read-only folder: opening a store for writing there is refused at once with the fix,
not at the first commit; a read-only open of an existing store there searches it. Root
writes anywhere, so the child runs without root's override (``setpriv``) or skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.crash_harness import open_memory, verify

REPO = Path(__file__).resolve().parent.parent

FILLER = r'''
import json, resource, signal, sys
from pathlib import Path
from benchmarks.crash_harness import _ack, _fact_ids, open_memory
from engine.errors import EngineError

db, acks, headroom = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
memory = open_memory(db, None)
memory.add("before the limit", user_id="ana", infer=False)
memory.store.query("CHECKPOINT")
limit = max(p.stat().st_size for p in db.parent.rglob("*") if p.is_file()) + headroom
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
outcome = {}
with acks.open("a", encoding="utf-8") as handle:
    for step in range(100_000):
        user = ("ana", "bruno")[step % 2]
        token = f"tok{step}"
        try:
            if step % 3 == 2:
                text = f"{user} says {token}"
                result = memory.add(text, user_id=user, infer=True)
                _ack(handle, {"op": "infer", "user": user, "message_ids": result.message_ids,
                              "contents": [text], "fact_ids": _fact_ids(result),
                              "pending": result.pending, "lm": False})
            else:
                texts = [f"{user} remembers {token}n{n}" + " padding" * 200 for n in range(5)]
                result = memory.add(texts, user_id=user, infer=False)
                _ack(handle, {"op": "raw", "user": user, "message_ids": result.message_ids,
                              "contents": texts, "fact_ids": _fact_ids(result)})
        except BaseException as exc:
            outcome = {"error": type(exc).__name__, "engine": isinstance(exc, EngineError),
                       "message": str(exc), "adds": step}
            break
try:
    memory.close()
    outcome["close"] = "ok"
except BaseException as exc:
    outcome["close"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(outcome))
'''


def test_a_full_disk_is_a_clear_error_and_loses_no_acknowledged_add(tmp_path: Path) -> None:
    db, acks = tmp_path / "store" / "full.duckdb", tmp_path / "full.acks"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", FILLER, str(db), str(acks), str(1 << 20)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    outcome = json.loads(out.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "DiskFullError", outcome
    assert outcome["adds"] > 3  # it failed mid-run, not on the first write
    assert "no space left" in outcome["message"] and "Free some space" in outcome["message"]
    assert outcome["close"] == "ok"
    checked = verify(db, acks)  # reopened without the limit: pending ones processed too
    assert checked.problems == [] and checked.acknowledged == outcome["adds"]
    with open_memory(db, None) as memory:
        memory.add("after the disk was freed", user_id="ana", infer=False)
        assert memory.search("after the disk was freed", user_id="ana")[0].text == \
            "after the disk was freed"
        current = {f.id for f in memory.get_all("ana")}
        assert memory.index.ids("ana") == current == memory.searcher.lexical.ids("ana")


READ_ONLY_FOLDER = r'''
import json, sys
from pathlib import Path
from engine.backends.embed import HashingEmbedder
from engine.errors import EngineError
from engine.memory import Memory

old, new = Path(sys.argv[1]), Path(sys.argv[2])
try:
    (new / "probe").write_text("x")
    print(json.dumps({"skip": "this process may write in a 0o555 folder (root with "
                              "CAP_DAC_OVERRIDE): permissions are not enforced"}))
    raise SystemExit(0)
except PermissionError:
    pass
outcome = {}
for name, path in (("new", new / "memory.duckdb"), ("existing", old / "memory.duckdb")):
    try:
        Memory(path, embedder=HashingEmbedder(64), infer=False).close()
        outcome[name] = "opened"
    except EngineError as exc:
        outcome[name] = f"{type(exc).__name__}: {exc}"
with Memory(old / "memory.duckdb", embedder=HashingEmbedder(64), read_only=True) as memory:
    outcome["search"] = [hit.text for hit in memory.search("coffee", user_id="ana")]
print(json.dumps(outcome))
'''


def _without_root_overrides() -> list[str]:
    """A command prefix that drops root's power to write anywhere (CAP_DAC_OVERRIDE), so
    folder permissions apply to the child as they do to any other user."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return []


def test_a_read_only_folder_is_refused_for_writing_and_searchable_read_only(
    tmp_path: Path,
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    new.mkdir()
    with open_memory(old / "memory.duckdb", None, infer=False) as memory:
        memory.add("I love coffee", user_id="ana")
        memory.search("coffee", user_id="ana")
    folders = [old, new, *old.glob("*.index")]
    for folder in folders:
        folder.chmod(0o555)
    try:
        out = subprocess.run(
            [*_without_root_overrides(), sys.executable, "-c", READ_ONLY_FOLDER, str(old),
             str(new)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert out.returncode == 0, out.stderr[-3000:]
    outcome = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    for name in ("new", "existing"):
        assert outcome[name].startswith("StoreError: cannot write the store"), outcome
        assert "writable folder" in outcome[name] and "read_only=True" in outcome[name]
    assert outcome["search"] == ["I love coffee"]
    assert sorted(p.name for p in new.iterdir()) == []  # nothing was created there
    with open_memory(old / "memory.duckdb", None, infer=False) as memory:
        assert [f.text for f in memory.get_all("ana")] == ["I love coffee"]
