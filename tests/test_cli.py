"""The memengine command line: output people can read, JSON for scripts, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli import cli


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    db = str(tmp_path / "cli.duckdb")

    def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, ["--db", db, "--embedder", "hashing", *args], input=input)

    return invoke


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(_all_commands(cli)))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help, f"{' '.join(path)} has no help text"


def test_the_story_through_the_cli(run) -> None:  # type: ignore[no-untyped-def]
    added = run("add", "--raw", "-u", "maria", "I love coffee in the morning", "--at", "2026-05-01",
                "--json")
    assert added.exit_code == 0, added.output
    fact_id = json.loads(added.output)[0]["fact_id"]
    assert run("add", "--raw", "-u", "maria", "I live in Lisbon").exit_code == 0

    table = run("search", "-u", "maria", "coffee morning")
    assert table.exit_code == 0
    assert "I love coffee in the morning" in table.output.splitlines()[2]

    updated = run("update", str(fact_id), "I prefer green tea in the morning", "--from",
                  "2026-06-01", "--json")
    new_id = json.loads(updated.output)["id"]
    past = json.loads(run("search", "-u", "maria", "morning drink", "--as-of", "2026-05-10",
                          "--json").output)
    assert past[0]["text"] == "I love coffee in the morning"

    history = json.loads(run("history", str(new_id), "--json").output)
    assert [v["text"] for v in history["versions"]] == [
        "I love coffee in the morning", "I prefer green tea in the morning"]
    assert [e["kind"] for e in history["events"]] == ["ADD", "UPDATE"]
    readable = run("history", str(new_id)).output
    assert "2026-05-01" in readable and "2026-06-01" in readable

    listed = json.loads(run("list", "-u", "maria", "--as-of", "2026-05-10", "--json").output)
    assert {f["text"] for f in listed} == {"I love coffee in the morning"}
    assert "UPDATE" in run("timeline", "-u", "maria").output
    explained = run("search", "-u", "maria", "tea", "--explain")
    assert "vector:" in explained.output


def test_exit_codes(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run("get", "999").exit_code == 1  # no store yet
    run("add", "--raw", "-u", "u", "something")
    missing = run("get", "999")
    assert missing.exit_code == 3 and "no fact with id 999" in missing.output
    assert run("add", "--raw", "-u", "u", "").exit_code == 1
    assert run("add", "--raw", "-u", "u").exit_code == 2  # neither TEXT nor --file
    assert run("search", "-u", "u", "q", "--filters", "{not json").exit_code == 2
    assert run("bogus").exit_code == 2
    other = CliRunner().invoke(cli, ["--db", str(tmp_path / "cli.duckdb"), "--embedder",
                                     "hashing-v1-32", "search", "-u", "u", "q"])
    assert other.exit_code == 1 and "embedder" in other.output


def test_bulk_add_from_a_file_and_export_import(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(f"note {i}" for i in range(50)) + "\n\n")
    result = run("add", "--raw", "-u", "u", "--file", str(notes), "--batch-size", "16", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 50
    assert run("export", str(tmp_path / "out.jsonl"), "--json").exit_code == 0
    fresh = CliRunner().invoke(cli, ["--db", str(tmp_path / "fresh.duckdb"), "--embedder",
                                     "hashing", "import", str(tmp_path / "out.jsonl"), "--json"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["fact"] == 50


def test_delete_and_purge(run) -> None:  # type: ignore[no-untyped-def]
    fact_id = json.loads(run("add", "--raw", "-u", "u", "secret", "--json").output)[0]["fact_id"]
    assert run("delete", str(fact_id), "--reason", "wrong").exit_code == 0
    assert "no facts" in run("list", "-u", "u").output
    assert "secret" in run("list", "-u", "u", "--history").output
    assert run("purge", "-u", "u", input="n\n").exit_code == 1  # aborted
    purged = run("purge", "-u", "u", "--yes", "--json")
    assert json.loads(purged.output)["facts"] == 1
    stats = json.loads(run("stats", "--json").output)
    assert stats["facts"] == 0 and stats["embedder"] == "hashing-v1-256"


@pytest.mark.model
def test_add_extracts_by_default_with_the_local_lm(tmp_path: Path) -> None:
    """`memengine add` runs the LM (here the small test model) and prints what changed."""
    from engine.backends import models

    if not models.is_installed("smollm2-135m"):
        message = "smollm2-135m is not installed: run `make install`"
        if os.environ.get("MEMENGINE_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    base = ["--db", str(tmp_path / "lm.duckdb"), "--embedder", "hashing", "--lm",
            "smollm2-135m"]
    added = CliRunner().invoke(cli, [*base, "add", "-u", "maria", "--json",
                                     "I live in Lisbon and I work as a nurse."])
    assert added.exit_code == 0, added.output
    events = json.loads(added.stdout)
    assert all(e["actor"].startswith("cli:extract:dspy/smollm2-135m") for e in events), events
    status = json.loads(CliRunner().invoke(cli, [*base, "status", "--json"]).stdout)
    assert status["pending_messages"] == 0 and status["failed_messages"] == 0, status
