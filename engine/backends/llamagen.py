"""Grammar-constrained generation on a ``llama_cpp.Llama``, checking the grammar lazily.

llama-cpp-python applies a grammar by filtering the *whole* vocabulary at every token
(151,936 candidates for Qwen2.5): with a JSON schema that made each generated token
several times slower than the model's own forward pass on 2 cores. llama.cpp's own
samplers avoid this (``common_sampler_sample``): take the best token first, ask the
grammar about that one token, and filter the whole vocabulary only when it is refused.
This module does the same with llama.cpp's public sampler API, for greedy decoding and
for temperature sampling, and reuses the KV cache of the longest common prompt prefix.

Across processes, :class:`PrefixStore` keeps the KV state of each prompt's *static
prefix* (everything before the final user message: DSPy's instructions and demos) in a
file, so a fresh process loads it instead of evaluating ~1,000 tokens again.

Fewer generated tokens: the opening a one-array schema forces (``{"facts":``) is
evaluated with the prompt and its closing brace is appended, not generated
(:func:`json_frame`). Prompt-lookup decoding (:func:`prompt_lookup`, off by default)
drafts tokens from the prompt and checks them in one batch; it pays only where a batch of
k tokens costs about one step.

Used by :class:`engine.backends.lm.LlamaCppEngine`; nothing here imports DSPy.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Generation", "GenerationTimeout", "Generator", "PrefixStore", "json_frame",
           "prompt_lookup"]

log = logging.getLogger(__name__)

# llama-cpp-python's schema converter allows at most one space between JSON tokens. DSPy
# shows the model indented JSON (its demos are ``json.dumps(indent=2)``), so a model
# that wants a newline first was forced onto its best *other* token (often "]": an
# empty list). Allow newlines and indentation, as llama.cpp's own converter does.
_SPACE_RE = re.compile(r'^space ::= .*$', re.MULTILINE)
_SPACE_RULE = r'space ::= | " " | "\n" [ \t]{0,20}'
_TOKEN_DTYPE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class Generation:
    """The outcome of one generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int
    finish_reason: str
    grammar_fallbacks: int = 0
    drafted_tokens: int = 0
    """Tokens proposed by prompt lookup (:func:`prompt_lookup`) and checked by the model."""
    accepted_tokens: int = 0
    """Drafted tokens the model agreed with: generated without a forward pass of their own."""
    prefix_state: str = ""
    """"loaded" when the static prefix's KV state came from a file, "saved" when it was
    written to one in this call, else ""."""


class GenerationTimeout(Exception):  # noqa: N818 (not an error of the caller's making)
    """A generation reached its deadline: raised between two prompt batches or two tokens,
    so the context stays consistent (it holds what was evaluated) and the next call reuses
    it like any other."""

    def __init__(self, seconds: float, tokens: int) -> None:
        super().__init__(f"stopped after {seconds:.1f} s, {tokens} tokens generated")
        self.seconds = seconds
        self.tokens = tokens


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def json_frame(schema: dict[str, Any] | None) -> tuple[str, str]:
    """The opening and closing text a schema of one required array property forces
    (``{"facts": [...]}``), as DSPy's demos write it (``json.dumps(indent=2)``); else
    empty strings.

    The opening is evaluated with the prompt, in one batch, instead of being generated a
    token at a time; once the array is closed, the closing brace is added instead of
    generated, and so is the end of the turn. The model writes exactly these
    characters either way, so the answer is the same."""
    if not schema or schema.get("type") != "object":
        return "", ""
    properties = schema.get("properties") or {}
    if len(properties) != 1:
        return "", ""
    ((name, spec),) = properties.items()
    if schema.get("required") != [name] or not isinstance(spec, dict) or (
            spec.get("type") != "array"):
        return "", ""
    return "{\n  " + json.dumps(name) + ":", "}"


