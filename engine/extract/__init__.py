"""Extraction: turning conversation messages into standalone facts, and labelling
how a new fact relates to facts already stored.

This package defines the contract the ``Memory`` pipeline relies on; the LM-backed
implementation (DSPy programs over a local GGUF through llama.cpp) lives in
:mod:`engine.extract.programs`, and :class:`~engine.extract.scripted.ScriptedExtractor`
is a deterministic test double that ships with the package (as httpx ships a mock
transport) so applications can test their own code without a model.

The LM never sees or returns real ids: candidates are numbered 0..n-1 (aliases) and
labels come back per alias. Code, not the LM, applies every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

__all__ = ["LABELS", "Candidate", "ExtractedFact", "Extractor", "Label", "Turn"]

Label = Literal["duplicate", "superseded", "refined", "unrelated"]
LABELS: tuple[Label, ...] = ("duplicate", "superseded", "refined", "unrelated")


@dataclass(frozen=True)
class Turn:
    """One message given to the extractor: who spoke, what, and when (UTC, naive)."""

    role: str
    content: str
    observed_at: datetime
    name: str | None = None


@dataclass(frozen=True)
class ExtractedFact:
    """A standalone fact found in the messages.

    ``text`` must make sense on its own ("Maria's sister Ana is visiting Lisbon"),
    ``about`` is whom it concerns ("user" or a person's name), ``valid_from`` is when
    it became (or becomes) true when the messages say so ("next week" resolved to a
    date); None means "from when it was said". ``replaces`` is the earlier state the
    messages themselves say has ended ("User drinks coffee" for "I've stopped drinking
    coffee"), or None: stored facts close to it are superseded by code, without asking
    the resolver, because the user said so.
    """

    text: str
    category: str | None = None
    about: str = "user"
    valid_from: datetime | None = None
    replaces: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A stored fact shown to the resolver under a small integer alias, with its cosine
    similarity to the new fact (None when unknown)."""

    alias: int
    text: str
    valid_from: datetime
    similarity: float | None = None


@runtime_checkable
class Extractor(Protocol):
    """What the add pipeline needs from an extraction back-end."""

    @property
    def identity(self) -> str:
        """A name for the model and program, recorded as the actor of its events."""
        ...

    def extract(self, turns: list[Turn]) -> list[ExtractedFact]:
        """Standalone facts stated in ``turns`` (empty for chit-chat)."""
        ...

    def resolve(self, fact: ExtractedFact, candidates: list[Candidate]) -> dict[int, Label]:
        """How ``fact`` relates to each candidate, keyed by alias.

        Aliases missing from the answer count as unrelated; aliases that were not
        offered are ignored by the caller (and logged).
        """
        ...
