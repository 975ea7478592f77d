"""Prompt-lookup decoding (engine.backends.llamagen): drafts taken from the prompt and
checked by the model in one batch.

The draft finder is plain numpy and tested on token lists. The decoding itself runs on
real SmolLM2-135M (marked ``model``): with drafting on, a greedy schema-constrained answer
must be token for token the one generated without it, and the model must have accepted
drafted tokens when the answer copies the prompt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_gguf

from engine.backends.llamagen import Generation, prompt_lookup
from engine.errors import InvalidInputError


def _h(*tokens: int) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def test_the_longest_matching_ending_wins_and_its_most_recent_occurrence() -> None:
    history = _h(5, 6, 7, 1, 2, 9, 9, 6, 7, 3, 4, 6, 7)
    # ending (6, 7) last occurred at 7..8, followed by 3, 4
    assert prompt_lookup(history, 2) == [3, 4]
    # a 3-token ending beats a more recent 2-token one
    history = _h(1, 6, 7, 8, 8, 0, 6, 7, 5, 1, 6, 7)
    assert prompt_lookup(history, 3) == [8, 8, 0]


def test_the_ending_itself_is_never_its_own_match_and_limits_hold() -> None:
    assert prompt_lookup(_h(1, 2, 3), 4) == []          # nothing earlier
    assert prompt_lookup(_h(4, 4), 3) == [4]            # the earlier 4 is followed by a 4
    assert prompt_lookup(_h(1, 2, 3, 1), 8) == [2, 3, 1]  # stops at the end of history
    assert prompt_lookup(_h(1, 2, 1), 0) == []
    assert prompt_lookup(_h(7), 5) == []
    assert prompt_lookup(_h(1, 2, 3, 9, 1, 2, 3), 2, min_ngram=4) == []


def test_the_draft_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import config

    monkeypatch.setenv("MEMENGINE_LM_DRAFT", "0")
    assert config.lm_draft_tokens() == 0
    monkeypatch.setenv("MEMENGINE_LM_DRAFT", "12")
    assert config.lm_draft_tokens() == 12
    monkeypatch.setenv("MEMENGINE_LM_DRAFT", "lots")
    with pytest.raises(InvalidInputError, match="MEMENGINE_LM_DRAFT"):
        config.lm_draft_tokens()
    monkeypatch.delenv("MEMENGINE_LM_DRAFT")
    assert config.lm_draft_tokens() == config.DEFAULT_LM_DRAFT_TOKENS


SCHEMA = {"type": "object",
          "properties": {"facts": {"type": "array", "items": {"type": "string"},
                                   "maxItems": 1}},
          "required": ["facts"]}
MESSAGES = [
    {"role": "system", "content": "Repeat the user's message word for word, as the only item "
                                  "of the facts list of a JSON object."},
    {"role": "user", "content": "I moved to Porto Alegre last week and my cat Churro "
                                "hates the new flat on Rua da Praia 42."},
]


def _generate(draft: int, max_tokens: int) -> Generation:
    from engine.backends.lm import LlamaCppEngine

    engine = LlamaCppEngine(require_gguf("smollm2-135m"), n_ctx=1024, kv_cache_dir=False,
                            draft_tokens=draft)
    try:
        engine.load()
        generator = next(iter(engine._contexts.values()))
        return generator.generate(MESSAGES, max_tokens=max_tokens, schema=SCHEMA)
    finally:
        engine.close()


@pytest.mark.model
def test_drafting_gives_the_same_answer_with_fewer_forward_passes() -> None:
    plain, drafted = _generate(0, 96), _generate(8, 96)
    # batched and one-token evaluation round differently, so answers may part where two
    # tokens are almost tied; copying the message leaves no such tie
    assert drafted.text == plain.text
    assert "Rua da Praia 42" in json.loads(drafted.text)["facts"][0]
    assert drafted.completion_tokens == plain.completion_tokens
    assert plain.drafted_tokens == 0
    assert drafted.drafted_tokens > 0
    # the JSON's opening and the copied words came from drafts
    assert drafted.accepted_tokens >= 5


@pytest.mark.model
def test_drafting_stops_at_max_tokens() -> None:
    drafted = _generate(8, 7)
    assert drafted.completion_tokens == 7
    assert drafted.finish_reason == "length"
