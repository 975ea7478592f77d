"""llama.cpp actually runs here: load the small GGUF and generate a token.

A llama-cpp-python wheel built with the default native flags imports fine and then
crashes on these machines (AMX); this test is what catches such a build.
"""

from __future__ import annotations

import importlib.util

import pytest

from engine.backends import models as m

pytestmark = pytest.mark.model


def test_smollm2_generates_a_token() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable (run `make install`)")
    if not m.is_installed("smollm2-135m"):
        pytest.skip("model smollm2-135m is not installed (run `memengine models install`)")
    import llama_cpp

    path = m.resolve_model_path("smollm2-135m", "gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    try:
        out = llm("The capital of France is", max_tokens=2, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] >= 1
