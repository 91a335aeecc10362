"""The backbone under Keras' JAX backend (``KERAS_BACKEND=jax``, workers.runtime.jax_backend): the same
volume files give the same predictions as under TensorFlow, and the JAX path never imports TensorFlow.

Keras picks its backend once per process, at its first import, so everything JAX runs in one
subprocess with KERAS_BACKEND=jax (``jax_run``); the TensorFlow side runs in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.volume import ModelVolume
from harness import ROOT

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="the package jax (and jaxlib) is missing: requirements/dev.txt pins them "
        "(scripts/setup installs it)",
    ),
]

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
CATALOG_GB = 0.021  # the 19 MB backbone plus ~2 MB of catalog head, in 1 MiB shards

# Run with KERAS_BACKEND=jax; prints one JSON line. argv: the reference backbone's directory, the
# huge volume's, the photos (scikit-image's names, comma-separated).
JAX_SCRIPT = r"""
import gc, json, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file
from skimage import data

from common.volume import ModelVolume
from workers.runtime import backbone_class, runtime_for
from workers.runtime.reference import center_square

report = {}
backbone_dir, huge_dir = Path(sys.argv[1]), Path(sys.argv[2])
cls = backbone_class()
report["class"] = cls.__name__
inputs = np.stack([center_square(np.ascontiguousarray(getattr(data, n)()[..., :3]), 224)
                   for n in sys.argv[3].split(",")])
mapped = cls("map")
mapped.load(backbone_dir)
read = cls("read")
read.load(backbone_dir)
report["load_seconds"] = mapped.load_seconds
report["weights_bytes"] = mapped.weights_bytes
probs1, emb1 = mapped.predict(inputs[:1])
probs4, emb4 = mapped.predict(inputs)
report["coffee"] = probs1[0].tolist()
report["batch"] = probs4.tolist()
report["embedding_batch"] = emb4[:, :16].tolist()
report["shapes"] = [list(probs4.shape), list(emb4.shape), str(probs4.dtype)]

# Every variable holds exactly its stored value, also once the load's buffers are gone.
stored = load_file(str(backbone_dir / "weights.safetensors"))
gc.collect()
junk = [np.full(1 << 20, 7, np.uint8) for _ in range(32)]
wrong = []
for backbone in (mapped, read):
    for v in backbone._model.weights:
        if not np.array_equal(np.asarray(v.value), stored[v.path]):
            wrong.append(v.path)
report["wrong_values"] = wrong
del junk

def mapping_of(address):  # the file mapped where address lies ('' for anonymous memory)
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return rest[-1] if len(rest) == 5 else ""
    return None

mapped.unload()
report["loaded_after_unload"] = mapped.loaded
try:
    mapped.predict(inputs[:1])
except RuntimeError as exc:
    report["unloaded_error"] = str(exc)

# The huge runtime (a catalog head: top-k inside the compiled function).
runtime = runtime_for(ModelVolume.open(huge_dir))
runtime.load()
outputs = runtime.predict_outputs(list(inputs[:3]))
report["huge"] = {k: v.tolist() for k, v in outputs.items() if k.startswith("catalog")}
report["huge_results"] = [r["category"]["value"] for r in runtime.predict(list(inputs[:3]))]
# "map": a large 64-byte aligned tensor (this writer aligns them) is used in place, where the
# kernel mapped the file: no copy in host memory. "read": in a buffer of its own.
address = {v.path: v for v in runtime.backbone._model.weights}["fc/kernel"].value.unsafe_buffer_pointer()
report["fc_mapping_map"] = mapping_of(address)
own = cls("read")
own.load(huge_dir / "backbone")
address = {v.path: v for v in own._model.weights}["fc/kernel"].value.unsafe_buffer_pointer()
report["fc_mapping_read"] = mapping_of(address)
runtime.unload()

from workers.runtime.jax_backend import batch_size_for
report["sizes"] = [batch_size_for(n) for n in (1, 2, 3, 5, 16, 17, 64, 65, 200, 256, 257, 600)]

