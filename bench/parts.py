"""The parts of a run, one function each, and the run of those selected. A part that fails is
recorded and the others still run: one broken part must not lose the others' figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import aggregate, point, run_json, run_once
from bench.plan import REFERENCE, ROOT, log
from bench.servers import OurStack, PeerServer

# BentoML worker processes of the null-model peer: 1, as the backbone peer's HTTP service has
# (docs/PERFORMANCE.md, "Null model vs BentoML", has an A/B of 1 against 2 on this machine).
PEER_NULL_WORKERS = 1


@dataclass
class Run:
    """What the parts of one run share: its scratch space, plan, selected parts and photos."""

    work: Path
    p: dict
    parts: set[str]
    images: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def models(self) -> Path:
        return self.work / "models"

    @property
    def worker_on(self) -> dict[str, str]:
        return {
            "BATCH_MAX_SIZE": str(self.p["batch"]),
            "BATCH_MAX_WAIT_MS": str(self.p["wait_ms"]),
            "WORKER_THREADS": str(self.p["threads"]),
        }


# --- inputs --------------------------------------------------------------------------------


def write_images(directory: Path) -> list[Path]:
    """The four real photos bundled with scikit-image, as JPEG (quality 90)."""
    from PIL import Image
    from skimage import data

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        path = directory / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def generate_volume(root: Path, size_gb: str, name: str | None = None) -> None:
    """``python -m models_registry.huge``: version 1 of a generated volume under ``root``."""
    argv = [sys.executable, "-m", "models_registry.huge", "--root", str(root), "--version", "1"]
    if name:
        argv += ["--name", name]
    subprocess.run(
        [*argv, "--size-gb", size_gb],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def prepare_volumes(models: Path) -> None:
    from models_registry.build import build_null

    log("building the null and backbone-only volumes")
    build_null(models, "1", name="null")
    generate_volume(models, "0", name="backbone")


# --- the parts -----------------------------------------------------------------------------


def model_only(run: Run) -> dict:
    """Part 1: the runtimes' predict, prepare() and the in-process pipeline (bench.model_only)."""
    log("part 1: model only, in-process")
    p = run.p
    options = {
        "--reference": REFERENCE, "--backbone": run.models / "backbone" / "1", "--sizes": p["sizes"],
        "--repeats": p["repeats"], "--min-time": p["min_time"], "--threads": p["threads"],
        "--max-batch": p["batch"], "--max-wait-ms": p["wait_ms"], "--reference-count": p["reference_count"],
        "--backbone-count": p["backbone_count"],
    }
    argv = [sys.executable, "-m", "bench.model_only", *(str(x) for pair in options.items() for x in pair)]
    for image in run.images:
        argv += ["--image", str(image)]
    return run_json(argv, env={"TF_CPP_MIN_LOG_LEVEL": "3"})


def reference_e2e(run: Run) -> dict:
    """Part 2 with the reference model: our stack end to end."""
    log("part 2: end to end, reference model")
    model_root = REFERENCE.parent.parent
    concurrencies = run.p["reference_c"]
    work, images, p = run.work / "s-ref", run.images, run.p
    return scenario(work, model_root, "reference", "1", run.worker_on, concurrencies, images, p)


def comparison(run: Run) -> dict:
    """Parts 2 (backbone-only), 3 and 5, their servers side by side (compare)."""
    return compare(run)


def null_comparison(run: Run) -> dict:
    """Part 4 (the null model end to end, the pipeline's own cost) and part 5's null-model peer
    (BentoML computing the same answer): both servers up at once, their answers checked equal on
    the run's photos, their runs interleaved as in ``compare``."""
    running: list[Any] = []
    try:
        sides = _start_null_sides(run, running)
        results: dict[str, Any] = {}
        if len(sides) == 2:
            check = same_null_answers(sides[0][2], sides[1][2], run.images)
            results["peer_null_check"] = {**check, "workers": PEER_NULL_WORKERS}
        results.update(_interleave(sides, run.images, run.p))
        return results
    finally:
        for server in running:
            server.stop()