def _closes(decoded: str, closing: str) -> bool:
    """Whether ``decoded`` + ``closing`` is one whole JSON document (the array is shut)."""
    if not decoded.rstrip().endswith("]"):
        return False
    try:
        json.loads(decoded + closing)
    except ValueError:
        return False
    return True


def prompt_lookup(history: np.ndarray, limit: int, *, ngram: int = 3,
                  min_ngram: int = 1) -> list[int]:
    """Up to ``limit`` tokens that followed the last earlier occurrence of the end of
    ``history``: a draft for prompt-lookup decoding (llama.cpp's "lookup" example).

    The longest ending of ``ngram`` down to ``min_ngram`` tokens that occurs earlier in
    ``history`` (the prompt and what was generated) wins, and its most recent occurrence
    is used. Facts copy the message's words and the demos' JSON, so the model often
    agrees with several drafted tokens at once.
    """
    n = len(history)
    if limit <= 0 or n < 2:
        return []
    for size in range(min(ngram, n - 1), min_ngram - 1, -1):
        tail = history[n - size:]
        # windows starting at 0 .. n-size-1: every earlier occurrence, never the tail itself
        windows = np.lib.stride_tricks.sliding_window_view(history[: n - 1], size)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + size
            return [int(t) for t in history[start: start + limit]]
    return []


class _Grammar:
    """A llama.cpp grammar sampler used outside any chain: apply to 1 or n tokens."""

    def __init__(self, llama_cpp: Any, vocab: Any, gbnf: str) -> None:
        self._lib = llama_cpp
        self._ptr = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self._ptr:
            raise ValueError("llama.cpp could not parse the grammar built from the schema")

    def apply(self, data: np.ndarray) -> None:
        lib = self._lib
        arr = lib.llama_token_data_array(
            data=data.ctypes.data_as(lib.llama_token_data_p), size=len(data), selected=-1,
            sorted=False,
        )
        lib.llama_sampler_apply(self._ptr, ctypes.byref(arr))

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._ptr, token)

    def close(self) -> None:
        if self._ptr:
            self._lib.llama_sampler_free(self._ptr)
            self._ptr = None



