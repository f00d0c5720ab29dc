"""The server's parts without a server: the KServe v2 encoding (read back by tritonclient's own decoders), the
dynamic batcher (with plain callables), the request parameters against their declarations, the bind check."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import numpy as np
import pytest

from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.meta import BakedNMS, ModelMeta
from toolkit.ops import NMSOptions
from toolkit.serve.batcher import Batcher, Expired, QueueFull
from toolkit.serve.options import ServeOptions, ServeSettings, is_loopback, request_nms
from toolkit.serve.protocol import (
    ProtocolError,
    Tensor,
    encode_http,
    fill_grpc,
    pack_bytes,
    parse_grpc,
    parse_http,
    unpack_bytes,
)

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (dev extra)")


# ------------------------------------------------------------------------------------------------- the protocol
def test_bytes_elements_are_length_prefixed_little_endian() -> None:
    elements = [b"", b"\xff\xd8abc", bytes(range(256))]
    packed = pack_bytes(elements)
    assert packed[:4] == b"\x00\x00\x00\x00" and packed[4:8] == struct.pack("<I", 5)
    assert [bytes(e) for e in unpack_bytes(packed, 3, "x")] == elements
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    theirs = serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert theirs == packed and list(deserialize_bytes_tensor(packed)) == elements
    with pytest.raises(ProtocolError, match="ends before element 2"):
        unpack_bytes(packed[:13], 3, "x")
    with pytest.raises(ProtocolError, match="element 1 claims 5 bytes, but only 4 follow"):
        unpack_bytes(packed[:12], 3, "x")
    with pytest.raises(ProtocolError, match="follow its 2 BYTES elements"):
        unpack_bytes(packed, 2, "x")


def test_a_binary_request_is_read_as_tritonclient_writes_it() -> None:
    from tritonclient.http._utils import _get_inference_request

    a = tritonclient_http.InferInput("images", [2], "BYTES")
    a.set_data_from_numpy(np.array([b"one", b"image two"], dtype=object))
    b = tritonclient_http.InferInput("extra", [2, 3], "FP32")
    b.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3), binary_data=False)
    c = tritonclient_http.InferInput("ints", [3], "INT32")
    c.set_data_from_numpy(np.array([1, -2, 3], np.int32))
    body, json_size = _get_inference_request([a, b, c], "req-7", [tritonclient_http.InferRequestedOutput(
        "det_boxes", binary_data=False)], 0, False, False, 0, None, {"conf": 0.5})
    req = parse_http(body, json_size)
    assert req.id == "req-7" and req.parameters == {"conf": 0.5}
    assert [bytes(e) for e in req.inputs[0].data] == [b"one", b"image two"]
    assert req.inputs[1].data.dtype == np.float32 and req.inputs[1].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert req.inputs[2].data.tolist() == [1, -2, 3]
    assert req.outputs == {"det_boxes": False} and not req.binary("det_boxes")


_ONE = b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}'
_SIZED = b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}'


@pytest.mark.parametrize(("body", "length", "message"), [
    (b"{not json", None, "not valid JSON"),
    (b'{"inputs": []}', None, "must have 'inputs'"),
    (b'{"inputs": [{"name": "images", "datatype": "JPEG", "shape": [1], "data": ["x"]}]}', None, "not a KServe"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [2], "data": [1, "a"]}]}', None, "takes 2 numbers"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}', None, "takes 3 numbers"),
    (_SIZED + b"\x01\x00\x00\x00x", len(_SIZED), "runs past the end"),
    (_SIZED + b"\x01\x00\x00\x00x", None, "needs the Inference-Header-Content-Length header"),
    (_SIZED + b"\x01\x00\x00\x00x", len(_SIZED) + 3, "first 109 bytes, its JSON by its Inference-Header-Content-"
     "Length, are not valid JSON \\(Extra data at byte 106\\); the header must be the exact length"),
    (_ONE + b"junk", len(_ONE), "4 bytes follow the JSON"),
    (_ONE, 500, "says 500 bytes"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1], "data": []}]}', None, "whole numbers"),
    # each of these was a 500 ("internal error: unhashable type: 'list'", "maximum recursion depth exceeded")
    (b'{"inputs": [{"name": "images", "datatype": [], "shape": [1], "data": [1]}]}', None, "not a KServe"),
    (b'{"inputs": [{"name": "images", "datatype": {}, "shape": [1], "data": [1]}]}', None, "not a KServe"),
    (b"[" * 5000 + b"]" * 5000, None, "nested too deeply"),
    (_ONE[:-1] + b', "outputs": [{"name": "num_dets", "parameters": {"binary_data": "false"}}]}', None,
     "binary_data must be true or false"),
    (_ONE[:-1] + b', "parameters": {"binary_data_output": "no"}}', None, "binary_data_output must be true or false"),
    # JSON's true is not a number (these were taken as 1)
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [2], "data": [true, false]}]}', None,
     "takes 2 numbers in 'data', got 2 true/false values"),
    (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1], "data": [true]}]}', None, "takes 1 number in"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [2], "data": [1.5, true]}]}', None,
     "got true/false among them"),
    (b'{"inputs": [{"name": "images", "datatype": "INT32", "shape": [2, 1], "data": [[1], [false]]}]}', None,
     "got true/false among them"),
    # each of these was a 500, a misleading reason, a numpy warning on stderr, or a 200
    (b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}', None,
     "not text UTF-8 can hold"),
    (b'{"parameters": {"max_det": 1' + b"0" * 5000 + b'}, "inputs": []}', None,
     "a number of more than 4300 digits\\)$"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [2], "data": [1e39, 1]}]}', None,
     "out of FP32's range"),
    (_ONE[:-1] + b', "outputs": [{"name": "num_dets"}, {"name": "num_dets"}]}', None, "num_dets is asked for twice"),
    # each said "got an uneven list of values"
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": null}]}', None, "got null$"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": {"a": 1}}]}', None, "got an object$"),
    (b'{"inputs": [{"name": "images", "datatype": "INT64", "shape": [1], "data": [1' + b"0" * 30 + b']}]}', None,
     "got a list whose values are not all numbers within the type's range"),
])
def test_malformed_requests_are_one_sentence(body: bytes, length: int | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as e:
        parse_http(body, length)
    assert e.value.status == 400 and "\n" not in str(e.value)


def test_a_response_is_what_tritonclient_reads_back() -> None:
    boxes = np.array([[[1.5, 2.25, 3.0, 4.0]]], np.float32)
    outputs = [Tensor("det_boxes", "FP32", boxes.shape, boxes), Tensor("num_dets", "INT32", (1, 1),
                                                                         np.array([[1]], np.int32))]
    for binary in ({"det_boxes": True, "num_dets": False}, {}, {"det_boxes": True, "num_dets": True}):
        body, length = encode_http("m", "1", "id9", outputs, binary)
        result = tritonclient_http.InferResult.from_response_body(body, header_length=length)
        assert np.array_equal(result.as_numpy("det_boxes"), boxes)
        assert result.as_numpy("num_dets").tolist() == [[1]] and result.get_response()["id"] == "id9"
        assert (length is None) == (not any(binary.values()))


def test_grpc_messages_take_raw_and_typed_contents() -> None:
    from tritonclient.grpc import service_pb2 as theirs

    from toolkit.serve.kserve import kserve_v2_pb2 as ours

    req = theirs.ModelInferRequest(model_name="m", id="r")
    inp = req.inputs.add(name="images", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(pack_bytes([b"jpeg"]))
    req.parameters["conf"].double_param = 0.5
    req.parameters["classes"].string_param = "0,2"
    parsed = parse_grpc(ours.ModelInferRequest.FromString(req.SerializeToString()))
    assert [bytes(e) for e in parsed.inputs[0].data] == [b"jpeg"] and parsed.parameters == {"conf": 0.5,
                                                                                             "classes": "0,2"}
    del req.raw_input_contents[:]
    inp.contents.bytes_contents.append(b"jpeg2")
    assert [bytes(e) for e in parse_grpc(ours.ModelInferRequest.FromString(req.SerializeToString())).inputs[0].data] \
        == [b"jpeg2"]
    scores = np.array([[0.5, 0.25]], np.float32)
    msg = fill_grpc(ours.ModelInferResponse(), "m", "1", "r", [Tensor("det_scores", "FP32", (1, 2), scores)])
    from tritonclient.grpc import InferResult

    back = InferResult(theirs.ModelInferResponse.FromString(msg.SerializeToString()))
    assert np.array_equal(back.as_numpy("det_scores"), scores)
    for datatype, field_name, values in (("UINT8", "uint_contents", [1, 2, 300]), ("INT8", "int_contents", [-1000])):
        bad = theirs.ModelInferRequest(model_name="m")  # a value out of its type's range was gRPC's INTERNAL
        t = bad.inputs.add(name="images", datatype=datatype, shape=[len(values)])
        getattr(t.contents, field_name).extend(values)
        with pytest.raises(ProtocolError, match=f"a value does not fit {datatype}") as e:
            parse_grpc(ours.ModelInferRequest.FromString(bad.SerializeToString()))
        assert e.value.status == 400
    # accepted before, each of them: data in two places, an output asked for twice
    both = theirs.ModelInferRequest(model_name="m")
    t = both.inputs.add(name="images", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"jpeg")
    both.raw_input_contents.append(pack_bytes([b"jpeg"]))
    two_kinds = theirs.ModelInferRequest(model_name="m")
    t = two_kinds.inputs.add(name="images", datatype="FP32", shape=[1])
    t.contents.fp32_contents.append(0.5)
    t.contents.bytes_contents.append(b"x")
    twice = theirs.ModelInferRequest(model_name="m")
    twice.inputs.add(name="images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"jpeg")
    twice.outputs.add(name="num_dets")
    twice.outputs.add(name="num_dets")
    for bad, message in ((both, "in raw_input_contents and in contents"), (twice, "num_dets is asked for twice"),
                         (two_kinds, "contents.bytes_contents holds values too")):
        with pytest.raises(ProtocolError, match=message) as e:
            parse_grpc(ours.ModelInferRequest.FromString(bad.SerializeToString()))
        assert e.value.status == 400 and "\n" not in str(e.value)


def test_tensor_parameters_are_the_binary_extensions_alone() -> None:
    """What KServe's client copies into a gRPC request from its HTTP form (binary_data_size on an input, binary_data
    on an output) is taken; what asks for an extension the server does not offer was ignored, and is refused."""
    from tritonclient.grpc import service_pb2 as theirs

    from toolkit.serve.kserve import kserve_v2_pb2 as ours

    req = theirs.ModelInferRequest(model_name="m")
    inp = req.inputs.add(name="images", datatype="BYTES", shape=[1])
    inp.parameters["binary_data_size"].int64_param = 8
    req.raw_input_contents.append(pack_bytes([b"jpeg"]))
    out = req.outputs.add(name="det_scores")
    out.parameters["binary_data"].bool_param = True
    assert parse_grpc(ours.ModelInferRequest.FromString(req.SerializeToString())).outputs == {"det_scores": None}
    out.parameters["classification"].int64_param = 2
    with pytest.raises(ProtocolError, match="^output det_scores: parameter 'classification' asks for Triton's "
                                            "classification extension") as e:
        parse_grpc(ours.ModelInferRequest.FromString(req.SerializeToString()))
    assert e.value.status == 400
    del out.parameters["classification"]
    inp.parameters["shared_memory_offset"].int64_param = 0
    with pytest.raises(ProtocolError, match="^input images: parameter 'shared_memory_offset' asks for Triton's "
                                            "shared-memory extensions"):
        parse_grpc(ours.ModelInferRequest.FromString(req.SerializeToString()))
    with pytest.raises(ProtocolError, match="^output num_dets: parameter 'binary' is not one this server takes; did "
                                            "you mean 'binary_data'\\?$"):
        parse_http(_ONE[:-1] + b', "outputs": [{"name": "num_dets", "parameters": {"binary": true}}]}', None)


# ------------------------------------------------------------------------------------------------- the batcher
def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_batcher_gathers_same_key_items_and_answers_each_its_own() -> None:
    calls: list[list[Any]] = []

    def run(items: list[Any]) -> list[Any]:
        calls.append(list(items))
        time.sleep(0.05)
        return [x * 10 for x in items]

    async def main() -> list[Any]:
        b = Batcher([run], max_batch=4, max_delay=0.5, max_queue=100)
        b.start()
        tickets = [b.admit() for _ in range(6)]  # all admitted, so the first waits for the others
        futures = []
        for i, t in enumerate(tickets):
            futures += t.submit([i], ["a" if i % 2 == 0 else "b"], deadline=1e18)
        out = await asyncio.gather(*futures)
        for t in tickets:
            t.release()
        await b.close()
        return out

    assert _run(main()) == [0, 10, 20, 30, 40, 50]
    assert sorted(len(c) for c in calls) == [3, 3] and all(len({x % 2 for x in c}) == 1 for c in calls)


def test_a_lone_request_does_not_wait_for_company() -> None:
    async def main() -> float:
        b = Batcher([lambda items: items], max_batch=8, max_delay=5.0, max_queue=10)
        b.start()
        t = b.admit()
        t0 = time.perf_counter()
        (fut,) = t.submit(["x"], ["k"], deadline=1e18)
        assert await fut == "x"
        t.release()
        await b.close()
        return time.perf_counter() - t0

    assert _run(main()) < 1.0  # max_delay is 5 s: nothing else was being prepared, so it ran at once


def test_admission_bounds_the_work_ahead_by_the_measured_time_per_image() -> None:
    """Past max_wait of work ahead (images in the server x the measured seconds per image, over the instances) a
    request is refused at once, naming the bound; never below a full batch per instance, nor before any timing."""

    def run(items: list[Any]) -> list[Any]:
        time.sleep(0.1 * len(items))  # 0.1 s per image
        return items

    async def main() -> None:
        b = Batcher([run], max_batch=2, max_delay=0.0, max_queue=100, max_wait=0.25)
        b.start()
        first = [b.admit() for _ in range(5)]  # nothing timed yet: only max_queue bounds admission
        for t in first:
            t.release()
        t = b.admit()
        (f,) = t.submit(["x"], ["k"], deadline=1e18)
        await f
        t.release()
        assert b.per_image is not None and 0.09 < b.per_image < 0.5
        held = [b.admit(), b.admit()]  # a full batch is always admitted
        assert b.work_ahead() == pytest.approx(2 * b.per_image)
        while (b.work_ahead() or 0) <= 0.25:
            held.append(b.admit())
        with pytest.raises(QueueFull, match="--max-wait-ms is 250"):
            b.admit()
        for h in held:
            h.release()
        b.admit().release()  # room again once they left
        await b.close()

    _run(main())


def test_admission_is_bounded_and_cancelled_or_late_work_is_dropped() -> None:
    ran: list[Any] = []

    def run(items: list[Any]) -> list[Any]:
        ran.extend(items)
        time.sleep(0.3)
        return items

    async def main() -> None:
        b = Batcher([run], max_batch=1, max_delay=0.0, max_queue=3)
        b.start()
        t1, t2, t3 = b.admit(), b.admit(), b.admit()
        with pytest.raises(QueueFull):
            b.admit()
        loop = asyncio.get_running_loop()
        (f1,) = t1.submit(["first"], ["k"], deadline=1e18)
        (f2,) = t2.submit(["cancelled"], ["k"], deadline=1e18)
        (f3,) = t3.submit(["late"], ["k"], deadline=loop.time() + 0.1)
        await asyncio.sleep(0.05)
        assert b.depth == 2
        f2.cancel()
        await asyncio.sleep(0.01)
        assert b.depth == 1
        assert await f1 == "first"
        with pytest.raises(Expired):
            await f3
        for t in (t1, t2, t3):
            t.release()
        assert b.admitted == 0
        b.admit().release()  # room again
        await b.close()

    _run(main())
    assert ran == ["first"]


def test_one_refusal_names_every_bad_image_within_a_bounded_line() -> None:
    """Every bad image of a request is named; one reason is written once; the line stays short enough for gRPC's
    trailing metadata (8 KiB) whatever the request holds (256 images, each with a reason of its own)."""
    from toolkit.serve.service import MAX_REASONS, bad_images

    assert bad_images([("images[1]", "images[1]: truncated JPEG"), ("images[2]", "images[2]: text, not an image"),
                       ("images[4]", "images[4]: truncated JPEG")]) \
        == "images[1], images[4]: truncated JPEG; images[2]: text, not an image"
    same = bad_images([(f"images[{i}]", f"images[{i}]: text, not an image") for i in range(256)])
    assert same.startswith("images[0], images[1], ") and same.endswith("images[255]: text, not an image")
    each = bad_images([(f"images[{i}]", f"images[{i}]: the file is {i} bytes over the limit") for i in range(256)])
    assert len(each) < MAX_REASONS + 100 and each.startswith("images[0]: the file is 0 bytes over the limit; ")
    shown = each.count("bytes over the limit")
    assert each.endswith(f"; and {256 - shown} more bad image(s)") and "\n" not in each


def test_a_request_timeout_past_timeout_s_is_capped_as_the_guide_says() -> None:
    """A request's own timeout above --timeout-s was cut to --timeout-s, while the guide's limits column said "at most
    --timeout-s", as the other rows say what is refused: the guide now says what the server does."""
    from pathlib import Path

    from toolkit.serve.service import Deadline, Service

    svc = Service(ServeOptions(timeout_s=2.0), "m")
    assert svc._deadline(10.0, 5_000_000) == Deadline(12.0, 2.0)  # 5 s asked: the server's 2
    assert svc._deadline(10.0, "500000") == Deadline(10.5, 0.5)
    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "serving.md"
    row = next(line for line in guide.read_text().splitlines() if line.startswith("| `timeout` |"))
    assert row.endswith("| a whole number above 0; capped at `--timeout-s` (a longer one gets the server's, not a "
                        "refusal) |"), row


