"""Memory.context: the prompt block, on the real store and indexes (hashing embedder,
scripted extractor), and `memengine context`. The tokenizer count with a real GGUF is
the model-marked test at the end."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import Context, InvalidInputError, ScopeRequiredError
from engine.cli import cli
from engine.extract import ExtractedFact as F
from engine.extract.scripted import ScriptedExtractor
from engine.retrieval.context import APPROXIMATE, approximate_tokens

HELLO = "Hi! I'm Maria, I live in Lisbon and I really love coffee in the morning."
TEA = "These days it's green tea for me. My sister Ana moved to Berlin."
MATCHA = "Now I drink matcha, and my brother Rui lives in Madrid."
FACTS = {
    HELLO: [F("User lives in Lisbon", "place", slot="home city", value="Lisbon"),
            F("User loves coffee in the morning.", "preference", slot="daily drink",
              value="coffee")],
    TEA: [F("User drinks green tea", "preference", slot="daily drink", value="green tea"),
          F("User's sister Ana lives in Berlin", "place", about="sister Ana",
            slot="home city", value="Berlin")],
    MATCHA: [F("User drinks matcha", "preference", slot="daily drink", value="matcha"),
             F("User's brother Rui lives in Madrid", "place", about="brother Rui",
               slot="home city", value="Madrid")],
}


@pytest.fixture
def story(make_memory):  # type: ignore[no-untyped-def]
    memory = make_memory(extractor=ScriptedExtractor(FACTS), infer=True)
    memory.add(HELLO, user_id="maria", observed_at="2026-05-01")
    memory.add(TEA, user_id="maria", observed_at="2026-05-30")
    return memory


def test_context_groups_facts_with_dates_and_what_came_before(story) -> None:  # type: ignore[no-untyped-def]
    block = story.context("what does maria drink, and where do people live?",
                          user_id="maria")
    assert isinstance(block, Context)
    lines = block.text.splitlines()
    assert lines[0] == ('Memory of the user "maria": what is true now; "since" is when each '
                        "fact became true.")
    assert lines[1] == "About the user:"
    about_user = lines[2:lines.index("About the people the user knows:")]
    assert sorted(about_user) == sorted([
        "- User drinks green tea (since 2026-05-30; before that: User loves coffee in the "
        "morning, from 2026-05-01)",
        "- User lives in Lisbon (since 2026-05-01)",
    ])
    assert lines[-2:] == ["sister Ana:", "- User's sister Ana lives in Berlin (since 2026-05-30)"]
    # the facts are the current ones, in the order shown
    assert [f.text for f in block.facts] == [line.split(" (")[0][2:] for line in lines
                                             if line.startswith("- ")]
    assert all(f.is_current for f in block.facts)
    assert block.tokens == approximate_tokens(block.text) <= block.max_tokens == 1000
    assert block.token_count == APPROXIMATE.description
    assert block.token_count == "approximate: 4 characters per token (no model loaded)"
    assert not block.truncated and block.as_of is None


def test_people_are_grouped_by_subject_in_order_of_relevance(story) -> None:  # type: ignore[no-untyped-def]
    story.add(MATCHA, user_id="maria", observed_at="2026-06-10")
    block = story.context("brother Rui Madrid", user_id="maria")
    lines = block.text.splitlines()
    people = lines[lines.index("About the people the user knows:") + 1:]
    assert people[0] == "brother Rui:"  # the most relevant person first
    assert people[1] == "- User's brother Rui lives in Madrid (since 2026-06-10)"
    assert people[2:] == ["sister Ana:", "- User's sister Ana lives in Berlin (since 2026-05-30)"]
    # two earlier versions of the drink, the most recent first
    (drink,) = [line for line in lines if "matcha" in line]
    assert drink == ("- User drinks matcha (since 2026-06-10; before that: User drinks green "
                     "tea, from 2026-05-30; before that: User loves coffee in the morning, "
                     "from 2026-05-01)")


def test_as_of_shows_what_was_true_then_and_nothing_later(story) -> None:  # type: ignore[no-untyped-def]
    block = story.context("what does she drink?", user_id="maria", as_of="2026-05-10")
    assert block.as_of == datetime(2026, 5, 10, tzinfo=UTC)
    assert block.text.splitlines()[0].startswith(
        'Memory of the user "maria": what was true on 2026-05-10;')
    assert "- User loves coffee in the morning (since 2026-05-01)" in block.text
    assert "tea" not in block.text and "Ana" not in block.text
    assert {f.text for f in block.facts} == {"User lives in Lisbon",
                                             "User loves coffee in the morning."}
    assert all(f.valid_from <= block.as_of for f in block.facts)
    later = story.context("what does she drink?", user_id="maria", as_of="2026-06-01")
    assert "before that: User loves coffee in the morning" in later.text
    assert story.context("drink", user_id="maria", as_of="2026-04-01").text == ""


def test_a_correction_and_a_deletion_are_not_shown_as_the_past(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    lisbon = memory.add("User lives in Lisbon", user_id="maria",
                        observed_at="2026-05-01").fact_ids[0]
    memory.add("User has a cat", user_id="maria", observed_at="2026-05-01")
    porto = memory.update(lisbon, "User lives in Porto", valid_from="2026-06-01")
    block = memory.context("where does she live?", user_id="maria")
    assert ("- User lives in Porto (since 2026-06-01; before that: User lives in Lisbon, "
            "from 2026-05-01)") in block.text
    cat = next(f for f in block.facts if "cat" in f.text)
    memory.delete(cat.id)
    memory.delete(porto.id)
    block = memory.context("where does she live? a cat?", user_id="maria")
    assert block.text == "" and block.facts == []


def test_the_budget_drops_history_then_the_least_relevant_facts(story) -> None:  # type: ignore[no-untyped-def]
    query = "User drinks green tea"
    full = story.context(query, user_id="maria", k=1)
    assert "before that" in full.text and not full.truncated
    (tea,) = full.facts
    assert tea.text == "User drinks green tea"
    # just too small for the history: the fact stays, its past goes
    short = story.context(query, user_id="maria", k=1, max_tokens=full.tokens - 1)
    assert short.truncated and "before that" not in short.text
    assert short.facts == [tea] and short.tokens <= full.tokens - 1
    # room for about one fact: the most relevant one of all three stays
    everything = story.context(query, user_id="maria")
    assert len(everything.facts) == 3 and not everything.truncated
    one = story.context(query, user_id="maria", max_tokens=short.tokens)
    assert one.truncated and one.facts == [tea]
    for budget in range(1, 120, 7):
        block = story.context(query, user_id="maria", max_tokens=budget)
        assert block.tokens == approximate_tokens(block.text) <= budget
        assert block.truncated == (block.text != everything.text)
    assert story.context(query, user_id="maria", max_tokens=5).text == ""


def test_two_users_never_mix(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    memory.add(["User loves coffee", "User lives in Lisbon"], user_id="maria",
               observed_at="2026-05-01")
    memory.add(["User loves coffee too", "User lives in Oslo"], user_id="joao",
               observed_at="2026-05-02")
    maria = memory.context("coffee Lisbon Oslo", user_id="maria")
    joao = memory.context("coffee Lisbon Oslo", user_id="joao")
    assert {f.user_id for f in maria.facts} == {"maria"}
    assert {f.user_id for f in joao.facts} == {"joao"}
    assert "Oslo" not in maria.text and "Lisbon" not in joao.text
    assert '"joao"' in joao.text and "maria" not in joao.text


def test_scope_narrows_to_an_agent(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    memory.add("User orders espresso", user_id="maria", agent_id="barista")
    memory.add("User likes jazz", user_id="maria", agent_id="dj")
    block = memory.context("what does she like?", user_id="maria", agent_id="barista")
    assert [f.text for f in block.facts] == ["User orders espresso"]


def test_to_dict_is_json_ready(story) -> None:  # type: ignore[no-untyped-def]
    data = story.context("drink", user_id="maria", as_of="2026-06-01").to_dict()
    again = json.loads(json.dumps(data))
    assert again["as_of"] == "2026-06-01T00:00:00+00:00"
    assert again["facts"][0]["valid_from"].startswith("2026-")
    assert set(again) == {"text", "facts", "tokens", "max_tokens", "token_count",
                          "truncated", "as_of"}


@pytest.mark.parametrize("kwargs, error", [
    ({"max_tokens": 0}, "max_tokens must be an integer"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"max_tokens": "100"}, "max_tokens must be an integer"),
    ({"k": 0}, "k must be an integer"),
    ({"as_of": "yesterday"}, "not an ISO 8601"),
])
def test_bad_arguments_say_what_to_pass(memory, kwargs, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=error):
        memory.context("drink", user_id="maria", **kwargs)


def test_a_query_and_a_user_are_required(memory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="query is empty"):
        memory.context("  ", user_id="maria")
    with pytest.raises(ScopeRequiredError):
        memory.context("drink", user_id="")


def test_the_cli_prints_the_block_and_json(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        result = runner.invoke(cli, ["--db", db, "--embedder", "hashing", *args])
        assert result.exit_code == 0, result.output
        return result

    run("add", "-u", "maria", "--raw", "--at", "2026-05-01", "User loves coffee")
    run("update", "1", "User prefers green tea", "--from", "2026-05-30")
    shown = run("context", "-u", "maria", "what should I drink?")
    assert shown.stdout.splitlines()[-1] == (
        "- User prefers green tea (since 2026-05-30; before that: User loves coffee, "
        "from 2026-05-01)")
    assert "tokens, approximate" in shown.stderr
    data = json.loads(run("context", "-u", "maria", "drink", "--json", "--as-of",
                          "2026-05-10", "--max-tokens", "200").stdout)
    assert data["as_of"].startswith("2026-05-10") and data["max_tokens"] == 200
    assert [f["text"] for f in data["facts"]] == ["User loves coffee"]
    empty = run("context", "-u", "joao", "drink")
    assert "nothing remembered about joao" in empty.stdout
    bad = runner.invoke(cli, ["--db", db, "--embedder", "hashing", "context", "-u", "maria",
                              "drink", "--max-tokens", "0"])
    assert bad.exit_code == 1 and "max_tokens must be an integer" in bad.output


@pytest.mark.model
def test_tokens_are_counted_with_the_loaded_models_tokenizer(make_memory) -> None:  # type: ignore[no-untyped-def]
    from conftest import require_gguf

    path = require_gguf("smollm2-135m")
    from engine.extract.programs import DspyExtractor

    extractor = DspyExtractor(model="smollm2-135m")
    memory = make_memory(extractor=extractor)
    memory.add(["User loves coffee", "User lives in Lisbon"], user_id="maria")
    assert memory.context("drink", user_id="maria").token_count == APPROXIMATE.description
    extractor.engine.load()
    block = memory.context("drink", user_id="maria")
    assert block.token_count == "llama tokenizer (smollm2-135m)"
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert block.tokens == len(vocab.tokenize(block.text.encode(), add_bos=False,
                                              special=False))
    assert block.tokens != approximate_tokens(block.text)
    tight = memory.context("drink", user_id="maria", max_tokens=block.tokens - 1)
    assert tight.truncated and tight.tokens <= block.tokens - 1
    extractor.close()
