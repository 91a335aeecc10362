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

from common.volume import ModelVolume, VolumeError, version_dir


def _settings():  # type: ignore[no-untyped-def]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings

    return settings


def _root(root: str | None) -> Path:
    return Path(root) if root else Path(_settings().MODEL_ROOT)


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Model volumes (MODEL_ROOT/<name>/<version>/) and their rollout: build, verify, list,
    status, promote, rollback, canary, history."""


@cli.command()
@click.option("--version", "version", default="1", show_default=True, help="version to build")
@click.option("--name", default="reference", show_default=True)
@click.option("--root", help="model root (default: MODEL_ROOT)")
@click.option("--kind", type=click.Choice(["reference", "null"]), default="reference", show_default=True,
              help="reference: the real model; null: answers at once (overhead measurements)")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="measure the volume on the synthetic test split and bundled photos")
@click.option("--eval-count", default=200, show_default=True, help="synthetic test photos to evaluate on")
@click.option("--variant", type=click.Choice(["v1", "v2"]),
              help="reference variant: v1 (ImageNet-mapped categories) or v2 (+ a head trained on the "
                   "synthetic train split); default v2 for version 2, else v1")
@click.option("--if-missing", is_flag=True, help="succeed without building when the version exists")
def build(version: str, name: str, root: str | None, kind: str, evaluate: bool, eval_count: int,
          variant: str | None, if_missing: bool) -> None:
    """Build a model volume. Refuses to overwrite an existing version."""
    from models_registry.build import build_null, build_reference

    target = version_dir(_root(root), name, version)
    if target.exists() and if_missing:
        click.echo(f"{target} exists; nothing to build")
        return
    click.echo(f"building {kind} model {name}/{version} in {target} ...")
    try:
        if kind == "reference":
            volume = build_reference(_root(root), version, name=name, evaluate=evaluate,
                                     eval_count=eval_count, variant=variant)
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
@click.option("--golden/--no-golden", default=True, show_default=True,
              help="load the model and compare its outputs on the volume's golden inputs")
@click.option("--record/--no-record", default=True, show_default=True,
              help="record the passed verification in Redis (promote requires it)")
def verify(version: str, name: str, root: str | None, golden: bool, record: bool) -> None:
    """Check a volume: every file's size and hash, then that the model loads and its
    golden inputs give the recorded outputs."""
    from tqdm import tqdm

    try:
        volume = ModelVolume.open(version_dir(_root(root), name, version))
    except VolumeError as exc:
        _fail(str(exc))
    with tqdm(total=volume.total_bytes, unit="B", unit_scale=True, desc="checksums",
              disable=not sys.stderr.isatty()) as bar:
        problems = volume.verify_checksums(progress=bar.update)
    if not problems and golden:
        from models_registry.golden import check_golden
        from workers.runtime import runtime_for

        click.echo("checksums ok; loading the model for the golden inputs ...")
        runtime = runtime_for(volume)
        runtime.load()
        problems = check_golden(volume, runtime)
        runtime.unload()
    if problems:
        for problem in problems:
            click.echo(f"FAILED {problem}", err=True)
        _fail(f"{name}/{version} failed verification ({len(problems)} problem(s))")
    click.echo(f"{name}/{version}: {len(volume.manifest['files'])} files verified"
               + (", golden outputs match" if golden else ""))
    if record:
        from models_registry.rollout import record_verification

        record_verification(_redis(), prefix=_settings().REDIS_KEY_PREFIX, version=version,
                            manifest_sha256=volume.manifest_sha256)
        click.echo(f"recorded in Redis: version {version} verified (manifest {volume.manifest_sha256[:12]})")


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


def _redis():  # type: ignore[no-untyped-def]
    from common.redisconn import RedisTarget

    settings = _settings()
    return RedisTarget.from_settings(settings).client(socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                                                      socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT)


def _rollout_call(function, **kwargs):  # type: ignore[no-untyped-def]
    from models_registry.rollout import RolloutRefused

    settings = _settings()
    try:
        return function(_redis(), prefix=settings.REDIS_KEY_PREFIX, **kwargs)
    except RolloutRefused as exc:
        _fail(f"refused: {exc}")


def _forced_warning(force: bool) -> None:
    if force:
        click.secho("WARNING: --force skips the readiness and verification checks; new jobs may go to a "
                    "version that cannot serve them. This is recorded in the rollout history.",
                    fg="yellow", bold=True, err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Active and canary versions, ready workers and queue depth per version."""
    from common.queues import queue_depth, queue_for
    from models_registry import rollout

    settings = _settings()
    client = _redis()
    prefix = settings.REDIS_KEY_PREFIX
    state = rollout.rollout_state(client, prefix=prefix, default_version=settings.DEFAULT_MODEL_VERSION)
    versions = set(rollout.known_versions(client, prefix=prefix))
    versions |= {v for v in (state.active, state.previous, state.canary) if v}
    rows = []
    for version in sorted(versions):
        workers = rollout.worker_details(client, prefix=prefix, version=version)
        verified = client.hget(rollout.verified_key(prefix, version), "manifest_sha256")
        rows.append({"version": version, "ready_workers": len(workers),
                     "queue": queue_for(version), "queue_depth": queue_depth(client, version),
                     "verified": bool(verified),
                     "role": ("active" if version == state.active else "canary" if version == state.canary
                              else "previous" if version == state.previous else "")})
    report = {"active": state.active, "previous": state.previous, "canary": state.canary,
              "canary_weight": state.canary_weight, "updated_by": state.updated_by,
              "updated_at": state.updated_at, "versions": rows}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    canary = f"{state.canary} at {state.canary_weight:.0%}" if state.canary else "off"
    click.echo(f"active: {state.active}   previous: {state.previous or '-'}   canary: {canary}")
    click.echo(f"{'version':10} {'role':9} {'ready workers':>13} {'queue depth':>11}  verified")
    for row in rows:
        click.echo(f"{row['version']:10} {row['role']:9} {row['ready_workers']:>13} {row['queue_depth']:>11}  "
                   f"{'yes' if row['verified'] else 'no'}")


