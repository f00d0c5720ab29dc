"""Torch-saved containers, read through the restricted unpickler: the zip format (torch >= 1.6), the legacy stream
format (torch < 1.6) and a plain pickle. Tensors are rebuilt from the file's raw storage bytes."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
import torch

from toolkit.errors import ModelFileError, YolokitError
from toolkit.model.unpickler import (
    ARCHIVE_HINT,
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    ModuleRecord,
    StorageType,
    as_ints,
    printable,
    unpickle_one,
)

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
    if not isinstance(storage_type, StorageType):
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
                f"{self.path}: is incomplete: the archive lacks the tensor data 'data/{printable(key)}' "
                f"its pickle refers to; {ARCHIVE_HINT}."
            )
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if self.archive.NameToInfo[name].file_size < nbytes:
            raise ModelFileError(
                f"{self.path}: is corrupt: tensor data 'data/{printable(key)}' is shorter than its "
                f"recorded size; {ARCHIVE_HINT}."
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
        offset_size = as_ints((offset, view_size), "view")
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
                f"refers to; {ARCHIVE_HINT}."
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
            f"{path}: is truncated or corrupt (its zip archive cannot be read: {exc}); {ARCHIVE_HINT}."
        ) from exc
    with archive:
        prefix = _find_data_pkl(archive, path)
        reader = _ZipReader(archive, prefix, path)
        records: dict[str, type[ModuleRecord]] = {}
        with archive.open(f"{prefix}/data.pkl") as stream:
            obj = unpickle_one(stream, path, records, reader)  # type: ignore[arg-type]
    return obj, "zip", len(reader.storages)


def _load_pickle_stream(data: bytes, path: str) -> tuple[Any, str, int]:
    stream = io.BytesIO(data)
    records: dict[str, type[ModuleRecord]] = {}
    first = unpickle_one(stream, path, records)
    if not (isinstance(first, int) and not isinstance(first, bool) and first == LEGACY_MAGIC_NUMBER):
        return first, "pickle", 0
    version = unpickle_one(stream, path, records)
    if version != LEGACY_PROTOCOL_VERSION:
        raise ModelFileError(
            f"{path}: is a legacy PyTorch file with unknown protocol version {version!r:.20}; "
            "re-save it with a recent torch.save."
        )
    sys_info = unpickle_one(stream, path, records)
    if not isinstance(sys_info, dict):
        raise ValueError("bad system info record in a legacy checkpoint")
    reader = _LegacyReader(path, len(data))
    obj = unpickle_one(stream, path, records, reader)
    keys = unpickle_one(stream, path, records)
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


def unpickle_bytes(data: bytes, path: str) -> tuple[Any, str, int]:
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
    except _PARSE_ERRORS as exc:  # the parser's own words ("list indices must be integers") name no fix
        raise ModelFileError(
            f"{path}: is truncated or corrupt and cannot be read as a PyTorch checkpoint (its pickled data does not "
            f"decode); {ARCHIVE_HINT}."
        ) from exc
    _not_a_checkpoint(path, "it is neither a torch zip archive nor a pickle")


def read_file(path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    from toolkit.io.files import special_kind

    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such file; check the path or download the weights first.")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a checkpoint file; pass the .pt file inside it.")
    kind = special_kind(p.stat().st_mode)
    if kind is not None:  # a named pipe or a device would block or never end
        raise ModelFileError(f"{p}: is {kind}, not a checkpoint file; give the path of the .pt file itself.")
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
    p, data = read_file(path)
    obj, _fmt, _n = unpickle_bytes(data, str(p))
    return obj


