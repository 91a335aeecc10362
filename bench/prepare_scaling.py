"""Decode + prepare throughput on 1 core and on k cores: task threads in one process against the
prepare processes of ``workers.preparepool``.

    python -m bench.prepare_scaling                         # 1 vs 2 cores, ~90 s on 2 cores
    python -m bench.prepare_scaling --seconds 8 --rounds 3
    python -m bench.prepare_scaling --cores 1,8,16          # on a larger machine
    python -m bench.prepare_scaling --photos real           # only scikit-image's four photos
    python -m bench.prepare_scaling --gil                   # the share of the work that releases the GIL

What one run measures: ``decode_rgb`` + ``runtime.prepare`` of the reference runtime (volume
MODEL_ROOT/reference/1, its prepare side only: the OCR models and the brand list, no TensorFlow)
over a set of JPEGs, cycled, for ``--seconds`` after ``--warmup`` seconds, in one of these modes:

- ``threads-k``: k task threads in this process, as a worker without PREPARE_PROCESSES;
- ``pool-k``: a ``PreparePool`` of k children fed by 2k threads of this process (the worker's
  task threads), as a worker with PREPARE_PROCESSES=k.

``--gil`` measures instead, on one thread with cProfile, the share of a photo's time spent in
C calls that release the GIL (ONNX Runtime, Pillow's decoder and resampling, OpenCV): the rest
holds it, which bounds what threads in one process can reach, 1 / (1 - share) cores' worth,
however many cores the host has.

"k cores" is honest: before each run every thread of this process, and of the pool's children,
is pinned (``os.sched_setaffinity``) to the first k CPUs this process may use. Runs alternate
(round 1: every mode of every photo set, then round 2, ...), and the k-vs-1 ratios are taken
within a round, so that a neighbour's load falls on both sides of a ratio. The table gives
photos/s, CPU ms per photo (this process and the children, all threads, from /proc), the part
of it spent in this process in pool modes (what the hand-over costs the parent: reading the
header, the pipe, the copy out of shared memory), and how busy the rest of the machine was.

Photo sets: ``real`` is the benchmark's four scikit-image photos (coffee, chelsea, astronaut,
rocket; JPEG quality 90, as bench/parts.py writes them); ``synthetic`` is ``--synthetic``
listing photos of models_registry.synthetic's test split (640-1024 px, with a wordmark).

OpenBLAS: the worker runs with OPENBLAS_NUM_THREADS=1 (scripts/start-worker, the image, k8s);
unless the environment sets it, this module restarts itself with it set, before numpy loads.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these processes onto ``cpus`` (affinity is per thread on Linux)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(ProcessLookupError, FileNotFoundError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), cpus)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


# --- photos --------------------------------------------------------------------------------


def real_photos() -> list[tuple[str, bytes]]:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, "JPEG", quality=90)
        out.append((name, buffer.getvalue()))
    return out


def synthetic_photos(count: int) -> list[tuple[str, bytes]]:
    from models_registry.synthetic import generate

    return [(f"test-{s.seed}", s.jpeg) for s in generate("test", count)]


# --- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    photos: str
    round: int
    count: int
    seconds: float
    cpu_s: float
    parent_cpu_s: float
    machine_busy_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / max(1, self.count)

    @property
    def parent_cpu_ms(self) -> float:
        return 1000 * self.parent_cpu_s / max(1, self.count)

    @property
    def others_busy(self) -> float:
        """Cores' worth of CPU the rest of the machine used meanwhile."""
        return max(0.0, self.machine_busy_s - self.cpu_s) / self.seconds


