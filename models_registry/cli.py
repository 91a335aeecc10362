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
    status, shadow, compare, canary, judge, promote, guard, rollback, abort, accuracy, history."""


@cli.command()
@click.option("--version", "version", default="1", show_default=True, help="version to build")
@click.option("--name", default="reference", show_default=True)
@click.option("--root", help="model root (default: MODEL_ROOT)")
@click.option("--kind", type=click.Choice(["reference", "null"]), default="reference", show_default=True,
              help="reference: the real model; null: answers at once (overhead measurements)")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="measure the volume on the synthetic test split and bundled photos")
@click.option("--eval-count", default=200, show_default=True, help="synthetic test photos to evaluate on")
@click.option("--variant", type=click.Choice(["v1", "v2", "scrambled"]),
              help="reference variant: v1 (ImageNet-mapped categories), v2 (+ a head trained on the "
                   "synthetic train split) or scrambled (v1 with categories deliberately wrong, for "
                   "rollout drills); default v2 for version 2, else v1")
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
@click.option("--window", "accuracy_window", default="24h", show_default=True,
              help="window of the live figures (jobs, accuracy, shadow agreement)")
def status(as_json: bool, accuracy_window: str) -> None:
    """Active, canary and shadow versions; ready workers, queue depth, jobs and live accuracy
    per version."""
    from common.livestats import FIELDS
    from common.rolloutreport import rollout_report

    settings = _settings()
    report = rollout_report(_redis(), prefix=settings.REDIS_KEY_PREFIX,
                            default_version=settings.DEFAULT_MODEL_VERSION,
                            window_seconds=_parse_window(accuracy_window))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    canary = f"{report['canary']} at {report['canary_weight']:.0%}" if report["canary"] else "off"
    shadow = f"{report['shadow']} at {report['shadow_fraction']:.0%}" if report["shadow"] else "off"
    click.echo(f"active: {report['active']}   previous: {report['previous'] or '-'}   canary: {canary}   "
               f"shadow: {shadow}")
    click.echo(f"{'version':10} {'role':9} {'ready workers':>13} {'queue depth':>11} {'verified':>8} "
               f"{'jobs':>6}  live accuracy over {accuracy_window} (name/category/brand/color)")
    for row in report["versions"]:
        accuracy = "/".join("-" if row["accuracy"][n] is None else f"{row['accuracy'][n]:.0%}" for n in FIELDS)
        click.echo(f"{row['version']:10} {row['role']:9} {row['ready_workers']:>13} {row['queue_depth']:>11} "
                   f"{'yes' if row['verified'] else 'no':>8} {row['jobs']:>6}  {accuracy}")
        if "shadow_agreement" in row:
            agreement = "/".join("-" if v is None else f"{v:.0%}" for v in row["shadow_agreement"].values())
            click.echo(f"{'':10} shadow agreement with {report['active']}: {agreement} "
                       f"({row['shadow_compared']} compared)")


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
                          default_version=_settings().DEFAULT_MODEL_VERSION,
                          baseline_window_seconds=_judge_config(None).window_seconds)
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
        weight += f" fraction {event['fraction']}" if "fraction" in event else ""
        click.echo(f"{when}  {event['action']:11} {target}{weight}  by {event['by']}{forced}")
        if event.get("reason"):
            click.echo(f"{'':27}reason: {event['reason']}")


def _parse_window(text: str) -> float:
    from models_registry.judge import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _judge_config(path: str | None):  # type: ignore[no-untyped-def]
    from models_registry.judge import JudgeConfig

    try:
        return JudgeConfig.load(path)
    except ValueError as exc:
        _fail(str(exc))


@cli.command()
@click.argument("version", required=False)
@click.option("--fraction", type=float, default=0.1, show_default=True, help="share of new jobs to copy, 0..1")
@click.option("--off", is_flag=True, help="stop the shadow copies")
@click.option("--force", is_flag=True, help="skip the readiness and verification checks (loud; recorded)")
def shadow(version: str | None, fraction: float, off: bool, force: bool) -> None:
    """Copy a share of new jobs to VERSION as shadow jobs: computed by its workers, never shown to
    clients, dropped (not queued) while its queue is behind (SHADOW_MAX_QUEUE_DEPTH).
    `shadow 2 --fraction 0.2`, or `shadow --off`."""
    from models_registry.rollout import model_version_shadow

    if not off and not version:
        raise click.UsageError("give a VERSION (and --fraction), or --off")
    _forced_warning(force)
    state = _rollout_call(model_version_shadow, version=None if off else version, fraction=fraction, force=force)
    click.echo(f"shadow: {state.shadow} at {state.shadow_fraction:.0%}" if state.shadow else "shadow: off")


@cli.command()
@click.argument("version")
@click.option("--reason", default="", help="why (recorded in the history)")
def abort(version: str, reason: str) -> None:
    """Take candidate VERSION out of the rollout: its canary weight and shadow copies stop."""
    from models_registry.rollout import model_version_abort

    state = _rollout_call(model_version_abort, version=version, reason=reason)
    click.echo(f"aborted {version}; active: {state.active}, canary: {state.canary or 'off'}, "
               f"shadow: {state.shadow or 'off'}")


@cli.command()
@click.argument("version")
@click.option("--against", help="the version it shadowed (default: the active version)")
@click.option("--window", default="1h", show_default=True, help="how far back, e.g. 30m, 24h")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def compare(version: str, against: str | None, window: str, as_json: bool) -> None:
    """How shadow version VERSION's answers compare with the active version's, field by field:
    same value, different, shown only by one of them; confidence shift; latency."""
    from common.livestats import FIELDS, shadow_comparison, version_figures
    from common.rollout import rollout_state

    settings = _settings()
    client = _redis()
    prefix = settings.REDIS_KEY_PREFIX
    against = against or rollout_state(client, prefix=prefix,
                                       default_version=settings.DEFAULT_MODEL_VERSION).active
    seconds = _parse_window(window)
    comparison = shadow_comparison(client, prefix=prefix, candidate=version, active=against, window_seconds=seconds)
    figures = version_figures(client, prefix=prefix, version=version, window_seconds=seconds)
    report = {**comparison.to_json(), "window_seconds": seconds, "shadow_jobs": figures.shadow_jobs,
              "shadow_dropped": figures.shadow_dropped}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"shadow {version} against {against}, last {window}: {comparison.n} compared "
               f"({comparison.failed_candidate} failed on {version}), {figures.shadow_dropped} copies dropped "
               "(queue behind)")
    click.echo(f"{'field':9} {'agreement':>9} {'same':>6} {'differ':>6} {'only ' + version:>12} "
               f"{'only ' + str(against):>12} {'both null':>9} {'conf. shift':>11}")
    for name in FIELDS:
        row = report["fields"][name]
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.1%}"
        shift = "-" if row["confidence_shift"] is None else f"{row['confidence_shift']:+.3f}"
        click.echo(f"{name:9} {agreement:>9} {row['same']:>6} {row['differ']:>6} {row['only_candidate']:>12} "
                   f"{row['only_active']:>12} {row['both_null']:>9} {shift:>11}")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    p50, p95 = report["latency_p50_ms"], report["latency_p95_ms"]
    click.echo(f"latency (created -> finished): {against} p50 {ms(p50['active'])}, p95 {ms(p95['active'])}; "
               f"{version} p50 {ms(p50['candidate'])}, p95 {ms(p95['candidate'])}")


@cli.command()
@click.option("--window", default="24h", show_default=True, help="how far back, e.g. 1h, 7d")
@click.option("--version", "versions", multiple=True, help="only these versions (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def accuracy(window: str, versions: tuple[str, ...], as_json: bool) -> None:
    """Live accuracy per model version and field, from sellers' feedback: the share of the values
    they finally listed that the model suggested. `live` is the version's own jobs; `shadow` its
    shadow copies of jobs another version answered."""
    from common.livestats import FEEDBACK_OUTCOMES, FIELDS, feedback_by_source
    from models_registry import rollout

    settings = _settings()
    client = _redis()
    prefix = settings.REDIS_KEY_PREFIX
    seconds = _parse_window(window)
    state = rollout.rollout_state(client, prefix=prefix, default_version=settings.DEFAULT_MODEL_VERSION)
    chosen = sorted(set(versions) or (set(rollout.known_versions(client, prefix=prefix))
                                      | {v for v in (state.active, state.previous, state.canary, state.shadow) if v}))
    rows = []
    for version in chosen:
        for source, by_field in sorted(feedback_by_source(client, prefix=prefix, version=version,
                                                          window_seconds=seconds).items()):
            for name in FIELDS:
                if name not in by_field:
                    continue  # no feedback on this field
                counts = {o: by_field.get(name, {}).get(o, 0) for o in FEEDBACK_OUTCOMES}
                given = counts["accepted"] + counts["changed"] + counts["filled"]
                shown = counts["accepted"] + counts["changed"]
                rows.append({"version": version, "source": source, "field": name, **counts,
                             "accuracy": counts["accepted"] / given if given else None,
                             "precision": counts["accepted"] / shown if shown else None})
    if as_json:
        click.echo(json.dumps({"window_seconds": seconds, "rows": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no feedback in the last {window}")
        return
    click.echo(f"live accuracy, last {window} (accuracy: accepted / values listed; precision: accepted / "
               "suggestions shown)")
    click.echo(f"{'version':8} {'source':7} {'field':9} {'accepted':>8} {'changed':>7} {'filled':>6} "
               f"{'blank':>5} {'accuracy':>8} {'precision':>9}")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        prec = "-" if r["precision"] is None else f"{r['precision']:.1%}"
        click.echo(f"{r['version']:8} {r['source']:7} {r['field']:9} {r['accepted']:>8} {r['changed']:>7} "
                   f"{r['filled']:>6} {r['blank']:>5} {acc:>8} {prec:>9}")


@cli.command(name="judge")
@click.argument("version")
@click.option("--against", help="the version to compare with (default: the active version)")
@click.option("--min-jobs", type=int, help="finished jobs each version needs (default: the config's)")
@click.option("--window", help="how far back (default: the config's)")
@click.option("--config", "config_path", help="thresholds (default: JUDGE_CONFIG, else config/judge.toml)")
@click.option("--wait", "wait_seconds", type=float, default=0.0,
              help="while there is not enough data, judge again every --interval for up to this many seconds")
@click.option("--interval", type=float, default=60.0, show_default=True)
@click.option("--report-only", is_flag=True,
              help="exit 0 whatever the verdict (a pipeline reads SPINNAKER_PROPERTY_VERDICT instead)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def judge_(version: str, against: str | None, min_jobs: int | None, window: str | None, config_path: str | None,
           wait_seconds: float, interval: float, report_only: bool, as_json: bool) -> None:
    """Decide whether candidate VERSION may replace the active one: error rate, p95 latency, null
    rate per field, and (with enough feedback or shadow comparisons) accuracy and agreement per
    field. Exit 0: promote; 1: roll back; 2: not enough data yet."""
    import time as _time

    from common.livestats import shadow_comparison, version_figures
    from common.rollout import rollout_state
    from models_registry.judge import judge as run_judge

    settings = _settings()
    config = _judge_config(config_path)
    seconds = _parse_window(window) if window else config.window_seconds
    client = _redis()
    prefix = settings.REDIS_KEY_PREFIX
    deadline = _time.monotonic() + wait_seconds
    while True:
        baseline_version = against or rollout_state(client, prefix=prefix,
                                                    default_version=settings.DEFAULT_MODEL_VERSION).active
        if not baseline_version or baseline_version == version:
            _fail(f"nothing to compare version {version} with (give --against)")
        candidate = version_figures(client, prefix=prefix, version=version, window_seconds=seconds)
        baseline = version_figures(client, prefix=prefix, version=baseline_version, window_seconds=seconds,
                                   feedback_sources=("live",))
        comparison = shadow_comparison(client, prefix=prefix, candidate=version, active=baseline_version,
                                       window_seconds=seconds)
        judgment = run_judge(candidate, baseline, config=config, min_jobs=min_jobs, comparison=comparison)
        if judgment.verdict != "wait" or _time.monotonic() + interval > deadline:
            break
        click.echo(f"not enough data yet ({candidate.jobs}/{baseline.jobs} jobs); judging again in {interval:g} s",
                   err=True)
        _time.sleep(interval)
    click.echo(json.dumps(judgment.to_json(), indent=2) if as_json else judgment.table())
    click.echo(f"SPINNAKER_PROPERTY_VERDICT={judgment.verdict}")
    if judgment.verdict == "rollback":
        click.echo(f"reason: {judgment.reason()}", err=True)
    sys.exit(0 if report_only else judgment.exit_code)


@cli.command()
@click.option("--window", default="10m", show_default=True, help="figures since the promote, at most this far back")
@click.option("--interval", type=float, default=30.0, show_default=True, help="seconds between checks")
@click.option("--min-jobs", type=int, help="jobs the new version needs before it is judged (default: the config's)")
@click.option("--config", "config_path", help="thresholds (default: JUDGE_CONFIG, else config/judge.toml)")
@click.option("--once", is_flag=True, help="export and check once, print what was decided, and exit")
def guard(window: str, interval: float, min_jobs: int | None, config_path: str | None, once: bool) -> None:
    """Watch the active version after a promote and roll back by itself when it degrades against
    the previous version's recorded figures (recorded in `history`); also publishes queue depth
    and ready workers per version to Datadog."""
    import logging

    from models_registry.guard import RolloutGuard

    settings = _settings()
    guard_ = RolloutGuard(_redis(), prefix=settings.REDIS_KEY_PREFIX, config=_judge_config(config_path),
                          window_seconds=_parse_window(window), default_version=settings.DEFAULT_MODEL_VERSION,
                          min_jobs=min_jobs)
    if not once:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        click.echo(f"guard: checking every {interval:g} s over the last {window} since each promote")
        guard_.run(interval_seconds=interval)
        return
    exported = guard_.export()
    report = guard_.check()
    for version, row in exported.items():
        click.echo(f"version {version}: {row['ready_workers']} ready workers, queue depth {row['queue_depth']}")
    if report.judgment is not None:
        click.echo(report.judgment.table())
    click.echo(f"guard: {report.action}" + (f" ({report.detail})" if report.detail else ""))


def main() -> None:
    cli(prog_name="python -m models_registry")
