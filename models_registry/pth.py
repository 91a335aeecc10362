"""Read PyTorch ``.pth`` state dicts into numpy arrays, without torch and without arbitrary
unpickling.

Two on-disk layouts are understood:

* the zip layout (torch >= 1.6): ``<prefix>/data.pkl`` plus one raw file per storage under
  ``<prefix>/data/<key>`` (and an optional ``<prefix>/byteorder``);
* the legacy layout (torch < 1.6), which is what ``efficientnet-lite0-57934424.pth`` uses: five
  consecutive pickles/blobs in one stream -- magic number, protocol version, system info, the
  pickled state dict, the list of storage keys -- followed, for every key in that order, by an int64
  element count and the raw storage bytes.

The pickles are read with a restricted unpickler: the only globals it resolves are
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the typed storage classes
(``torch.FloatStorage`` ...), each replaced by an inert stand-in; anything else raises
``pickle.UnpicklingError``. Tensors are rebuilt with their storage offset, size and stride (many
converted checkpoints hold permuted, non-contiguous views) and returned as contiguous copies.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["read_pth"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# storage class name -> numpy dtype (bfloat16 is widened to float32 after reading)
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_SKIPPED_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    """A reference to (a view into) one raw storage, as named by a pickle persistent id."""

    key: str
    storage_type: _StorageType
    numel: int
    view_offset: int = 0  # legacy layout: views into a larger root storage


@dataclass(frozen=True)
class _TensorSpec:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any
) -> _TensorSpec:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records what to build, builds nothing."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    try:
        spec = _TensorSpec(
            storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
        )
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError(f"malformed tensor metadata: {exc}") from None
    if len(spec.size) != len(spec.stride):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return spec


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # zip layout:    ('storage', storage_type, key, location, numel)
        # legacy layout: ('storage', storage_type, root_key, location, root_numel, view_metadata)
        #                view_metadata is None or (view_key, offset, view_numel)
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id names no known storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r}")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(key, storage_type, numel)
        try:
            _view_key, view_offset, view_numel = view
            view_offset, view_numel = int(view_offset), int(view_numel)
        except (TypeError, ValueError):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}") from None
        if view_offset < 0 or view_numel < 0 or view_offset + view_numel > numel:
            raise pickle.UnpicklingError(f"storage view {view!r} lies outside its storage")
        return _StorageRef(key, storage_type, view_numel, view_offset)


def _restricted_load(stream: BinaryIO) -> Any:
    return _RestrictedUnpickler(stream).load()


def _plain_load(stream: BinaryIO) -> Any:
    """Header pickles of the legacy layout hold only ints, strings and containers: no globals."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed in a weights file header"
            )

    return _NoGlobals(stream).load()


def _tensor_specs(obj: Any) -> dict[str, _TensorSpec]:
    """Every tensor of the state dict, counters included: the file holds their storages too."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    specs: dict[str, _TensorSpec] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"state dict key {key!r} is not a string")
        if not isinstance(value, _TensorSpec):
            raise ValueError(f"state dict entry {key!r} is not a tensor")
        specs[key] = value
    return specs


def _kept(specs: dict[str, _TensorSpec]) -> dict[str, _TensorSpec]:
    return {key: spec for key, spec in specs.items() if not key.endswith(_SKIPPED_SUFFIXES)}


def _materialize(key: str, spec: _TensorSpec, raw: dict[str, np.ndarray]) -> np.ndarray:
    ref = spec.storage
    if ref.key not in raw:
        raise ValueError(f"{key}: storage {ref.key!r} is missing from the file")
    base = raw[ref.key][ref.view_offset : ref.view_offset + ref.numel]
    if base.size != ref.numel:
        raise ValueError(f"{key}: storage {ref.key!r} is shorter than declared")
    if spec.offset < 0 or any(s < 0 for s in spec.size) or any(s < 0 for s in spec.stride):
        raise ValueError(f"{key}: negative offset, size or stride")
    if 0 in spec.size:
        out = np.empty(spec.size, dtype=base.dtype)
    else:
        last = spec.offset + sum((n - 1) * s for n, s in zip(spec.size, spec.stride, strict=True))
        if last >= base.size:
            raise ValueError(f"{key}: tensor view reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            base[spec.offset :],
            shape=spec.size,
            strides=tuple(s * base.itemsize for s in spec.stride),
            writeable=False,
        )
        out = np.array(view, copy=True, order="C")
    if ref.storage_type.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _raw_storage(buffer: bytes, storage_type: _StorageType, little_endian: bool) -> np.ndarray:
    dtype = storage_type.dtype if little_endian else storage_type.dtype.newbyteorder(">")
    if len(buffer) % dtype.itemsize:
        raise ValueError("storage length is not a whole number of elements")
    return np.frombuffer(buffer, dtype=dtype).astype(storage_type.dtype, copy=False)


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if f"{prefix}byteorder" in names:
            little_endian = archive.read(f"{prefix}byteorder").decode().strip() == "little"
        specs = _kept(_tensor_specs(_restricted_load(io.BytesIO(archive.read(pickles[0])))))
        raw: dict[str, np.ndarray] = {}
        for spec in specs.values():
            ref = spec.storage
            if ref.key in raw:
                continue
            member = f"{prefix}data/{ref.key}"
            if member not in names:
                raise ValueError(f"{path}: storage {member!r} is missing")
            raw[ref.key] = _raw_storage(archive.read(member), ref.storage_type, little_endian)
    return {key: _materialize(key, spec, raw) for key, spec in specs.items()}


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as stream:
        try:
            magic = _plain_load(stream)
        except Exception as exc:  # garbage can fail in many ways; all mean the same here
            raise ValueError(f"{path}: not a torch weights file ({exc})") from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch weights file (bad magic number)")
        if _plain_load(stream) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy torch protocol version")
        sys_info = _plain_load(stream)
        little_endian = (
            bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        )
        specs = _tensor_specs(_restricted_load(stream))
        storage_keys = _plain_load(stream)
        if not isinstance(storage_keys, list) or not all(isinstance(k, str) for k in storage_keys):
            raise ValueError(f"{path}: malformed storage key list")
        types = {spec.storage.key: spec.storage.storage_type for spec in specs.values()}
        specs = _kept(specs)
        wanted = {spec.storage.key for spec in specs.values()}
        raw: dict[str, np.ndarray] = {}
        for key in storage_keys:
            header = stream.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q" if little_endian else ">q", header)
            if numel < 0:
                raise ValueError(f"{path}: negative size for storage {key!r}")
            if key not in types:
                raise ValueError(f"{path}: storage {key!r} is not referenced by any tensor")
            storage_type = types[key]
            nbytes = numel * storage_type.dtype.itemsize
            buffer = stream.read(nbytes)
            if len(buffer) != nbytes:
                raise ValueError(f"{path}: storage {key!r} is truncated")
            if key in wanted:
                raw[key] = _raw_storage(buffer, storage_type, little_endian)
    return {key: _materialize(key, spec, raw) for key, spec in specs.items()}


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a torch state dict file as contiguous numpy arrays, keyed as in it.

    ``num_batches_tracked`` counters are skipped. Raises ``pickle.UnpicklingError`` when the pickle
    names any global beyond the few a plain state dict needs, ``ValueError`` for a malformed file.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)
