"""Where one job spends its CPU in the worker, step by step.

    python -m bench.profile_worker [--jobs 1500] [--rounds 1] [--no-profile] [--env NAME=VALUE ...]

Starts a redis-server of its own and one real worker (``scripts/start-worker``: Celery, the threads
pool, 32 threads, batch 16) on a null-model volume (it answers at once: what remains is the worker's
own cost), then creates ``--jobs`` jobs the way the API does (``recognition_job_create``: the image
store and the creation script, in this process, without HTTP) as fast as it can, so the worker drains
a backlog. It prints the worker's CPU per job (``/proc``, every thread) and its jobs/s, the worker's
own per-stage timings, and, unless ``--no-profile``, where that CPU went: py-spy samples the worker's
threads while they run (not while they wait) and each sample is counted for the innermost step it is
in (claim script, image read, decode, prepare, the batch, the finish script, Celery's receipt of the
message, its request and trace, the acknowledgement, logging, metrics). py-spy's sampling costs the
worker a little; compare the steps with each other, and the CPU per job (``--no-profile``) between
commits or ``--env`` settings (``--env LOG_LEVEL=WARNING``). ``--rounds N`` repeats the drain N times
on the same worker and shows each round.

The photos are the benchmark's four scikit-image JPEGs. py-spy comes from requirements/dev.txt.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import _cpu_seconds
from bench.parts import write_images
from harness import Stack, spawn, stack_env, start_redis

# (step, pattern on a frame "function (path:line)"): a sample counts for the innermost frame that
# matches; the order only breaks ties within one frame.
STEPS: list[tuple[str, str]] = [
    ("logging (JSON lines)", r"\(.*/logging/__init__\.py|pythonjsonlogger"),
    ("metrics (DogStatsD)", r"/datadog/"),
    ("claim script", r"^claim \(.*common/jobstore\.py"),
    ("finish script (result write)", r"^(succeed|fail|finish_many) \(.*common/jobstore\.py"),
    ("image read", r"^get \(.*common/imagestore\.py"),
    ("decode", r"^decode_rgb \(.*common/imaging\.py"),
    ("prepare", r"^prepare \(.*workers/runtime/"),
    ("batch (inference thread)", r"workers/batching\.py"),
    ("the task's other steps", r"workers/(service|tasks)\.py"),
    ("Celery: ack", r"^(ack|basic_ack|_remove_from_unacked|ack_log_error) \("),
    ("Celery: message in (BRPOP, QoS, unacked store)", r"kombu/transport/redis\.py|kombu/transport/virtual/"),
    ("Celery: request and trace", r"celery/(app/trace|worker/request|worker/strategy)\.py"),
    ("Celery: consumer loop and pool", r"celery/|kombu/|concurrent/futures/"),
    ("housekeeping (heartbeat, reaper)", r"workers/process\.py"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-profile", action="store_true", help="only the CPU per job")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the worker (repeatable)")
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (the interpreter's own work; "
                             "without it, threads waiting for the GIL count where they wait)")
    parser.add_argument("--cprofile", action="store_true",
                        help="run the worker with the solo pool under cProfile (CPU time) and print each "
                             "step's inclusive cost per job, instead of sampling with py-spy")
    parser.add_argument("--top", type=int, default=15, help="innermost frames to list")
    parser.add_argument("--save", metavar="DIR", help="keep py-spy's raw output there")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if args.cprofile:
        args.no_profile = True
    if not args.no_profile and py_spy is None:
        parser.error("py-spy is not on PATH (requirements/dev.txt installs it); or pass --no-profile")
    tmp = Path(tempfile.mkdtemp(prefix="profile-worker-"))
    redis_process, url = start_redis(tmp / "redis")
    try:
        return _run(args, tmp, url, py_spy)
    finally:
        redis_process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path, url: str, py_spy: str | None) -> int:
    from models_registry.build import build_null

    build_null(tmp / "models", "1", name="null")
    extra = dict(item.split("=", 1) for item in args.env)
    env, _key = stack_env(tmp, url, model_root=tmp / "models", default_version="1", MODEL_NAME="null",
                          METRICS_ENABLED="true", **extra)
    stack = Stack(tmp, env, "", url)
    argv = ["scripts/start-worker"]
    if args.cprofile:
        argv = [sys.executable, "-m", "bench.cprofiled_celery", str(tmp / "worker.prof"), "--quiet", "-A",
                "workers.worker", "worker", "--pool", "solo", "--hostname", "profiled@%h", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "--loglevel", env.get("LOG_LEVEL", "INFO")]
    worker_env = {**env, "WORKER_MODEL_VERSION": "1", "WORKER_READY_FILE": str(tmp / "ready")}
    worker = spawn("worker", argv, worker_env, tmp / "logs")
    stack.processes.append(worker)
    try:
        stack.wait_worker_ready(worker, "1", timeout=120)
        create = _creator(env)
        photos = [p.read_bytes() for p in write_images(tmp / "photos")]
        for i in range(40):  # warm-up: the worker's first jobs, and this process's imports
            create(photos[i % len(photos)], wait=10)
        pid = worker.popen.pid
        print(f"worker pid {pid}; {args.jobs} jobs per round on the null model; settings: {extra or 'defaults'}")
        for round_no in range(1, args.rounds + 1):
            profile = None
            if not args.no_profile and py_spy:
                out = tmp / f"profile-{round_no}.txt"
                profile = subprocess.Popen(
                    [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                     "--output", str(out), "--nonblocking", *(["--gil"] if args.gil else [])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
            cpu0, wall0 = _cpu_seconds(pid), time.perf_counter()
            ids = [create(photos[i % len(photos)])["id"] for i in range(args.jobs)]
            records = _wait_all(stack, env, ids)
            wall = time.perf_counter() - wall0
            cpu = _cpu_seconds(pid) - cpu0
            if profile is not None:
                profile.send_signal(2)  # SIGINT: py-spy writes what it has
                profile.wait(30)
            statuses = collections.Counter(r.get("status") for r in records)
            print(f"\nround {round_no}: {statuses.get('succeeded', 0)} succeeded "
                  f"{dict((k, v) for k, v in statuses.items() if k != 'succeeded') or ''}; "
                  f"{len(ids) / wall:.1f} jobs/s; worker CPU per job {cpu / len(ids) * 1000:.2f} ms "
                  f"({cpu:.2f} s over {wall:.2f} s)")
            _print_timings(records)
            if profile is not None:
                _print_profile(tmp / f"profile-{round_no}.txt", args.top)
                if args.save:
                    shutil.copy(tmp / f"profile-{round_no}.txt", Path(args.save) / f"profile-{round_no}.txt")
        if args.cprofile:
            worker.stop()
            _print_cprofile(tmp / "worker.prof")
            if args.save:
                shutil.copy(tmp / "worker.prof", Path(args.save) / "worker.prof")
        return 0
    finally:
        stack.stop()


# (step, file suffix, function): inclusive CPU of the main thread (cProfile with thread_time).
CPROFILE_STEPS: list[tuple[str, str, str]] = [
    ("Celery: message in (BRPOP read, deliver)", "kombu/transport/redis.py", "_brpop_read"),
    ("  of which: record as unacked (QoS.append)", "kombu/transport/redis.py", "append"),
    ("  of which: Celery's task strategy (Request)", "celery/worker/strategy.py", "task_message_handler"),
    ("Celery: trace (build_tracer's trace_task)", "celery/app/trace.py", "trace_task"),
    ("  of which: the task (workers/tasks.py recognize)", "workers/tasks.py", "recognize"),
    ("    claim script", "common/jobstore.py", "claim"),
    ("    image read", "common/imagestore.py", "get"),
    ("    decode", "common/imaging.py", "decode_rgb"),
    ("    prepare (null model: the mean color)", "workers/runtime/null.py", "prepare"),
    ("    waiting for the batch (CPU of this thread)", "concurrent/futures/_base.py", "result"),
    ("    finish script", "common/jobstore.py", "succeed"),
    ("    live-figure counters", "common/livestats.py", "finish_counters"),
    ("    after finish (metrics)", "workers/service.py", "_after_finish"),
    ("    metrics (all DogStatsD calls)", "datadog/dogstatsd/base.py", "_report"),
    ("    logging (all records)", "logging/__init__.py", "_log"),
    ("Celery: ack", "kombu/message.py", "ack"),
    ("Celery: ack (or via ack_log_error)", "kombu/message.py", "ack_log_error"),
]


def _print_cprofile(path: Path) -> None:
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by_name: dict[tuple[str, str], tuple[int, float, float]] = {}
    for (filename, _line, function), (_cc, calls, own, inclusive, _callers) in stats.items():
        for _step, suffix, name in CPROFILE_STEPS:
            if function == name and filename.endswith(suffix):
                n, o, i = by_name.get((suffix, name), (0, 0.0, 0.0))
                by_name[(suffix, name)] = (n + calls, o + own, i + inclusive)
    jobs = by_name.get(("common/jobstore.py", "claim"), (0, 0.0, 0.0))[0]
    if not jobs:
        print("  (the profile holds no job)")
        return
    main_thread = sum(own for (_cc, _n, own, _i, _c) in stats.values())
    print(f"\n  the worker's main thread under cProfile (solo pool, CPU time), per job over {jobs} jobs "
          f"(warm-up included; cProfile roughly doubles Python's cost: compare steps with each other):")
    for step, suffix, name in CPROFILE_STEPS:
        calls, _own, inclusive = by_name.get((suffix, name), (0, 0.0, 0.0))
        if calls:
            print(f"    {step:<55} {inclusive / jobs * 1000:6.3f} ms  ({calls / jobs:.2f} calls per job)")
    print(f"    {'(everything on the main thread, model load included)':<55} {main_thread / jobs * 1000:6.3f} ms")


def _creator(env: dict[str, str]):  # type: ignore[no-untyped-def]
    """recognition_job_create in this process, with the stack's settings."""
    import os

    os.environ.update({k: v for k, v in env.items() if k not in ("PATH",)})
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import django

    django.setup()
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # this process's "job queued" lines
    logging.getLogger("common.waiting").setLevel(logging.ERROR)  # Redis stops before its listener
    from common.apikeys import KeyPolicy
    from recognition_api.services import recognition_job_create

    policy = KeyPolicy(name="bench")

    def create(data: bytes, wait: float = 0.0) -> dict[str, str]:
        return recognition_job_create(data=data, client=policy, request_id="bench", wait_seconds=wait)

    return create