def _start_null_sides(run: Run, running: list[Any]) -> list[tuple[str, str, Any, list[int]]]:
    """Our null-model stack (part 4) and the null-model peer (part 5), those selected."""
    p, sides = run.p, []
    if "4" in run.parts:
        log("part 4: starting our stack with the null model")
        ours = OurStack(run.work / "s-null", run.models, "null", "1", run.worker_on)
        running.append(ours)
        sides.append(("null_e2e", "ours", ours, p["null_c"]))
    if "5" in run.parts:
        log(f"part 5: starting the BentoML null-model peer ({PEER_NULL_WORKERS} worker(s))")
        peer = PeerServer(
            run.work / "s-peer-null",
            run.images,
            p,
            service="bench.peer_null_service:NullRecognizer",
            env={"BENCH_PEER_WORKERS": str(PEER_NULL_WORKERS)},
        )
        running.append(peer)
        sides.append(("peer_null", "bento", peer, p["null_c"]))
    return sides


def same_null_answers(ours: Any, peer: Any, images: list[Path]) -> dict:
    """Each photo through both servers: our job's ``result`` must equal the peer's answer, or
    the comparison would not be of the same work."""
    import httpx

    def post(url: str, image: Path, **kwargs: Any) -> Any:
        files = {"image": (image.name, image.read_bytes(), "image/jpeg")}
        response = httpx.post(url, files=files, timeout=60, **kwargs)
        response.raise_for_status()
        return response.json()

    for image in images:
        job = post(f"{ours.url}/recognize?wait=30", image,
                   headers={"Authorization": f"Bearer {ours.key}"})
        theirs = post(f"{peer.url}/recognize", image)
        if job.get("status") != "succeeded" or job.get("result") != theirs:
            raise RuntimeError(
                f"the null-model peer's answer for {image.name} differs from ours: "
                f"ours {job.get('result')!r}, BentoML {theirs!r}"
            )
    log(f"  the null-model answers are identical on the {len(images)} photos")
    return {"photos": len(images), "identical": True}


def huge(run: Run) -> dict:
    """Part 6: a generated volume of ``huge_gb``: load time, read time, peak RSS (huge_load)."""
    from bench import huge_load
    from models_registry.build import remove_volume

    p = run.p
    need = p["huge_gb"] * 1e9 * 1.1 + 1e9
    free = shutil.disk_usage(run.work).free
    if free < need:
        raise RuntimeError(f"part 6 needs {need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free")
    log(f"part 6: a {p['huge_gb']:g} GB volume")
    t0 = time.perf_counter()
    generate_volume(run.work / "huge", str(p["huge_gb"]))
    volume = run.work / "huge" / "huge" / "1"
    log(f"  generated in {time.perf_counter() - t0:.1f}s")
    try:
        measured = huge_load.measure(volume, p["huge_repeats"], log)
        manifest = json.loads((volume / "manifest.json").read_text())
        measured["catalog_items"] = manifest["huge"]["catalog_items"]
        measured["generate_s"] = time.perf_counter() - t0
        return measured
    finally:
        remove_volume(volume)


# (key in the results, or "" to merge a dict of several; the part's number; the part)
PARTS: list[tuple[str, str, Callable[[Run], dict]]] = [
    ("model_only", "1", model_only),
    ("reference_e2e", "2", reference_e2e),
    ("", "2,3,5", comparison),
    ("", "4,5", null_comparison),
    ("huge", "6", huge),
]


def run_all(run: Run, results: dict[str, Any]) -> None:
    """The inputs, then each selected part in turn, its figures stored as soon as it is done."""
    run.images = write_images(run.work / "photos")
    prepare_volumes(run.models)
    for key, numbers, part in PARTS:
        value = attempt(run, numbers, part)
        if value is not None:
            if key:
                results[key] = value
            else:
                results.update(value)
    results["failures"] = run.failures


