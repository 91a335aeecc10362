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
    """The file's sha256, reading the next chunk while the last one is hashed (both release the
    GIL), so a cold file is hashed in about the longer of its read and hash times, not their sum."""
    digest = hashlib.sha256()
    with ThreadPoolExecutor(1, thread_name_prefix="sha256-read") as reader, path.open("rb", buffering=0) as handle:
        pending = reader.submit(handle.read, _CHUNK)
        while chunk := pending.result():
            pending = reader.submit(handle.read, _CHUNK)
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


# A file larger than this is also hashed block by block: one file's sha256 is a chain that one
# core computes (about 1.4 GB/s with SHA-NI), its blocks' hashes are independent, so a worker
# checks a multi-GB volume on all its cores, at disk speed rather than one core's hash speed.
BLOCK_BYTES = 64 * 1024 * 1024


def sha256_of_file_and_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> tuple[str, list[str]]:
    """The whole file's sha256 and each ``block_bytes`` block's, in one read."""
    whole, blocks, block, in_block = hashlib.sha256(), [], hashlib.sha256(), 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(min(_CHUNK, block_bytes - in_block)):
            whole.update(chunk)
            block.update(chunk)
            in_block += len(chunk)
            if in_block == block_bytes:
                blocks.append(block.hexdigest())
                block, in_block = hashlib.sha256(), 0
    if in_block:
        blocks.append(block.hexdigest())
    return whole.hexdigest(), blocks


def sha256_block(path: Path, index: int, block_bytes: int, progress: Callable[[int], None] | None = None) -> str:
    """The sha256 of block ``index`` of the file (positioned reads: many threads share no offset)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        offset, end = index * block_bytes, (index + 1) * block_bytes
        while offset < end and (chunk := os.pread(fd, min(_CHUNK, end - offset), offset)):
            digest.update(chunk)
            offset += len(chunk)
            if progress:
                progress(len(chunk))
    finally:
        os.close(fd)
    return digest.hexdigest()


def file_entries(directory: Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(paths):
        rel = path.relative_to(directory).as_posix()
        size = path.stat().st_size
        if size > BLOCK_BYTES:
            whole, blocks = sha256_of_file_and_blocks(path, BLOCK_BYTES)
            entries.append({"path": rel, "size": size, "sha256": whole,
                            "blocks": {"bytes": BLOCK_BYTES, "sha256": blocks}})
        else:
            entries.append({"path": rel, "size": size, "sha256": sha256_file(path)})
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
        """Every listed file exists with its size and sha256, lies inside the volume and is no
        symlink, and nothing unlisted is there.

        Files with block hashes in the manifest are checked block by block on ``threads``
        threads (default: one per core); the others whole, also in parallel. Returns the
        problems found, each naming its file; empty means verified.
        """
        problems = []
        listed = {f["path"] for f in self.manifest["files"]}
        root = self.path.resolve()
        if progress is not None:  # called from the hashing threads
            progress = _serialized(progress)
        hashes: list[tuple[str, Callable[[], str], str]] = []  # (file, compute, expected)
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
            blocks = entry.get("blocks")
            if blocks and (int(blocks["bytes"]) <= 0
                           or len(blocks["sha256"]) != max(1, -(-size // int(blocks["bytes"])))):
                problems.append(f"{entry['path']}: its block hashes do not cover the file")
                continue
            hashes += _hash_tasks(entry, path, progress)
        if hashes:
            workers = min(len(hashes), threads or os.cpu_count() or 1)
            with ThreadPoolExecutor(workers, thread_name_prefix="volume-check") as pool:
                results = list(pool.map(lambda task: task[1](), hashes))
            differing = sorted({name for (name, _, expected), got in zip(hashes, results, strict=True)
                                if got != expected})
            problems += [f"{name}: sha256 differs from the manifest" for name in differing]
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



def _hash_tasks(entry: dict[str, Any], path: Path,
                progress: Callable[[int], None] | None) -> list[tuple[str, Callable[[], str], str]]:
    """What to hash to check one file: each of its blocks when the manifest lists them (together
    they cover the whole file, so a file whose blocks all match is the file that was built), else
    the whole file."""
    name, blocks = entry["path"], entry.get("blocks")
    if not blocks:
        return [(name, lambda: sha256_file(path, progress), entry["sha256"])]
    block_bytes = int(blocks["bytes"])
    return [(name, lambda i=i: sha256_block(path, i, block_bytes, progress), digest)
            for i, digest in enumerate(blocks["sha256"])]


def _serialized(function: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def call(value: int) -> None:
        with lock:
            function(value)

    return call