# ------------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("name", ["a/b", "a?b", "a#b", "50%", "a\\b", " x", "x ", ".", "..", "a\tb"])
def test_a_model_name_that_cannot_go_in_a_url_path_is_refused(name: str) -> None:
    """--name a/b was taken ("a/b ready") and every HTTP route of the model answered 404 while gRPC took it."""
    with pytest.raises(InputError, match="--name .*: a model's name goes in the URL path"):
        ServeOptions(name=name)
    for fine in ("yolov5n", "yolov5n.int8", "my-model_2", "\u043c\u043e\u0434\u0435\u043b\u044c"):
        assert ServeOptions(name=fine).name == fine


def test_request_parameters_are_checked_against_the_declarations() -> None:
    config, meta = DetectorConfig(), ModelMeta(names={0: "a", 1: "b"})
    base = NMSOptions()
    assert request_nms(config, meta, base, {"max_det": "9" * 400}, "m").max_det == int("9" * 400)  # not a 500
    got = request_nms(config, meta, base, {"conf": "0.5", "classes": "0,1", "max_det": 10}, "m")
    assert (got.conf, got.classes, got.max_det, got.iou) == (0.5, (0, 1), 10, base.iou)
    assert request_nms(config, meta, base, {"classes": [1]}, "m").classes == (1,)
    for values, message in (({"conf": 2}, "parameter conf must be in \\[0, 1\\], got 2"),
                            ({"max_det": 0}, "parameter max_det must be at least 1"),
                            ({"iou": "x"}, "parameter iou takes a number"),
                            ({"max_det": 2.5}, "takes a whole number"),
                            ({"max_det": "1_0"}, "takes a whole number"),  # int() read 10
                            ({"conf": "\u0660.5"}, "takes a number"),  # float() read Arabic-Indic digits
                            ({"classes": "a"}, "takes class ids"),
                            ({"classes": "0," + "9" * 5000}, "takes class ids like 0,2 .*\\.\\.\\.$"),  # int(): 500
                            # 309 to 4300 digits: float() of them raised OverflowError, a 500
                            ({"classes": "0," + "9" * 400}, "parameter classes 9{50}.*: this model's classes are 0-1"),
                            ({"conf": 10**400}, "parameter conf must be in \\[0, 1\\], got 1000"),
                            ({"classes": [999]}, "parameter classes 999: this model's classes are 0-1"),  # was 200
                            ({"classes": -1}, "parameter classes must be at least 0, got -1$"),  # was "got (-1,)"
                            ({"agnostic": True}, "not one this server takes")):
        with pytest.raises(InputError, match=message):
            request_nms(config, meta, base, values, "m")