class PrefixStore:
    """KV states of static prompt prefixes on disk: one file per (model setup, prefix).

    ``identity`` names everything besides the tokens that the KV values depend on (the
    model file, ``n_ctx``, ``n_batch``, the llama.cpp build); a file's name is the
    SHA-256 of the identity and the prefix's token ids. A file holds a magic, a JSON
    header (the key, the token count, the state's SHA-256), the token ids (int32) and
    llama.cpp's raw sequence state (``llama_state_seq_get_data``); nothing is unpickled.
    A file that does not check out is logged, removed and rewritten later. At most
    ``max_files`` files are kept, the least recently used (by mtime) removed first.
    """

    MAGIC = b"MEMKVST1"
    SUFFIX = ".kvstate"
    min_tokens = 16
    """Shorter prefixes are not worth a file."""

    def __init__(self, directory: str | Path, identity: str, *, max_files: int = 8) -> None:
        self.directory = Path(directory).expanduser()
        self.identity = identity
        self.max_files = max(1, max_files)
        self._write_failed = False

    def key(self, tokens: list[int]) -> str:
        h = hashlib.sha256(self.identity.encode())
        h.update(b"\0")
        h.update(np.asarray(tokens, dtype="<i4").tobytes())
        return h.hexdigest()

    def path(self, tokens: list[int]) -> Path:
        return self.directory / (self.key(tokens) + self.SUFFIX)

    # -- reading

    def _read(self, path: Path, tokens: list[int]) -> tuple[bytearray, int] | None:
        """The bytes of ``path`` and where its state starts, if the file is whole and is
        for ``tokens``."""
        try:
            raw = bytearray(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the KV state file %s: %s", path, exc)
            return None
        problem = self._check(raw, path.name[: -len(self.SUFFIX)], tokens)
        if isinstance(problem, int):
            return raw, problem
        log.warning("ignoring the KV state file %s (%s); it will be rewritten", path, problem)
        self._remove(path)
        return None

    def _check(self, raw: bytearray, key: str, tokens: list[int]) -> str | int:
        """What is wrong with the file's bytes, or the offset of its state."""
        n_magic = len(self.MAGIC)
        if len(raw) < n_magic + 4 or raw[:n_magic] != self.MAGIC:
            return "not a state file"
        (n_header,) = struct.unpack_from("<I", raw, n_magic)
        start = n_magic + 4 + n_header
        try:
            header = json.loads(bytes(raw[n_magic + 4: start]))
            n_tokens, n_state = int(header["n_tokens"]), int(header["state_bytes"])
            digest = str(header["sha256"])
        except (ValueError, KeyError, TypeError):
            return "unreadable header"
        if header.get("key") != key or n_tokens != len(tokens):
            return "made for another prompt"
        if len(raw) != start + 4 * n_tokens + n_state:
            return "truncated"
        stored = np.frombuffer(raw, dtype="<i4", count=n_tokens, offset=start)
        if not np.array_equal(stored, np.asarray(tokens, dtype="<i4")):
            return "made for other tokens"
        offset = start + 4 * n_tokens
        if hashlib.sha256(memoryview(raw)[offset:]).hexdigest() != digest:
            return "checksum mismatch"
        return offset

    def load(self, llm: Any, tokens: list[int]) -> bool:
        """Restore the KV state of ``tokens`` into ``llm`` (sequence 0) if a good file
        exists. On success the context holds exactly ``tokens``; on a failed restore it
        is left empty; when there is no usable file it is left untouched."""
        import llama_cpp

        path = self.path(tokens)
        found = self._read(path, tokens)
        if found is None:
            return False
        raw, offset = found
        size = len(raw) - offset
        llm.reset()
        llm._ctx.kv_cache_clear()
        buf = (ctypes.c_uint8 * size).from_buffer(raw, offset)  # no copy
        n = llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, size, 0)
        del buf
        if n != size:
            log.warning("llama.cpp refused the KV state file %s; it will be rewritten", path)
            llm.reset()
            llm._ctx.kv_cache_clear()
            self._remove(path)
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return True

    # -- writing

    def save(self, llm: Any, tokens: list[int]) -> bool:
        """Write the KV state of ``llm``, which must hold exactly ``tokens``, unless a
        file for them exists. Failures are logged (once), never raised."""
        import llama_cpp

        path = self.path(tokens)
        if self._write_failed or path.exists():
            return False
        if llm.n_tokens != len(tokens):
            return False
        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if not n or n > size:
            log.warning("llama.cpp gave no sequence state to save")
            return False
        state = memoryview(buf).cast("B")[:n]
        header = json.dumps({
            "key": self.key(tokens), "n_tokens": len(tokens), "state_bytes": n,
            "sha256": hashlib.sha256(state).hexdigest(),
            "llama_cpp": getattr(llama_cpp, "__version__", "?"),
        }).encode()
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=self.SUFFIX)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.MAGIC)
                fh.write(struct.pack("<I", len(header)))
                fh.write(header)
                fh.write(np.asarray(tokens, dtype="<i4").tobytes())
                fh.write(state)
            os.replace(tmp, path)
        except OSError as exc:
            self._write_failed = True
            log.warning("cannot save the prompt's KV state in %s: %s (not trying again)",
                        self.directory, exc)
            if tmp is not None:
                self._remove(Path(tmp))
            return False
        self._prune()
        return True

    def _prune(self) -> None:
        files = []
        for p in self.directory.glob("*" + self.SUFFIX):
            if p.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(OSError):
                files.append((p.stat().st_mtime, p))
        files.sort(reverse=True)
        for _, p in files[self.max_files:]:
            self._remove(p)

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

