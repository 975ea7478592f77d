"""A deterministic extractor for tests and examples: no model, fixed answers.

Give it a mapping from message text to the facts it should "extract", and a
function (or mapping) that labels candidates. It validates nothing beyond what
the real extractor promises, so pipeline tests exercise the real Memory code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from engine.errors import ExtractionError
from engine.extract import Candidate, ExtractedFact, Label, Turn

__all__ = ["ScriptedExtractor"]


class ScriptedExtractor:
    """Extracts scripted facts per message text; labels by a rule you provide.

    ``facts`` maps a message's content to the facts it yields (missing: none).
    ``labels`` maps ``(new fact text, candidate text)`` to a label, or is a
    callable with that signature; unknown pairs are ``unrelated``.
    ``fail_on`` lists message contents whose extraction raises ExtractionError,
    to test that such messages are kept as pending, never dropped.
    """

    identity = "scripted"

    def __init__(
        self,
        facts: Mapping[str, list[ExtractedFact]] | None = None,
        labels: Mapping[tuple[str, str], Label] | Callable[[str, str], Label] | None = None,
        *,
        fail_on: tuple[str, ...] = (),
    ) -> None:
        self.facts = dict(facts or {})
        self.labels = labels or {}
        self.fail_on = set(fail_on)
        self.extract_calls: list[list[Turn]] = []
        self.resolve_calls: list[tuple[str, list[str]]] = []

    def extract(self, turns: list[Turn]) -> list[ExtractedFact]:
        self.extract_calls.append(list(turns))
        result: list[ExtractedFact] = []
        for turn in turns:
            if turn.content in self.fail_on:
                raise ExtractionError(f"scripted failure for {turn.content!r}")
            result.extend(self.facts.get(turn.content, []))
        return result

    def resolve(self, fact: ExtractedFact, candidates: list[Candidate]) -> dict[int, Label]:
        self.resolve_calls.append((fact.text, [c.text for c in candidates]))
        answer: dict[int, Label] = {}
        for candidate in candidates:
            if callable(self.labels):
                label = self.labels(fact.text, candidate.text)
            else:
                label = self.labels.get((fact.text, candidate.text), "unrelated")
            answer[candidate.alias] = label
        return answer
