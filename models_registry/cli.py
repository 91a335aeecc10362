"""Operator CLI for model volumes: ``python -m models_registry --help``.

Exit codes: 0 success, 1 the operation was refused or failed (the message says
why), 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from models_registry.volume import ModelVolume, VolumeError, version_dir


def _settings():  # type: ignore[no-untyped-def]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recognition_api.settings")
    from django.conf import settings

    return settings


def _root(root: str | None) -> Path:
    return Path(root) if root else Path(_settings().MODEL_ROOT)


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build, verify and list model volumes (MODEL_ROOT/<name>/<version>/)."""


@cli.command()
@click.option("--version", "version", default="1", show_default=True, help="version to build")
@click.option("--name", default="reference", show_default=True)
@click.option("--root", help="model root (default: MODEL_ROOT)")
@click.option("--kind", type=click.Choice(["reference", "null"]), default="reference", show_default=True,
              help="reference: the real model; null: answers at once (overhead measurements)")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="measure the volume on the synthetic test split and bundled photos")
@click.option("--eval-count", default=200, show_default=True, help="synthetic test photos to evaluate on")
@click.option("--if-missing", is_flag=True, help="succeed without building when the version exists")
def build(version: str, name: str, root: str | None, kind: str, evaluate: bool, eval_count: int,
          if_missing: bool) -> None:
    """Build a model volume. Refuses to overwrite an existing version."""
    from models_registry.build import build_null, build_reference

    target = version_dir(_root(root), name, version)
    if target.exists() and if_missing:
        click.echo(f"{target} exists; nothing to build")
        return
    click.echo(f"building {kind} model {name}/{version} in {target} ...")
    try:
        if kind == "reference":
            volume = build_reference(_root(root), version, name=name, evaluate=evaluate, eval_count=eval_count)
        else:
            volume = build_null(_root(root), version, name=name)
    except VolumeError as exc:
        _fail(str(exc))
    click.echo(f"built {volume.path} ({volume.total_bytes / 1e6:.1f} MB, {len(volume.manifest['files'])} files)")
    for evaluation in volume.manifest.get("evaluation", []):
        click.echo(f"  {evaluation['set']}: {json.dumps(evaluation['metrics'])}")


@cli.command()
@click.argument("version")
@click.option("--name", default="reference", show_default=True)
@click.option("--root", help="model root (default: MODEL_ROOT)")
def verify(version: str, name: str, root: str | None) -> None:
    """Check every file of a volume against its manifest (size and sha256)."""
    from tqdm import tqdm

    try:
        volume = ModelVolume.open(version_dir(_root(root), name, version))
    except VolumeError as exc:
        _fail(str(exc))
    with tqdm(total=volume.total_bytes, unit="B", unit_scale=True, desc="checksums",
              disable=not sys.stderr.isatty()) as bar:
        problems = volume.verify_checksums(progress=bar.update)
    if problems:
        for problem in problems:
            click.echo(f"FAILED {problem}", err=True)
        _fail(f"{name}/{version} failed verification ({len(problems)} problem(s))")
    click.echo(f"{name}/{version}: {len(volume.manifest['files'])} files verified")


@cli.command(name="list")
@click.option("--name", default="reference", show_default=True)
@click.option("--root", help="model root (default: MODEL_ROOT)")
def list_(name: str, root: str | None) -> None:
    """List the versions with size, creation date and evaluation figures."""
    base = _root(root) / name
    if not base.is_dir():
        click.echo(f"no versions under {base}")
        return
    for path in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            volume = ModelVolume.open(path)
        except VolumeError as exc:
            click.echo(f"{path.name:10} INVALID: {exc}")
            continue
        figures = "; ".join(
            f"{e['set']}: " + ", ".join(
                f"{field} {m['top1_accuracy']:.1%}" for field, m in e["metrics"].items() if "top1_accuracy" in m)
            for e in volume.manifest.get("evaluation", [])
        )
        click.echo(f"{volume.version:10} {volume.total_bytes / 1e6:8.1f} MB  {volume.manifest.get('created', '?')}  "
                   f"{volume.manifest['runtime']:9}  {figures or 'not evaluated'}")


def main() -> None:
    cli(prog_name="python -m models_registry")
