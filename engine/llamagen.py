"""Grammar-constrained generation on a ``llama_cpp.Llama``, checking the grammar lazily.

llama-cpp-python applies a grammar by filtering the *whole* vocabulary at every token
(151,936 candidates for Qwen2.5): with a JSON schema that made each generated token
several times slower than the model's own forward pass on 2 cores. llama.cpp's own
samplers avoid this (``common_sampler_sample``): take the best token first, ask the
grammar about that one token, and filter the whole vocabulary only when it is refused.
This module does the same with llama.cpp's public sampler API, for greedy decoding and
for temperature sampling, and reuses the KV cache of the longest common prompt prefix.

Used by :class:`engine.lm.LlamaCppEngine`; nothing here imports DSPy.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Generation", "Generator"]

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


class Generator:
    """Chat generation on one ``llama_cpp.Llama`` with lazy grammar checks.

    ``llm`` must have been created by the caller (who owns and closes it). Prompts are
    rendered with the GGUF's chat template (llama-cpp-python's Jinja2 formatter).
    """

    def __init__(self, llm: Any) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.llm = llm
        self._lib = llama_cpp
        self._vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self._all = np.zeros(self.n_vocab, dtype=_TOKEN_DTYPE)
        self._one = np.zeros(1, dtype=_TOKEN_DTYPE)
        template = llm.metadata.get("tokenizer.chat_template")
        self._formatter: Any = None
        if template:
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

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

    def _eval_prompt(self, tokens: list[int]) -> int:
        """Evaluate ``tokens``, reusing the KV cache of the longest common prefix."""
        llm = self.llm
        cached = llm._input_ids[: llm.n_tokens].tolist()
        prefix = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            prefix += 1
        prefix = min(prefix, len(tokens) - 1)  # always decode one token for fresh logits
        if prefix > 0 and llm._ctx.kv_cache_seq_rm(-1, prefix, -1):
            llm.n_tokens = prefix
        else:
            prefix = 0
            llm.reset()
            llm._ctx.kv_cache_clear()
        llm.eval(tokens[prefix:])
        return prefix

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
    ) -> Generation:
        """Generate a reply; with ``schema`` the reply is JSON matching it."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        tokens, template_stops = self.prompt_tokens(messages)
        n_ctx = self.llm.n_ctx()
        if len(tokens) + 1 > n_ctx:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}")
        max_tokens = min(max_tokens, n_ctx - len(tokens))
        stops = [*template_stops, *(stop or [])]
        grammar = None
        if schema is not None:
            gbnf = _SPACE_RE.sub(lambda _: _SPACE_RULE, json_schema_to_gbnf(json.dumps(schema)))
            grammar = _Grammar(self._lib, self._vocab, gbnf)
        rng = np.random.default_rng(seed)
        reused = self._eval_prompt(tokens)
        out: list[int] = []
        text = b""
        finish = "length"
        fallbacks = 0
        try:
            for _ in range(max_tokens):
                logits = self._logits()
                token = self._pick(logits, temperature, rng)
                if grammar is not None and not self._grammar_ok(grammar, token):
                    fallbacks += 1
                    allowed = self._allowed(grammar, logits)
                    if not allowed.any():
                        finish = "stop"
                        break
                    token = self._pick(logits, temperature, rng, allowed)
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                if grammar is not None:
                    grammar.accept(token)
                out.append(token)
                text += self.llm.detokenize([token], prev_tokens=tokens + out[:-1])
                decoded = text.decode("utf-8", errors="ignore")
                if stops and any(s in decoded for s in stops):
                    finish = "stop"
                    break
                self.llm.eval([token])
        finally:
            if grammar is not None:
                grammar.close()
        decoded = text.decode("utf-8", errors="replace")
        for s in stops:
            if s in decoded:
                decoded = decoded[: decoded.index(s)]
        return Generation(text=decoded, prompt_tokens=len(tokens), completion_tokens=len(out),
                          reused_tokens=reused, finish_reason=finish,
                          grammar_fallbacks=fallbacks)

    def generate_stock(self, messages: list[dict[str, str]],
                       response_format: dict[str, Any] | None, *, max_tokens: int = 512,
                       temperature: float = 0.0, seed: int = 0,
                       stop: list[str] | None = None) -> Generation:
        """The same call through llama-cpp-python's ``create_chat_completion`` (for
        comparison: it filters the whole vocabulary through the grammar at each token)."""
        body = self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
            stop=stop or None, response_format=response_format)
        usage = body.get("usage") or {}
        choice = body["choices"][0]
        return Generation(text=choice["message"]["content"] or "",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0),
                          reused_tokens=0, finish_reason=choice.get("finish_reason") or "stop")
