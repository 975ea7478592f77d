"""The DSPy Signature of extraction, and the module that holds its predictor.

The model writes each fact as one compact line, ``sentence | subject | slot | value``
(plus ``| YYYY-MM-DD`` when the message says when it began): about a third of the tokens
of a JSON object per fact, and every token generated costs time on a laptop CPU. The
output is still typed and schema-constrained (a list of at most ``MAX_FACTS`` strings);
:mod:`engine.extract.programs` parses and validates the lines.

This module imports DSPy at import time; :mod:`engine.extract.programs` imports it
lazily. (No ``from __future__ import annotations`` here: DSPy and pydantic read these
annotations at class creation.)
"""

import os
from typing import Annotated

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy
from pydantic import Field

from engine.extract.slots import vocabulary_text

__all__ = ["INSTRUCTIONS", "MAX_FACTS", "ExtractMemories", "FactProgram"]

MAX_FACTS = 8

INSTRUCTIONS = f"""Write down what the user's messages say about the user and the people \
they mention: home, work, family, pets, habits, preferences, health, plans, possessions, \
events. One line per fact: sentence | subject | slot | value, and | date when date_hints \
give when it began.
- sentence: one standalone English sentence starting "User" or "User's <relation> <name>", \
whatever the language of the message, keeping names, numbers, dates, times, titles and \
places exactly as written. Only what the messages say: never repeat a known fact unless \
the message says it again.
- subject: user, or the person as the user calls them (relation and name).
- slot: a short key; reuse the slot of a known fact about the same thing, else one of: \
{vocabulary_text()}; or a new one (plural if it holds several values).
- value: short, copied from the message.
Greetings, thanks, questions, small talk and the assistant's words give no facts: []."""


class ExtractMemories(dspy.Signature):
    """(instructions: INSTRUCTIONS, set below)"""

    observation_date: str = dspy.InputField(desc="date the messages were written")
    date_hints: str = dspy.InputField(desc="relative dates in the messages, resolved")
    known: str = dspy.InputField(desc="stored facts: sentence | subject | slot | value")
    conversation: str = dspy.InputField(desc="one message per line, 'Speaker: text'")
    facts: Annotated[list[str], Field(max_length=MAX_FACTS)] = dspy.OutputField(
        desc="sentence | subject | slot | value [| date]")


ExtractMemories = ExtractMemories.with_instructions(INSTRUCTIONS)  # type: ignore[misc]


class FactProgram(dspy.Module):
    """The predictor in a module, so one JSON file holds a compiled program."""

    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractMemories)