def _wait_all(stack: Stack, env: dict[str, str], ids: list[str], timeout: float = 300) -> list[dict[str, str]]:
    client = stack.redis()
    prefix = env["REDIS_KEY_PREFIX"]
    deadline = time.monotonic() + timeout
    pending = list(ids)
    done: dict[str, dict[str, str]] = {}
    while pending and time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for job_id in pending:
            pipe.hgetall(f"{prefix}job:{job_id}")
        still = []
        for job_id, raw in zip(pending, pipe.execute(), strict=True):
            record = {k.decode(): v.decode() for k, v in raw.items()}
            if record.get("status") in ("succeeded", "failed"):
                done[job_id] = record
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.05)
    return [done.get(i, {"status": "unfinished"}) for i in ids]


def _print_timings(records: list[dict[str, str]]) -> None:
    import json

    sums: dict[str, float] = collections.defaultdict(float)
    count = 0
    for record in records:
        if record.get("timings"):
            count += 1
            for name, value in json.loads(record["timings"]).items():
                sums[name] += float(value)
    if count:
        print("  worker timings, mean ms: " + ", ".join(f"{k} {v / count:.2f}" for k, v in sums.items()))


def parse_raw(text: str) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` per line, root first."""
    by_step: collections.Counter[str] = collections.Counter()
    compiled = [(name, re.compile(pattern)) for name, pattern in STEPS]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        by_step[step_of(stack.split(";"), compiled)] += int(count)
    return by_step


def step_of(frames: list[str], compiled: list[tuple[str, re.Pattern[str]]]) -> str:
    for frame in reversed(frames):
        for name, pattern in compiled:
            if pattern.search(frame):
                return name
    return "other"


def _print_profile(path: Path, top: int) -> None:
    if not path.exists():
        print("  (py-spy wrote nothing)")
        return
    text = path.read_text(errors="replace")
    by_step = parse_raw(text)
    total = sum(by_step.values())
    print(f"  where the worker's running threads were (py-spy, {total} samples):")
    for name, count in by_step.most_common():
        print(f"    {name:<50} {count / total * 100:5.1f} %")
    leaves: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaves[stack.split(";")[-1]] += int(count)
    print("  the innermost frames with the most samples:")
    for frame, count in leaves.most_common(top):
        print(f"    {count / total * 100:5.1f} %  {frame}")


if __name__ == "__main__":
    raise SystemExit(main())
