"""The code-side check before the LM: chit-chat needs no LM call, in several languages
(engine/extract/salience.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.extract import Turn
from engine.extract.salience import sentences, worth_extracting

WHEN = datetime(2024, 6, 12)


def user(text: str) -> list[Turn]:
    return [Turn("user", text, WHEN)]


@pytest.mark.parametrize("text", [
    "hi, how are you?", "Thanks, that's helpful!", "lol ok", "Good morning!",
    "What's the weather like in Paris today?", "Can you tell me a joke about cats?",
    "Hmm, let me think about it and get back to you.", "Maybe, I don't know.",
    "Thank you so much, have a great evening!", "Obrigada!", "Muchas gracias, adiós",
    "Danke schön!", "Merci beaucoup, au revoir", "Où est la gare?",
])
def test_chit_chat_is_not_worth_an_lm_call(text: str) -> None:
    assert not worth_extracting(user(text))


@pytest.mark.parametrize("text", [
    "Hi! I'm Maria, I live in Lisbon.", "Quick question: I'm lactose intolerant, is oat milk ok?",
    "Me encanta el café con leche.", "My sister Ana is visiting next week.",
    "Great, I went hiking with my brother Sam in the Alps.",
    "Eu moro no Porto agora, e tu?", "Ich habe einen Hund, kennst du Hunde?",
    "J'habite à Lyon, tu connais?",
])
def test_statements_and_unknown_languages_go_to_the_lm(text: str) -> None:
    assert worth_extracting(user(text))


def test_only_the_assistant_speaking_is_not_worth_a_call() -> None:
    turns = [Turn("assistant", "You mentioned you live in Lisbon.", WHEN),
             Turn("user", "Yes, thanks!", WHEN)]
    assert not worth_extracting(turns)


def test_sentences_split_at_ends_and_lines() -> None:
    assert sentences("Hi! I'm Maria.\nI live in Lisbon?  ok") == [
        "Hi!", "I'm Maria.", "I live in Lisbon?", "ok"]