def run_once(mode: str, work: Any, threads: int, children: list[int], cpus: set[int],
             photos: list[tuple[str, bytes]], seconds: float, warmup: float) -> tuple[int, float, float, float, float,
                                                                                     list[str]]:
    """``threads`` threads call ``work(data)`` over ``photos`` (each from its own offset) for
    warmup + seconds; returns (photos done in the window, window s, CPU s of all, CPU s of this
    process, machine busy s, errors)."""
    _pin([os.getpid()], cpus)
    _pin(children, cpus)
    done = [0] * threads
    errors: list[str] = []
    stop = threading.Event()

    def loop(index: int) -> None:
        i = index
        while not stop.is_set():
            try:
                work(photos[i % len(photos)][1])
            except Exception as exc:  # counted, shown; the run goes on
                errors.append(f"{type(exc).__name__}: {exc}")
            done[index] += 1
            i += 1

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    _pin([os.getpid()], cpus)  # threads the libraries started meanwhile
    time.sleep(warmup)
    count0, wall0 = sum(done), time.perf_counter()
    self0, kids0, busy0 = _self_cpu_seconds(), sum(_cpu_seconds(p) for p in children), _machine_busy_seconds()
    time.sleep(seconds)
    count1, wall1 = sum(done), time.perf_counter()
    self1, kids1, busy1 = _self_cpu_seconds(), sum(_cpu_seconds(p) for p in children), _machine_busy_seconds()
    stop.set()
    for worker in workers:
        worker.join()
    self_cpu = self1 - self0
    return count1 - count0, wall1 - wall0, self_cpu + kids1 - kids0, self_cpu, busy1 - busy0, errors


# --- how much of a photo's prepare holds the GIL -------------------------------------------


def gil_free_share(work: Any, photos: list[tuple[str, bytes]], passes: int) -> tuple[float, float]:
    """(wall ms per photo, share of it in C calls that release the GIL) for ``work`` on one
    thread, from cProfile: ONNX Runtime's ``run``, Pillow's decoder and resampling, OpenCV's
    functions. cProfile's own overhead falls on the Python side, so the share is a lower bound."""
    import cProfile
    import pstats

    import cv2

    releasing = {"<built-in method onnxruntime.capi.onnxruntime_pybind11_state.run>",
                 "<method 'decode' of 'ImagingDecoder' objects>", "<method 'resize' of 'ImagingCore' objects>",
                 "<method 'reduce' of 'ImagingCore' objects>"}
    cv2_names = {f"<{name}>" for name in dir(cv2)}
    for _, data in photos:
        work(data)
    profile = cProfile.Profile(time.perf_counter)
    started = time.perf_counter()
    profile.enable()
    for _ in range(passes):
        for _, data in photos:
            work(data)
    profile.disable()
    wall = time.perf_counter() - started
    free = sum(tottime for (file, _line, name), (_cc, _nc, tottime, _ct, _callers)
               in pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
               if file == "~" and (name in releasing or name in cv2_names))
    return 1000 * wall / (passes * len(photos)), free / wall


