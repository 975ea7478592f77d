"""The code-side checks around the LM: chit-chat needs no LM call, and explicit cues of
change are read by code (engine/extract/salience.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.extract import Turn
from engine.extract.salience import ended_states, sentences, worth_extracting

WHEN = datetime(2024, 6, 12)


def user(text: str) -> list[Turn]:
    return [Turn("user", text, WHEN)]


@pytest.mark.parametrize("text", [
    "hi, how are you?", "Thanks, that's helpful!", "lol ok", "Good morning!",
    "What's the weather like in Paris today?", "Can you tell me a joke about cats?",
    "Hmm, let me think about it and get back to you.", "Maybe, I don't know.",
    "Thank you so much, have a great evening!",
])
def test_chit_chat_is_not_worth_an_lm_call(text: str) -> None:
    assert not worth_extracting(user(text))


@pytest.mark.parametrize("text", [
    "Hi! I'm Maria, I live in Lisbon.", "Quick question: I'm lactose intolerant, is oat milk ok?",
    "Me encanta el café con leche.", "My sister Ana is visiting next week.",
    "Great, I went hiking with my brother Sam in the Alps.",
])
def test_statements_and_unknown_languages_go_to_the_lm(text: str) -> None:
    assert worth_extracting(user(text))


def test_only_the_assistant_speaking_is_not_worth_a_call() -> None:
    turns = [Turn("assistant", "You mentioned you live in Lisbon.", WHEN),
             Turn("user", "Yes, thanks!", WHEN)]
    assert not worth_extracting(turns)


@pytest.mark.parametrize(("text", "expected"), [
    ("Actually I've stopped drinking coffee, I prefer green tea these days.",
     ["User drinking coffee"]),
    ("I quit my job at the bank last week.", ["User has their job at the bank"]),
    ("I used to play the piano but these days I play guitar.", ["User play the piano"]),
    ("I don't eat meat anymore.", ["User eat meat"]),
    ("I sold my car and now I bike everywhere.", ["User owns their car"]),
    ("We moved from Lisbon to Porto.", ["User lives in lisbon"]),
    ("I don't eat fish.", []),
    ("I love coffee.", []),
])
def test_explicit_cues_of_change_are_read_by_code(text: str, expected: list[str]) -> None:
    assert ended_states(user(text)) == expected


def test_sentences_split_at_ends_and_lines() -> None:
    assert sentences("Hi! I'm Maria.\nI live in Lisbon?  ok") == [
        "Hi!", "I'm Maria.", "I live in Lisbon?", "ok"]