def test_a_model_with_nms_inside_refuses_what_its_nms_cannot_give() -> None:
    meta = ModelMeta(names={0: "a"}, nms=BakedNMS(conf=0.25, iou=0.45, max_det=100, agnostic=False))
    base = NMSOptions(max_det=100)
    assert request_nms(DetectorConfig(max_det=100), meta, base, {"conf": 0.5, "max_det": 10}, "m").conf == 0.5
    with pytest.raises(InputError, match="has NMS inside.*parameter conf 0.1 is below the exported --conf 0.25"):
        request_nms(DetectorConfig(max_det=100), meta, base, {"conf": 0.1}, "m")
    with pytest.raises(InputError, match="parameter iou 0.6 differs"):
        request_nms(DetectorConfig(max_det=100), meta, base, {"iou": 0.6}, "m")


def test_listening_beyond_loopback_needs_a_key_or_insecure() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    ServeOptions().check_exposure()
    ServeOptions(host="0.0.0.0", api_key="k").check_exposure()
    ServeOptions(host="0.0.0.0", insecure=True).check_exposure()
    with pytest.raises(InputError, match="--host 0.0.0.0 listens beyond this machine.*--api-key"):
        ServeOptions(host="0.0.0.0").check_exposure()
    with pytest.raises(InputError, match="--api-key .* is empty"):
        ServeOptions(api_key=" ")
    with pytest.raises(InputError, match="no setting 'vid_stride'"):
        ServeSettings.of(vid_stride=2)
    s = ServeSettings.of(conf=0.5, port=9000, max_body=10)
    assert (s.detector.conf, s.server.port, s.server.max_body) == (0.5, 9000, 10)


