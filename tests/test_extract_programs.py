"""engine.extract.programs: DspyExtractor validates, retries, normalises slots, ignores
invented aliases.

Most tests drive the real DSPy programs through a canned *engine* (a test double for
the LM, as DSPy's own DummyEngine is), so the code under test is the real extractor,
adapter and parsing. Tests marked ``model`` run SmolLM2 for real.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ExtractionError, ModelError
from engine.extract import ExtractedFact, Extractor, KnownFact, Turn
from engine.extract.dates import date_hints, resolve_relative
from engine.extract.programs import DspyExtractor, format_conversation

WHEN = datetime(2024, 6, 12, 9, 30)  # a Wednesday


class CannedEngine:
    """A DSPy engine that answers each call with the next text from ``replies`` (or a
    function of the request), counting calls: a test double for a language model."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens", "seed"})

    def __init__(self, replies: list[str] | Callable[[Any], str], name: str = "canned"):
        self.replies = replies
        self.name = name
        self.requests: list[Any] = []

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        self.requests.append(request)
        if callable(self.replies):
            text = self.replies(request)
        else:
            text = self.replies[min(len(self.requests), len(self.replies)) - 1]
        return Response(id=None, model=self.name, message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return iter(response_to_events(self.complete(request)))

    def close(self) -> None:
        pass


def _facts(*lines: str) -> str:
    return json.dumps({"facts": list(lines)})


def test_valid_answer_becomes_extracted_facts() -> None:
    engine = CannedEngine([_facts(
        "User loves coffee | Maria | Daily_Drink | coffee",
        "User starts at Google | user | employer | Google | 2024-06-17",
        "User is in Lisbon today | I | city | Lisbon | 2024-06-12",
        "User's sister Ana is a nurse | User's sister Ana | job | nurse",
        "User is happy",  # a slip: no slot, but the sentence is kept
    )])
    extractor = DspyExtractor(engine=engine, program=False, show_known=True)
    assert isinstance(extractor, Extractor)
    known = [KnownFact("User's sister Ana is a teacher", "sister Ana", "job", "teacher",
                       datetime(2024, 1, 1))]
    said = "I love coffee; Google next week; in Lisbon today. My sister Ana is a nurse."
    facts = extractor.extract([Turn("user", said, WHEN, "Maria")], known)
    assert facts == [  # Maria is the user; slot names are normalised; category from slot
        ExtractedFact("User loves coffee", "preference", "user", None, "daily drink", "coffee"),
        ExtractedFact("User starts at Google", "work", "user", datetime(2024, 6, 17), "job",
                      "Google"),
        ExtractedFact("User is in Lisbon today", "place", "user", None, "home city", "Lisbon"),
        ExtractedFact("User's sister Ana is a nurse", "work", "sister Ana", None, "job", "nurse"),
        ExtractedFact("User is happy", "other", "user", None, None, None),
    ]
    assert extractor.identity == "dspy/canned/zero-shot"
    request = engine.requests[0]
    # the engine received the JSON schema of the output fields, maxItems included
    schema = request.config.response_format["schema"]
    assert schema["properties"]["facts"]["maxItems"] == 8
    prompt = request.messages[-1].text
    assert "next week = 2024-06-19" in prompt and "Maria: I love coffee" in prompt
    assert "User's sister Ana is a teacher | sister Ana | job | teacher" in prompt


def test_a_value_whose_names_or_numbers_are_not_in_the_message_is_dropped() -> None:
    engine = CannedEngine([_facts(
        "User lives in Valencia | user | home city | Valencia",  # a demo, repeated
        "User has 3 cats | user | pets | 3 cats",
        "User lives in São Paulo | user | home city | São Paulo")])
    facts = DspyExtractor(engine=engine, program=False).extract(
        [Turn("user", "Eu moro em são paulo e tenho 3 gatos.", WHEN)])
    assert [f.text for f in facts] == ["User has 3 cats", "User lives in São Paulo"]


def test_known_facts_are_not_shown_by_default() -> None:
    engine = CannedEngine([_facts()])
    known = [KnownFact("User lives in Lisbon", "user", "home city", "Lisbon",
                       datetime(2024, 1, 1))]
    DspyExtractor(engine=engine, program=False).extract([Turn("user", "I moved", WHEN)], known)
    prompt = engine.requests[0].messages[-1].text
    assert "Lisbon" not in prompt and "[[ ## known ## ]]\nnone" in prompt


def test_garbage_from_the_lm_is_retried_then_raises() -> None:
    engine = CannedEngine(["this is not json at all"])
    extractor = DspyExtractor(engine=engine, program=False, retries=2)
    with pytest.raises(ExtractionError, match="no valid answer after 3 attempts"):
        extractor.extract([Turn("user", "I love coffee", WHEN)])
    assert len(engine.requests) == 3
    # retries are not identical requests: they sample at a temperature
    assert [r.config.temperature for r in engine.requests] == [0.0, 0.2, 0.4]


def test_invalid_values_are_retried_and_a_good_retry_wins() -> None:
    engine = CannedEngine([
        _facts(" | user | home city | Porto"),
        _facts("User moved to Porto | user | home city | Porto | 2024-02-30"),
        _facts("User moved to Porto | user | home city | Porto"),
    ])
    extractor = DspyExtractor(engine=engine, program=False, retries=2)
    facts = extractor.extract([Turn("user", "I moved to Porto", WHEN)])
    assert [f.text for f in facts] == ["User moved to Porto"]
    assert len(engine.requests) == 3


def test_chit_chat_and_empty_input_make_no_call() -> None:
    engine = CannedEngine([_facts()])
    extractor = DspyExtractor(engine=engine, program=False)
    assert extractor.extract([Turn("user", "hi, how are you?", WHEN)]) == []
    assert extractor.extract([]) == []
    assert engine.requests == []
    # with the gate off the LM is asked, and its empty list is the answer
    extractor.skip_chit_chat = False
    assert extractor.extract([Turn("user", "hi, how are you?", WHEN)]) == []
    assert len(engine.requests) == 1


def test_long_input_is_extracted_in_chunks() -> None:
    def reply(request: Any) -> str:
        first_line = request.messages[-1].text.split("User: ", 1)[1][:18]
        return _facts(f"User said: {first_line} | user | notes | {first_line}")

    engine = CannedEngine(reply)
    extractor = DspyExtractor(engine=engine, program=False, max_chunk_chars=200)
    turns = [Turn("user", f"Sentence number {i} is about my garden. " * 3, WHEN)
             for i in range(6)]
    facts = extractor.extract(turns)
    assert len(engine.requests) >= 3
    assert all(len(r.messages[-1].text) < 600 for r in engine.requests)
    assert len(facts) == len(engine.requests)


def test_lm_failure_becomes_extraction_error() -> None:
    class Broken(CannedEngine):
        def complete(self, request: Any) -> Any:
            from dspy.lm15 import ServerError

            raise ServerError("llama.cpp fell over", provider="test")

    extractor = DspyExtractor(engine=Broken([]), program=False)
    with pytest.raises(ExtractionError, match="LM call failed"):
        extractor.extract([Turn("user", "I love coffee", WHEN)])


def test_compiled_program_is_loaded_and_named(tmp_path: Path) -> None:
    program_file = tmp_path / "tiny.json"
    extractor = DspyExtractor(engine=CannedEngine([_facts()]), program=False)
    from engine.backends.lm import import_dspy

    dspy = import_dspy()
    extractor.program.extract.demos = [dspy.Example(
        observation_date="2024-01-01 (Monday)", date_hints="none", known="none",
        conversation="User: I live in Porto.",
        facts=["User lives in Porto | user | home city | Porto"])]
    extractor.program.save(str(program_file))
    engine = CannedEngine([_facts()])
    loaded = DspyExtractor(engine=engine, program=program_file)
    assert loaded.identity.startswith("dspy/canned/tiny@")
    loaded.extract([Turn("user", "I have a cat.", WHEN)])
    texts = [m.text for m in engine.requests[0].messages]
    assert any("I live in Porto" in t for t in texts)  # the demo reached the prompt
    with pytest.raises(ModelError, match="not found"):
        DspyExtractor(engine=engine, program=tmp_path / "missing.json")


def test_missing_model_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        DspyExtractor(tmp_path / "absent.gguf")


def test_conversation_format_is_speaker_aware() -> None:
    turns = [Turn("user", "I moved here last May", datetime(2024, 6, 11), "Jon"),
             Turn("assistant", "Nice!", WHEN), Turn("user", "yes", WHEN)]
    observed, hints, text = format_conversation(turns)
    assert observed == "2024-06-12 (Wednesday)"
    assert text.splitlines() == ["[2024-06-11] Jon: I moved here last May",
                                 "Assistant: Nice!", "User: yes"]
    assert hints == "last may = 2024-05-01"


@pytest.mark.parametrize(("expr", "expected"), [
    ("next week", date(2024, 6, 19)), ("last week", date(2024, 6, 5)),
    ("last May", date(2024, 5, 1)),
    ("tomorrow", date(2024, 6, 13)), ("on Friday", date(2024, 6, 14)),
    ("next Wednesday", date(2024, 6, 19)), ("last Monday", date(2024, 6, 10)),
    ("two weeks ago", date(2024, 5, 29)), ("in 3 months", date(2024, 9, 12)),
    ("next year", date(2025, 1, 1)), ("next month", date(2024, 7, 1)),
])
def test_relative_dates(expr: str, expected: date) -> None:
    assert resolve_relative(expr, date(2024, 6, 12)) == expected


def test_date_hints_give_both_readings_when_the_tense_decides() -> None:
    hints = date_hints("We moved in January. Nothing else.", date(2024, 6, 18))
    assert hints == "in january = 2024-01-01 if past, 2025-01-01 if future"
    assert date_hints("hello there", date(2024, 6, 18)) == "none"


# ------------------------------------------------------------------ real model


def _smollm2() -> str:
    import importlib.util

    from engine.backends import models

    if importlib.util.find_spec("llama_cpp") is None or not models.is_installed("smollm2-135m"):
        message = "smollm2-135m or llama_cpp is not installed (make install)"
        if os.environ.get("MEMENGINE_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return "smollm2-135m"


@pytest.mark.model
def test_real_small_model_extracts_within_the_contract() -> None:
    with DspyExtractor(_smollm2(), n_ctx=4096, max_tokens=256) as extractor:
        known = [KnownFact("User lives in Lisbon", "user", "home city", "Lisbon",
                           datetime(2024, 5, 1))]
        try:
            facts = extractor.extract(
                [Turn("user", "I love coffee and I live in Porto now.", WHEN)], known)
        except ExtractionError:
            facts = None  # allowed by the contract; the message would stay pending
        if facts is not None:
            assert all(isinstance(f, ExtractedFact) and f.text for f in facts)
        assert extractor.engine.stats.calls >= 1


@pytest.mark.model
def test_a_real_model_never_stores_the_assistants_guess(make_memory) -> None:  # type: ignore[no-untyped-def]
    """A chat exchange through Memory.add with a real GGUF: whatever the small model reads
    into the assistant's reply, no stored fact names the city only the assistant said."""
    extractor = DspyExtractor(_smollm2(), n_ctx=4096, max_tokens=256)
    memory = make_memory(extractor=extractor, infer=True)
    result = memory.add([
        {"role": "user", "content": "I love cooking pasta on Sundays."},
        {"role": "assistant", "content": "You live in Paris, right? Try the bistros in Paris."},
    ], user_id="maria")
    assert extractor.engine.stats.calls >= 1
    assert not any("paris" in f.text.lower() or "paris" in (f.value or "").lower()
                   for f in memory.get_all("maria")), memory.get_all("maria")
    assert all(f.source_message_id == result.message_ids[0] for f in memory.get_all("maria"))
    extractor.close()


def test_the_shipped_program_loads_for_any_model() -> None:
    extractor = DspyExtractor(engine=CannedEngine([_facts()], name="my-own-8b"))
    assert extractor.identity.startswith("dspy/my-own-8b/default@")
    assert len(extractor.program.extract.demos) >= 6


def test_a_fact_that_names_its_time_gets_that_date_when_the_model_left_it_empty() -> None:
    engine = CannedEngine([_facts(
        "User's sister Ana is visiting next week | Ana | plans | visit",
        "User moved here in January | user | home city | here")])
    extractor = DspyExtractor(engine=engine, program=False)
    facts = extractor.extract([Turn("user", "My sister Ana is visiting next week.", WHEN)])
    assert facts[0].valid_from == datetime(2024, 6, 19)  # said on 2024-06-12
    assert facts[1].valid_from is None  # "in January": past or future, left alone


def test_years_in_a_fact_sentence_give_its_period() -> None:
    from engine.extract.dates import UNKNOWN_START, stated_period
    from engine.extract.programs import _fact_from_line

    today = date(2026, 3, 12)
    assert stated_period("User lived in Berlin in 2019", today) == (date(2019, 1, 1), None)
    assert stated_period("User worked from 2010 to 2014 at Renfe", today) == (
        date(2010, 1, 1), date(2015, 1, 1))
    assert stated_period("User plans to move in 2027", today) == (None, None)
    assert stated_period("User quit before 2020", today) == (None, date(2020, 1, 1))
    ended = _fact_from_line("User had a BlackBerry until 2014 | user | phone | BlackBerry",
                            set(), today)
    assert (ended.valid_from, ended.valid_to) == (UNKNOWN_START, datetime(2015, 1, 1))
    past = _fact_from_line("User drank four coffees a day in 2020 | user | daily drink | coffee",
                           set(), today)
    assert (past.valid_from, past.valid_to) == (datetime(2020, 1, 1), None)


def test_a_value_left_out_of_the_sentence_is_added_to_it() -> None:
    from engine.extract.programs import _fact_from_line

    today = date(2026, 5, 12)
    fact = _fact_from_line("User's team is great | user | job | Mercadona", set(), today)
    assert fact.text == "User's team is great (Mercadona)"
    kept = _fact_from_line("User works at Mercadona | user | job | Mercadona", set(), today)
    assert kept.text == "User works at Mercadona"


def test_the_assistants_words_are_context_never_a_source() -> None:
    """The model may take the assistant's claim for the user's: a value naming what only
    the assistant said is dropped, and a chunk with no user turn makes no call."""
    engine = CannedEngine([_facts(
        "User lives in Paris | user | home city | Paris",  # the assistant's guess
        "User does not eat fish | user | diet | no fish")])
    extractor = DspyExtractor(engine=engine, program=False, skip_chit_chat=False)
    turns = [Turn("assistant", "You live in Paris, right? Try the fish there!", WHEN),
             Turn("user", "I don't eat fish.", WHEN)]
    assert [f.text for f in extractor.extract(turns)] == ["User does not eat fish"]
    assert "Assistant: You live in Paris" in engine.requests[0].messages[-1].text  # context
    assert extractor.extract([Turn("assistant", "You have 3 cats in Paris.", WHEN)]) == []
    assert len(engine.requests) == 1