def attempt(run: Run, numbers: str, part: Callable[[Run], dict]) -> dict | None:
    """The part's figures, or None when none of its numbers is selected or when it fails."""
    selected = ",".join(sorted(run.parts & set(numbers.split(","))))
    if not selected:
        return None
    try:
        return part(run)
    except Exception as exc:  # one broken part must not lose the others' figures
        log(f"part {selected} failed: {type(exc).__name__}: {exc}")
        run.failures.append(f"part {selected}: {type(exc).__name__}: {str(exc)[:300]}")
        return None


# --- one stack under load, and servers side by side ----------------------------------------


def scenario(
    tmp: Path,
    model_root: Path,
    name: str,
    version: str,
    worker_env: dict[str, str],
    concurrencies: list[int],
    images: list[Path],
    p: dict,
) -> dict:
    """One stack of ours up, one point per concurrency, the stack down."""
    started = time.perf_counter()
    stack = OurStack(tmp, model_root, name, version, worker_env)
    log(f"  stack ready in {time.perf_counter() - started:.1f}s ({name}/{version}, {worker_env})")
    try:
        return {
            str(c): point("ours", stack.url, images, c, p, stack.key, stack.probe)
            for c in concurrencies
        }
    finally:
        stack.stop()


def compare(run: Run) -> dict:
    """Parts 2 (backbone-only), 3 and 5 with their servers all up at once and their runs
    interleaved (round-robin, the order rotating each repeat), so that whatever else the
    machine does at the time weighs on each side alike. Idle, the other servers cost nothing
    measurable (a blocked Redis pop, an idle event loop, a heartbeat a second)."""
    running: list[Any] = []
    try:
        sides = _start_sides(run, running)
        return _interleave(sides, run.images, run.p)
    finally:
        for server in running:
            server.stop()


def _start_sides(run: Run, running: list[Any]) -> list[tuple[str, str, Any, list[int]]]:
    """The selected parts' servers, each appended to ``running`` as soon as it is up."""
    p, work, models, worker_on = run.p, run.work, run.models, run.worker_on
    sides: list[tuple[str, str, Any, list[int]]] = []
    if "2" in run.parts:
        log("parts 2/3/5: starting our stack with batching on (backbone-only model)")
        on = OurStack(work / "s-bb", models, "backbone", "1", worker_on)
        running.append(on)
        sides.append(("backbone_e2e", "ours", on, p["backbone_c"]))
    if "3" in run.parts:
        log("parts 2/3/5: starting our stack with batching off (BATCH_MAX_SIZE=1)")
        off = OurStack(
            work / "s-off", models, "backbone", "1", {**worker_on, "BATCH_MAX_SIZE": "1"}
        )
        running.append(off)
        sides.append(("batching_off", "ours", off, p["off_c"]))
    if "5" in run.parts:
        log("parts 2/3/5: starting the BentoML peer")
        server = PeerServer(work / "s-peer", run.images, p)
        running.append(server)
        sides.append(("peer", "bento", server, p["peer_c"]))
    return sides


def _interleave(sides: list[tuple[str, str, Any, list[int]]], images: list[Path], p: dict) -> dict:
    """At each concurrency, ``repeats`` rounds of one run per side, then each side's point."""
    runs: dict[str, dict[int, list[dict]]] = {name: {} for name, *_ in sides}
    for c in sorted({c for *_, cs in sides for c in cs}):
        here = [side for side in sides if c in side[3]]
        for repeat in range(p["repeats"]):
            shift = repeat % len(here)
            for name, target, server, _ in here[shift:] + here[:shift]:
                key = getattr(server, "key", "")
                probe = server.probe
                runs[name].setdefault(c, []).append(
                    run_once(target, server.url, images, c, p, key, probe)
                )
        for name, target, *_ in here:
            runs[name][c] = aggregate(f"{name} ({target})", c, runs[name][c])  # type: ignore[assignment]
    return {name: {str(c): agg for c, agg in points.items()} for name, points in runs.items()}