report["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras"))
import keras, jax
report["keras_backend"] = keras.backend.backend()
report["device"] = str(jax.devices()[0])
print("JSON:" + json.dumps(report))
"""


def jax_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **extra}


def jax_run(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env or jax_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("JSON:"))
    return json.loads(line[5:])


@pytest.fixture(scope="module")
def huge_volume(tmp_path_factory: pytest.TempPathFactory) -> ModelVolume:
    from models_registry.huge import build_huge

    return build_huge(tmp_path_factory.mktemp("huge"), "1", size_gb=CATALOG_GB, shard_mb=1, seed=5)


@pytest.fixture(scope="module")
def jax_report(reference_model_root: Path, huge_volume: ModelVolume) -> dict:
    backbone = reference_model_root / "reference" / "1" / "backbone"
    return jax_run(JAX_SCRIPT, str(backbone), str(huge_volume.path), ",".join(PHOTOS))


@pytest.fixture(scope="module")
def tf_outputs(reference_model_root: Path) -> dict:
    from skimage import data

    from workers.runtime.reference import center_square
    from workers.runtime.tensorflow_backend import KerasBackbone

    backbone = KerasBackbone()
    backbone.load(reference_model_root / "reference" / "1" / "backbone")
    inputs = np.stack([center_square(np.ascontiguousarray(getattr(data, n)()[..., :3]), 224)
                       for n in PHOTOS])
    probs1, _ = backbone.predict(inputs[:1])
    probs4, emb4 = backbone.predict(inputs)
    backbone.unload()
    return {"coffee": probs1[0], "batch": probs4, "embedding_batch": emb4[:, :16], "inputs": inputs}


def top5(probs: np.ndarray) -> list[int]:
    return np.argsort(-np.asarray(probs))[:5].tolist()


def test_the_jax_backbone_gives_the_tensorflow_top5_and_probabilities_for_the_coffee_photo(
    jax_report: dict, tf_outputs: dict
) -> None:
    assert jax_report["class"] == "JaxBackbone" and jax_report["keras_backend"] == "jax"
    jax_probs, tf_probs = np.array(jax_report["coffee"]), tf_outputs["coffee"]
    assert top5(jax_probs) == top5(tf_probs)
    assert top5(tf_probs)[0] == 967  # espresso
    np.testing.assert_allclose(jax_probs[top5(tf_probs)], tf_probs[top5(tf_probs)], atol=1e-4)
    np.testing.assert_allclose(jax_probs, tf_probs, atol=1e-4)


def test_the_jax_backbone_gives_the_tensorflow_results_for_a_batch_of_four(
    jax_report: dict, tf_outputs: dict
) -> None:
    assert jax_report["shapes"] == [[4, 1000], [4, 1280], "float32"]
    jax_probs, tf_probs = np.array(jax_report["batch"]), tf_outputs["batch"]
    for row in range(len(PHOTOS)):
        assert top5(jax_probs[row]) == top5(tf_probs[row]), PHOTOS[row]
        best = top5(tf_probs[row])
        np.testing.assert_allclose(jax_probs[row][best], tf_probs[row][best], atol=1e-4)
    np.testing.assert_allclose(jax_probs, tf_probs, atol=1e-4)
    np.testing.assert_allclose(np.array(jax_report["embedding_batch"]),
                               tf_outputs["embedding_batch"], atol=1e-3)
    # The coffee photo alone (batch 1) and in the batch of 4 (padded to no other size) agree.
    np.testing.assert_allclose(jax_probs[0], np.array(jax_report["coffee"]), atol=1e-5)


def test_the_jax_path_never_imports_tensorflow(jax_report: dict) -> None:
    assert jax_report["heavy"] == []
    assert jax_report["device"].lower().startswith("cpu")


def test_every_variable_holds_its_stored_value_in_place_when_mapped(jax_report: dict) -> None:
    assert jax_report["wrong_values"] == []
    assert jax_report["weights_bytes"] > 18_000_000 and jax_report["load_seconds"] > 0
    assert jax_report["fc_mapping_map"].endswith("backbone/weights.safetensors")
    assert "weights.safetensors" not in (jax_report["fc_mapping_read"] or "")
    assert jax_report["loaded_after_unload"] is False
    assert jax_report["unloaded_error"] == "backbone is not loaded"


def test_the_catalog_head_gives_the_tensorflow_nearest_items(
    jax_report: dict, huge_volume: ModelVolume, tf_outputs: dict
) -> None:
    from workers.runtime.huge import HugeRuntime

    runtime = HugeRuntime(huge_volume)
    runtime.load()
    try:
        expected = runtime.predict_outputs(list(tf_outputs["inputs"][:3]))
        categories = [r["category"]["value"] for r in runtime.predict(list(tf_outputs["inputs"][:3]))]
    finally:
        runtime.unload()
    assert jax_report["huge"]["catalog_top_items"] == expected["catalog_top_items"].tolist()
    np.testing.assert_allclose(jax_report["huge"]["catalog_top_scores"],
                               expected["catalog_top_scores"], atol=1e-4)
    assert jax_report["huge_results"] == categories


def test_batches_are_padded_to_a_few_compiled_sizes(jax_report: dict) -> None:
    assert jax_report["sizes"] == [1, 2, 4, 8, 16, 24, 64, 96, 256, 256, 512, 768]


def test_an_unknown_keras_backend_fails_at_load_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, reference_model_root: Path
) -> None:
    from common.env import ConfigurationError
    from workers.runtime import backbone_class
    from workers.runtime.huge import HugeRuntime

    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigurationError, match=r"KERAS_BACKEND='torch'.*tensorflow, jax"):
        backbone_class()
    # A runtime is made without it and refuses at load, before anything is read.
    runtime = HugeRuntime(ModelVolume.open(reference_model_root / "reference" / "1"))
    with pytest.raises(ConfigurationError, match="KERAS_BACKEND"):
        runtime.load()
    monkeypatch.setenv("KERAS_BACKEND", "")
    assert backbone_class().__name__ == "KerasBackbone"  # unset or empty: TensorFlow
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert backbone_class().__name__ == "KerasBackbone"


def test_the_jax_module_refuses_a_process_set_for_tensorflow() -> None:
    script = ("import json, sys\ntry:\n    import workers.runtime.jax_backend\n"
              "except ImportError as exc:\n    print('JSON:' + json.dumps({'error': str(exc), "
              "'keras': 'keras' in sys.modules}))\n")
    report = jax_run(script, env=jax_env(KERAS_BACKEND="tensorflow"))
    assert "needs KERAS_BACKEND=jax, not 'tensorflow'" in report["error"]
    assert report["keras"] is False  # refused before Keras (and so TensorFlow) was imported
