"""A yolokit TensorRT engine file: ``b"YKTR"`` magic, a 4-byte little-endian length, that many bytes of UTF-8 JSON
(the :class:`ModelMeta`, with ``runtime_versions["tensorrt"]`` and ``extra["gpu"]`` = name and compute capability of
the GPU it was built on), then the serialized engine. A TensorRT engine only runs with the TensorRT version and the
GPU it was built for, so :func:`check_compat` refuses any other with the fix (rebuild). Pure functions: no TensorRT
needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ModelFileError
from toolkit.meta import ModelMeta

FORMAT = "tensorrt"
MAGIC = b"YKTR"
_LEN = struct.Struct("<I")
HEADER_PREFIX = len(MAGIC) + _LEN.size
MAX_HEADER = 16 * 1024 * 1024
REBUILD_HINT = "rebuild it with `yolokit export WEIGHTS --to trt`"


def pack_engine(meta: ModelMeta, engine: bytes) -> bytes:
    """The engine file's bytes: magic, header length, metadata JSON, engine."""
    header = meta.to_json().encode()
    return MAGIC + _LEN.pack(len(header)) + header + bytes(engine)


def _parse_header(prefix: bytes, head: bytes, name: str) -> tuple[ModelMeta, int]:
    if len(prefix) < HEADER_PREFIX or prefix[:4] != MAGIC:
        raise ModelFileError(f"{name}: not a yolokit TensorRT engine (no YKTR header; a plain trtexec engine "
                             f"carries no class names or input size); {REBUILD_HINT}")
    (length,) = _LEN.unpack(prefix[4:HEADER_PREFIX])
    if length > MAX_HEADER or len(head) < length:
        raise ModelFileError(f"{name}: the engine header is truncated or corrupt; {REBUILD_HINT}")
    try:
        meta = ModelMeta.from_json(head[:length].decode())
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{name}: the engine's yolokit metadata is unreadable ({e}); {REBUILD_HINT}") from None
    return meta, HEADER_PREFIX + length


def unpack_engine(data: bytes, name: str = "engine") -> tuple[ModelMeta, bytes]:
    """``(meta, engine bytes)`` of an engine file's contents; ModelFileError without a valid header."""
    meta, offset = _parse_header(data[:HEADER_PREFIX], data[HEADER_PREFIX:], name)
    engine = data[offset:]
    if not engine:
        raise ModelFileError(f"{name}: the engine file is truncated (header only); {REBUILD_HINT}")
    return meta, engine


def read_engine_meta(path: Path) -> ModelMeta:
    """The metadata of an engine file, read from its header alone (no TensorRT needed)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such TensorRT engine file")
    with path.open("rb") as f:
        prefix = f.read(HEADER_PREFIX)
        length = _LEN.unpack(prefix[4:])[0] if len(prefix) == HEADER_PREFIX and prefix[:4] == MAGIC else 0
        head = f.read(min(length, MAX_HEADER))
    return _parse_header(prefix, head, str(path))[0]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def check_compat(meta: ModelMeta, trt_version: str, gpu: GpuInfo, name: str = "engine") -> None:
    """Refuse an engine built by another TensorRT version or for another GPU, saying how to fix it."""
    fix = "rebuild the engine on this machine with `yolokit export WEIGHTS --to trt`"
    built = meta.runtime_versions.get("tensorrt")
    if meta.format != FORMAT or not built:
        raise ModelFileError(f"{name}: the header does not describe a TensorRT engine; {fix}")
    if built != trt_version:
        raise ModelFileError(f"{name}: built with TensorRT {built}, but this machine has TensorRT {trt_version}; "
                             f"engines only run with the TensorRT version that built them; {fix}")
    want = meta.extra.get("gpu") or {}
    if not isinstance(want, dict) or "compute_capability" not in want:
        raise ModelFileError(f"{name}: the header does not name the GPU the engine was built for; {fix}")
    if str(want["compute_capability"]) != gpu.compute_capability or want.get("name") != gpu.name:
        raise ModelFileError(f"{name}: built for {want.get('name')} (compute capability "
                             f"{want['compute_capability']}), but this GPU is {gpu.name} (compute capability "
                             f"{gpu.compute_capability}); {fix}")
