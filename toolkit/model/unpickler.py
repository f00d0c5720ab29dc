"""The restricted unpickler: a checkpoint's pickle may only name the allow-listed globals, which become inert
stand-ins (module classes as :class:`ModuleRecord`, storages, a few safe rebuild functions); anything else raises
:class:`~toolkit.errors.UnsafeCheckpointError` before it can run. See :mod:`toolkit.model.checkpoint`."""

from __future__ import annotations

import _compat_pickle
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import numpy as np
import torch

from toolkit.errors import ModelFileError, UnsafeCheckpointError

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
        "models.common.BottleneckCSP",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.activation.LeakyReLU",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.activation.Hardswish",
        "torch.nn.modules.activation.Mish",
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
        "torch.nn.modules.padding.ZeroPad2d",  # YOLOv3-tiny
        "models.common.TransformerBlock",  # C3TR and the transformer models
        "models.common.TransformerLayer",
        "torch.nn.modules.activation.MultiheadAttention",
        "torch.nn.modules.linear.NonDynamicallyQuantizableLinear",
        "models.common.MixConv2d",
        "models.experimental.MixConv2d",
        "models.experimental.CrossConv",
        "models.experimental.Sum",
    }
)

_RECORD_CLASSES: frozenset[str] = SUPPORTED_MODULE_CLASSES | _RECOGNISED_UNSUPPORTED_CLASSES
MODEL_CLASSES: frozenset[str] = frozenset({"models.yolo.Model", "models.yolo.DetectionModel"})


_NUMPY_DTYPE_CODES: frozenset[str] = frozenset(
    {"b1", "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)

MAX_MODULE_DEPTH = 64
_MAX_NAME_IN_MESSAGE = 120
ARCHIVE_HINT = "re-download it or re-save it with torch.save"


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


class _NdarrayMarker(metaclass=_FrozenType):
    """Stand-in for ``numpy.ndarray`` as a pickle names it (the class handed to ``_reconstruct``); builds nothing."""


class ArrayRecord(metaclass=_FrozenType):
    """Stand-in for a pickled numpy array of plain numbers (``train.py``'s ``best_fitness`` of a run not finished:
    every ``last.pt`` and ``best.pt`` before ``strip_optimizer``): its data decoded from raw bytes into ``array``,
    never through numpy's own reducer."""

    array: np.ndarray[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> ArrayRecord:
        obj = object.__new__(cls)
        object.__setattr__(obj, "array", np.zeros(0))
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        raise _TamperError("numpy.ndarray")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise ValueError("unexpected pickled state for a numpy array")
        _, shape, dtype, fortran, data = state
        object.__setattr__(self, "array", _array(data, dtype, shape, "F" if fortran else "C"))


def _array(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray[Any, Any]:
    if not isinstance(dtype, _DtypeRecord) or order not in ("C", "F"):
        raise ValueError("unsupported numpy array in pickle")
    if isinstance(data, pickle.PickleBuffer):
        data = bytes(data.raw())
    if not isinstance(data, (bytes, bytearray)):  # an array of objects pickles a list: never built
        raise ValueError("unsupported numpy array in pickle (not plain numbers)")
    dims = as_ints(shape, "array shape")
    np_dtype = dtype.to_numpy()
    if len(data) != int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize:
        raise ValueError("numpy array in pickle has the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=np_dtype).reshape(dims, order=order).copy()


def _reconstruct(cls: Any, shape: Any = (0,), code: Any = b"b") -> ArrayRecord:
    """Our own ``numpy.core.multiarray._reconstruct``: an empty :class:`ArrayRecord` its pickled state fills."""
    if cls is not _NdarrayMarker:
        raise ValueError("unsupported numpy reconstruction in pickle")
    return ArrayRecord()


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any = "C") -> ArrayRecord:
    """Our own ``numpy.core.numeric._frombuffer`` (pickle protocol 5)."""
    record = ArrayRecord()
    object.__setattr__(record, "array", _array(data, dtype, shape, order))
    return record


def _getattr(obj: Any, name: Any) -> str:
    """Our own ``getattr``, for a module class's method the pickle names (YOLOv5's ``Segment`` saves
    ``Detect.forward``): its name only, nothing looked up."""
    if not (isinstance(obj, type) and issubclass(obj, ModuleRecord)) or not isinstance(name, str):
        raise ValueError("unsupported getattr in pickle")
    return f"{obj.cls_name}.{name}"


class StorageType:
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


def as_ints(value: Any, what: str) -> tuple[int, ...]:
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
    shape = as_ints(size, "size")
    strides = as_ints(stride, "stride")
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
    "numpy.core.multiarray._reconstruct": _reconstruct,
    "numpy._core.multiarray._reconstruct": _reconstruct,
    "numpy.core.numeric._frombuffer": _frombuffer,
    "numpy._core.numeric._frombuffer": _frombuffer,
    "builtins.getattr": _getattr,
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
    "numpy.ndarray": _NdarrayMarker,
}

_STORAGE_GLOBALS = frozenset(f"torch.{name}" for name in _STORAGE_DTYPES)

#: Every global a checkpoint's pickle may name (after mapping ``__builtin__`` to ``builtins``).
ALLOWED_GLOBALS: frozenset[str] = frozenset(
    _RECORD_CLASSES | set(_SAFE_FUNCTIONS) | set(_SAFE_TYPES) | _STORAGE_GLOBALS
)


# --------------------------------------------------------------------------- restricted unpickler


def printable(text: str) -> str:
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
        if full in _STORAGE_GLOBALS:
            return StorageType(name, _STORAGE_DTYPES[name])
        if full in _SAFE_FUNCTIONS:
            return _SafeCallable(full, _SAFE_FUNCTIONS[full])
        if full in _SAFE_TYPES:
            return _SAFE_TYPES[full]
        if module.split(".")[0] == "ultralytics":
            raise ModelFileError(
                f"{self._path}: is an Ultralytics checkpoint (YOLOv8 or later: '{printable(full)}'), not a YOLOv5 "
                "one; yolokit runs YOLOv5 detection models (saved by ultralytics/yolov5's train.py, such as "
                "yolov5s.pt), nothing was executed"
            )
        raise UnsafeCheckpointError(
            f"{self._path}: refused to load: the pickle asks for '{printable(full)}', which is not on "
            "yolokit's allow-list (nothing was executed). Only load checkpoints from sources you trust; "
            "yolokit runs YOLOv5 detection checkpoints as YOLOv5's train.py saves them."
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._load_persistent is None:
            raise ValueError("the pickle refers to external tensor data but is not a torch checkpoint")
        return self._load_persistent(pid)


def unpickle_one(
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
            f"'{printable(str(exc))}' (nothing was executed). Only load checkpoints from sources you trust."
        ) from None


