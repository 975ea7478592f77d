"""The product's story end to end with the real default GGUF (issue: extraction).

Day 1 Maria introduces herself; day 30 she has switched from coffee to green tea
and says her sister Ana visits next week. The default model extracts, resolves and
the engine's rules keep the history. Slow (a few LM calls): marked ``model``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import Memory

pytestmark = pytest.mark.model

DAY1 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
DAY10 = DAY1 + timedelta(days=9)
DAY30 = DAY1 + timedelta(days=29)
HELLO = ("Hi! I'm Maria, I live in Lisbon and work as a nurse. "
         "I really love coffee in the morning.")
LATER = ("Actually I've stopped drinking coffee, I prefer green tea these days. "
         "My sister Ana is visiting next week.")


@pytest.fixture(scope="module")
def extractor():  # type: ignore[no-untyped-def]
    from engine.backends import models

    spec = models.default_model("lm")
    if not models.is_installed(spec.name):
        message = f"the default LM {spec.name} is not installed: run `make install`"
        if os.environ.get("MEMENGINE_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from engine.extract.programs import DspyExtractor

    with DspyExtractor() as built:
        yield built


def test_maria_coffee_to_tea(minilm, extractor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Memory(tmp_path / "story.duckdb", embedder=minilm, extractor=extractor,
                infer=True) as memory:
        first = memory.add(HELLO, user_id="maria", observed_at=DAY1)
        texts = [e.new_text or "" for e in first.events]
        assert any("coffee" in t.lower() for t in texts), texts
        assert any("lisbon" in t.lower() for t in texts), texts

        memory.add(LATER, user_id="maria", observed_at=DAY30)

        now = memory.search("what does Maria drink?", user_id="maria", k=3)
        assert "tea" in now[0].text.lower(), [h.text for h in now]

        then = memory.search("what does Maria drink?", user_id="maria", k=3, as_of=DAY10)
        assert "coffee" in then[0].text.lower(), [h.text for h in then]

        versions = memory.versions(now[0].id)
        assert "tea" in versions[-1].text.lower(), [v.text for v in versions]
        coffee = [v for v in versions
                  if "coffee" in v.text.lower() and "tea" not in v.text.lower()]
        assert coffee, [v.text for v in versions]
        assert coffee[0].valid_from == DAY1 and coffee[0].valid_to == DAY30
        kinds = [e.kind for e in memory.history(now[0].id)]
        assert kinds[0] == "ADD" and kinds[-1] in ("SUPERSEDE", "UPDATE"), kinds

        visits = [f for f in memory.get_all("maria") if "ana" in f.text.lower()]
        assert visits, [f.text for f in memory.get_all("maria")]
        assert abs((visits[0].valid_from - (DAY30 + timedelta(days=7))).days) <= 3
