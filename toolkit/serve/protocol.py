"""The KServe v2 inference protocol (the Open Inference Protocol) and Triton's binary tensor extension, as plain
functions over plain types, apart from any transport: a request's body (JSON, then the binary tensors it announces)
or a gRPC ``ModelInferRequest`` -> :class:`InferRequest`; output tensors -> the response body or message.

What the extension defines, and this module does:

* a tensor in binary is little-endian, row-major, without padding; a BYTES element is a 4-byte little-endian
  length, then its bytes (:func:`pack_bytes`, :func:`unpack_bytes`);
* over HTTP, an input whose ``parameters`` hold ``binary_data_size`` takes that many bytes from what follows the
  JSON (whose length the ``Inference-Header-Content-Length`` header gives), in input order; an output is returned in
  binary when its requested ``parameters`` say ``binary_data: true``, or when the request's ``parameters`` say
  ``binary_data_output: true`` and the output says nothing; the response then carries its own
  ``Inference-Header-Content-Length``;
* over gRPC, inputs may come in ``raw_input_contents`` (one per input, in order) and outputs always go in
  ``raw_output_contents``, as Triton sends them.

An input's or a requested output's ``parameters`` hold the extension's alone: Triton's classification and
shared-memory extensions, which tritonclient asks for there, are refused rather than ignored.

Errors are :class:`ProtocolError` (an :class:`~toolkit.errors.InputError`) carrying the HTTP status to answer.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.errors import InputError
from toolkit.options import ascii_digits, nearest

HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header (HTTP header names: any case)
# what an input's and a requested output's "parameters" may hold: the binary tensor extension's. Over gRPC they say
# nothing (raw contents are binary already), but KServe's client copies them there from its HTTP form
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data",)
# Triton's extensions that tritonclient asks for through those parameters, which this server does not offer
_NOT_OFFERED = {"classification": "Triton's classification extension",
                **dict.fromkeys(("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"),
                                "Triton's shared-memory extensions")}

DTYPES: dict[str, Any] = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                          "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
                          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
BYTES = "BYTES"

# the typed field of InferTensorContents that holds each datatype (gRPC without raw contents)
_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents"}


class ProtocolError(InputError):
    """A request the server cannot take, with the HTTP ``status`` to answer (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    """A named tensor: ``data`` a numpy array of ``shape`` (numeric datatypes) or a list of bytes (BYTES, one per
    element, row-major); ``text``: BYTES elements that came as JSON strings (their UTF-8), not as bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    text: bool = False

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"


@dataclass
class InferRequest:
    """A decoded inference request. ``outputs``: the outputs asked for, each with whether it was asked in binary
    (None: not said), or None when the request names none (all of them)."""

    inputs: list[Tensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bool | None] | None = None

    def binary(self, name: str) -> bool:
        """Whether output ``name`` goes back in binary (HTTP)."""
        asked = self.outputs.get(name) if self.outputs is not None else None
        return self.parameters.get("binary_data_output") is True if asked is None else asked


# ----------------------------------------------------------------------------------------------- tensor data
def pack_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES elements in the binary form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)


def unpack_bytes(buf: bytes | memoryview, count: int, name: str) -> list[memoryview]:
    """``count`` BYTES elements from their binary form (views into ``buf``, nothing copied)."""
    mv = memoryview(buf)
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(mv):
            raise ProtocolError(f"input {name}: its binary data ends before element {i} of {count} (each BYTES "
                                f"element is a 4-byte little-endian length, then its bytes)")
        (n,) = struct.unpack_from("<I", mv, pos)
        if pos + 4 + n > len(mv):
            raise ProtocolError(f"input {name}: element {i} claims {n} bytes, but only {len(mv) - pos - 4} follow")
        out.append(mv[pos + 4:pos + 4 + n])
        pos += 4 + n
    if pos != len(mv):
        raise ProtocolError(f"input {name}: {len(mv) - pos} bytes follow its {count} BYTES elements; the shape says "
                            f"{count} elements")
    return out


def _elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                        for d in value):
        raise ProtocolError(f"input {name}: shape must be a list of whole numbers, got {value!r}")
    return tuple(int(d) for d in value)


def from_binary(name: str, datatype: str, shape: tuple[int, ...], buf: bytes | memoryview) -> Tensor:
    """A tensor from its binary form (HTTP binary data, gRPC raw contents)."""
    count = _elements(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, unpack_bytes(buf, count, name))
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(buf) != count * dtype.itemsize:
        raise ProtocolError(f"input {name}: {datatype} {list(shape)} is {count * dtype.itemsize} bytes, but "
                            f"{len(buf)} came")
    return Tensor(name, datatype, shape, np.frombuffer(buf, dtype).reshape(shape))


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    """A tensor from its JSON ``data`` (nested or flat, row-major)."""
    count = _elements(shape)
    if datatype == BYTES:
        flat = list(_flatten(data))
        if len(flat) != count or not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input {name}: BYTES {list(shape)} takes {count} strings in 'data'; an image file "
                                f"is sent as binary data (the binary tensor extension), not in JSON")
        try:
            return Tensor(name, datatype, shape, [v.encode() for v in flat], text=True)
        except UnicodeEncodeError:  # a lone surrogate (\ud800): JSON allows it, UTF-8 has no bytes for it
            raise ProtocolError(f"input {name}: a BYTES element is not text UTF-8 can hold (a lone surrogate escape "
                                f"such as \\ud800); an image file is sent as binary data, not in JSON") from None
    try:
        arr = np.asarray(data)
    except ValueError:
        arr = np.asarray([], dtype=object)
    kinds = "b" if datatype == "BOOL" else "iuf" if datatype.startswith("FP") else "iu"  # true is not a number
    if datatype != "BOOL" and arr.dtype.kind in "iuf" and _holds_bools(data):  # numpy took each as 1 or 0
        raise ProtocolError(f"input {name}: {datatype} {list(shape)} takes numbers in 'data', got true/false among "
                            f"them")
    if arr.dtype.kind not in kinds or arr.size != count:
        what = {"b": "true/false values", "i": "numbers", "u": "numbers", "f": "numbers"}
        if not isinstance(data, list | int | float):  # null, an object, a string ("an uneven list" before)
            got = {type(None): "null", dict: "an object", str: "a string"}.get(type(data), type(data).__name__)
        elif arr.dtype.kind == "O":
            got = "a list whose values are not all numbers within the type's range, or whose rows differ in length"
        else:
            got = f"{arr.size} {what.get(arr.dtype.kind, 'strings')}"
        raise ProtocolError(f"input {name}: {datatype} {list(shape)} takes {count} "
                            f"{'true/false value' if datatype == 'BOOL' else 'number'}{'' if count == 1 else 's'} in "
                            f"'data', got {got}")
    if datatype in ("FP16", "FP32") and arr.dtype.kind == "f" and arr.size and \
            float(np.abs(arr[np.isfinite(arr)]).max(initial=0.0)) > float(np.finfo(DTYPES[datatype]).max):
        raise ProtocolError(f"input {name}: a value is out of {datatype}'s range (at most "
                            f"{float(np.finfo(DTYPES[datatype]).max):.4g} in magnitude)")
    return Tensor(name, datatype, shape, arr.reshape(shape).astype(DTYPES[datatype]))


def json_text_reason(data: bytes | memoryview) -> str:
    """Why a BYTES element sent as a JSON string is no image, and the fix: JSON has no bytes, so the server gets the
    string's text; base64 text (a data: URL too) is told apart, as the usual mistake."""
    text = bytes(data).strip()
    if text[:5].lower() == b"data:" and b";base64," in text[:100]:
        text = text.split(b",", 1)[1]
    compact = b"".join(text.split())  # MIME base64 wraps its lines
    what = "base64 text" if len(compact) >= 16 and _BASE64.fullmatch(compact) else "text"
    return (f"{what}, not an image file: a BYTES element in JSON is text; send the image file's own bytes as binary "
            f"data (the binary tensor extension: tritonclient.http's set_data_from_numpy(..., binary_data=True), its "
            f"default), or the file to /v1/detect")


_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")  # the standard alphabet, or the URL-safe one


def _holds_bools(data: Any) -> bool:
    """Whether a regular nested list of numbers holds a JSON true or false (numpy reads them as 1 and 0)."""
    if not isinstance(data, list):
        return data is True or data is False
    flat = np.asarray(data, dtype=object).ravel()
    return any(v is True or v is False for v in flat)


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, list):
        for v in data:
            yield from _flatten(v)
    else:
        yield data


