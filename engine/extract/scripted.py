"""A deterministic extractor for tests and examples: no model, fixed answers.

Give it a mapping from message text to the facts it should "extract". It validates
nothing beyond what the real extractor promises, so pipeline tests exercise the real
Memory code: it answers for every turn it is shown, the assistant's too, like a careless
model, so tests see the pipeline's own guard keep the assistant's claims out. It records
what it was shown (the turns and the known facts) so tests can check what the LM would
have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from engine.errors import ExtractionError
from engine.extract import ExtractedFact, KnownFact, Turn

__all__ = ["ScriptedExtractor"]

Script = Mapping[str, list[ExtractedFact]]


class ScriptedExtractor:
    """Extracts scripted facts per message text.

    ``facts`` maps a message's content to the facts it yields (missing: none), or is a
    callable ``(content, known) -> facts`` for answers that depend on the known facts
    (an ``ends`` alias, say). ``fail_on`` lists message contents whose extraction raises
    ExtractionError, to test that such messages are kept as pending, never dropped.
    """

    identity = "scripted"
    show_known = True  # it records what it was shown

    def __init__(
        self,
        facts: Script | Callable[[str, Sequence[KnownFact]], list[ExtractedFact]] | None = None,
        *,
        fail_on: tuple[str, ...] = (),
    ) -> None:
        self.facts = facts if callable(facts) else dict(facts or {})
        self.fail_on = set(fail_on)
        self.extract_calls: list[list[Turn]] = []
        self.known_calls: list[list[KnownFact]] = []

    def extract(self, turns: list[Turn], known: Sequence[KnownFact] = ()) -> list[ExtractedFact]:
        self.extract_calls.append(list(turns))
        self.known_calls.append(list(known))
        result: list[ExtractedFact] = []
        for turn in turns:
            if turn.content in self.fail_on:
                raise ExtractionError(f"scripted failure for {turn.content!r}")
            if callable(self.facts):
                result.extend(self.facts(turn.content, known))
            else:
                result.extend(self.facts.get(turn.content, []))
        return result