# --- the whole run -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds measured per run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run's window (1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every run, alternated (2)")
    parser.add_argument("--cores", default="1,2", help="core counts to compare, the first the baseline (1,2)")
    parser.add_argument("--photos", default="real,synthetic", help="photo sets: real, synthetic (both)")
    parser.add_argument("--synthetic", type=int, default=4, help="synthetic photos in that set (4)")
    parser.add_argument("--modes", default="threads,pool", help="threads, pool (both)")
    parser.add_argument("--gil", action="store_true",
                        help="only profile one thread: the share of a photo's time that releases the GIL")
    parser.add_argument("--model-root", type=Path,
                        default=Path(os.environ.get("MODEL_ROOT", ROOT / "var" / "models")))
    args = parser.parse_args(argv)

    if "OPENBLAS_NUM_THREADS" not in os.environ:  # as the worker runs; before numpy loads
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        return subprocess.call([sys.executable, "-m", "bench.prepare_scaling", *(argv or sys.argv[1:])], env=env,
                               cwd=ROOT)

    from common.imaging import decode_rgb
    from common.volume import ModelVolume
    from workers.preparepool import PreparePool, load_prepare_side
    from workers.runtime import runtime_for

    allowed = sorted(os.sched_getaffinity(0))
    cores = [int(c) for c in args.cores.split(",")]
    if max(cores) > len(allowed):
        parser.error(f"--cores {args.cores}: this process may use {len(allowed)} CPUs")
    modes = args.modes.split(",")
    volume = ModelVolume.open(args.model_root / "reference" / "1")
    runtime = runtime_for(volume)
    load_prepare_side(runtime)
    sets: dict[str, list[tuple[str, bytes]]] = {}
    for name in args.photos.split(","):
        sets[name] = real_photos() if name == "real" else synthetic_photos(args.synthetic)

    print(f"# decode + prepare, reference runtime ({volume.path}); {_cpu_model()}, {len(allowed)} CPUs usable, "
          f"load average {os.getloadavg()[0]:.2f}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    sizes = "; ".join(f"{n}: {len(p)} photos, {sum(len(d) for _, d in p) // len(p) // 1024} KB mean"
                      for n, p in sets.items())
    runs_line = "one thread, cProfile, 10 passes" if args.gil else (
        f"{args.rounds} rounds x {args.seconds:g} s per run (+{args.warmup:g} s warm-up)")
    print(f"# {runs_line}; {sizes}", flush=True)

    def in_thread(data: bytes) -> Any:
        return runtime.prepare(decode_rgb(data, max_side=runtime.decode_max_side))

    if args.gil:
        print("| photos | wall ms/photo, one thread | share in calls that release the GIL | threads' bound, cores |")
        print("|---|---|---|---|")
        for set_name, photos in sets.items():
            ms, share = gil_free_share(in_thread, photos, passes=10)
            print(f"| {set_name} | {ms:.1f} | {100 * share:.0f} % | {1 / (1 - share):.1f} |")
        return 0

    pools = {k: PreparePool(runtime, k).start() for k in cores} if "pool" in modes else {}
    runs: list[Run] = []
    try:
        for round_ in range(1, args.rounds + 1):
            for set_name, photos in sets.items():
                for mode in modes:
                    for k in cores:
                        cpus = set(allowed[:k])
                        if mode == "threads":
                            result = run_once(f"threads-{k}", in_thread, k, [], cpus, photos, args.seconds,
                                              args.warmup)
                        else:
                            pool = pools[k]
                            result = run_once(f"pool-{k}", lambda d, pool=pool: pool.prepare(d), 2 * k, pool.pids(),
                                              cpus, photos, args.seconds, args.warmup)
                        count, seconds, cpu_s, parent_s, busy_s, errors = result
                        run = Run(f"{mode}-{k}", set_name, round_, count, seconds, cpu_s, parent_s, busy_s, errors)
                        runs.append(run)
                        print(f"  round {round_} {set_name:9} {run.mode:10} {run.per_s:7.1f} photos/s  "
                              f"{run.cpu_ms:6.1f} CPU ms/photo  (others: {run.others_busy:.2f} cores)"
                              + (f"  {len(errors)} errors, e.g. {errors[0]}" if errors else ""), flush=True)
    finally:
        for pool in pools.values():
            pool.stop()
        _pin([os.getpid()], set(allowed))
    print()
    report(runs, cores, modes, list(sets))
    return 0


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def report(runs: list[Run], cores: list[int], modes: list[str], sets: list[str]) -> None:
    """One table: per photo set and mode, photos/s and CPU per photo (median [min-max] over the
    rounds), and the ratio to the same mode on the baseline cores within each round."""
    base = cores[0]
    print("| photos | mode | cores | photos/s | CPU ms/photo | of it in the parent | x vs "
          f"{base} core{'s' if base > 1 else ''} (each round) | others' load, cores |")
    print("|---|---|---|---|---|---|---|---|")
    for set_name in sets:
        for mode in modes:
            for k in cores:
                mine = [r for r in runs if r.photos == set_name and r.mode == f"{mode}-{k}"]
                if not mine:
                    continue
                ratios = []
                for run in mine:
                    baseline = next(r for r in runs if r.photos == set_name and r.mode == f"{mode}-{base}"
                                    and r.round == run.round)
                    ratios.append(run.per_s / baseline.per_s)
                label = "threads in one process" if mode == "threads" else f"{k} prepare processes"
                parent = _spread([r.parent_cpu_ms for r in mine]) if mode == "pool" else "-"
                print(f"| {set_name} | {label} | {k} | {_spread([r.per_s for r in mine])} | "
                      f"{_spread([r.cpu_ms for r in mine])} | {parent} | "
                      f"{', '.join(f'{x:.2f}' for x in ratios) if k != base else '-'} | "
                      f"{_spread([r.others_busy for r in mine], '{:.2f}')} |")
        if "threads" in modes and "pool" in modes:
            for k in cores:
                pairs = [(p.per_s / t.per_s) for p in runs for t in runs
                         if p.photos == t.photos == set_name and p.round == t.round
                         and p.mode == f"pool-{k}" and t.mode == f"threads-{k}"]
                print(f"| {set_name} | processes / threads | {k} | {', '.join(f'{x:.2f}' for x in pairs)} "
                      "| | | | |")


if __name__ == "__main__":
    sys.exit(main())
