"""The ``memengine`` command line (also ``python -m engine``).

Library errors become CLI errors here, at the edge, with exit codes that mean
something (see ``memengine --help``). Tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from engine.cli.output import emit, format_time, table, with_slot
from engine.errors import (
    EngineError,
    FactNotFoundError,
    InvalidInputError,
    ModelError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from engine.memory import Memory

__all__ = ["cli", "main"]

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_LOCKED, EXIT_MODEL = 1, 2, 3, 4, 5
EXIT_CODES = """\b
Exit codes:
  0  success
  1  engine error (bad input, damaged store...)
  2  usage error (unknown option, missing argument)
  3  fact not found
  4  store locked by another process
  5  model missing, unknown or failing its checksum
"""

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A ClickException with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it a ClassVar


def _exit_code(exc: EngineError) -> int:
    if isinstance(exc, FactNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, StoreLockedError):
        return EXIT_LOCKED
    if isinstance(exc, ModelError):
        return EXIT_MODEL
    return EXIT_ERROR


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn engine errors into CLI errors with meaningful exit codes."""
    try:
        yield
    except EngineError as exc:
        raise CliError(str(exc), _exit_code(exc)) from exc


@contextmanager
def open_memory(
    ctx: click.Context, *, read_only: bool = False, process_pending: bool = False
) -> Iterator[Memory]:
    """Open the store named by the global options, translating errors.

    Pending messages are only processed where asked (``status --retry``), so a
    quick command never waits for the LM.
    """
    from engine.memory import Memory

    options = ctx.find_root().params
    with engine_errors():
        memory = Memory(
            options.get("db"),
            embedder=options.get("embedder"),
            device=options.get("device"),
            extractor=options.get("lm"),
            read_only=read_only,
            actor="cli",
            process_pending=process_pending,
        )
        try:
            yield memory
        finally:
            memory.close()


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def scope_options(func: F) -> F:
    func = click.option("--run", "run_id", help="Run (session) id within the user.")(func)
    func = click.option("--agent", "agent_id", help="Agent id within the user.")(func)
    return click.option("--user", "-u", "user_id", required=True, help="User id (required).")(
        func
    )


def _parse_json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON ({exc})") from exc


def _fact_rows(facts: list[Any]) -> list[list[Any]]:
    return [[f.id, with_slot(f), f.valid_from, f.valid_to, "yes" if f.is_current else "no"]
            for f in facts]


def _explain_text(explain: dict[str, Any] | None) -> str:
    """A compact one-line view of a hit's signals: ``vector: similarity=0.61 rank=1``."""
    parts = []
    for signal, info in (explain or {}).items():
        if isinstance(info, dict):
            numbers = " ".join(f"{k}={v:.3g}" for k, v in info.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool))
            parts.append(f"{signal}: {numbers}" if numbers else signal)
        elif isinstance(info, (int, float)):
            parts.append(f"{signal}={info:.3g}")
    return "; ".join(parts)


FACT_HEADERS = ["id", "text", "valid from", "valid to", "current"]
EVENT_HEADERS = ["when", "event", "fact", "before", "after", "reason"]


def _event_rows(events: list[Any]) -> list[list[Any]]:
    return [[e.at, e.kind, e.fact_id, e.old_text, e.new_text, e.reason] for e in events]


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", type=click.Path(dir_okay=False), envvar="MEMENGINE_DB",
              help="DuckDB file of the store [env MEMENGINE_DB; default "
                   "~/.local/share/memengine/memory.duckdb].")
@click.option("--embedder", envvar="MEMENGINE_EMBEDDER",
              help="Embedding model: a name from `memengine models list`, a "
                   "sentence-transformers folder, or 'hashing' [default: minilm].")
@click.option("--device", envvar="MEMENGINE_DEVICE", default="auto", show_default=True,
              help="Embedding device: auto, cpu, cuda...")
@click.option("--lm", envvar="MEMENGINE_LM",
              help="Extraction model for `add`: a GGUF name from `memengine models "
                   "list` or a .gguf path [env MEMENGINE_LM; default: the manifest's].")
@click.version_option(package_name="memengine", prog_name="memengine")
def cli(db: str | None, embedder: str | None, device: str, lm: str | None) -> None:
    """A local, offline memory for LLM applications.

    Remembers facts per user, finds the relevant ones for a query, and keeps
    their history: what was true when, and what replaced what.
    """


@cli.command()
@scope_options
@click.argument("text", required=False)
@click.option("--file", "-f", "file", type=click.File("r"),
              help="Add each non-empty line of a file (or - for stdin) as a message.")
