"""The volume format: checksums, immutability, read-only files, tamper detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.volume import ModelVolume, VolumeError
from models_registry.build import build_volume, remove_volume


def make(root: Path, version: str = "1") -> ModelVolume:
    def populate(directory: Path) -> dict:
        (directory / "weights").mkdir()
        (directory / "weights" / "a.bin").write_bytes(b"\x00\x01" * 1000)
        (directory / "labels.txt").write_text("x\ny\n")
        return {"thresholds": {"x": 0.5}}

    return build_volume(root, "demo", version, runtime="null", populate=populate)


def test_the_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    volume = make(tmp_path)
    manifest = json.loads((volume.path / "manifest.json").read_text())
    entries = {f["path"]: f for f in manifest["files"]}
    assert set(entries) == {"weights/a.bin", "labels.txt"}
    assert entries["weights/a.bin"]["size"] == 2000
    import hashlib

    assert entries["labels.txt"]["sha256"] == hashlib.sha256(b"x\ny\n").hexdigest()
    assert manifest["name"] == "demo" and manifest["version"] == "1" and manifest["framework"]["python"]
    assert volume.verify_checksums() == []


def test_a_built_volume_is_read_only_and_never_overwritten(tmp_path: Path) -> None:
    volume = make(tmp_path)
    assert not (volume.path / "labels.txt").stat().st_mode & 0o222
    assert not volume.path.stat().st_mode & 0o222
    with pytest.raises(VolumeError, match="immutable"):
        make(tmp_path)
    assert not any(p.name.startswith(".") for p in (tmp_path / "demo").iterdir())


def test_one_changed_byte_fails_verification_naming_the_file(tmp_path: Path) -> None:
    volume = make(tmp_path)
    target = volume.path / "weights" / "a.bin"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[500] ^= 0x01
    target.write_bytes(bytes(data))
    assert volume.verify_checksums() == ["weights/a.bin: blake3 differs from the manifest"]


def test_missing_and_unlisted_files_fail_verification(tmp_path: Path) -> None:
    volume = make(tmp_path)
    volume.path.chmod(0o755)
    (volume.path / "labels.txt").unlink()
    (volume.path / "extra.bin").write_bytes(b"?")
    problems = volume.verify_checksums()
    assert "labels.txt: missing" in problems
    assert "extra.bin: not listed in the manifest" in problems


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def populate(directory: Path) -> dict:
        (directory / "half.bin").write_bytes(b"1")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_volume(tmp_path, "demo", "2", runtime="null", populate=populate)
    assert list((tmp_path / "demo").iterdir()) == []


def test_it_refuses_a_directory_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no manifest.json"):
        ModelVolume.open(tmp_path)


def test_remove_volume_deletes_a_read_only_tree(tmp_path: Path) -> None:
    volume = make(tmp_path)
    remove_volume(volume.path)
    assert not volume.path.exists()


def test_verify_refuses_a_symlink_and_a_path_outside_the_volume(tmp_path: Path) -> None:
    from models_registry.build import build_null

    volume = build_null(tmp_path / "models", "s1")
    directory = volume.path
    directory.chmod(0o755)
    readme = directory / "README"
    readme.chmod(0o644)
    outside = tmp_path / "elsewhere"
    outside.write_text(readme.read_text())
    readme.unlink()
    readme.symlink_to(outside)  # same bytes, but not the volume's own file
    problems = ModelVolume.open(directory).verify_checksums()
    assert any("README: a symlink" in p for p in problems), problems
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"].append({"path": "../elsewhere", "size": outside.stat().st_size, "sha256": "0" * 64})
    (directory / "manifest.json").chmod(0o644)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    problems = ModelVolume.open(directory).verify_checksums()
    assert any("../elsewhere: a path outside the volume" in p for p in problems), problems



def test_every_file_is_listed_with_its_blake3_which_verify_checks_on_many_threads(tmp_path: Path) -> None:
    import blake3

    volume = make(tmp_path)
    entry = next(f for f in volume.manifest["files"] if f["path"] == "weights/a.bin")
    assert entry["blake3"] == blake3.blake3(b"\x00\x01" * 1000).hexdigest()
    seen: list[int] = []
    assert volume.verify_checksums(progress=seen.append, threads=4) == []
    assert sum(seen) == 2000 + len(b"x\ny\n")


def test_a_volume_built_before_blake3_is_checked_by_sha256(tmp_path: Path) -> None:
    volume = make(tmp_path)
    manifest = json.loads((volume.path / "manifest.json").read_text())
    for entry in manifest["files"]:
        del entry["blake3"]
    old = ModelVolume(volume.path, manifest)
    assert old.verify_checksums() == []
    target = volume.path / "labels.txt"
    target.chmod(0o644)
    target.write_text("x\nz\n")
    assert old.verify_checksums() == ["labels.txt: sha256 differs from the manifest"]
