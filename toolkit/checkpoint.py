"""Read official YOLOv5 ``.pt`` checkpoints without executing any code from their pickle.

A YOLOv5 training checkpoint is a pickled ``dict`` holding a whole ``models.yolo.Model`` object
(plus EMA, optimizer and options). ``torch.load`` would import the yolov5 repo and run whatever
the pickle names. This module instead unpickles with an allow-list: every module class becomes an
inert :class:`ModuleRecord` that only stores its pickled ``__dict__``, tensors are rebuilt by our
own code straight from the raw storage bytes, and any other global (``os.system``,
``builtins.eval`` ...) raises :class:`~toolkit.errors.UnsafeCheckpointError` before anything runs.

Supported containers: the zip format (torch >= 1.6), the legacy stream format (torch < 1.6) and a
plain pickle file; all of them go through the same restricted unpickler.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import os
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO, NoReturn

import numpy as np
import torch

from toolkit.errors import ModelFileError, UnsafeCheckpointError, YolokitError

__all__ = [
    "ALLOWED_GLOBALS",
    "ModuleRecord",
    "RawCheckpoint",
    "read_checkpoint",
    "read_pickled_object",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> dtype of the elements it holds.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# Module classes yolokit can run: they become inert records.
SUPPORTED_MODULE_CLASSES: frozenset[str] = frozenset(
    {
        "models.yolo.Model",
        "models.yolo.DetectionModel",
        "models.yolo.Detect",
        "models.common.Conv",
        "models.common.C3",
        "models.common.Bottleneck",
        "models.common.SPPF",
        "models.common.SPP",
        "models.common.Concat",
        "models.common.Focus",
        "models.common.DWConv",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.activation.LeakyReLU",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.activation.Hardswish",
        "torch.nn.modules.linear.Identity",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.upsampling.Upsample",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.container.ModuleList",
    }
)

# Module classes of other YOLOv5 variants: recognised (also inert records) so that the user gets
# an "unsupported architecture" message instead of an "unsafe" one.
_RECOGNISED_UNSUPPORTED_CLASSES: frozenset[str] = frozenset(
    {
        "models.yolo.Segment",
        "models.yolo.SegmentationModel",
        "models.yolo.ClassificationModel",
        "models.yolo.BaseModel",
        "models.common.Proto",
        "models.common.Classify",
        "models.common.BottleneckCSP",
        "models.common.C3TR",
        "models.common.C3SPP",
        "models.common.C3Ghost",
        "models.common.C3x",
        "models.common.GhostConv",
        "models.common.GhostBottleneck",
        "models.common.CrossConv",
        "models.common.Contract",
        "models.common.Expand",
        "models.common.DWConvTranspose2d",
        "torch.nn.modules.conv.ConvTranspose2d",
        "torch.nn.modules.activation.Sigmoid",
        "torch.nn.modules.dropout.Dropout",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    }
)

_RECORD_CLASSES: frozenset[str] = SUPPORTED_MODULE_CLASSES | _RECOGNISED_UNSUPPORTED_CLASSES
_MODEL_CLASSES: frozenset[str] = frozenset({"models.yolo.Model", "models.yolo.DetectionModel"})


_NUMPY_DTYPE_CODES: frozenset[str] = frozenset(
    {"b1", "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)

_MAX_MODULE_DEPTH = 64
_MAX_NAME_IN_MESSAGE = 120
_ARCHIVE_HINT = "re-download it or re-save it with torch.save"


# --------------------------------------------------------------------------- inert stand-ins


class _TamperError(Exception):
    """A pickle tried to modify one of our stand-ins; turned into UnsafeCheckpointError with the path."""


class _FrozenType(type):
    """Metaclass of every stand-in class: a pickle cannot set attributes on the class itself."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _TamperError(cls.__name__)

    def __delattr__(cls, name: str) -> None:
        raise _TamperError(cls.__name__)