def test_metrics_use_tritons_exact_names() -> None:
    from toolkit.serve.metrics import ServerMetrics

    metrics = ServerMetrics("m")
    metrics.executed(4, 0.01, [0.001] * 4)
    metrics.succeeded(0.02)
    metrics.failed("REJECTED", 0.0)
    text = metrics.exposition()[0].decode()
    for line in ('nv_inference_count{model="m",version="1"} 4.0', 'nv_inference_exec_count{model="m",version="1"} 1.0',
                 'nv_inference_request_success{model="m",version="1"} 1.0',
                 'nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 1.0'):
        assert line in text.splitlines(), line
    assert "_total" not in "".join(x for x in text.splitlines() if x.startswith("nv_"))
    json.dumps(text)  # plain text


def test_the_http_listener_gives_connections_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY on the connections of a listener whose protocol says TCP; without it, every answer on
    a kept-alive connection waited 40 ms (Nagle's algorithm against the client's delayed ACK: measured here, a
    GET /v2/health/ready took 44 ms instead of 1)."""
    import socket

    from tests.helpers.ports import free_port
    from toolkit.serve.server import listen

    async def main() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                sock = transport.get_extra_info("socket")
                got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        port = free_port()
        server = await asyncio.get_running_loop().create_server(Probe, sock=listen("127.0.0.1", port, "HTTP"))
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(main()) != 0
    with pytest.raises(InputError, match="cannot listen on 127.0.0.1:.*--port"):
        taken = listen("127.0.0.1", 0, "HTTP")
        try:
            listen("127.0.0.1", taken.getsockname()[1], "HTTP")
        finally:
            taken.close()


@pytest.mark.parametrize("value", ["1_0", "+5", "-1", "٣", "", "ten", " 12x", "1" * 5000])
def test_the_binary_headers_length_is_a_plain_byte_count(value: str) -> None:
    """Only ASCII digits, at most 18 (int() took "1_0" as 10, "+5" as 5 and Arabic-Indic digits as numbers, and
    raised a ValueError on more than 4300 digits: a 500)."""
    from toolkit.serve.protocol import header_length

    with pytest.raises(ProtocolError, match="must be a byte count") as e:
        header_length(value)
    assert e.value.status == 400
    assert header_length(" 42 ") == 42 and header_length(None) is None


def test_every_http_error_is_the_protocols_error_object() -> None:
    """Starlette's own 404 and 405 too, and the routes answer before any model is loaded (503, not a crash)."""
    import httpx

    from toolkit.serve.http import create_app
    from toolkit.serve.service import Service

    async def main() -> None:
        transport = httpx.ASGITransport(app=create_app(service=Service(ServeOptions(), "m")))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/nowhere")).json() == {"error": "no route /nowhere"}
            r = await client.get("/v1/detect")
            assert r.status_code == 405 and r.json() == {"error": "GET is not allowed on /v1/detect"}
            assert (await client.get("/v2/health/live")).json() == {"live": True}
            assert (await client.get("/v2/health/ready")).status_code == 503
            r = await client.post("/v2/models/m/infer", content=b"{}")
            assert r.status_code == 503 and "still loading" in r.json()["error"] and r.headers["Retry-After"] == "1"
            assert (await client.get("/v2/models/other")).status_code == 404

    asyncio.run(main())
