"""The model volume format: an immutable directory per model version.

    <MODEL_ROOT>/<name>/<version>/
      manifest.json   what it is, how it was made, every file's size and sha256,
                      thresholds, evaluation figures with the set they were measured on
      ...files...     everything the model needs; nothing is fetched at run time

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SCHEMA = 1
_CHUNK = 8 * 1024 * 1024


class VolumeError(Exception):
    """A volume is missing, malformed or fails verification."""


def version_dir(root: Path, name: str, version: str) -> Path:
    for part in (name, version):
        if not part or "/" in part or part.startswith("."):
            raise VolumeError(f"invalid model name or version {part!r}")
    return root / name / version


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    return _hash_file(path, hashlib.sha256(), progress)


def blake3_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's BLAKE3, each chunk hashed on every core. BLAKE3 is a cryptographic hash like
    sha256 at a quarter of its CPU per byte (7.7 against 2.0 GB/s per core here), and one file's
    hash is spread over cores, where sha256 is one chain on one core; so a worker checks a
    multi-GB volume at disk speed, beside its load."""
    import blake3  # the worker's and the build's lock; the API never hashes a volume

    return _hash_file(path, blake3.blake3(max_threads=blake3.blake3.AUTO), progress)


def _hash_file(path: Path, digest: Any, progress: Callable[[int], None] | None) -> str:
    """Read the next chunk while the last one is hashed (both release the GIL), so a cold file
    is hashed in about the longer of its read and hash times, not their sum. Read, not mapped:
    the pages go through the page cache without counting in the process's resident memory."""
    with ThreadPoolExecutor(1, thread_name_prefix="hash-read") as reader, path.open("rb", buffering=0) as handle:
        pending = reader.submit(handle.read, _CHUNK)
        while chunk := pending.result():
            pending = reader.submit(handle.read, _CHUNK)
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def file_entries(directory: Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Each file's manifest entry: its size, its sha256 (what people and tools check) and its
    BLAKE3 (what the worker checks at every load)."""
    entries = []
    for path in sorted(paths):
        rel = path.relative_to(directory).as_posix()
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path),
                        "blake3": blake3_file(path)})
    return entries


@dataclass(frozen=True)
class ModelVolume:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> ModelVolume:
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise VolumeError(f"{path} is not a model volume: no {MANIFEST}") from exc
        except json.JSONDecodeError as exc:
            raise VolumeError(f"{manifest_path} is not valid JSON: {exc}") from exc
        for key in ("name", "version", "runtime", "files"):
            if key not in manifest:
                raise VolumeError(f"{manifest_path} has no {key!r}")
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"])

    @property
    def manifest_sha256(self) -> str:
        """Identifies exactly this volume: the manifest pins every file's sha256."""
        return sha256_file(self.path / MANIFEST)

    def file(self, relative: str) -> Path:
        return self.path / relative

    def verify_checksums(
        self, progress: Callable[[int], None] | None = None, *, threads: int | None = None
    ) -> list[str]:
        """Every listed file exists with its size and hash, lies inside the volume and is no
        symlink, and nothing unlisted is there.

        Each file's BLAKE3 when the manifest has it (volumes built before it have sha256 only),
        ``threads`` files at a time (default: one per core). Returns the problems found, each
        naming its file; empty means verified.
        """
        problems = []
        listed = {f["path"] for f in self.manifest["files"]}
        root = self.path.resolve()
        if progress is not None:  # called from the hashing threads
            progress = _serialized(progress)
        hashes: list[tuple[str, Callable[[], tuple[str, str]], str]] = []  # (file, compute, expected)
        for entry in self.manifest["files"]:
            path = self.path / entry["path"]
            if Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
                problems.append(f"{entry['path']}: a path outside the volume")
                continue
            if path.is_symlink() or not path.resolve().is_relative_to(root):
                problems.append(f"{entry['path']}: a symlink (a volume holds its own files)")
                continue
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
                continue
            size = path.stat().st_size
            if size != entry["size"]:
                problems.append(f"{entry['path']}: size {size} != manifest {entry['size']}")
                if progress:
                    progress(size)
                continue
            hashes.append(_hash_task(entry, path, progress))
        if hashes:
            workers = min(len(hashes), threads or os.cpu_count() or 1)
            with ThreadPoolExecutor(workers, thread_name_prefix="volume-check") as pool:
                results = list(pool.map(lambda task: task[1](), hashes))
            problems += [f"{name}: {algorithm} differs from the manifest"
                         for (name, _, expected), (algorithm, got) in zip(hashes, results, strict=True)
                         if got != expected]
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in dirnames:
                if (Path(dirpath) / name).is_symlink():
                    rel = (Path(dirpath) / name).relative_to(self.path).as_posix()
                    problems.append(f"{rel}: a symlink (a volume holds its own files)")
            for filename in filenames:
                rel = (Path(dirpath) / filename).relative_to(self.path).as_posix()
                if rel != MANIFEST and rel not in listed:
                    problems.append(f"{rel}: not listed in the manifest")
        return problems


def _hash_task(entry: dict[str, Any], path: Path,
               progress: Callable[[int], None] | None) -> tuple[str, Callable[[], tuple[str, str]], str]:
    """(file, what computes (algorithm, digest), the manifest's digest) to check one file."""
    if "blake3" in entry:
        return entry["path"], lambda: ("blake3", blake3_file(path, progress)), entry["blake3"]
    return entry["path"], lambda: ("sha256", sha256_file(path, progress)), entry["sha256"]


def _serialized(function: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def call(value: int) -> None:
        with lock:
            function(value)

    return call