class ModuleRecord(metaclass=_FrozenType):
    """Inert stand-in for a pickled ``nn.Module`` (or YOLOv5 module): it only keeps the pickled state.

    ``cls_name`` is the dotted name the pickle asked for, e.g. ``"models.common.Conv"``;
    ``state`` is the module's pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules`` ...).
    """

    cls_name: str = "?"
    state: dict[str, Any]
    args: tuple[Any, ...]

    def __new__(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        obj = object.__new__(cls)
        object.__setattr__(obj, "state", {})
        object.__setattr__(obj, "args", args)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to initialise; pickled state arrives through ``__setstate__``."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            parts = [part for part in state if part is not None]
        else:
            parts = [state]
        for part in parts:
            if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
                raise ValueError(f"unexpected pickled state for {self.cls_name}")
            self.state.update(part)

    def __repr__(self) -> str:
        return f"ModuleRecord({self.cls_name})"


class _NamespaceRecord(dict, metaclass=_FrozenType):  # type: ignore[type-arg]
    """Stand-in for ``argparse.Namespace``: a plain dict of its attributes."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError("unexpected pickled state for argparse.Namespace")
        self.update(state)


class _DtypeRecord(metaclass=_FrozenType):
    """Stand-in for ``numpy.dtype`` limited to plain numeric dtypes; builds nothing by itself."""

    code: str
    byteorder: str

    def __new__(cls, code: Any = "f8", align: Any = False, copy: Any = False) -> _DtypeRecord:
        if not isinstance(code, str) or code not in _NUMPY_DTYPE_CODES:
            raise ValueError(f"unsupported numpy dtype {code!r} in pickle")
        obj = object.__new__(cls)
        object.__setattr__(obj, "code", code)
        object.__setattr__(obj, "byteorder", "=")
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        raise _TamperError("numpy.dtype")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise ValueError("unexpected pickled state for numpy.dtype")
        object.__setattr__(self, "byteorder", state[1])

    def to_numpy(self) -> np.dtype[Any]:
        dtype = np.dtype(self.code)
        if self.byteorder == "<":
            dtype = dtype.newbyteorder("<")
        elif self.byteorder == ">":
            dtype = dtype.newbyteorder(">")
        return dtype


class _StorageType:
    """Marker for ``torch.<Name>Storage`` in persistent ids; it cannot be called or modified."""

    __slots__ = ("name", "dtype")
    name: str
    dtype: torch.dtype

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _TamperError(f"torch.{self.name}")

    def __setstate__(self, state: Any) -> None:
        raise _TamperError(f"torch.{self.name}")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _SafeCallable:
    """One of our own stand-in functions, as handed to the unpickler; immutable from the pickle."""

    __slots__ = ("_fn", "_name")
    _fn: Callable[..., Any]
    _name: str

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _TamperError(self._name)

    def __setstate__(self, state: Any) -> None:
        raise _TamperError(self._name)

    def __repr__(self) -> str:
        return f"<yolokit stand-in for {self._name}>"


# --------------------------------------------------------------------------- stand-in functions


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"bad tensor {what} in pickle: {value!r:.80}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """Our own ``torch._utils._rebuild_tensor(_v2)``: a strided view of a storage we built."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1 or not storage.is_contiguous():
        raise ValueError("tensor in pickle does not refer to a storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise ValueError(f"bad tensor storage offset in pickle: {storage_offset!r:.40}")
    shape = _ints(size, "size")
    strides = _ints(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError("tensor size and stride in pickle have different lengths")
    if all(s > 0 for s in shape):
        extent = storage_offset + sum((s - 1) * st for s, st in zip(shape, strides, strict=True)) + 1
        if extent > storage.numel():
            raise ValueError(
                f"tensor of size {list(shape)} reaches element {extent} of a storage of {storage.numel()}"
            )
    elif storage_offset > storage.numel():
        raise ValueError("tensor storage offset in pickle lies outside its storage")
    return storage.as_strided(shape, strides, storage.storage_offset() + storage_offset)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *_: Any) -> Any:
    """Our own ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor, no Parameter."""
    if not isinstance(data, torch.Tensor):
        raise ValueError("parameter in pickle is not a tensor")
    return data


def _codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("unexpected _codecs.encode call in pickle")
    return text.encode("latin1")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Our own ``numpy.core.multiarray.scalar``: decode the raw bytes, never numpy's reducer."""
    if not isinstance(dtype, _DtypeRecord) or not isinstance(data, bytes):
        raise ValueError("unsupported numpy scalar in pickle")
    np_dtype = dtype.to_numpy()
    if len(data) != np_dtype.itemsize:
        raise ValueError("numpy scalar in pickle has the wrong number of bytes")
    return np.frombuffer(data, dtype=np_dtype, count=1)[0]


def _posix_path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("unexpected pathlib arguments in pickle")
    return str(PurePosixPath(*parts))


def _windows_path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("unexpected pathlib arguments in pickle")
    return str(PureWindowsPath(*parts))


def _device(kind: Any, index: Any = None) -> str:
    """Stand-in for ``torch.device``: its string form."""
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise ValueError("unexpected torch.device arguments in pickle")
    return kind if index is None or ":" in kind else f"{kind}:{index}"


_SAFE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.device": _device,
    "_codecs.encode": _codecs_encode,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "pathlib.PosixPath": _posix_path,
    "pathlib.PurePosixPath": _posix_path,
    "pathlib.WindowsPath": _windows_path,
    "pathlib.PureWindowsPath": _windows_path,
    "pathlib._local.PosixPath": _posix_path,
    "pathlib._local.PurePosixPath": _posix_path,
    "pathlib._local.WindowsPath": _windows_path,
    "pathlib._local.PureWindowsPath": _windows_path,
}

# Real classes that are safe to construct from pickled data (plain containers).
_SAFE_TYPES: dict[str, type] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "argparse.Namespace": _NamespaceRecord,
    "numpy.dtype": _DtypeRecord,
}

