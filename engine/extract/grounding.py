"""Facts come from what the user said: the other turns of a conversation are context.

A conversation given to :meth:`engine.memory.Memory.add` may hold the assistant's replies
(``memengine chat`` adds each exchange), system or tool messages. They help read the
user's words ("No, I don't eat fish" answers "Try a fish diet?"), but a claim made only
there is not the user's: a small model answering "You live in Paris, right?" must not
become "User lives in Paris". Two checks in code back the instruction the model gets:
:func:`grounded` (the LM extractor: the names and numbers of a fact's value appear in the
user's own turns) and :func:`borrowed` (the add pipeline, for any extractor: a fact whose
value or sentence cites a name or number that only the other turns said is the
assistant's claim, dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.extract import ExtractedFact, Turn
from engine.extract.slots import specifics

__all__ = ["borrowed", "context_said", "grounded", "user_said"]


def user_said(turns: Sequence[Turn]) -> str:
    """The user's turns of ``turns`` as one casefolded text (what facts may cite)."""
    return " ".join(t.content for t in turns if t.from_user).casefold()


def context_said(turns: Sequence[Turn]) -> str:
    """The other turns (assistant, system, tool) as one casefolded text."""
    return " ".join(t.content for t in turns if not t.from_user).casefold()


def _needles(text: str) -> list[str]:
    """The names (by their first five letters) and numbers of ``text``, casefolded."""
    return [(token if token[0].isdigit() else token[:5]).casefold()
            for token in specifics(text)]


def grounded(fact: ExtractedFact, said: str) -> bool:
    """Whether the names and numbers of the fact's value appear in ``said`` (casefolded;
    a name by its first five letters, so "PostgreSQL" is found in "Postgres"): the model
    is told to copy them as written, so one that is not there was invented (a small model
    repeating its few-shot demos, or the assistant's words taken for the user's)."""
    return all(needle in said for needle in _needles(fact.value or ""))


def borrowed(fact: ExtractedFact, said: str, context: str) -> bool:
    """Whether the fact (its value, or its sentence after the first word, "User" or
    "User's") cites a name or number that the user did not say (``said``) and the other
    turns did (``context``): the assistant's claim, not the user's."""
    cited = _needles(fact.value or "") + _needles(fact.text.partition(" ")[2])
    return any(needle not in said and needle in context for needle in cited)
