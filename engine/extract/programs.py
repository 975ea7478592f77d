"""The DSPy program that extracts facts with slots, over a local GGUF.

One typed Signature (DSPy style: the docstring is the instruction, fields are typed):
:class:`~engine.extract.signatures.ExtractMemories`. :class:`DspyExtractor` runs it with
DSPy's ``JSONAdapter`` through :class:`engine.backends.lm.LlamaCppEngine` (or any engine), so the
output is constrained by a JSON schema built from the output fields; it then validates
what comes back (slot names normalised, aliases checked, dates parsed), retries a bounded
number of times, and raises :class:`~engine.errors.ExtractionError` when the model still
fails. The model writes only what code cannot compute, one compact line per fact: the
sentence, its subject, slot and value, and a date when the message gives one; the category
comes from the slot (:func:`engine.extract.slots.category_of`).

A compiled program (few-shot demos chosen from the labeled train split) ships as
``engine/extract/compiled/<model name>.json`` and is loaded when present; otherwise
``compiled/default.json``.

DSPy is imported lazily (``import engine`` stays light): the Signature lives in
:mod:`engine.extract.signatures`, imported on first use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import ExtractionError, ModelError
from engine.extract import ExtractedFact, KnownFact, Turn
from engine.extract.dates import UNKNOWN_START, date_hints, stated_date, stated_period
from engine.extract.grounding import grounded, user_said
from engine.extract.salience import worth_extracting
from engine.extract.slots import (
    category_of,
    normalise_attribute,
    normalise_subject,
    specifics,
)

if TYPE_CHECKING:
    import dspy

__all__ = [
    "COMPILED_DIR",
    "DspyExtractor",
    "compiled_program_path",
    "format_conversation",
    "format_known",
    "format_line",
    "signatures",
]

log = logging.getLogger(__name__)

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
_MAX_FACTS = 8


def signatures() -> Any:
    """The module of DSPy classes (``ExtractMemories``, ``FactProgram``),
    imported on first use because it imports DSPy."""
    from engine.backends.lm import import_dspy

    import_dspy()
    from engine.extract import signatures as module

    return module


# ---------------------------------------------------------------------------- formatting


def _speaker(turn: Turn) -> str:
    if turn.name:
        return turn.name
    return {"user": "User", "assistant": "Assistant"}.get(turn.role, turn.role.title())


def format_conversation(turns: Sequence[Turn]) -> tuple[str, str, str]:
    """``(observation_date, date_hints, conversation)`` as the ExtractFacts inputs.

    The observation date is the last turn's; turns from other days carry their date.
    """
    last = turns[-1].observed_at.date()
    lines = []
    for turn in turns:
        day = turn.observed_at.date()
        prefix = f"[{day.isoformat()}] " if day != last else ""
        lines.append(f"{prefix}{_speaker(turn)}: {' '.join(turn.content.split())}")
    hints = date_hints(" ".join(t.content for t in turns), last)
    return f"{last.isoformat()} ({last.strftime('%A')})", hints, "\n".join(lines)


def format_line(subject: str | None, slot: str | None, value: str | None, text: str) -> str:
    """A fact as the model reads and writes it: ``sentence | subject | slot | value``."""
    return f"{text} | {subject or 'user'} | {slot or '-'} | {value or '-'}"


def format_known(known: Sequence[KnownFact]) -> str:
    """Known facts as ``sentence | subject | slot | value`` lines, or "none"."""
    if not known:
        return "none"
    return "\n".join(format_line(k.subject, k.slot, k.value, k.text) for k in known)


def _chunks(turns: Sequence[Turn], max_chars: int) -> Iterator[list[Turn]]:
    """Consecutive groups of turns whose text fits ``max_chars``; a longer turn is cut
    at sentence ends (or hard, as a last resort) into several turns."""
    pieces: list[Turn] = []
    for turn in turns:
        if len(turn.content) <= max_chars:
            pieces.append(turn)
            continue
        part = ""
        for sentence in re.split(r"(?<=[.!?])\s+", turn.content):
            while len(sentence) > max_chars:
                pieces.append(Turn(turn.role, sentence[:max_chars], turn.observed_at, turn.name))
                sentence = sentence[max_chars:]
            if part and len(part) + 1 + len(sentence) > max_chars:
                pieces.append(Turn(turn.role, part, turn.observed_at, turn.name))
                part = ""
            part = f"{part} {sentence}".strip()
        if part:
            pieces.append(Turn(turn.role, part, turn.observed_at, turn.name))
    group: list[Turn] = []
    size = 0
    for piece in pieces:
        if group and size + len(piece.content) > max_chars:
            yield group
            group, size = [], 0
        group.append(piece)
        size += len(piece.content)
    if group:
        yield group


# ---------------------------------------------------------------------------- validation


class _InvalidAnswerError(Exception):
    """An answer that parsed but breaks the contract (retried)."""


def _parse_date(value: Any) -> datetime | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text[:10]), datetime.min.time())
    except ValueError as exc:
        raise _InvalidAnswerError(f"valid_from {text!r} is not a calendar date") from exc


def _text(value: Any) -> str:
    return " ".join(str(value or "").split())


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMPTY = {"", "-", "none", "n/a", "null"}


def _fact_from_line(line: str, user_names: set[str], observed: date) -> ExtractedFact:
    """One ``sentence | subject | slot | value [| date]`` line as a fact.

    A line with fewer fields is kept as a fact without a slot when its first field reads
    as a sentence (a small model's slip should not lose what the user said).
    """
    parts = [_text(p) for p in line.split("|")]
    when = None
    if len(parts) >= 5 and _DATE.match(parts[-1]):
        when = _parse_date(parts.pop())
    if len(parts) >= 4:
        text, subject, slot, value = parts[0], parts[1], parts[2], " ".join(parts[3:])
    else:
        text, subject, slot, value = parts[0], "user", "", ""
    if len(text) < 3 or " " not in text:
        raise _InvalidAnswerError(f"fact {line!r} has no sentence")
    if when is not None and when.date() == observed:
        when = None  # "from the day it was said" is what None already means
    if when is None and (said := stated_date(text, observed)) is not None and said != observed:
        when = datetime.combine(said, datetime.min.time())
    began, ended = stated_period(text, observed)
    if when is None and began is not None:
        when = datetime.combine(began, datetime.min.time())
    until = None
    if ended is not None and (when is None or when.date() < ended):
        until = datetime.combine(ended, datetime.min.time())
        when = when or UNKNOWN_START
    attribute = normalise_attribute(slot) if slot.casefold() not in _EMPTY else ""
    text = _with_value(text, value if value.casefold() not in _EMPTY else "")
    return ExtractedFact(text=text, category=category_of(attribute or None),
                         about=normalise_subject(subject, user_names), valid_from=when,
                         slot=attribute or None,
                         value=value if value.casefold() not in _EMPTY else None,
                         valid_to=until)


def _with_value(text: str, value: str) -> str:
    """The sentence, with the value's names and numbers added in brackets when the model
    left them out of it ("User's team is great" for the value "Mercadona"): the sentence is
    what is searched and shown, and specifics are what people ask about."""
    sentence = text.casefold()
    missing = [m for m in specifics(value) if m.casefold() not in sentence]
    if not missing:
        return text
    return f"{text.rstrip('.')} ({value})"


def _facts_from(items: Any, user_names: set[str], observed: date) -> list[ExtractedFact]:
    if not isinstance(items, list):
        raise _InvalidAnswerError(f"facts is {type(items).__name__}, not a list")
    out: list[ExtractedFact] = []
    seen: set[str] = set()
    for item in items:
        fact = _fact_from_line(str(item), user_names, observed)
        key = fact.text.lower().rstrip(".")
        if key not in seen:
            seen.add(key)
            out.append(fact)
    return out


def _parse_facts(prediction: Any, *, user_names: set[str], observed: date) -> list[ExtractedFact]:
    return _facts_from(prediction["facts"], user_names, observed)


# ----------------------------------------------------------------------------- extractor


def compiled_program_path(model_name: str) -> Path | None:
    """The compiled program shipped for ``model_name``, else the default one (any GGUF
    gets few-shot demos), or None when neither exists."""
    for path in (COMPILED_DIR / f"{model_name}.json", COMPILED_DIR / "default.json"):
        if path.is_file():
            return path
    return None


class DspyExtractor:
    """The LM-backed :class:`~engine.extract.Extractor`: a DSPy program over llama.cpp.

    ``model`` is a manifest name or a GGUF path (None: the manifest's default LM); the
    GGUF loads on first use. Tests and servers can instead pass ``lm`` (a ``dspy.LM``) or
    ``engine`` (any DSPy engine object, e.g. :class:`engine.backends.lm.LlamaServerEngine`).
    ``program`` is a compiled program JSON: None loads ``compiled/<model name>.json`` (or
    ``compiled/default.json``), False uses the zero-shot program. A failed or invalid
    answer is retried ``retries`` times (at a small temperature), then
    :class:`ExtractionError` is raised. Input longer than ``max_chunk_chars`` is extracted
    chunk by chunk. ``show_known`` shows the stored facts the pipeline passes to the model
    (off by default: measured on the validation split, the default 1.5B model then
    mostly repeated the known facts instead of reading the new message; code matches
    slots without it). ``skip_chit_chat`` (default on)
    skips the LM for chunks whose user turns are only greetings, thanks or questions
    (:func:`engine.extract.salience.worth_extracting`).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        lm: dspy.LM | None = None,
        engine: Any = None,
        program: str | Path | Literal[False] | None = None,
        retries: int = 2,
        max_tokens: int = 384,
        max_chunk_chars: int = 1500,
        skip_chit_chat: bool = True,
        show_known: bool = False,
    ) -> None:
        self.show_known = show_known
        self.skip_chit_chat = skip_chit_chat
        self.max_tokens = max_tokens
        self.retries = max(0, retries)
        self.max_chunk_chars = max_chunk_chars
        self.model_name, self._lm, self._engine = self._build_lm(model, n_threads, n_ctx,
                                                                 lm, engine)
        self.program = signatures().FactProgram()
        if program is None:
            program = compiled_program_path(self.model_name) or False
        self.program_tag = "zero-shot"
        if program is not False:
            self.load_program(program)
        from engine.backends.lm import schema_adapter

        self._adapter = schema_adapter()

    def _build_lm(self, model: str | Path | None, n_threads: int | None, n_ctx: int,
                  lm: Any, engine: Any) -> tuple[str, Any, Any]:
        from engine.backends.lm import LlamaCppEngine, make_lm

        if lm is not None:
            return str(getattr(lm, "model", "lm")).split("/")[-1], lm, getattr(lm, "engine", None)
        if engine is not None:
            return str(getattr(engine, "name", "engine")), make_lm(
                engine, max_tokens=self.max_tokens), engine
        from engine.backends.lm import resolve_gguf

        path, name = resolve_gguf(model)
        engine = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=n_threads, name=name,
                                max_tokens=self.max_tokens)
        return name, make_lm(engine, max_tokens=self.max_tokens), engine

    def load_program(self, path: str | Path) -> None:
        """Load a compiled program (demos, instructions) saved by ``program.save``.

        Predictors the file does not mention keep their zero-shot state, so a program
        compiled before a predictor was added still loads.
        """
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"compiled program not found: {p}")
        try:
            state = json.loads(p.read_text())
            for name, predictor in self.program.named_predictors():
                if name in state:
                    predictor.load_state(state[name])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise ModelError(f"cannot load the compiled program {p}: {exc}") from exc
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:8]
        self.program_tag = f"{p.stem}@{digest}"

    @property
    def identity(self) -> str:
        """``dspy/<model>/<program>``: recorded as the actor of the events it causes."""
        return f"dspy/{self.model_name}/{self.program_tag}"

    @property
    def lm(self) -> Any:
        """The ``dspy.LM`` the programs run on."""
        return self._lm

    @property
    def engine(self) -> Any:
        """The engine under the LM (None when a bare ``dspy.LM`` was given)."""
        return self._engine

    # -- calls

    def _call(self, predictor: Any, inputs: dict[str, Any], parse: Any) -> Any:
        """Run ``predictor`` and ``parse`` its prediction, retrying invalid answers."""
        from pydantic import ValidationError

        from engine.backends.lm import import_dspy

        dspy = import_dspy()
        from dspy.utils.exceptions import AdapterParseError

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            config: dict[str, Any] = {"max_tokens": self.max_tokens}
            if attempt:
                config.update(temperature=min(0.2 * attempt, 1.0), seed=attempt)
            try:
                with dspy.context(lm=self._lm, adapter=self._adapter):
                    prediction = predictor(**inputs, config=config)
                return parse(prediction)
            except (AdapterParseError, ValidationError, _InvalidAnswerError) as exc:
                last = exc
                log.info("invalid answer from %s (attempt %d): %s", self.identity,
                         attempt + 1, str(exc)[:300])
            except ModelError:
                raise
            except Exception as exc:
                # DSPy wraps engine failures in its own LMError family; anything else is a
                # bug in a program or an engine, reported as an extraction failure.
                raise ExtractionError(f"{self.identity}: the LM call failed: {exc}") from exc
        raise ExtractionError(
            f"{self.identity}: no valid answer after {self.retries + 1} attempts: {last}"
        ) from last

    def extract(self, turns: list[Turn], known: Sequence[KnownFact] = ()) -> list[ExtractedFact]:
        """Standalone facts stated in ``turns`` (empty for chit-chat), in one LM call per
        chunk of turns; ``known`` (stored facts) is shown to the model, when
        ``show_known`` is on, so it reuses their slots."""
        if not turns:
            return []
        user_names = {t.name.lower() for t in turns if t.role == "user" and t.name}
        known_text = format_known(known if self.show_known else ())
        facts: list[ExtractedFact] = []
        seen: set[str] = set()
        for chunk in _chunks(turns, self.max_chunk_chars):
            if not any(t.from_user for t in chunk) or (
                    self.skip_chit_chat and not worth_extracting(chunk)):
                continue
            observed, hints, conversation = format_conversation(chunk)
            day = chunk[-1].observed_at.date()
            found = self._call(
                self.program.extract,
                {"observation_date": observed, "date_hints": hints, "known": known_text,
                 "conversation": conversation},
                functools.partial(_parse_facts, user_names=user_names, observed=day),
            )
            said = user_said(chunk)
            for fact in found:
                if not grounded(fact, said):
                    log.info("dropped %r: its value %r is not in the user's words",
                             fact.text, fact.value)
                    continue
                if fact.text.lower() not in seen:
                    seen.add(fact.text.lower())
                    facts.append(fact)
        return facts[: _MAX_FACTS * 4]

    def close(self) -> None:
        """Free the model (when this extractor built it)."""
        if self._engine is not None and hasattr(self._engine, "close"):
            self._engine.close()

    def __enter__(self) -> DspyExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
