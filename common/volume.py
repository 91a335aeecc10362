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


def file_entries(directory: Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(paths):
        rel = path.relative_to(directory).as_posix()
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
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

    def verify_checksums(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Every listed file exists with its size and sha256, lies inside the volume and is no
        symlink, and nothing unlisted is there.

        Returns the problems found, each naming its file; empty means verified.
        """
        problems = []
        listed = {f["path"] for f in self.manifest["files"]}
        root = self.path.resolve()
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
            if sha256_file(path, progress) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest")
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