@click.option("--at", "observed_at", help="When it was said (ISO date/time) [default: now].")
@click.option("--metadata", "-m", help='Metadata as JSON, e.g. \'{"source": "chat"}\'.')
@click.option("--category", help="A category for the new facts (with --raw).")
@click.option("--infer/--raw", default=True, show_default=True,
              help="--infer: the local LM extracts standalone facts and reconciles them with "
                   "what is known; --raw: store each message as one fact, as given (no LM).")
@click.option("--batch-size", default=256, show_default=True, help="Lines per batch with --file.")
@json_option
@click.pass_context
def add(ctx: click.Context, user_id: str, agent_id: str | None, run_id: str | None,
        text: str | None, file: Any, observed_at: str | None, metadata: str | None,
        category: str | None, infer: bool, batch_size: int, as_json: bool) -> None:
    """Remember TEXT (or every line of --file) for a user, and print what changed.

    The local LM (see --lm) extracts standalone facts and reconciles them with
    what is already known: added, superseded, duplicate... Messages are always
    stored first; if extraction fails they stay pending (see `memengine status`).
    With --raw each message is stored as one fact as given, with no LM (an exact
    duplicate of a current fact only records where it was seen again).
    """
    if (text is None) == (file is None):
        raise click.UsageError("give TEXT or --file, not both and not neither")
    meta = _parse_json(metadata, "--metadata")
    events: list[Any] = []
    with open_memory(ctx) as memory, engine_errors():
        if text is not None:
            batches: list[list[str]] = [[text]]
        else:
            lines = [line.rstrip("\n") for line in file if line.strip()]
            batches = [lines[i:i + batch_size] for i in range(0, len(lines), batch_size)]
        from tqdm import tqdm

        with tqdm(total=sum(len(b) for b in batches), unit="msg", disable=text is not None,
                  file=sys.stderr, desc="adding") as bar:
            for batch in batches:
                result = memory.add(batch, user_id=user_id, agent_id=agent_id, run_id=run_id,
                                    metadata=meta, observed_at=observed_at, category=category,
                                    infer=infer)
                events.extend(result.events)
                for error in result.errors:
                    click.echo(f"warning: {len(result.pending)} message(s) kept pending: {error}",
                               err=True)
                bar.update(len(batch))
    if not events and not as_json:
        click.echo("no facts found in the message (it is stored)")
        return
    emit([e.to_dict() for e in events], as_json=as_json,
         text=table(_event_rows(events), EVENT_HEADERS, wrap_column=3))


@cli.command()
@scope_options
@click.argument("query")
@click.option("-k", "--limit", "k", default=10, show_default=True, help="How many results.")
@click.option("--filters", help='Filters as JSON, e.g. \'{"category": "food"}\'.')
@click.option("--as-of", "as_of", help="Search what was true at this date/time instead of now.")
@click.option("--explain", is_flag=True, help="Show each signal's score.")
@json_option
@click.pass_context
def search(ctx: click.Context, user_id: str, agent_id: str | None, run_id: str | None,
           query: str, k: int, filters: str | None, as_of: str | None, explain: bool,
           as_json: bool) -> None:
    """Find a user's facts relevant to QUERY, best first."""
    with open_memory(ctx, read_only=False) as memory, engine_errors():
        hits = memory.search(query, user_id=user_id, agent_id=agent_id, run_id=run_id, k=k,
                             filters=_parse_json(filters, "--filters"), as_of=as_of,
                             explain=explain)
    rows = [[h.score, h.id, with_slot(h), h.valid_from, h.valid_to] for h in hits]
    headers = ["score", "id", "text", "valid from", "valid to"]
    if explain:
        rows = [[*r, _explain_text(h.explain)] for r, h in zip(rows, hits, strict=True)]
        headers.append("explain")
    emit([h.to_dict() for h in hits], as_json=as_json,
         text=table(rows, headers, wrap_column=2) if hits else "no matching facts")


@cli.command(name="context")
@scope_options
@click.argument("query")
@click.option("--max-tokens", default=1000, show_default=True,
              help="Token budget of the block (approximated: 4 characters per token).")
@click.option("--as-of", "as_of", help="What was true at this date/time instead of now.")
@click.option("-k", "--limit", "k", default=20, show_default=True,
              help="How many relevant facts to consider.")
