"""Read a state dict from PyTorch's legacy (pre-1.6, non-zip) ``.pth`` format without torch.

A legacy file is a run of pickles followed by raw storage bytes:

1. the magic number, 2. the protocol version (1001), 3. a dict of system info (byte order, type
sizes), 4. the state dict, whose tensors are rebuilt by ``torch._utils._rebuild_tensor_v2`` from
persistent ids ``('storage', storage_type, key, location, numel, view_metadata)``, 5. the list of
storage keys; then, for each key in that order, an 8-byte little-endian element count and the
storage's raw little-endian data.

A pickle can call any importable function, so the file is read with an unpickler that resolves
only the handful of globals such a state dict needs; anything else (``os.system``...) is refused
before it can run. Tensors become NumPy arrays.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class MalformedCheckpoint(ValueError):
    """The bytes are not a legacy state dict this reader accepts; the message says why."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int
    view: tuple[int, int] | None  # (offset, size) into the root storage, in elements


@dataclass(frozen=True)
class _PendingTensor:
    """A tensor whose storage bytes come after the pickle; materialised once they are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _PendingTensor:
    if not isinstance(storage, _StorageRef):
        raise MalformedCheckpoint("a tensor without a storage")
    return _PendingTensor(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allowed globals and turns storage persistent ids into references."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise MalformedCheckpoint(f"refusing to load the global '{module}.{name}'") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise MalformedCheckpoint(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, *view = pid
        if not isinstance(storage_type, _StorageType):
            raise MalformedCheckpoint(f"unsupported storage type {storage_type!r:.80}")
        view_metadata = view[0] if view else None
        view_range = None if view_metadata is None else (int(view_metadata[1]), int(view_metadata[2]))
        return _StorageRef(str(key), storage_type.dtype, int(numel), view_range)


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read the tensors of a legacy-format PyTorch state dict file.

    Args:
        path: a ``.pth`` file written by ``torch.save(model.state_dict(), ...)`` before torch 1.6
            (or with ``_use_new_zipfile_serialization=False``).

    Returns:
        The state dict's tensors by name, in file order, as C-contiguous NumPy arrays.

    Raises:
        UserError: the file cannot be read or ``parse_state_dict`` refuses it; the message names it.
    """
    try:
        return parse_state_dict(Path(path).read_bytes())
    except OSError as error:
        raise UserError(f"cannot read PyTorch weights from {path}: {error.strerror or error}") from None
    except MalformedCheckpoint as error:
        raise UserError(f"cannot read PyTorch weights from {path}: {error}") from None


def parse_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """Parse the bytes of a legacy-format state dict (see the module docstring).

    Raises:
        MalformedCheckpoint: not a legacy state dict, truncated, or its pickle references anything
            beyond the tensors' own globals (then nothing it names was imported or called).
    """
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise MalformedCheckpoint("a zip-format checkpoint (torch >= 1.6); only the legacy format is supported")
    try:
        return _parse(io.BytesIO(data))
    except MalformedCheckpoint:
        raise
    except Exception as error:  # any other failure on untrusted bytes is the file's fault, not a bug
        raise MalformedCheckpoint(_describe(error)) from None


def _parse(stream: io.BytesIO) -> dict[str, np.ndarray]:
    if _load_pickle(stream) != MAGIC_NUMBER:
        raise MalformedCheckpoint("not a PyTorch legacy .pth file (wrong magic number)")
    if (protocol := _load_pickle(stream)) != PROTOCOL_VERSION:
        raise MalformedCheckpoint(f"unsupported protocol version {protocol!r:.40}")
    sys_info = _load_pickle(stream)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise MalformedCheckpoint("only little-endian files are supported")
    state = _load_pickle(stream)
    keys = _load_pickle(stream)
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise MalformedCheckpoint("the file does not hold a state dict")
    pending = {str(name): value for name, value in state.items()}
    for name, value in pending.items():
        if not isinstance(value, _PendingTensor):
            raise MalformedCheckpoint(f"entry '{name}' is not a tensor")
    roots = {tensor.storage.key: tensor.storage for tensor in pending.values()}
    storages = {str(key): _read_storage(stream, roots.get(str(key))) for key in keys}
    if stream.read(1):
        raise MalformedCheckpoint("unexpected bytes after the last storage")
    return {name: _materialise(tensor, storages) for name, tensor in pending.items()}


def _load_pickle(stream: io.BytesIO) -> Any:
    return _RestrictedUnpickler(stream).load()


def _read_storage(stream: io.BytesIO, ref: _StorageRef | None) -> np.ndarray:
    """Read one storage: its int64 element count, then its raw data."""
    if ref is None:
        raise MalformedCheckpoint("a storage that no tensor uses")
    header = stream.read(8)
    if len(header) < 8:
        raise MalformedCheckpoint("truncated (a storage's size is missing)")
    (numel,) = struct.unpack("<q", header)
    if numel != ref.numel:
        raise MalformedCheckpoint(f"storage {ref.key} holds {numel} elements, its tensors expect {ref.numel}")
    raw = stream.read(numel * ref.dtype.itemsize)
    if len(raw) < numel * ref.dtype.itemsize:
        raise MalformedCheckpoint(f"truncated (storage {ref.key} is short of data)")
    return np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))


def _materialise(tensor: _PendingTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Copy a tensor out of its storage, checking that its view stays inside the storage."""
    ref = tensor.storage
    if ref.key not in storages:
        raise MalformedCheckpoint(f"storage {ref.key} is missing")
    storage = storages[ref.key]
    if ref.view is not None:
        start, size = ref.view
        if start < 0 or size < 0 or start + size > storage.size:
            raise MalformedCheckpoint(f"a view outside storage {ref.key}")
        storage = storage[start : start + size]
    if len(tensor.shape) != len(tensor.stride) or min(tensor.shape + tensor.stride, default=0) < 0:
        raise MalformedCheckpoint(f"bad shape {tensor.shape} or stride {tensor.stride}")
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype=storage.dtype)
    last = tensor.offset + sum((dim - 1) * step for dim, step in zip(tensor.shape, tensor.stride, strict=True))
    if tensor.offset < 0 or last >= storage.size:
        raise MalformedCheckpoint(f"a tensor outside storage {ref.key}")
    strides = tuple(step * storage.itemsize for step in tensor.stride)
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset :], tensor.shape, strides, writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


def _describe(error: Exception) -> str:
    """A one-line reason for a failure inside the pickle machinery."""
    if isinstance(error, EOFError) or str(error) == "pickle data was truncated":
        return "truncated (the file ends inside a pickle)"
    return f"not a PyTorch legacy state dict ({type(error).__name__}: {error})"