# ----------------------------------------------------------------------------------------------------- HTTP
def header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header's value, checked."""
    if value is None:
        return None
    text = value.strip()
    # int() would also take "1_0", "+5" and other digits than 0-9, and refuse more than 4300 digits with a ValueError
    if not ascii_digits(text) or len(text) > 18:
        raise ProtocolError(f"Inference-Header-Content-Length must be a byte count, got {value[:40]!r}")
    return int(text)


def parse_http(body: bytes, json_length: int | None) -> InferRequest:
    """An inference request's HTTP body: its JSON (all of it, or the first ``json_length`` bytes, the
    ``Inference-Header-Content-Length``), then the binary data of the inputs that announce ``binary_data_size``."""
    mv = memoryview(body)
    if json_length is not None and json_length > len(mv):
        raise ProtocolError(f"Inference-Header-Content-Length says {json_length} bytes of JSON, but the body is "
                            f"{len(mv)} bytes")
    head, binary = (mv, mv[:0]) if json_length is None else (mv[:json_length], mv[json_length:])
    try:
        doc = json.loads(bytes(head))
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply to be a KServe v2 request") from None
    except (ValueError, UnicodeDecodeError) as e:
        malformed = isinstance(e, (json.JSONDecodeError, UnicodeDecodeError))  # not a number of 4300 digits
        if malformed and json_length is not None:  # the header was named only when it was missing
            raise ProtocolError(f"the request's first {json_length} bytes, its JSON by its "
                                f"Inference-Header-Content-Length, are not valid JSON ({_json_reason(e)}); the header "
                                f"must be the exact length of the JSON, which the binary data follows") from None
        hint = "; a body with binary data needs the Inference-Header-Content-Length header" if malformed else ""
        raise ProtocolError(f"the request is not valid JSON ({_json_reason(e)}){hint}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ProtocolError("the request must have 'inputs': a list of input tensors")
    tensors, offset = [], 0
    for i, spec in enumerate(inputs):
        name = spec.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"input {i} has no 'name'")
        datatype, shape, params = _datatype(spec.get("datatype"), name), _shape(spec.get("shape"), name), \
            _tensor_params(spec.get("parameters"), f"input {name}", INPUT_PARAMETERS)
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(f"input {name}: binary_data_size must be a byte count, got {size!r}")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name}: binary_data_size {size} runs past the end of the body ("
                                    f"{len(binary) - offset} bytes of binary data left)")
            tensors.append(from_binary(name, datatype, shape, binary[offset:offset + size]))
            offset += size
        elif "data" in spec:
            tensors.append(from_json(name, datatype, shape, spec["data"]))
        else:
            raise ProtocolError(f"input {name} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes follow the JSON that no input's binary_data_size accounts "
                            f"for")
    outputs = doc.get("outputs")
    wanted: dict[str, bool | None] | None = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        wanted = {}
        for o in outputs:
            if o["name"] in wanted:
                raise ProtocolError(f"output {o['name']} is asked for twice in 'outputs'")
            flag = _tensor_params(o.get("parameters"), f"output {o['name']}", OUTPUT_PARAMETERS).get("binary_data")
            if flag is not None and not isinstance(flag, bool):  # "false" read as true
                raise ProtocolError(f"output {o['name']}: binary_data must be true or false, got {flag!r}")
            wanted[o["name"]] = flag
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {request_id!r}")
    params = _params(doc.get("parameters"), "the request")
    flag = params.get("binary_data_output")
    if flag is not None and not isinstance(flag, bool):  # "no" was read as true
        raise ProtocolError(f"binary_data_output must be true or false, got {flag!r}")
    # none asked for is all of them, as the protocol says of 'outputs' left out, and as gRPC (which cannot tell an
    # empty list from none) answers: [] answered no outputs at all
    return InferRequest(tensors, request_id, params, wanted or None)