@json_option
@click.pass_context
def context_(ctx: click.Context, user_id: str, agent_id: str | None, run_id: str | None,
             query: str, max_tokens: int, as_of: str | None, k: int, as_json: bool) -> None:
    """Print the memory block for a prompt about QUERY: the relevant facts, grouped,
    with when each became true and what was true before."""
    with open_memory(ctx) as memory, engine_errors():
        block = memory.context(query, user_id=user_id, agent_id=agent_id, run_id=run_id,
                               max_tokens=max_tokens, as_of=as_of, k=k)
    emit(block.to_dict(), as_json=as_json, text=block.text or f"(nothing remembered about "
         f"{user_id} that fits {block.max_tokens} tokens)")
    if not as_json:  # on stderr, so that stdout is exactly the block
        click.echo(f"({block.tokens} of {block.max_tokens} tokens, {block.token_count}"
                   f"{'; less relevant facts left out to fit' if block.truncated else ''})",
                   err=True)


@cli.command()
@click.argument("fact_id", type=int)
@json_option
@click.pass_context
def get(ctx: click.Context, fact_id: int, as_json: bool) -> None:
    """Show one fact version by id."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        fact = memory.get(fact_id)
    data = fact.to_dict()
    times = ("valid_from", "valid_to", "recorded_at", "expired_at")
    text = "\n".join(f"{key:>18}: {format_time(value) if key in times else value}"
                     for key, value in data.items())
    emit(data, as_json=as_json, text=text)


@cli.command(name="list")
@scope_options
@click.option("--history", is_flag=True, help="Include superseded and deleted versions.")
@click.option("--as-of", "as_of", help="The facts that were true at this date/time.")
@click.option("--known-at", "known_at", help="What the engine believed at this date/time.")
@json_option
@click.pass_context
def list_(ctx: click.Context, user_id: str, agent_id: str | None, run_id: str | None,
          history: bool, as_of: str | None, known_at: str | None, as_json: bool) -> None:
    """List a user's facts (current ones by default)."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        if known_at is not None:
            facts = memory.known_at(user_id, known_at, agent_id=agent_id, run_id=run_id)
        else:
            facts = memory.get_all(user_id, agent_id=agent_id, run_id=run_id,
                                   include_history=history, as_of=as_of)
    emit([f.to_dict() for f in facts], as_json=as_json,
         text=table(_fact_rows(facts), FACT_HEADERS, wrap_column=1) if facts else "no facts")


@cli.command()
@click.argument("fact_id", type=int)
@click.argument("text")
@click.option("--from", "valid_from", help="When the new version became true [default: now].")
@click.option("--reason", help="Why it changed (kept in the history).")
@json_option
@click.pass_context
def update(ctx: click.Context, fact_id: int, text: str, valid_from: str | None,
           reason: str | None, as_json: bool) -> None:
    """Replace fact FACT_ID with TEXT; the old version stays in the history."""
    with open_memory(ctx) as memory, engine_errors():
        fact = memory.update(fact_id, text, valid_from=valid_from, reason=reason)
    emit(fact.to_dict(), as_json=as_json,
         text=f"fact {fact_id} superseded by {fact.id}: {fact.text}")


@cli.command()
@click.argument("fact_id", type=int)
@json_option
@click.pass_context
def history(ctx: click.Context, fact_id: int, as_json: bool) -> None:
    """Show every version of a fact and the events that changed it."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        versions = memory.versions(fact_id)
        events = memory.history(fact_id)
    data = {"versions": [v.to_dict() for v in versions], "events": [e.to_dict() for e in events]}
    text = (table(_fact_rows(versions), FACT_HEADERS, wrap_column=1) + "\n\n"
            + table(_event_rows(events), EVENT_HEADERS, wrap_column=3))
    emit(data, as_json=as_json, text=text)


@cli.command()
@click.option("--user", "-u", "user_id", required=True, help="User id (required).")
@click.option("--since", help="Only events at or after this date/time.")
@click.option("--until", help="Only events at or before this date/time.")
@click.option("--limit", type=int, help="At most this many events.")
@json_option
@click.pass_context
def timeline(ctx: click.Context, user_id: str, since: str | None, until: str | None,
             limit: int | None, as_json: bool) -> None:
    """Show everything that happened to a user's memory, in order."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        events = memory.timeline(user_id, since=since, until=until, limit=limit)
    emit([e.to_dict() for e in events], as_json=as_json,
         text=table(_event_rows(events), EVENT_HEADERS, wrap_column=3) if events else "no events")


