"""Measuring: the load generator's runs, the CPU the servers and the machine use meanwhile,
repeated runs of one point summed up, and the machine a run is on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.plan import ROOT, log
from bench.stats import latency_summary, spread


def run_json(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 3600) -> dict:
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} ... failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def loadgen(
    target: str, url: str, images: list[Path], concurrency: int, p: dict, key: str = ""
) -> dict:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        target,
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(p["duration"]),
        "--warmup",
        str(p["warmup"]),
    ]
    if key:
        argv += ["--key", key]
    for image in images:
        argv += ["--image", str(image)]
    return run_json(argv, timeout=p["duration"] + p["warmup"] + 180)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its children still alive, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo.extend(children.get(current, []))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_probe(components: dict[str, int]):  # type: ignore[no-untyped-def]
    """A callable giving the CPU seconds used so far by each named process tree."""
    return lambda: {name: _cpu_seconds(pid) for name, pid in components.items()}


def run_once(
    target: str, url: str, images: list[Path], concurrency: int, p: dict, key: str = "", probe=None
) -> dict:  # type: ignore[no-untyped-def]
    """One run of the load generator, with the servers' CPU (``probe``) and the machine's."""
    before = probe() if probe else {}
    busy0, wall0 = machine_busy_seconds(), time.perf_counter()
    run = loadgen(target, url, images, concurrency, p, key)
    run["machine_busy_s"] = machine_busy_seconds() - busy0
    run["wall_s"] = time.perf_counter() - wall0
    after = probe() if probe else {}
    run["server_cpu_s"] = {name: after[name] - before[name] for name in after}
    run.update(latency_summary(run.pop("latencies_ms")))
    if run["errors"]:
        log(f"  {run['errors']} errors, e.g. {run['error_samples'][:2]}")
    return run


def aggregate(target: str, concurrency: int, runs: list[dict]) -> dict:
    """Repeated runs of one point: median [min-max] of each figure; CPU per request (warm-up
    requests included, as their CPU is); what other processes used of the machine meanwhile."""
    sent = sum(r["sent_with_warmup"] for r in runs)
    cpu: dict[str, float] = {}
    for r in runs:
        for name, seconds in r["server_cpu_s"].items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    busy = sum(r["machine_busy_s"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    client = sum(r["client_cpu_s"] for r in runs)
    agg = {
        "concurrency": concurrency,
        "throughput": spread(r["throughput"] for r in runs),
        "p50": spread(r["p50"] for r in runs),
        "p95": spread(r["p95"] for r in runs),
        "p99": spread(r["p99"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        # Failed answers in the warm-ups (e.g. our API's 429s while its completion rate, stale
        # after the other side's run, catches up): not counted, but in the CPU per request.
        "warmup_errors": sum(r.get("warmup_errors", 0) for r in runs),
        "requests": sum(r["succeeded"] for r in runs),
        "client_cpu_ms_per_request": 1000 * client / max(1, sum(r["succeeded"] for r in runs)),
        "server_timings_mean_ms": runs[-1]["server_timings_mean_ms"],
        "server_cpu_ms_per_request": {k: 1000 * v / max(1, sent) for k, v in cpu.items()},
        # What the rest of the machine used meanwhile (other people's work on a shared host),
        # as a share of all its cores: the noise next to the figure.
        "others_cpu_share": max(
            0.0, (busy - sum(cpu.values()) - client) / (wall * (os.cpu_count() or 1))
        )
        if cpu and wall
        else None,
        "runs": runs,
    }
    log(
        f"  {target} c={concurrency}: {agg['throughput']['median']:.1f} req/s, "
        f"p50 {agg['p50']['median']:.1f} ms, "
        f"p99 {agg['p99']['median']:.1f} ms, errors {agg['errors']}"
    )
    return agg


def point(
    target: str, url: str, images: list[Path], concurrency: int, p: dict, key: str = "", probe=None
) -> dict:  # type: ignore[no-untyped-def]
    """``repeats`` runs of the load generator at one concurrency."""
    runs = [run_once(target, url, images, concurrency, p, key, probe) for _ in range(p["repeats"])]
    return aggregate(target, concurrency, runs)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    memory = ""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
        "load_avg": os.getloadavg(),
    }