#: Every global a checkpoint's pickle may name (after mapping ``__builtin__`` to ``builtins``).
ALLOWED_GLOBALS: frozenset[str] = frozenset(
    _RECORD_CLASSES | set(_SAFE_FUNCTIONS) | set(_SAFE_TYPES) | {f"torch.{name}" for name in _STORAGE_DTYPES}
)


# --------------------------------------------------------------------------- restricted unpickler


def _printable(text: str) -> str:
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _MAX_NAME_IN_MESSAGE else text[:_MAX_NAME_IN_MESSAGE] + "..."


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Undo the Python-2 renaming that pickle protocol < 3 writes (``__builtin__``, ``commands`` ...),
    as the standard unpickler's ``fix_imports`` does. Only names are mapped; nothing is imported."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out inert stand-ins (see ALLOWED_GLOBALS)."""

    def __init__(
        self,
        file: BinaryIO,
        path: str,
        records: dict[str, type[ModuleRecord]],
        load_persistent: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(file)
        self._path = path
        self._records = records
        self._load_persistent = load_persistent

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        full = f"{module}.{name}"
        if full in _RECORD_CLASSES:
            if full not in self._records:
                record: Any = _FrozenType(f"Record[{full}]", (ModuleRecord,), {"cls_name": full})
                self._records[full] = record
            return self._records[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if full in _SAFE_FUNCTIONS:
            return _SafeCallable(full, _SAFE_FUNCTIONS[full])
        if full in _SAFE_TYPES:
            return _SAFE_TYPES[full]
        raise UnsafeCheckpointError(
            f"{self._path}: refused to load: the pickle asks for '{_printable(full)}', which is not on "
            "yolokit's allow-list (nothing was executed). Only load checkpoints from sources you trust; "
            "re-save it as a plain state_dict if it is yours."
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._load_persistent is None:
            raise ValueError("the pickle refers to external tensor data but is not a torch checkpoint")
        return self._load_persistent(pid)


def _unpickle_one(
    stream: BinaryIO,
    path: str,
    records: dict[str, type[ModuleRecord]],
    load_persistent: Callable[[Any], Any] | None = None,
) -> Any:
    try:
        return _RestrictedUnpickler(stream, path, records, load_persistent).load()
    except _TamperError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the pickle tries to modify yolokit's stand-in for "
            f"'{_printable(str(exc))}' (nothing was executed). Only load checkpoints from sources you trust."
        ) from None


# --------------------------------------------------------------------------- containers


def _bytes_to_tensor(raw: bytes, dtype: torch.dtype, big_endian: bool) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if big_endian and itemsize > 1:
        raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize)[:, ::-1].tobytes()
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


def _pid_kind(pid: Any) -> str:
    if not isinstance(pid, tuple) or not pid:
        raise ValueError(f"unexpected persistent id in pickle: {type(pid).__name__}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind not in ("storage", "module"):
        raise ValueError(f"unexpected persistent id kind in pickle: {kind!r:.40}")
    return str(kind)


def _check_storage_pid(storage_type: Any, numel: Any) -> tuple[torch.dtype, int]:
    if not isinstance(storage_type, _StorageType):
        raise ValueError("persistent id names no known storage type")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise ValueError("persistent id has a bad storage size")
    return storage_type.dtype, numel


class _ZipReader:
    """``persistent_load`` for the zip format: ``<prefix>/data/<key>`` holds each storage's bytes."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self.storages: dict[str, torch.Tensor] = {}
        big = False
        byteorder_name = f"{prefix}/byteorder"
        if byteorder_name in archive.NameToInfo:
            order = archive.read(byteorder_name).strip()
            if order not in (b"little", b"big"):
                raise ValueError(f"unknown byteorder record {order[:20]!r}")
            big = order == b"big"
        self.big_endian = big

    def __call__(self, pid: Any) -> torch.Tensor:
        if _pid_kind(pid) != "storage" or len(pid) != 5:
            raise ValueError("unexpected persistent id in a zip checkpoint")
        _, storage_type, key, _location, numel = pid
        dtype, numel = _check_storage_pid(storage_type, numel)
        if not isinstance(key, str):
            raise ValueError("persistent id has a bad storage key")
        cached = self.storages.get(key)
        if cached is not None:
            if cached.dtype != dtype:
                raise ValueError(f"storage {key!r} is used with two dtypes")
            return cached
        name = f"{self.prefix}/data/{key}"
        if name not in self.archive.NameToInfo:
            raise ModelFileError(
                f"{self.path}: is incomplete: the archive lacks the tensor data 'data/{_printable(key)}' "
                f"its pickle refers to; {_ARCHIVE_HINT}."
            )
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if self.archive.NameToInfo[name].file_size < nbytes:
            raise ModelFileError(
                f"{self.path}: is corrupt: tensor data 'data/{_printable(key)}' is shorter than its "
                f"recorded size; {_ARCHIVE_HINT}."
            )
        raw = self.archive.read(name)[:nbytes]
        tensor = _bytes_to_tensor(raw, dtype, self.big_endian)
        self.storages[key] = tensor
        return tensor


class _LegacyReader:
    """``persistent_load`` for the legacy (torch < 1.6) stream: storages are filled after the pickle."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.roots: dict[str, torch.Tensor] = {}
        self.views: dict[str, torch.Tensor] = {}

    def __call__(self, pid: Any) -> Any:
        kind = _pid_kind(pid)
        if kind == "module":
            # ('module', <class>, source_file, source): the class already went through find_class.
            if len(pid) != 4 or not (isinstance(pid[1], type) and issubclass(pid[1], ModuleRecord)):
                raise ValueError("unexpected module persistent id in a legacy checkpoint")
            return pid[1]
        if len(pid) != 6:
            raise ValueError("unexpected storage persistent id in a legacy checkpoint")
        _, storage_type, root_key, _location, numel, view_metadata = pid
        dtype, numel = _check_storage_pid(storage_type, numel)
        if not isinstance(root_key, str):
            raise ValueError("persistent id has a bad storage key")
        root = self.roots.get(root_key)
        if root is None:
            if numel * torch.empty((), dtype=dtype).element_size() > self.max_bytes:
                raise ValueError("storage is larger than the file")
            root = torch.zeros(numel, dtype=dtype)
            self.roots[root_key] = root
        elif root.dtype != dtype:
            raise ValueError(f"storage {root_key!r} is used with two dtypes")
        if view_metadata is None:
            return root
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise ValueError("bad storage view in a legacy checkpoint")
        view_key, offset, view_size = view_metadata
        if not isinstance(view_key, str):
            raise ValueError("bad storage view key in a legacy checkpoint")
        offset_size = _ints((offset, view_size), "view")
        if offset_size[0] + offset_size[1] > root.numel():
            raise ValueError("storage view lies outside its storage")
        view = self.views.get(view_key)
        if view is None:
            view = root[offset_size[0] : offset_size[0] + offset_size[1]]
            self.views[view_key] = view
        return view

    def fill(self, stream: BinaryIO, keys: Any) -> None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("bad storage key list in a legacy checkpoint")
        if set(keys) != set(self.roots):
            raise ModelFileError(
                f"{self.path}: is corrupt: its storage list does not match the tensors its pickle "
                f"refers to; {_ARCHIVE_HINT}."
            )
        for key in keys:
            root = self.roots[key]
            header = stream.read(8)
            if len(header) != 8:
                raise EOFError("file ends before all tensor data")
            (numel,) = struct.unpack("<q", header)
            if numel != root.numel():
                raise ValueError(f"storage {key!r} has {numel} elements, its pickle says {root.numel()}")
            nbytes = numel * root.element_size()
            raw = stream.read(nbytes)
            if len(raw) != nbytes:
                raise EOFError("file ends before all tensor data")
            if nbytes:
                # Legacy files always store little-endian data.
                root.copy_(_bytes_to_tensor(raw, root.dtype, sys.byteorder == "big"))


def _find_data_pkl(archive: zipfile.ZipFile, path: str) -> str:
    names = archive.namelist()
    candidates = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not candidates:
        raise ModelFileError(
            f"{path}: is a zip archive but not a PyTorch checkpoint (no data.pkl inside); "
            "pass a YOLOv5 .pt file saved with torch.save."
        )
    prefix = candidates[0][: -len("/data.pkl")]
    if f"{prefix}/constants.pkl" in archive.NameToInfo or any(n.startswith(f"{prefix}/code/") for n in names):
        raise ModelFileError(
            f"{path}: is a TorchScript archive, not a YOLOv5 training checkpoint; "
            "pass the original .pt checkpoint instead."
        )
    return prefix


def _load_zip(data: bytes, path: str) -> tuple[Any, str, int]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ModelFileError(
            f"{path}: is truncated or corrupt (its zip archive cannot be read: {exc}); {_ARCHIVE_HINT}."
        ) from exc
    with archive:
        prefix = _find_data_pkl(archive, path)
        reader = _ZipReader(archive, prefix, path)
        records: dict[str, type[ModuleRecord]] = {}
        with archive.open(f"{prefix}/data.pkl") as stream:
            obj = _unpickle_one(stream, path, records, reader)  # type: ignore[arg-type]
    return obj, "zip", len(reader.storages)


def _load_pickle_stream(data: bytes, path: str) -> tuple[Any, str, int]:
    stream = io.BytesIO(data)
    records: dict[str, type[ModuleRecord]] = {}
    first = _unpickle_one(stream, path, records)
    if not (isinstance(first, int) and not isinstance(first, bool) and first == LEGACY_MAGIC_NUMBER):
        return first, "pickle", 0
    version = _unpickle_one(stream, path, records)
    if version != LEGACY_PROTOCOL_VERSION:
        raise ModelFileError(
            f"{path}: is a legacy PyTorch file with unknown protocol version {version!r:.20}; "
            "re-save it with a recent torch.save."
        )
    sys_info = _unpickle_one(stream, path, records)
    if not isinstance(sys_info, dict):
        raise ValueError("bad system info record in a legacy checkpoint")
    reader = _LegacyReader(path, len(data))
    obj = _unpickle_one(stream, path, records, reader)
    keys = _unpickle_one(stream, path, records)
    reader.fill(stream, keys)
    return obj, "legacy", len(reader.roots)


def _is_old_protocol_pickle(data: bytes) -> bool:
    """Whether ``data`` starts with a well-formed protocol 0/1 pickle (static opcode scan, runs nothing)."""
    try:
        for _op in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:  # any parse failure just means "not a pickle"
        return False
    return True


def _not_a_checkpoint(path: str, why: str) -> NoReturn:
    raise ModelFileError(
        f"{path}: is not a PyTorch checkpoint (.pt): {why}; pass a YOLOv5 .pt file saved with torch.save."
    )


_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    LookupError,
    RuntimeError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
    RecursionError,
    NotImplementedError,
)


def _unpickle_bytes(data: bytes, path: str) -> tuple[Any, str, int]:
    """Unpickle a checkpoint held in ``data``; returns (object, format, number of storages)."""
    if not data:
        _not_a_checkpoint(path, "the file is empty (0 bytes)")
    try:
        if data[:4] == b"PK\x03\x04" or zipfile.is_zipfile(io.BytesIO(data)):
            return _load_zip(data, path)
        if (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or _is_old_protocol_pickle(data):
            return _load_pickle_stream(data, path)
    except YolokitError:
        raise
    except _PARSE_ERRORS as exc:
        detail = _printable(str(exc)) or type(exc).__name__
        raise ModelFileError(
            f"{path}: is truncated or corrupt and cannot be read as a PyTorch checkpoint "
            f"({type(exc).__name__}: {detail}); {_ARCHIVE_HINT}."
        ) from exc
    _not_a_checkpoint(path, "it is neither a torch zip archive nor a pickle")


def _read_file(path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such file; check the path or download the weights first.")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a checkpoint file; pass the .pt file inside it.")
    try:
        return p, p.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot be read ({exc.strerror or exc}); check its permissions.") from exc


def read_pickled_object(path: str | os.PathLike[str]) -> Any:
    """Unpickle any torch-saved file (zip, legacy or plain pickle) with the restricted unpickler.

    Module objects come back as :class:`ModuleRecord`, tensors as real ``torch.Tensor`` rebuilt from
    the file's bytes. Raises ``UnsafeCheckpointError`` for anything off the allow-list and
    ``ModelFileError`` for unreadable files.
    """
    p, data = _read_file(path)
    obj, _fmt, _n = _unpickle_bytes(data, str(p))
    return obj


# --------------------------------------------------------------------------- record tree -> RawCheckpoint


@dataclass
class RawCheckpoint:
    """What yolokit needs from a YOLOv5 checkpoint, read without running any of its code."""

    path: str
    sha256: str
    arch: dict[str, Any]  # the model's ``yaml`` dict: nc, depth_multiple, width_multiple, anchors, ...
    names: dict[int, str]
    state_dict: dict[str, torch.Tensor]  # same keys as ``nn.Module.state_dict()``, saved dtype kept
    stride: list[float]
    source_key: str  # 'ema' or 'model'; '' when the file's top level is the model itself
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able extras
    bn_eps: dict[str, float] = field(default_factory=dict)  # BatchNorm module name -> eps (not in state_dict)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_error(path: str) -> NoReturn:
    raise ModelFileError(
        f"{path}: holds only a state_dict (tensors without the model architecture); yolokit needs a full "
        "YOLOv5 checkpoint with its architecture, as saved by YOLOv5's train.py (e.g. the official "
        "yolov5n.pt)."
    )


def _select_model(obj: Any, path: str) -> tuple[ModuleRecord, str]:
    if isinstance(obj, ModuleRecord):
        return obj, ""
    if isinstance(obj, dict):
        ema, model = obj.get("ema"), obj.get("model")
        if isinstance(ema, ModuleRecord):
            return ema, "ema"
        if isinstance(model, ModuleRecord):
            return model, "model"
        if any(_is_tensor_dict(v) for v in (obj, model, ema, obj.get("state_dict"))):
            _state_dict_error(path)
    raise ModelFileError(
        f"{path}: does not contain a YOLOv5 model under 'model' or 'ema' (found {type(obj).__name__}); "
        "pass a YOLOv5 checkpoint saved by train.py, such as the official yolov5n.pt."
    )


def _iter_modules(
    record: ModuleRecord, prefix: str, path: str, seen: set[int], depth: int = 0
) -> Iterator[tuple[str, ModuleRecord]]:
    if depth > _MAX_MODULE_DEPTH or id(record) in seen:
        raise ModelFileError(f"{path}: is corrupt: its module tree is cyclic or too deep; {_ARCHIVE_HINT}.")
    seen.add(id(record))
    yield prefix, record
    children = record.state.get("_modules", {})
    if not isinstance(children, dict):
        raise ModelFileError(f"{path}: is corrupt: {record.cls_name} has no module table; {_ARCHIVE_HINT}.")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, ModuleRecord):
            raise ModelFileError(
                f"{path}: is corrupt: {record.cls_name} has a submodule that is not a module; "
                f"{_ARCHIVE_HINT}."
            )
        yield from _iter_modules(child, f"{prefix}{name}.", path, seen, depth + 1)


def _module_state_dict(
    model: ModuleRecord, path: str
) -> tuple[dict[str, torch.Tensor], list[ModuleRecord], dict[str, float]]:
    state_dict: dict[str, torch.Tensor] = {}
    modules: list[ModuleRecord] = []
    bn_eps: dict[str, float] = {}
    for prefix, record in _iter_modules(model, "", path, set()):
        modules.append(record)
        eps = record.state.get("eps")
        if record.cls_name.endswith("BatchNorm2d") and isinstance(eps, float):
            bn_eps[prefix.rstrip(".")] = eps
        params = record.state.get("_parameters", {})
        buffers = record.state.get("_buffers", {})
        skip = record.state.get("_non_persistent_buffers_set", set())
        if (
            not isinstance(params, dict)
            or not isinstance(buffers, dict)
            or not isinstance(skip, (set, frozenset))
        ):
            raise ModelFileError(
                f"{path}: is corrupt: {record.cls_name} has a malformed state; {_ARCHIVE_HINT}."
            )
        entries = list(params.items()) + [(k, v) for k, v in buffers.items() if k not in skip]
        for name, tensor in entries:
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ModelFileError(f"{path}: is corrupt: {prefix}{name} is not a tensor; {_ARCHIVE_HINT}.")
            state_dict[f"{prefix}{name}"] = tensor
    return state_dict, modules, bn_eps


def _as_float_list(value: Any) -> list[float] | None:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().flatten().double().tolist()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


def _jsonable_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return None


def _names(
    model: ModuleRecord, arch: dict[str, Any], detect: ModuleRecord | None, path: str
) -> dict[int, str]:
    raw = model.state.get("names")
    if isinstance(raw, (list, tuple)):
        return {i: str(n) for i, n in enumerate(raw)}
    if isinstance(raw, dict):
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: has malformed class names; re-save the checkpoint.") from exc
    nc = arch.get("nc", detect.state.get("nc") if detect is not None else None)
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ModelFileError(
            f"{path}: records neither class names nor a class count; re-save the checkpoint."
        )
    return {i: f"class{i}" for i in range(nc)}


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read a YOLOv5 ``.pt`` checkpoint without executing any code from it.

    Raises ``UnsafeCheckpointError`` if the pickle names anything off :data:`ALLOWED_GLOBALS` and
    ``ModelFileError`` (one line, naming the file and the fix) for every other problem.
    """
    p, data = _read_file(path)
    where = str(p)
    sha256 = hashlib.sha256(data).hexdigest()
    obj, fmt, n_storages = _unpickle_bytes(data, where)
    model, source_key = _select_model(obj, where)

    if model.cls_name not in _MODEL_CLASSES:
        raise ModelFileError(
            f"{where}: unsupported architecture: the model is a {model.cls_name}; yolokit runs YOLOv5 "
            "detection models (models.yolo.Model / DetectionModel)."
        )
    arch = model.state.get("yaml")
    if not isinstance(arch, dict):
        raise ModelFileError(
            f"{where}: the model has no architecture dict (its 'yaml' attribute is missing); "
            "use a checkpoint saved by YOLOv5's train.py."
        )
    state_dict, modules, bn_eps = _module_state_dict(model, where)
    classes = sorted({m.cls_name for m in modules})
    unsupported = [c for c in classes if c not in SUPPORTED_MODULE_CLASSES]
    if unsupported:
        raise ModelFileError(
            f"{where}: unsupported architecture: it uses {', '.join(unsupported)}; yolokit runs YOLOv5 "
            "detection models built from Conv/C3/SPPF/Detect layers."
        )
    detect = next((m for m in reversed(modules) if m.cls_name == "models.yolo.Detect"), None)
    stride = _as_float_list(model.state.get("stride"))
    if stride is None and detect is not None:
        stride = _as_float_list(detect.state.get("stride"))
    if not stride:
        raise ModelFileError(
            f"{where}: the model records no stride; use a checkpoint saved by YOLOv5's train.py."
        )
    names = _names(model, arch, detect, where)

    top = obj if isinstance(obj, dict) else {}
    info: dict[str, Any] = {
        "format": fmt,
        "epoch": _jsonable_scalar(top.get("epoch")),
        "date": top.get("date") if isinstance(top.get("date"), str) else None,
        "best_fitness": _jsonable_scalar(top.get("best_fitness")),
        "model_class": model.cls_name,
        "module_classes": classes,
        "storages": n_storages,
    }
    return RawCheckpoint(
        path=where,
        sha256=sha256,
        arch=arch,
        names=names,
        state_dict=state_dict,
        stride=stride,
        source_key=source_key,
        info=info,
        bn_eps=bn_eps,
    )
