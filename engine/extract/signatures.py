"""The DSPy Signatures of extraction, and the module that holds both predictors.

This module imports DSPy at import time; :mod:`engine.extract.programs` imports it
lazily. (No ``from __future__ import annotations`` here: DSPy and pydantic read these
annotations at class creation.)
"""

import os
from typing import Annotated, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from pydantic import BaseModel, Field

__all__ = ["AliasLabel", "ExtractFacts", "FactOut", "FactProgram", "RelateFacts", "ResolveFact"]

MAX_FACTS = 8
MAX_LABELS = 16
Category = Literal["preference", "person", "place", "work", "health", "plan", "event",
                   "possession", "other"]


class FactOut(BaseModel):
    """One extracted fact as the model writes it."""

    text: str
    replaces: str = ""
    category: Category
    about: str
    valid_from: str = Field(pattern=r"^([0-9]{4}-[0-9]{2}-[0-9]{2})?$")


class AliasLabel(BaseModel):
    """The resolver's label for one stored fact, addressed by its alias."""

    alias: int
    label: Literal["duplicate", "superseded", "refined", "unrelated"]


class ExtractFacts(dspy.Signature):
    """Extract the facts worth remembering long-term about the user and the people they
    mention: preferences, changes, people, places, work, health, plans. Each fact is one
    short standalone English sentence naming its subject: "User ..." for the user,
    "User's brother Sam ..." or the speaker's name for others. Split a message that states
    several facts. Greetings, thanks, questions, small talk and the assistant's suggestions
    give no facts: return an empty list. replaces: when the message says something
    earlier is no longer true (stopped, quit, moved, switched, no longer, used to), that
    earlier fact as a short sentence ("User drinks coffee"), else "". valid_from: the
    date from date_hints when the message says when the fact starts, else ""."""

    observation_date: str = dspy.InputField(desc="date the messages were written")
    date_hints: str = dspy.InputField(desc="relative dates in the messages, resolved")
    conversation: str = dspy.InputField(desc="one message per line, 'Speaker: text'")
    facts: Annotated[list[FactOut], Field(max_length=MAX_FACTS)] = dspy.OutputField(
        desc="about is 'user' or the person's name")


class ResolveFact(dspy.Signature):
    """A user's memory holds stored facts; a new fact arrives. Label every stored fact:
    duplicate = says the same as the new fact; superseded = the new fact replaces or
    contradicts it (the user changed, moved, switched, quit, no longer...); refined =
    the new fact adds detail to it and both stay true; unrelated = a different
    subject."""

    new_fact: str = dspy.InputField()
    stored_facts: str = dspy.InputField(desc="one per line, 'alias: fact'")
    labels: Annotated[list[AliasLabel], Field(max_length=MAX_LABELS)] = dspy.OutputField(
        desc="one label per stored fact alias")


class RelateFacts(dspy.Signature):
    """Compare a stored fact about a user with a new fact. duplicate = both say the same
    thing; superseded = the new fact replaces or contradicts the stored one (the user
    changed, moved, switched, quit, no longer...); refined = the new fact adds detail to
    the stored one and both stay true; unrelated = they are about different things."""

    stored_fact: str = dspy.InputField()
    new_fact: str = dspy.InputField()
    relation: Literal["duplicate", "superseded", "refined", "unrelated"] = dspy.OutputField()


class FactProgram(dspy.Module):
    """The predictors in one module, so one JSON file holds a compiled program.

    ``resolve`` labels all candidates in one call (aliases); ``relate`` labels one
    (new fact, candidate) pair per call: a simpler task for a small model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractFacts)
        self.resolve = dspy.Predict(ResolveFact)
        self.relate = dspy.Predict(RelateFacts)
