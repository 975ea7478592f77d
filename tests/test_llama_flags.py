"""The llama-cpp-python build flags that ``make install`` chooses (scripts/llama_flags.sh).

Run with a PATH of fake ``nvcc`` / ``nvidia-smi`` programs, so every branch of the
detection is exercised on a machine without a GPU.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_flags.sh"
CPU_FLAGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
             " -DGGML_BMI2=ON")


def _fake(bin_dir: Path, name: str, output: str) -> None:
    program = bin_dir / name
    program.write_text(f"#!/bin/sh\necho '{output}'\n")
    program.chmod(0o755)


def _flags(tmp_path: Path, *, nvcc: bool, gpu_line: str | None,
           cuda: str | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvcc:
        _fake(bin_dir, "nvcc", "Cuda compilation tools, release 12.4")
    if gpu_line is not None:
        _fake(bin_dir, "nvidia-smi", gpu_line)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "CUDA_HOME": str(tmp_path / "no-cuda")}
    if cuda is not None:
        env["MEMENGINE_CUDA"] = cuda
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          check=False)


@pytest.mark.parametrize(("nvcc", "gpu_line", "cuda", "expect_cuda"), [
    (False, None, None, False),                                      # plain CPU machine
    (True, None, None, False),                                       # toolkit, no driver
    (True, "No devices were found", None, False),                    # driver, no GPU
    (False, "GPU 0: NVIDIA H200 (UUID: GPU-1)", None, False),        # GPU, no compiler
    (True, "GPU 0: NVIDIA H200 (UUID: GPU-1)", None, True),          # both: CUDA
    (True, "GPU 0: NVIDIA H200 (UUID: GPU-1)", "auto", True),
    (True, "GPU 0: NVIDIA H200 (UUID: GPU-1)", "0", False),          # forced off
    (False, None, "1", True),                                        # forced on
])
def test_cuda_only_when_nvcc_and_a_gpu_or_forced(
    tmp_path: Path, nvcc: bool, gpu_line: str | None, cuda: str | None, expect_cuda: bool
) -> None:
    result = _flags(tmp_path, nvcc=nvcc, gpu_line=gpu_line, cuda=cuda)
    assert result.returncode == 0, result.stderr
    flags = result.stdout.strip()
    assert flags.startswith(CPU_FLAGS)  # the safe CPU flags stay in every build
    assert (flags == f"{CPU_FLAGS} -DGGML_CUDA=on") is expect_cuda
    assert (flags == CPU_FLAGS) is not expect_cuda


def test_unknown_setting_is_a_clear_error(tmp_path: Path) -> None:
    result = _flags(tmp_path, nvcc=True, gpu_line=None, cuda="maybe")
    assert result.returncode == 2
    assert "MEMENGINE_CUDA must be auto, 1 or 0" in result.stderr and not result.stdout


def test_install_keys_the_wheel_cache_and_stamp_by_the_flags() -> None:
    install = (SCRIPT.parent / "install.sh").read_text()
    assert "source scripts/llama_flags.sh" in install
    key_line = next(line for line in install.splitlines() if line.startswith("LLAMA_KEY="))
    assert "$LLAMA_CMAKE_ARGS" in key_line or "LLAMA_CMAKE_ARGS" in install.split(
        "LLAMA_KEY=")[1].split("WHEEL_DIR=")[0]
    stamp = install.split("KEY=$(")[1].split("\nif ")[0]
    assert "LLAMA_CMAKE_ARGS" in stamp and "llama_flags.sh" in stamp