class Generator:
    """Chat generation on one ``llama_cpp.Llama`` with lazy grammar checks.

    ``llm`` must have been created by the caller (who owns and closes it). Prompts are
    rendered with the GGUF's chat template (llama-cpp-python's Jinja2 formatter). With
    ``prefix_store``, the static prefix's KV state is loaded from / saved to disk when
    the context does not already hold it.
    """

    def __init__(self, llm: Any, prefix_store: PrefixStore | None = None, *,
                 draft_tokens: int = 0) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.llm = llm
        self.draft_tokens = max(0, draft_tokens)
        self._lib = llama_cpp
        self._vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self._all = np.zeros(self.n_vocab, dtype=_TOKEN_DTYPE)
        self._one = np.zeros(1, dtype=_TOKEN_DTYPE)
        template = llm.metadata.get("tokenizer.chat_template")
        self.prefix_store = prefix_store
        self.prefix_state = ""
        self._started = 0.0
        self._formatter: Any = None
        self._history_formatter: Any = None
        if template:
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
            self._history_formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False)

    # -- prompt

    def prompt_tokens(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Token ids of the rendered chat prompt, and the template's stop strings."""
        if self._formatter is not None:
            result = self._formatter(messages=messages)
            text, stops = result.prompt, result.stop
            add_bos = not getattr(result, "added_special", False)
        else:  # a model without a chat template (base models): plain ChatML
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                           for m in messages) + "<|im_start|>assistant\n"
            stops, add_bos = ["<|im_end|>"], True
        if isinstance(stops, str):
            stops = [stops]
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return tokens, [s for s in (stops or []) if s]

    def static_prefix(self, messages: list[dict[str, str]], tokens: list[int]) -> int:
        """How many of ``tokens`` (the prompt of ``messages``) render the messages before
        the last one: the part the next call with other input will share."""
        if len(messages) < 2:
            return 0
        if self._history_formatter is not None:
            result = self._history_formatter(messages=messages[:-1])
            text = result.prompt
            add_bos = not getattr(result, "added_special", False)
        else:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                           for m in messages[:-1])
            add_bos = True
        head = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return min(_common(head, tokens), len(tokens) - 1)

    def _keep(self, n: int) -> int:
        """Trim the context to its first ``n`` tokens (or empty it); the tokens kept."""
        llm = self.llm
        if n > 0 and llm._ctx.kv_cache_seq_rm(-1, n, -1):
            llm.n_tokens = n
            return n
        llm.reset()
        llm._ctx.kv_cache_clear()
        return 0

    def _eval(self, tokens: list[int], deadline: float | None) -> None:
        """``llm.eval(tokens)``, one batch at a time, checking ``deadline`` before each."""
        step = max(1, int(self.llm.n_batch))
        for start in range(0, len(tokens), step):
            self._check(deadline, 0)
            self.llm.eval(tokens[start: start + step])

    def _check(self, deadline: float | None, generated: int) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise GenerationTimeout(time.monotonic() - self._started, generated)

    def _eval_prompt(self, tokens: list[int], static: int = 0,
                     deadline: float | None = None) -> tuple[int, float | None]:
        """Evaluate ``tokens``, reusing the KV cache of the longest common prefix.

        With a prefix store and a ``static`` prefix longer than what the context holds,
        the static prefix's state is loaded from disk, or else evaluated on its own and
        saved, before the rest. Evaluating it is a one-off cost, like loading the model,
        so it does not count against ``deadline`` (on a slow machine it alone could pass
        the limit on every try). Returns the tokens not evaluated here and the deadline,
        moved by the time the static prefix took."""
        llm = self.llm
        self.prefix_state = ""
        cached = llm._input_ids[: llm.n_tokens].tolist()
        # always decode at least one token, for fresh logits
        prefix = self._keep(min(_common(cached, tokens), len(tokens) - 1))
        store = self.prefix_store
        static = min(static, len(tokens) - 1)
        if store is not None and static > prefix and static >= store.min_tokens:
            head = tokens[:static]
            if store.load(llm, head):
                prefix, self.prefix_state = static, "loaded"
            else:
                prefix = min(prefix, llm.n_tokens)  # a failed load empties the context
                started = time.monotonic()
                self._eval(tokens[prefix:static], None)
                if store.save(llm, head):
                    self.prefix_state = "saved"
                if deadline is not None:
                    deadline += time.monotonic() - started
                self._eval(tokens[static:], deadline)
                return prefix, deadline
        self._eval(tokens[prefix:], deadline)
        return prefix, deadline

    def _eval_rows(self, tokens: list[int]) -> list[np.ndarray]:
        """Evaluate ``tokens`` (fewer than ``n_batch``) in one batch after what the context
        holds, and return the logits after each of them (views valid until the next
        evaluation)."""
        llm = self.llm
        n_past = llm.n_tokens
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[n_past: n_past + len(tokens)] = tokens
        llm.n_tokens = n_past + len(tokens)
        ctx = llm._ctx.ctx
        return [np.ctypeslib.as_array(self._lib.llama_get_logits_ith(ctx, i),
                                      shape=(self.n_vocab,)) for i in range(len(tokens))]

    def _logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # -- sampling

    def _pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator,
              allowed: np.ndarray | None = None) -> int:
        if allowed is not None:
            logits = np.where(allowed, logits, -np.inf)
        if temperature <= 0:
            return int(np.argmax(logits))
        k = min(40, int(np.isfinite(logits).sum()) or 1)
        top = np.argpartition(-logits, k - 1)[:k]
        scaled = logits[top] / temperature
        probs = np.exp(scaled - scaled.max())
        return int(top[rng.choice(k, p=probs / probs.sum())])

    def _grammar_ok(self, grammar: _Grammar, token: int) -> bool:
        self._one["id"][0], self._one["logit"][0] = token, 0.0
        grammar.apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def _allowed(self, grammar: _Grammar, logits: np.ndarray) -> np.ndarray:
        self._all["id"] = np.arange(self.n_vocab, dtype=np.int32)
        self._all["logit"] = logits
        grammar.apply(self._all)
        return np.isfinite(self._all["logit"])

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
        stop: list[str] | None = None,
        schema: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Generate a reply; with ``schema`` the reply is JSON matching it. With
        ``timeout`` (seconds), :class:`GenerationTimeout` is raised once it has passed."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        self._started = time.monotonic()
        deadline = None if timeout is None else self._started + timeout

        tokens, template_stops = self.prompt_tokens(messages)
        opening, closing = json_frame(schema)
        prefilled = self.llm.tokenize(opening.encode(), add_bos=False, special=False) \
            if opening else []
        n_ctx = self.llm.n_ctx()
        n_prompt = len(tokens) + len(prefilled)
        if n_prompt + 1 > n_ctx:
            raise ValueError(f"Requested tokens ({n_prompt}) exceed context window of {n_ctx}")
        max_tokens = min(max_tokens, n_ctx - n_prompt)
        stops = [*template_stops, *(stop or [])]
        grammar = None
        if schema is not None:
            gbnf = _SPACE_RE.sub(lambda _: _SPACE_RULE, json_schema_to_gbnf(json.dumps(schema)))
            grammar = _Grammar(self._lib, self._vocab, gbnf)
            for token in prefilled:
                if not self._grammar_ok(grammar, token):  # not this schema's opening after all
                    grammar.close()
                    grammar = _Grammar(self._lib, self._vocab, gbnf)
                    prefilled, opening, closing = [], "", ""
                    break
                grammar.accept(token)
        tokens = tokens + prefilled
        rng = np.random.default_rng(seed)
        static = self.static_prefix(messages, tokens) if self.prefix_store is not None else 0
        out: list[int] = []
        text = opening.encode()
        finish = "length"
        fallbacks = 0
        history = np.empty(len(tokens) + max_tokens, dtype=np.int32)
        history[: len(tokens)] = tokens
        drafted = accepted = 0
        try:
            reused, deadline = self._eval_prompt(tokens, static, deadline)
            logits = self._logits()
            # drafted tokens evaluated after the last chosen one, and the logits after each
            pending: list[int] = []
            rows: list[np.ndarray] = []
            while len(out) < max_tokens:
                self._check(deadline, len(out))
                token = self._pick(logits, temperature, rng)
                if grammar is not None and not self._grammar_ok(grammar, token):
                    fallbacks += 1
                    allowed = self._allowed(grammar, logits)
                    if not allowed.any():
                        finish = "stop"
                        break
                    token = self._pick(logits, temperature, rng, allowed)
                drafted_right = bool(pending) and token == pending[0]
                if pending and not drafted_right:  # drop the rest of the draft
                    self._keep(self.llm.n_tokens - len(pending))
                    pending, rows = [], []
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                if grammar is not None:
                    grammar.accept(token)
                history[len(tokens) + len(out)] = token
                out.append(token)
                text += self.llm.detokenize([token], prev_tokens=tokens + out[:-1])
                decoded = text.decode("utf-8", errors="ignore")
                if stops and any(s in decoded for s in stops):
                    finish = "stop"
                    break
                if closing and _closes(decoded, closing):  # the rest is forced: no need to
                    text += closing.encode()              # generate it token by token
                    finish = "stop"
                    break
                if drafted_right:  # already evaluated, with the logits that follow it
                    pending.pop(0)
                    logits = rows.pop(0)
                    accepted += 1
                    continue
                draft: list[int] = []
                if self.draft_tokens and temperature <= 0:
                    room = min(max_tokens - len(out), self.llm.n_ctx() - self.llm.n_tokens - 1)
                    draft = prompt_lookup(history[: len(tokens) + len(out)],
                                          min(self.draft_tokens, room))
                if draft:
                    drafted += len(draft)
                    every = self._eval_rows([token, *draft])
                    logits, rows, pending = every[0], every[1:], draft
                else:
                    self.llm.eval([token])
                    logits = self._logits()
        finally:
            if grammar is not None:
                grammar.close()
        decoded = text.decode("utf-8", errors="replace")
        for s in stops:
            if s in decoded:
                decoded = decoded[: decoded.index(s)]
        return Generation(text=decoded, prompt_tokens=len(tokens), completion_tokens=len(out),
                          reused_tokens=reused, finish_reason=finish,
                          grammar_fallbacks=fallbacks, drafted_tokens=drafted,
                          accepted_tokens=accepted, prefix_state=self.prefix_state)

    def generate_stock(self, messages: list[dict[str, str]],
                       response_format: dict[str, Any] | None, *, max_tokens: int = 512,
                       temperature: float = 0.0, seed: int = 0,
                       stop: list[str] | None = None,
                       timeout: float | None = None) -> Generation:
        """The same call through llama-cpp-python's ``create_chat_completion`` (for
        comparison: it filters the whole vocabulary through the grammar at each token).
        The deadline is checked by a logits processor, the hook it calls at each token."""
        from llama_cpp.llama import LogitsProcessorList

        self._started = time.monotonic()
        deadline = None if timeout is None else self._started + timeout
        generated = 0

        def check_deadline(input_ids: Any, scores: Any) -> Any:
            nonlocal generated
            self._check(deadline, generated)
            generated += 1
            return scores

        body = self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
            stop=stop or None, response_format=response_format,
            logits_processor=None if deadline is None else
            LogitsProcessorList([check_deadline]))
        usage = body.get("usage") or {}
        choice = body["choices"][0]
        return Generation(text=choice["message"]["content"] or "",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0),
                          reused_tokens=0, finish_reason=choice.get("finish_reason") or "stop")