def _json_reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at byte {e.pos}"
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return "a number of more than 4300 digits"


def _datatype(value: Any, name: str) -> str:
    if not isinstance(value, str) or (value not in DTYPES and value != BYTES):
        raise ProtocolError(f"input {name}: datatype {value!r} is not a KServe v2 datatype (BOOL, UINT8..UINT64, "
                            f"INT8..INT64, FP16, FP32, FP64, BYTES)")
    return str(value)


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    return value


def _tensor_params(value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
    """An input's or a requested output's ``parameters``, refused in one line when they hold one this server does not
    implement: ignored, it looked taken (an output asked as a classification came back whole, with 200)."""
    params = _params(value, where)
    order = list(_NOT_OFFERED)  # one answer whatever order the parameters came in (a gRPC map has none)
    for key in sorted(params, key=lambda k: (order.index(k) if k in _NOT_OFFERED else len(order), k)):
        if key in known:
            continue
        extension = _NOT_OFFERED.get(key)
        if extension is not None:
            fix = ("ask for the output without it (it comes back whole, in the response)" if where.startswith("output")
                   else "send the input's data in the request")
            raise ProtocolError(f"{where}: parameter {key!r} asks for {extension}, which this server does not offer; "
                                f"{fix}")
        near = nearest(key, known)
        raise ProtocolError(f"{where}: parameter {key!r} is not one this server takes; "
                            + (f"did you mean {near!r}?" if near else f"it takes {', '.join(known)}"))
    return params


def encode_http(model: str, version: str, request_id: str, outputs: list[Tensor], binary: Mapping[str, bool]
                ) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON when binary data follows it (the
    ``Inference-Header-Content-Length`` to send; None: the body is all JSON)."""
    described, blobs = [], []
    for t in outputs:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary.get(t.name):
            blob = to_binary(t)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = [e.decode("utf-8", "replace") for e in t.data] if t.datatype == BYTES \
                else np.asarray(t.data).reshape(-1).tolist()
        described.append(out)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def to_binary(t: Tensor) -> bytes:
    if t.datatype == BYTES:
        return pack_bytes(t.data)
    return np.ascontiguousarray(t.data, dtype=np.dtype(DTYPES[t.datatype]).newbyteorder("<")).tobytes()


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return json.dumps({"error": message}).encode()


# ----------------------------------------------------------------------------------------------------- gRPC
def parameter_value(p: Any) -> Any:
    """An ``InferParameter``'s value (bool, int, str or float); None when unset."""
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _grpc_params(parameters: Any) -> dict[str, Any]:
    """A protobuf map of ``InferParameter`` as a plain dict."""
    return {k: parameter_value(v) for k, v in parameters.items()}


def parse_grpc(request: Any) -> InferRequest:
    """A ``ModelInferRequest`` (inputs in ``raw_input_contents`` or in their typed ``contents``)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    tensors = []
    for i, inp in enumerate(request.inputs):
        datatype, shape = _datatype(inp.datatype, inp.name), tuple(int(d) for d in inp.shape)
        _tensor_params(_grpc_params(inp.parameters), f"input {inp.name}", INPUT_PARAMETERS)
        if raw and inp.HasField("contents"):
            raise ProtocolError(f"input {inp.name}: its data is in raw_input_contents and in contents; send it in one")
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input {inp.name}: shape must be whole numbers, got {list(shape)}")
        if raw:
            tensors.append(from_binary(inp.name, datatype, shape, raw[i]))
            continue
        field_name = _CONTENTS.get(datatype)
        if field_name is None:
            raise ProtocolError(f"input {inp.name}: {datatype} comes only in raw_input_contents")
        values = getattr(inp.contents, field_name)
        others = sorted(f for f in set(_CONTENTS.values()) if f != field_name and len(getattr(inp.contents, f)))
        if others:
            raise ProtocolError(f"input {inp.name}: {datatype} data goes in contents.{field_name}, but "
                                f"contents.{others[0]} holds values too")
        if datatype == BYTES:
            if len(values) != _elements(shape):
                raise ProtocolError(f"input {inp.name}: BYTES {list(shape)} takes {_elements(shape)} elements, got "
                                    f"{len(values)}")
            tensors.append(Tensor(inp.name, datatype, shape, list(values)))
        else:
            try:
                arr = np.asarray(values, dtype=DTYPES[datatype])
            except (OverflowError, ValueError):
                raise ProtocolError(f"input {inp.name}: a value does not fit {datatype}") from None
            if arr.size != _elements(shape):
                raise ProtocolError(f"input {inp.name}: {datatype} {list(shape)} takes {_elements(shape)} values, "
                                    f"got {arr.size}")
            tensors.append(Tensor(inp.name, datatype, shape, arr.reshape(shape)))
    params = _grpc_params(request.parameters)
    for o in request.outputs:
        _tensor_params(_grpc_params(o.parameters), f"output {o.name}", OUTPUT_PARAMETERS)
    names = [o.name for o in request.outputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProtocolError(f"output {twice[0]} is asked for twice in 'outputs'")
    outputs: dict[str, bool | None] | None = dict.fromkeys(names) if names else None
    return InferRequest(tensors, request.id, params, outputs)


def fill_grpc(response: Any, model: str, version: str, request_id: str, outputs: list[Tensor]) -> Any:
    """A ``ModelInferResponse`` with ``outputs`` described and their data in ``raw_output_contents``."""
    response.model_name, response.model_version, response.id = model, version, request_id
    for t in outputs:
        out = response.outputs.add()
        out.name, out.datatype = t.name, t.datatype
        out.shape.extend(t.shape)
        response.raw_output_contents.append(to_binary(t))
    return response