@cli.command()
@click.argument("fact_id", type=int)
@click.option("--reason", help="Why it was deleted (kept in the history).")
@json_option
@click.pass_context
def delete(ctx: click.Context, fact_id: int, reason: str | None, as_json: bool) -> None:
    """Retire a fact: it stops being current but stays in the history."""
    with open_memory(ctx) as memory, engine_errors():
        event = memory.delete(fact_id, reason=reason)
    emit(event.to_dict(), as_json=as_json, text=f"deleted fact {fact_id}: {event.old_text}")


@cli.command()
@click.option("--user", "-u", "user_id", required=True, help="User whose data is erased.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def purge(ctx: click.Context, user_id: str, yes: bool, as_json: bool) -> None:
    """Erase everything about a user for real (privacy requests). Cannot be undone."""
    if not yes:
        click.confirm(f"Erase all facts, history and messages of {user_id!r}?", abort=True)
    with open_memory(ctx) as memory, engine_errors():
        counts = memory.purge(user_id)
    emit(counts, as_json=as_json,
         text=f"purged {user_id}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@cli.command(name="export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--user", "-u", "user_id", help="Only this user [default: everyone].")
@click.option("--no-embeddings", is_flag=True,
              help="Leave vectors out (smaller; re-embedded on import).")
@json_option
@click.pass_context
def export_(ctx: click.Context, path: str, user_id: str | None, no_embeddings: bool,
            as_json: bool) -> None:
    """Write the store (or one user) to a JSON Lines file, history included."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        counts = memory.export(path, user_id=user_id, embeddings=not no_embeddings)
    emit(counts, as_json=as_json,
         text=f"exported to {path}: " + ", ".join(f"{v} {k}s" for k, v in counts.items()))


@cli.command(name="import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@json_option
@click.pass_context
def import_(ctx: click.Context, path: str, as_json: bool) -> None:
    """Load a JSON Lines export made by `memengine export`."""
    from tqdm import tqdm

    with open_memory(ctx) as memory, engine_errors(), tqdm(
        unit="fact", desc="importing", file=sys.stderr, disable=as_json
    ) as bar:
        counts = memory.import_(Path(path), progress=bar.update)
    emit(counts, as_json=as_json,
         text=f"imported {path}: " + ", ".join(f"{v} {k}s" for k, v in counts.items()))


@cli.command()
@click.option("--limit", default=20, show_default=True, help="How many messages to list.")
@click.option("--retry", is_flag=True, help="Extract the pending messages now, then report.")
@json_option
@click.pass_context
def status(ctx: click.Context, limit: int, retry: bool, as_json: bool) -> None:
    """Show messages waiting for extraction or whose extraction failed."""
    with open_memory(ctx, read_only=not retry, process_pending=retry) as memory, \
            engine_errors():
        memory.flush() if retry else None
        data = memory.status(limit=limit)
    rows = [[m["id"], m["user_id"], m["status"], m["attempts"], m["error"], m["content"]]
            for m in data["messages"]]
    text = (f"{data['pending_messages']} pending, {data['failed_messages']} failed")
    if rows:
        text += "\n" + table(rows, ["id", "user", "status", "tries", "error", "message"],
                             wrap_column=4)
    emit(data, as_json=as_json, text=text)


@cli.command()
@json_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Show counts, embedder and paths of the store."""
    with open_memory(ctx, read_only=True) as memory, engine_errors():
        data = memory.stats()
    emit(data, as_json=as_json, text="\n".join(f"{k:>17}: {v}" for k, v in data.items()))


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the store's earlier contents.")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Tell the coffee-to-tea story with the local LM (store: ./data/demo.duckdb).

    Takes a minute or two on a laptop CPU: the LM loads, then extracts two messages.
    """
    from engine.cli.demo import run_demo

    options = ctx.find_root().params
    path = Path(options.get("db") or "data/demo.duckdb")
    with engine_errors():
        run_demo(path, embedder=options.get("embedder"), lm=options.get("lm"),
                 echo=click.echo, fresh=not keep)


def _register_subcommands() -> None:
    from engine.cli.chat import chat
    from engine.cli.lm_cmd import serve_lm
    from engine.cli.mcp_cmd import mcp
    from engine.cli.models_cmd import models
    from engine.cli.serve_cmd import serve

    cli.add_command(mcp)
    cli.add_command(chat)
    cli.add_command(models)
    cli.add_command(serve)
    cli.add_command(serve_lm)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="memengine", standalone_mode=True)
    except InvalidInputError as exc:  # pragma: no cover - safety net
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