@cli.command()
@click.argument("version")
@click.option("--force", is_flag=True, help="promote even without ready, verified workers (loud; recorded)")
def promote(version: str, force: bool) -> None:
    """Send new jobs to VERSION. Refuses unless VERSION passed `verify` and has ready workers
    that loaded exactly that volume."""
    from common.queues import queue_for
    from models_registry.rollout import model_version_promote

    _forced_warning(force)
    state = _rollout_call(model_version_promote, version=version, force=force,
                          default_version=_settings().DEFAULT_MODEL_VERSION)
    click.echo(f"active: {state.active} (previous: {state.previous}); new jobs go to "
               f"{queue_for(state.active)}")


@cli.command()
@click.option("--force", is_flag=True, help="roll back even without ready workers (loud; recorded)")
def rollback(force: bool) -> None:
    """Return to the previous active version, with the same checks as promote."""
    from models_registry.rollout import model_version_rollback

    _forced_warning(force)
    state = _rollout_call(model_version_rollback, force=force,
                          default_version=_settings().DEFAULT_MODEL_VERSION)
    click.echo(f"active: {state.active} (previous: {state.previous})")


@cli.command()
@click.argument("version", required=False)
@click.option("--weight", type=float, default=0.1, show_default=True, help="share of new jobs, 0..1")
@click.option("--off", is_flag=True, help="stop the canary")
@click.option("--force", is_flag=True, help="skip the readiness and verification checks (loud; recorded)")
def canary(version: str | None, weight: float, off: bool, force: bool) -> None:
    """Send a share of new jobs to VERSION (`canary 2 --weight 0.1`), or stop (`canary --off`)."""
    from models_registry.rollout import model_version_canary

    if off == bool(version):
        raise click.UsageError("give a VERSION, or --off")
    _forced_warning(force)
    state = _rollout_call(model_version_canary, version=None if off else version, weight=weight, force=force)
    click.echo(f"canary: {state.canary} at {state.canary_weight:.0%}" if state.canary else "canary: off")


@cli.command()
@click.option("--limit", default=20, show_default=True)
def history(limit: int) -> None:
    """Recent rollout changes: who, when, what, and whether forced."""
    from datetime import UTC, datetime

    from models_registry.rollout import rollout_history

    for event in rollout_history(_redis(), prefix=_settings().REDIS_KEY_PREFIX, limit=limit):
        when = datetime.fromtimestamp(event["at"], tz=UTC).isoformat(timespec="seconds")
        forced = "  FORCED" if event.get("forced") else ""
        target = event.get("version", "")
        weight = f" weight {event['weight']}" if "weight" in event else ""
        click.echo(f"{when}  {event['action']:10} {target}{weight}  by {event['by']}{forced}")


def main() -> None:
    cli(prog_name="python -m models_registry")
