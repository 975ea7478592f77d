"""``memengine serve-lm``: llama.cpp's OpenAI-compatible server on loopback.

Runs ``python -m llama_cpp.server`` (llama-cpp-python's own server; it needs the
``llama-cpp-python[server]`` dependencies: uvicorn, fastapi, sse-starlette,
starlette-context, pydantic-settings) bound to 127.0.0.1, so that several processes can
share one loaded model. Point the engine at it with
``DspyExtractor(engine=LlamaServerEngine("http://127.0.0.1:PORT"))``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import click

from engine.errors import EngineError

__all__ = ["serve_lm", "server_command"]

_SERVER_DEPS = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def server_command(model_path: str, *, port: int, n_ctx: int, n_threads: int,
                   n_gpu_layers: int) -> list[str]:
    """The argv that starts llama-cpp-python's server on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", model_path,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads), "--n_gpu_layers", str(n_gpu_layers)]


def _missing_server_deps() -> list[str]:
    return [name for name in _SERVER_DEPS if importlib.util.find_spec(name) is None]


@click.command(name="serve-lm")
@click.argument("model", required=False)
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1.")
@click.option("--n-ctx", default=4096, show_default=True, help="Context length in tokens.")
@click.option("--threads", "n_threads", type=int, default=None,
              help="CPU threads (default: every core this process may use).")
@click.option("--print-command", is_flag=True, help="Print the server command, do not run it.")
def serve_lm(model: str | None, port: int, n_ctx: int, n_threads: int | None,
             print_command: bool) -> None:
    """Serve a GGUF (a manifest name or a path; default: the default LM) over an
    OpenAI-compatible HTTP API on 127.0.0.1 only. Stop it with Ctrl-C."""
    from engine.backends import models
    from engine.backends.lm import check_gguf, default_threads

    try:
        name = model or models.default_model("lm").name
        if name.endswith(".gguf") or "/" in name:
            path = check_gguf(name)
        else:
            path = models.resolve_model_path(name, "gguf")
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    if importlib.util.find_spec("llama_cpp") is None:
        raise click.ClickException("llama-cpp-python is not installed: run `make install`")
    missing = _missing_server_deps()
    if missing:
        raise click.ClickException(
            f"the server needs {', '.join(missing)}: pip install uvicorn fastapi sse-starlette "
            "'starlette-context>=0.3.6,<0.4' pydantic-settings  (do not `pip install "
            "llama-cpp-python[server]`: it would rebuild llama.cpp without the safe flags)")
    from llama_cpp import llama_supports_gpu_offload

    argv = server_command(str(path), port=port, n_ctx=n_ctx,
                          n_threads=n_threads or default_threads(),
                          n_gpu_layers=-1 if llama_supports_gpu_offload() else 0)
    if print_command:
        click.echo(" ".join(argv))
        return
    click.echo(f"serving {path.name} at http://127.0.0.1:{port}/v1 (Ctrl-C stops)", err=True)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        code = subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise click.ClickException(f"the LM server exited with status {code}")
