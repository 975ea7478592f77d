"""Extraction: turning conversation messages into standalone facts with slots.

This package defines the contract the ``Memory`` pipeline relies on; the LM-backed
implementation (a DSPy program over a local GGUF through llama.cpp) lives in
:mod:`engine.extract.programs`, and :class:`~engine.extract.scripted.ScriptedExtractor`
is a deterministic test double that ships with the package (as httpx ships a mock
transport) so applications can test their own code without a model.

Facts come only from the user's turns (``role == "user"``, :attr:`Turn.from_user`); the
assistant's replies, system and tool messages are context for reading them, never a source
(:mod:`engine.extract.grounding`; whatever the extractor, the pipeline drops a fact whose
value or sentence cites a name or number that only the other turns said).

One LM call per turn: the extractor sees the user's stored facts that are close to the
message (:class:`KnownFact`: their text and slot, never their ids), so it reuses their slot
names. Code, not the LM, decides and applies every change (:mod:`engine.ingest.pipeline`,
:mod:`engine.extract.slots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["ExtractedFact", "Extractor", "KnownFact", "Turn"]


@dataclass(frozen=True)
class Turn:
    """One message given to the extractor: who spoke, what, and when (UTC, naive)."""

    role: str
    content: str
    observed_at: datetime
    name: str | None = None

    @property
    def from_user(self) -> bool:
        """Whether the user said it (facts come from these turns; others are context)."""
        return self.role == "user"


@dataclass(frozen=True)
class KnownFact:
    """A stored current fact shown to the extractor (by its text and slot, never its id)."""

    text: str
    subject: str | None
    slot: str | None
    value: str | None
    valid_from: datetime


@dataclass(frozen=True)
class ExtractedFact:
    """A standalone fact found in the messages.

    ``text`` must make sense on its own, in English ("User's sister Ana is visiting
    Lisbon"). ``about`` is its subject ("user" or the person: "sister Ana"), ``slot`` the
    attribute ("home city", "pets") and ``value`` its value ("Porto"), both None when the
    model gave none. ``valid_from`` is when it became (or becomes) true when the messages
    say so ("next week" resolved to a date); None means "from when it was said".
    """

    text: str
    category: str | None = None
    about: str = "user"
    valid_from: datetime | None = None
    slot: str | None = None
    value: str | None = None


@runtime_checkable
class Extractor(Protocol):
    """What the add pipeline needs from an extraction back-end."""

    @property
    def identity(self) -> str:
        """A name for the model and program, recorded as the actor of its events."""
        ...

    @property
    def show_known(self) -> bool:
        """Whether ``extract`` shows the known facts to its model (the pipeline looks
        them up only then)."""
        ...

    def extract(self, turns: list[Turn], known: Sequence[KnownFact] = ()) -> list[ExtractedFact]:
        """Standalone facts the user states in ``turns`` (empty for chit-chat), given the
        stored facts ``known`` that the turns may repeat, change or correct; turns not
        :attr:`~Turn.from_user` are context, never a source."""
        ...
