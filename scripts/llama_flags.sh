#!/usr/bin/env bash
# The CMAKE_ARGS llama-cpp-python is built with: safe CPU flags (the native build
# crashes on these VMs, see DESIGN.md), plus -DGGML_CUDA=on where a CUDA build can run.
# Sourced by install.sh; run directly it prints the flags (tests/test_llama_flags.py).
#
#   MEMENGINE_CUDA=auto (default)  CUDA when nvcc is found (PATH, else $CUDA_HOME/bin,
#                                  default /usr/local/cuda/bin) and nvidia-smi lists a GPU
#   MEMENGINE_CUDA=1               CUDA whatever is detected (e.g. a build host without a GPU)
#   MEMENGINE_CUDA=0               CPU only

LLAMA_CPU_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"

llama_has_nvcc() {
    command -v nvcc >/dev/null 2>&1 && return 0
    [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]
}

llama_has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

# Prints the CMAKE_ARGS; returns 2 for a MEMENGINE_CUDA value it does not know.
llama_cmake_args() {
    local cuda
    case "${MEMENGINE_CUDA:-auto}" in
        1|on|yes|true) cuda=1 ;;
        0|off|no|false) cuda=0 ;;
        auto|"") if llama_has_nvcc && llama_has_gpu; then cuda=1; else cuda=0; fi ;;
        *) echo "MEMENGINE_CUDA must be auto, 1 or 0, not '${MEMENGINE_CUDA}'" >&2
           return 2 ;;
    esac
    if [[ "$cuda" == 1 ]]; then
        echo "$LLAMA_CPU_ARGS -DGGML_CUDA=on"
    else
        echo "$LLAMA_CPU_ARGS"
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    llama_cmake_args
fi
