"""The public surface: a sorted __all__, everything importable, a light import."""

from __future__ import annotations

import subprocess
import sys

import engine


def test_all_is_sorted_and_importable() -> None:
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_import_engine_stays_light() -> None:
    code = (
        "import sys, engine; heavy = [m for m in ('torch', 'duckdb', 'hnswlib', 'dspy', "
        "'llama_cpp', 'sentence_transformers', 'numpy') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_engine_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True,
                         text=True, check=True)
    assert "memengine" in out.stdout and "search" in out.stdout
