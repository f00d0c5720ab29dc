"""``yolokit serve`` as a user runs it (``python -m toolkit.cli serve``, on loopback ports) with real clients:
tritonclient.http and tritonclient.grpc, with and without binary data, httpx for /v1/detect, raw sockets where a
client library would hide what is tested. The answers are compared with ``yolokit run``'s label files on coco128,
byte for byte; every refusal of a bad or excess request is checked, then that the server still answers correctly.

The model is the session's default ONNX export of yolov5n (``exported``): ONNX Runtime gives an image bit for bit the
same output alone or in a batch (checked here too), so every answer must equal ``yolokit run``'s whatever batch it
rode in.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import serving
from tests.helpers.serving import Served
from toolkit.detections import Detections
from toolkit.io.decode import read_image
from toolkit.io.outputs import label_lines

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (dev extra)")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (dev extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")
pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'yolokit[serve]'")

from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
MODEL = "yolov5n"


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def onnx_model(exported: dict[str, Path]) -> Path:
    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed")
    return exported["onnx"]


@pytest.fixture(scope="module")
def images(coco128_images: Path) -> list[Path]:
    return sorted(coco128_images.glob("*.jpg"))


@pytest.fixture(scope="module")
def run_labels(images: list[Path], onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What ``yolokit run --save-txt --save-conf --nosave`` writes for each coco128 image ("" for none)."""
    from toolkit.jobs.run import RunOptions, run

    out = tmp_path_factory.mktemp("run")
    summary = run(RunOptions.of(source=str(images[0].parent), weights=str(onnx_model), save_txt=True, save_conf=True,
                                nosave=True, project=str(out), name="run"))
    assert summary.processed == 128 and not summary.failed
    labels = out / "run" / "labels"
    return {p.stem: (labels / f"{p.stem}.txt").read_text() if (labels / f"{p.stem}.txt").exists() else ""
            for p in images}


@pytest.fixture(scope="module")
def names(onnx_model: Path) -> dict[int, str]:
    from toolkit import Detector

    with Detector(onnx_model) as det:
        return det.names


@pytest.fixture(scope="module")
def server(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The main server: one instance, so that concurrent requests queue and batch; a batch waits up to 100 ms for
    the requests still being decoded."""
    s = serving.start(onnx_model, tmp_path_factory.mktemp("serve") / "serve.log", "--name", MODEL, "--instances", "1",
                      "--max-delay-ms", "100", "--max-wait-ms", "0")  # answers under concurrency, never shed
    try:
        yield s
    finally:
        assert s.stop() == 0, s.output()


def _labels(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, n: int, path: Path,
            names: dict[int, str]) -> str:
    """The label file ``yolokit run`` would write for these detections of ``path``."""
    shape = read_image(str(path)).shape[:2]
    det = Detections(boxes[:n], scores[:n], classes[:n], names, str(path), (shape[0], shape[1]))
    return label_lines(det.rounded(), save_conf=True)


def _result_labels(result: Any, i: int, path: Path, names: dict[int, str]) -> str:
    n = int(result.as_numpy("num_dets")[i, 0])
    return _labels(result.as_numpy("det_boxes")[i], result.as_numpy("det_scores")[i],
                   result.as_numpy("det_classes")[i], n, path, names)


def _bytes_input(module: Any, data: list[bytes], binary: bool = True) -> Any:
    inp = module.InferInput("images", [len(data)], "BYTES")
    if module is tritonclient_http:
        inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    else:
        inp.set_data_from_numpy(np.array(data, dtype=object))
    return inp


# ------------------------------------------------------------------------------------------------------ answers
def test_tritonclient_http_binary_answers_are_yolokit_runs_on_coco128(server: Served, images: list[Path],
                                                                      run_labels: dict[str, str],
                                                                      names: dict[int, str]) -> None:
    client = tritonclient_http.InferenceServerClient(server.http, concurrency=4)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
    pending = [(p, client.async_infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])], outputs=outputs))
               for p in images]
    for p, req in pending:
        assert _result_labels(req.get_result(), 0, p, names) == run_labels[p.stem], p.name
    client.close()


def test_tritonclient_grpc_answers_are_yolokit_runs_on_coco128(server: Served, images: list[Path],
                                                               run_labels: dict[str, str],
                                                               names: dict[int, str]) -> None:
    client = tritonclient_grpc.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert [o.name for o in meta.outputs] == list(OUTPUTS) and meta.inputs[0].datatype == "BYTES"

    def one(p: Path) -> str:
        return _result_labels(client.infer(MODEL, [_bytes_input(tritonclient_grpc, [p.read_bytes()])]), 0, p, names)

    with ThreadPoolExecutor(4) as pool:
        for p, got in zip(images, pool.map(one, images), strict=True):
            assert got == run_labels[p.stem], p.name
    # several images in one request
    batch = images[:3]
    result = client.infer(MODEL, [_bytes_input(tritonclient_grpc, [p.read_bytes() for p in batch])])
    assert result.as_numpy("num_dets").shape == (3, 1)
    for i, p in enumerate(batch):
        assert _result_labels(result, i, p, names) == run_labels[p.stem]
    client.close()


def test_json_outputs_and_requested_outputs(server: Served, images: list[Path], run_labels: dict[str, str],
                                            names: dict[int, str]) -> None:
    """Without binary data: outputs in JSON (binary_data=False), and only the outputs asked for."""
    client = tritonclient_http.InferenceServerClient(server.http)
    for p in images[:12]:
        outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
        result = client.infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])], outputs=outputs,
                              request_id=f"id-{p.stem}")
        response = result.get_response()
        assert response["id"] == f"id-{p.stem}" and all("data" in o for o in response["outputs"])
        assert _result_labels(result, 0, p, names) == run_labels[p.stem], p.name
    only = client.infer(MODEL, [_bytes_input(tritonclient_http, [images[0].read_bytes()])],
                        outputs=[tritonclient_http.InferRequestedOutput("det_scores")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["det_scores"]
    client.close()


def test_an_empty_outputs_list_asks_for_every_output_as_over_grpc(server: Served, images: list[Path]) -> None:
    """KServe v2: outputs left out are all of them, and gRPC cannot tell an empty list from none; over HTTP,
    "outputs": [] answered 200 with no outputs at all."""
    jpeg = images[0].read_bytes()
    grpc_result = tritonclient_grpc.InferenceServerClient(server.grpc).infer(
        MODEL, [_bytes_input(tritonclient_grpc, [jpeg])], outputs=[])
    want = {n: grpc_result.as_numpy(n).tolist() for n in OUTPUTS}
    assert want["num_dets"][0][0] > 0
    head = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(jpeg) + 4}}], "outputs": []}).encode()
    r = httpx.post(server.url + f"/v2/models/{MODEL}/infer", content=head + struct.pack("<I", len(jpeg)) + jpeg,
                   headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)
    assert r.status_code == 200, r.text
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]).tolist() for o in r.json()["outputs"]}
    assert got == want


def test_fp32_letterboxed_input_gives_the_routines_detections_in_input_pixels(server: Served, onnx_model: Path,
                                                                              images: list[Path]) -> None:
    from toolkit import Detector

    with Detector(onnx_model) as det:
        r = det.routine
        chws = [r.preprocess(read_image(str(p)))[0] for p in images[:8]]
        shape = max({c.shape for c in chws}, key=lambda s: sum(c.shape == s for c in chws))
        batch = np.stack([c for c in chws if c.shape == shape][:2])
        preds = r.infer(batch)
        want = []
        for pred in preds:
            xyxy, conf, cls = r.detect(pred)
            xyxy = xyxy.copy()
            xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, shape[2])
            xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, shape[1])
            want.append((xyxy, conf, cls))
    x = batch.astype(np.float32) / np.float32(255)  # RGB in 0-1, letterboxed: what the exported model takes
    http_in = tritonclient_http.InferInput("images", list(x.shape), "FP32")
    http_in.set_data_from_numpy(x, binary_data=False)  # JSON numbers, no binary data at all
    grpc_in = tritonclient_grpc.InferInput("images", list(x.shape), "FP32")
    grpc_in.set_data_from_numpy(x)
    for result in (tritonclient_http.InferenceServerClient(server.http).infer(
                       MODEL, [http_in], outputs=[tritonclient_http.InferRequestedOutput(n, binary_data=False)
                                                  for n in OUTPUTS]),
                   tritonclient_grpc.InferenceServerClient(server.grpc).infer(MODEL, [grpc_in])):
        for i, (xyxy, conf, cls) in enumerate(want):
            n = int(result.as_numpy("num_dets")[i, 0])
            assert n == len(conf) > 0
            assert np.array_equal(result.as_numpy("det_boxes")[i, :n], xyxy)
            assert np.array_equal(result.as_numpy("det_scores")[i, :n], conf)
            assert np.array_equal(result.as_numpy("det_classes")[i, :n], cls)


def test_v1_detect_takes_a_raw_body_or_a_multipart_field(server: Served, images: list[Path],
                                                         run_labels: dict[str, str], names: dict[int, str]) -> None:
    inv = {v: k for k, v in names.items()}
    for i, p in enumerate(images[:10]):
        data = p.read_bytes()
        r = (httpx.post(server.url + "/v1/detect", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
             if i % 2 else httpx.post(server.url + "/v1/detect", files={"image": (p.name, data, "image/jpeg")},
                                      timeout=60))
        assert r.status_code == 200, r.text
        got = r.json()
        h, w = read_image(str(p)).shape[:2]
        assert (got["width"], got["height"]) == (w, h)
        rows = got["detections"]
        assert all(names[d["class_id"]] == d["class_name"] and inv[d["class_name"]] == d["class_id"] for d in rows)
        boxes = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in rows], np.float32).reshape(-1, 4)
        scores = np.array([d["confidence"] for d in rows], np.float32)
        classes = np.array([d["class_id"] for d in rows], np.int64)
        assert _labels(boxes, scores, classes, len(rows), p, names) == run_labels[p.stem], p.name
    r = httpx.post(server.url + "/v1/detect?conf=0.6&classes=0", content=images[1].read_bytes(), timeout=60)
    assert r.status_code == 200 and all(d["confidence"] > 0.6 and d["class_id"] == 0 for d in r.json()["detections"])
    # a multipart body that is none (the parser's own words were the reason), two images (one was used), no image
    jpeg = images[0].read_bytes()
    for kwargs, message in (
            ({"content": jpeg, "headers": {"Content-Type": "multipart/form-data"}}, "cannot be read (no boundary"),
            ({"files": [("image", ("a.jpg", jpeg, "image/jpeg")), ("image", ("b.jpg", jpeg, "image/jpeg"))]},
             "has 2 fields named 'image'"),
            ({"files": {"picture": ("a.jpg", jpeg, "image/jpeg")}}, "no file field named 'image'"),
            ({"content": jpeg, "params": [("conf", "0.5"), ("conf", "0.6")]}, "conf is given more than once")):
        r = httpx.post(server.url + "/v1/detect", timeout=60, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 400 and message in r.json()["error"], r.text
        assert "Missing boundary" not in r.text and "\n" not in r.json()["error"]


def test_request_parameters_change_the_nms_as_the_detectors_settings_do(server: Served, onnx_model: Path,
                                                                        images: list[Path]) -> None:
    from toolkit import Detector

    p = images[1]
    with Detector(onnx_model, conf=0.4, max_det=3, classes=(0, 1, 2)) as det:
        want = det.predict(str(p))[0]
    client = tritonclient_http.InferenceServerClient(server.http)
    result = client.infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])],
                          parameters={"conf": 0.4, "max_det": 3, "classes": "0,1,2"})
    n = int(result.as_numpy("num_dets")[0, 0])
    assert n == len(want) and np.array_equal(result.as_numpy("det_boxes")[0, :n], want.xyxy)
    assert np.array_equal(result.as_numpy("det_scores")[0, :n], want.confidence)
    for params, message in (({"conf": 1.5}, "parameter conf must be in [0, 1], got 1.5"),
                            ({"cnf": 0.5}, "the request's parameters has no setting 'cnf'; did you mean 'conf'?")):
        with pytest.raises(InferenceServerException) as e:
            client.infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])], parameters=params)
        assert e.value.status() == "400" and e.value.message() == message


def test_batching_gathers_concurrent_requests_and_keeps_their_answers(server: Served, images: list[Path],
                                                                      run_labels: dict[str, str],
                                                                      names: dict[int, str]) -> None:
    """N concurrent requests take fewer model executions than N (read from /metrics), each answered as alone."""
    from toolkit.ops import letterbox_shape

    same = [p for p in images if letterbox_shape(read_image(str(p)).shape[:2], 640)[1] == (480, 640)][:16]
    assert len(same) == 16
    inferences, executions = server.metric("nv_inference_count"), server.metric("nv_inference_exec_count")
    start = threading.Barrier(len(same))

    def one(p: Path) -> str:
        client = tritonclient_http.InferenceServerClient(server.http)
        inp = _bytes_input(tritonclient_http, [p.read_bytes()])
        start.wait()
        result = client.infer(MODEL, [inp])
        client.close()
        return _result_labels(result, 0, p, names)

    with ThreadPoolExecutor(len(same)) as pool:
        answers = list(pool.map(one, same))
    assert answers == [run_labels[p.stem] for p in same]
    ran = server.metric("nv_inference_count") - inferences
    batches = server.metric("nv_inference_exec_count") - executions
    assert ran == len(same) and batches < len(same), (ran, batches)
    assert server.metric("yolokit_batch_size_count") >= batches


# ------------------------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def bad_images(images: list[Path], onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, tuple[bytes, str]]:
    """Bad inputs, each with the reason ``yolokit run`` gives for it as a file (its routine's own reader)."""
    from toolkit import Detector
    from toolkit.io.sources import InputRef

    good = images[0].read_bytes()
    cases = {"not_an_image": b"hello, this is text", "truncated": good[: len(good) // 2],
             "pixel_bomb": serving.png_header(60000, 60000), "empty": b""}
    folder = tmp_path_factory.mktemp("bad")
    out = {}
    with Detector(onnx_model) as det:
        for name, data in cases.items():
            path = folder / f"{name}.jpg"
            path.write_bytes(data)
            reason = det.routine.load_input(InputRef(str(path), name))
            assert isinstance(reason, str), name
            out[name] = (data, reason)
    return out


def test_bad_images_get_400_with_yolokit_runs_reasons(server: Served, bad_images: dict[str, tuple[bytes, str]],
                                                      images: list[Path], run_labels: dict[str, str],
                                                      names: dict[int, str]) -> None:
    h, g = tritonclient_http.InferenceServerClient(server.http), tritonclient_grpc.InferenceServerClient(server.grpc)
    for name, (data, reason) in bad_images.items():
        assert "\n" not in reason
        with pytest.raises(InferenceServerException) as e:
            h.infer(MODEL, [_bytes_input(tritonclient_http, [data])])
        assert (e.value.status(), e.value.message()) == ("400", f"images[0]: {reason}"), name
        with pytest.raises(InferenceServerException) as e:
            g.infer(MODEL, [_bytes_input(tritonclient_grpc, [images[0].read_bytes(), data])])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and e.value.message() == f"images[1]: {reason}"
        r = httpx.post(server.url + "/v1/detect", content=data, timeout=60)
        if name == "empty":
            assert r.status_code == 400 and "no image" in r.json()["error"]
        else:
            assert r.status_code == 400 and r.json() == {"error": f"image: {reason}"}, name
    p = images[5]  # and the server answers as before
    assert _result_labels(h.infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])]), 0, p, names) \
        == run_labels[p.stem]


def test_a_request_with_several_bad_images_names_each(server: Served, bad_images: dict[str, tuple[bytes, str]],
                                                      images: list[Path]) -> None:
    """[good, truncated, garbage, good, garbage]: the 400 named images[1] alone (asyncio.gather's first failure);
    now every bad image, with its reason, in one line (those with one reason together)."""
    good = images[0].read_bytes()
    truncated, cut = bad_images["truncated"]
    garbage, text = bad_images["not_an_image"]
    batch = [good, truncated, garbage, good, garbage]
    want = f"images[1]: {cut}; images[2], images[4]: {text}"
    with pytest.raises(InferenceServerException) as e:
        tritonclient_http.InferenceServerClient(server.http).infer(MODEL, [_bytes_input(tritonclient_http, batch)])
    assert (e.value.status(), e.value.message()) == ("400", want)
    with pytest.raises(InferenceServerException) as e:
        tritonclient_grpc.InferenceServerClient(server.grpc).infer(MODEL, [_bytes_input(tritonclient_grpc, batch)])
    assert (e.value.status(), e.value.message()) == ("StatusCode.INVALID_ARGUMENT", want)


def test_an_image_sent_as_a_json_string_is_told_to_travel_as_binary_data(server: Served, images: list[Path]) -> None:
    """A JPEG's base64 in JSON 'data' (the usual mistake) got "text, not an image; re-copy the image itself", which
    names no fix; now what was sent and how to send an image instead."""
    import base64

    jpeg = images[0].read_bytes()
    b64 = base64.b64encode(jpeg).decode()
    fix = ("not an image file: a BYTES element in JSON is text; send the image file's own bytes as binary data (the "
           "binary tensor extension: tritonclient.http's set_data_from_numpy(..., binary_data=True), its default), "
           "or the file to /v1/detect")
    for data, what in (([b64], "base64 text"), ([f"data:image/jpeg;base64,{b64}"], "base64 text"),
                       ([base64.urlsafe_b64encode(jpeg).decode()], "base64 text"),
                       ([base64.encodebytes(jpeg).decode()], "base64 text"), (["a photo of a cat"], "text")):
        client = tritonclient_http.InferenceServerClient(server.http)
        inp = tritonclient_http.InferInput("images", [1], "BYTES")
        inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=False)
        with pytest.raises(InferenceServerException) as e:
            client.infer(MODEL, [inp])
        assert (e.value.status(), e.value.message()) == ("400", f"images[0]: {what}, {fix}"), data[0][:40]
        client.close()
    # sent as bytes, the same text keeps yolokit run's reason
    with pytest.raises(InferenceServerException) as e:
        tritonclient_grpc.InferenceServerClient(server.grpc).infer(
            MODEL, [_bytes_input(tritonclient_grpc, [b64.encode()])])
    assert e.value.message() == "images[0]: text, not an image; re-copy the image itself"


_ONE_JPEG = b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}'


def test_malformed_requests_get_400_or_404_in_one_sentence(server: Served, images: list[Path],
                                                           run_labels: dict[str, str],
                                                           names: dict[int, str]) -> None:
    url = server.url + f"/v2/models/{MODEL}/infer"
    jpeg = images[0].read_bytes()
    cases = [
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"inputs": [{"name": "images", "datatype": "INT32", "shape": [1], "data": [1]}]}', {}, 400,
         "input images must be BYTES [B] (encoded image files) or FP32 [B,3,H,W]"),
        (b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}', {}, 400,
         "got BYTES [1, 2]"),
        (b'{"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', {}, 400,
         "this model takes one input, 'images'"),
        (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 4, 32, 32], "data": '
         + str([0.5] * 4096).encode() + b"}]}", {}, 400, "got FP32 [1, 4, 32, 32]"),
        (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 30, 32], "data": '
         + str([0.5] * 2880).encode() + b"}]}", {}, 400, "multiples of the model stride, 32"),
        (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": '
         + str([2.0] * 3072).encode() + b"}]}", {}, 400, "FP32 input must be RGB values in 0-1"),
        (b'{"outputs": [{"name": "boxes"}], "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], '
         b'"parameters": {"binary_data_size": ' + str(len(jpeg) + 4).encode() + b"}}]}",
         {"binary": True}, 400, "this model has no output 'boxes'"),
        (b"", {}, 400, "not valid JSON"),
        # 100,000 empty elements (400 KB) held the whole server, health probes included, for 15 s
        (b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [300], "parameters": {"binary_data_size": '
         b"1200}}]}", {"elements": 300}, 400, "holds 300 images; a request takes at most 256"),
        (_ONE_JPEG, {"gzip_cut": True}, 400, "not valid gzip data (it ends before the compressed stream does)"),
        (_ONE_JPEG[:-1] + b', "parameters": {"timeout": "soon"}}', {}, 400,
         "parameter timeout takes microseconds"),  # ignored before
    ]
    for body, how, status, message in cases:
        headers = {}
        if how.get("binary"):
            headers["Inference-Header-Content-Length"] = str(len(body))
            body += struct.pack("<I", len(jpeg)) + jpeg
        if how.get("elements"):
            headers["Inference-Header-Content-Length"] = str(len(body))
            body += struct.pack("<I", 0) * int(how["elements"])
        if how.get("gzip_cut"):
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body)[:-20]  # was read as far as it went: "binary_data_size ... runs past the end"
        r = httpx.post(url, content=body, headers=headers, timeout=60)
        assert r.status_code == status and message in r.json()["error"], (message, r.text)
        assert "Traceback" not in r.text and "\n" not in r.json()["error"]
    r = httpx.post(server.url + "/v1/detect?timeout=-5", content=jpeg, timeout=60)  # the query string's, ignored
    assert r.status_code == 400 and "parameter timeout takes microseconds" in r.json()["error"], r.text
    # each answered 200 before, its setting ignored or misread
    for path, body, message in (
            (f"/v2/models/{MODEL}/infer?conf=0.9", _ONE_JPEG, "takes no query string"),  # conf was ignored
            ("/v1/detect?binary_data_output=true", jpeg, "has no setting 'binary_data_output'"),  # a /v2 parameter
            ("/v1/detect?priority=1", jpeg, "has no setting 'priority'"),
            ("/v1/detect?classes=0,,2", jpeg, "parameter classes takes class ids like 0,2"),  # read as 0,2
            ("/v1/detect?classes=", jpeg, "parameter classes is empty, which would keep no detection"),  # every class
            ("/v1/detect?classes=1_0", jpeg, "parameter classes takes class ids"),  # read as 10
            ("/v1/detect?timeout=\u0663", jpeg, "parameter timeout takes microseconds"),  # an Arabic-Indic 3
            ("/v1/detect?timeout=" + "9" * 5000, jpeg, "parameter timeout takes microseconds"),  # int() raised: a 500
            ("/v1/detect?classes=0," + "9" * 5000, jpeg, "parameter classes takes class ids"),  # the same
            ("/v1/detect?classes=0," + "9" * 400, jpeg, "this model's classes are 0-79"),  # float(): a 500
            (f"/v2/models/{MODEL}/infer", _ONE_JPEG[:-1] + b', "parameters": {"priority": "high"}}',
             "parameter priority takes a whole number"),  # taken, whatever it was
            (f"/v2/models/{MODEL}/infer", _ONE_JPEG[:-1] + b', "parameters": {"classes": []}}',
             "parameter classes is empty")):  # an empty list kept every class
        r = httpx.post(server.url + path, content=body, timeout=60)
        assert r.status_code == 400 and message in r.json()["error"], (path, r.text)
    # over gRPC, written by hand: tritonclient refuses to send the protocol's reserved names as parameters
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for key, kind, value, message in (
                ("binary_data_output", "string_param", "false", "binary_data_output must be true or false"),
                ("priority", "int64_param", -1, "parameter priority takes a whole number"),
                ("classes", "string_param", "0,", "parameter classes takes class ids")):
            request = service_pb2.ModelInferRequest(model_name=MODEL)
            tensor = request.inputs.add(name="images", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(jpeg)
            setattr(request.parameters[key], kind, value)
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), key
    for path in ("/v2/models/nope/infer", f"/v2/models/{MODEL}/versions/7/infer"):
        r = httpx.post(server.url + path, content=b"{}", timeout=60)
        assert r.status_code == 404 and "unknown model" in r.json()["error"]
    assert httpx.get(server.url + "/v2/models/nope", timeout=60).status_code == 404
    assert httpx.get(server.url + f"/v2/models/{MODEL}/versions/1/ready", timeout=60).json() == {"name": MODEL,
                                                                                                  "ready": True}
    with pytest.raises(InferenceServerException) as e:
        tritonclient_grpc.InferenceServerClient(server.grpc).infer("nope", [_bytes_input(tritonclient_grpc, [jpeg])])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    p = images[7]
    result = tritonclient_http.InferenceServerClient(server.http).infer(MODEL, [_bytes_input(tritonclient_http,
                                                                                             [p.read_bytes()])])
    assert _result_labels(result, 0, p, names) == run_labels[p.stem]


def test_input_and_output_parameters_the_server_does_not_implement_are_refused(server: Served,
                                                                               images: list[Path]) -> None:
    """Triton's classification and shared-memory extensions, asked for through an output's or an input's parameters
    (tritonclient's class_count=, set_shared_memory), and unknown ones: each was answered 200 with the plain outputs,
    the parameter ignored, over HTTP and gRPC."""
    jpeg = images[0].read_bytes()
    classification = "output det_scores: parameter 'classification' asks for Triton's classification extension, " \
                     "which this server does not offer; ask for the output without it"
    shared = "parameter 'shared_memory_region' asks for Triton's shared-memory extensions, which this server does " \
             "not offer"
    for module, status in ((tritonclient_http, "400"), (tritonclient_grpc, "StatusCode.INVALID_ARGUMENT")):
        host = server.http if module is tritonclient_http else server.grpc
        client = module.InferenceServerClient(host)
        region_output = module.InferRequestedOutput("det_boxes")
        region_output.set_shared_memory("region", 64)
        region_input = module.InferInput("images", [1], "BYTES")
        region_input.set_shared_memory("region", len(jpeg) + 4)
        for inputs, outputs, message in (
                ([_bytes_input(module, [jpeg])], [module.InferRequestedOutput("det_scores", class_count=2)],
                 classification),
                ([_bytes_input(module, [jpeg])], [region_output], f"output det_boxes: {shared}"),
                ([region_input], None, f"input images: {shared}; send the input's data in the request")):
            with pytest.raises(InferenceServerException) as e:
                client.infer(MODEL, inputs, outputs=outputs)
            assert e.value.status() == status and message in e.value.message(), (module.__name__, e.value)
        assert client.infer(MODEL, [_bytes_input(module, [jpeg])]).as_numpy("num_dets")[0, 0] > 0
        client.close()
    url = server.url + f"/v2/models/{MODEL}/infer"
    for body, message in (
            (b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"], "parameters": '
             b'{"binary_data_sise": 4}}]}', "input images: parameter 'binary_data_sise' is not one this server takes; "
                                            "did you mean 'binary_data_size'?"),
            (_ONE_JPEG[:-1] + b', "outputs": [{"name": "num_dets", "parameters": {"fmt": "csv"}}]}',
             "output num_dets: parameter 'fmt' is not one this server takes; it takes binary_data")):
        r = httpx.post(url, content=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"] == message, r.text


def test_a_wrong_inference_header_content_length_is_named(server: Served, images: list[Path]) -> None:
    """The header 5 bytes past the JSON's end, or 5 short of it: "the request is not valid JSON (...)", with no word
    of the header (its hint was given only when it was missing)."""
    body, json_size = tritonclient_http.InferenceServerClient.generate_request_body(
        [_bytes_input(tritonclient_http, [images[0].read_bytes()])])
    assert json_size is not None
    url = server.url + f"/v2/models/{MODEL}/infer"
    for length in (json_size + 5, json_size - 5):
        r = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)}, timeout=60)
        error = r.json()["error"]
        assert r.status_code == 400, r.text
        assert error.startswith(f"the request's first {length} bytes, its JSON by its Inference-Header-Content-Length, "
                                f"are not valid JSON ("), error
        assert error.endswith("; the header must be the exact length of the JSON, which the binary data follows")
    r = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(json_size)}, timeout=60)
    assert r.status_code == 200, r.text


def _raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head.encode() + body)
    return s


def _response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    r = http.client.HTTPResponse(s)
    r.begin()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def test_grpc_bytes_that_are_not_the_calls_message_get_invalid_argument(server: Served) -> None:
    """A gRPC request whose body does not decode as its call's protobuf message gets INVALID_ARGUMENT and one
    sentence (gRPC itself answered UNKNOWN, naming protobuf's DecodeError class); the server serves on."""
    import grpc

    with grpc.insecure_channel(server.grpc) as channel:
        for call in ("ModelInfer", "ModelReady", "ServerLive"):
            send = channel.unary_unary(f"/inference.GRPCInferenceService/{call}")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as e:
                send(b"\xff\xff\xff\xff garbage, not protobuf", timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, e.value)
            assert f"not a KServe v2 {call}Request message" in e.value.details() and "\n" not in e.value.details()
    assert tritonclient_grpc.InferenceServerClient(server.grpc).is_server_live()


def test_a_request_that_is_not_http_gets_the_protocols_error_object(server: Served) -> None:
    """uvicorn's own refusal was the plain text "Invalid HTTP request received."; a script reading every error as
    {"error": ...} could not read it. Now the same 400 and the protocol's error object, the connection closed."""
    for head in ("POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                 "GARBAGE\r\n\r\n",
                 "POST /v1/detect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"):
        s = _raw(server.port, head)
        status, headers, body = _response(s)
        s.close()
        assert status == 400 and headers["content-type"] == "application/json", (head, body)
        assert "is not valid HTTP/1.1" in json.loads(body)["error"] and headers["connection"] == "close"
    assert httpx.get(server.url + "/v2/health/ready", timeout=60).status_code == 200


def test_a_body_over_the_limit_gets_413_before_it_is_read(server: Served) -> None:
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2 << 30}\r\n\r\n")
    s = _raw(server.port, head, b'{"inputs": ')  # 2 GiB announced, a few bytes sent: the answer comes at once
    status, _, body = _response(s)
    s.close()
    assert status == 413 and b"--max-body" in body

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(70):
            yield b"\0" * (1 << 20)

    r = httpx.post(server.url + "/v1/detect", content=chunks(), timeout=60)
    assert r.status_code == 413
    bomb = gzip.compress(b"\0" * (65 << 20))  # 65 MiB once inflated, 64 KiB on the wire
    r = httpx.post(server.url + "/v1/detect", content=bomb, headers={"Content-Encoding": "gzip"}, timeout=60)
    assert r.status_code == 413 and len(bomb) < 1 << 20
    assert httpx.get(server.url + "/v2/health/ready", timeout=60).status_code == 200


def test_compressed_requests_as_tritonclient_sends_them(server: Served, images: list[Path],
                                                        run_labels: dict[str, str], names: dict[int, str]) -> None:
    client = tritonclient_http.InferenceServerClient(server.http)
    p = images[3]
    for algorithm in ("gzip", "deflate"):
        result = client.infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])],
                              request_compression_algorithm=algorithm)
        assert _result_labels(result, 0, p, names) == run_labels[p.stem]


def test_metrics_carry_tritons_names(server: Served) -> None:
    text = httpx.get(server.url + "/metrics", timeout=60).text
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
                 "yolokit_requests_in_flight", "yolokit_request_duration_seconds_bucket",
                 "yolokit_queue_duration_seconds_bucket", "yolokit_decode_duration_seconds_bucket",
                 "yolokit_compute_duration_seconds_bucket", "yolokit_batch_size_bucket",
                 "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    assert server.metric("nv_inference_request_success", model=MODEL, version="1") > 0
    assert server.metric("nv_inference_request_failure", reason="OTHER") > 0  # the bad requests above
    assert server.metric("yolokit_requests_in_flight") == 0


# ------------------------------------------------------------------------------------------------------ capacity
@pytest.fixture(scope="module")
def busy_server(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One instance, one image per execution, at most 16 requests in the server (by count alone: no wait bound)."""
    s = serving.start(onnx_model, tmp_path_factory.mktemp("busy") / "serve.log", "--name", MODEL, "--instances", "1",
                      "--max-batch", "1", "--max-queue", "16", "--max-wait-ms", "0", "--timeout-s", "20")
    try:
        yield s
    finally:
        assert s.stop() == 0, s.output()


def _trickle(port: int, data: bytes) -> tuple[socket.socket, bytes]:
    """A /v1/detect request whose body has begun to arrive, but not ended: the server holds it (admitted)."""
    s = _raw(port, f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n", data[:100])
    return s, data[100:]


def _held_answer(s: socket.socket, rest: bytes, image: Path, names: dict[int, str]) -> str:
    """A held /v1/detect request ends its body; its answer (which must be 200) as YOLO label lines."""
    import json

    s.sendall(rest)
    status, _, body = _response(s)
    s.close()
    assert status == 200, body
    rows = json.loads(body)["detections"]
    boxes = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in rows], np.float32).reshape(-1, 4)
    return _labels(boxes, np.array([d["confidence"] for d in rows], np.float32),
                   np.array([d["class_id"] for d in rows]), len(rows), image, names)


def test_a_full_queue_is_refused_at_once_then_served(busy_server: Served, images: list[Path],
                                                     run_labels: dict[str, str], names: dict[int, str]) -> None:
    held = [_trickle(busy_server.port, images[i].read_bytes()) for i in range(16)]
    deadline = time.monotonic() + 30
    while busy_server.metric("yolokit_requests_in_flight") < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.perf_counter()
    r = httpx.post(busy_server.url + "/v1/detect", content=images[16].read_bytes(), timeout=60)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "--max-queue" in r.json()["error"]
    assert time.perf_counter() - t0 < 5
    with pytest.raises(InferenceServerException) as e:
        tritonclient_grpc.InferenceServerClient(busy_server.grpc).infer(
            MODEL, [_bytes_input(tritonclient_grpc, [images[16].read_bytes()])])
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "--max-queue" in e.value.message()
    for i, (s, rest) in enumerate(held):  # the held requests end their bodies and are answered
        assert _held_answer(s, rest, images[i], names) == run_labels[images[i].stem]
    assert busy_server.metric("nv_inference_request_failure", reason="REJECTED") >= 2


def test_work_ahead_past_max_wait_is_refused_at_once_then_served(onnx_model: Path, tmp_path: Path, images: list[Path],
                                                                   run_labels: dict[str, str],
                                                                   names: dict[int, str]) -> None:
    """--max-wait-ms: once an image was timed, a request that would find more model work ahead of it than the
    bound gets 503 at once (HTTP and gRPC), naming the option; the admitted request is then answered as usual."""
    s = serving.start(onnx_model, tmp_path / "serve.log", "--name", MODEL, "--instances", "1", "--max-batch", "1",
                      "--max-wait-ms", "1")
    try:
        assert httpx.post(s.url + "/v1/detect", content=images[0].read_bytes(), timeout=60).status_code == 200
        held, rest = _trickle(s.port, images[1].read_bytes())  # admitted: a full batch is always let in
        deadline = time.monotonic() + 30
        while s.metric("yolokit_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(s.url + "/v1/detect", content=images[2].read_bytes(), timeout=60)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "--max-wait-ms is 1" in r.json()["error"]
        with pytest.raises(InferenceServerException) as e:
            tritonclient_grpc.InferenceServerClient(s.grpc).infer(
                MODEL, [_bytes_input(tritonclient_grpc, [images[2].read_bytes()])])
        assert e.value.status() == "StatusCode.UNAVAILABLE" and "--max-wait-ms" in e.value.message()
        assert _held_answer(held, rest, images[1], names) == run_labels[images[1].stem]
        assert httpx.post(s.url + "/v1/detect", content=images[2].read_bytes(), timeout=60).status_code == 200
    finally:
        assert s.stop() == 0, s.output()


def test_requests_past_their_deadline_get_504_and_their_work_is_dropped(busy_server: Served,
                                                                        coco128_large: Path) -> None:
    big = sorted(coco128_large.glob("*_4032x3024.jpg"))[:10]
    assert len(big) == 10
    ran = busy_server.metric("nv_inference_count")
    client = tritonclient_http.InferenceServerClient(busy_server.http, concurrency=len(big))
    pending = [client.async_infer(MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])], timeout=100_000)
               for p in big]  # Triton's request timeout, in microseconds: 0.1 s each, queued behind one another
    statuses = []
    for req in pending:
        try:
            req.get_result()
            statuses.append("200")
        except InferenceServerException as e:
            statuses.append(e.status())
            assert e.status() != "504" or "its queued work was dropped" in e.message() or "deadline" in e.message()
    client.close()
    assert "504" in statuses and set(statuses) <= {"200", "504"}, statuses
    time.sleep(1.0)
    assert "never retrieved" not in busy_server.log.read_text(errors="replace")  # asyncio's traceback per 504
    assert busy_server.metric("nv_inference_count") - ran < len(big)  # what timed out in the queue never ran
    assert busy_server.metric("yolokit_requests_in_flight") == 0


def test_a_client_that_leaves_has_its_queued_work_cancelled(busy_server: Served, coco128_large: Path,
                                                            images: list[Path], run_labels: dict[str, str],
                                                            names: dict[int, str]) -> None:
    big = sorted(coco128_large.glob("*_4032x3024.jpg"))[:12]  # about 12 decodes and 12 runs ahead of the one
    ran = busy_server.metric("nv_inference_count")
    canceled = busy_server.metric("nv_inference_request_failure", reason="CANCELED")
    with ThreadPoolExecutor(len(big)) as pool:
        busy = [pool.submit(httpx.post, busy_server.url + "/v1/detect", content=p.read_bytes(), timeout=120)
                for p in big]
        deadline = time.monotonic() + 30
        while busy_server.metric("yolokit_requests_in_flight") < len(big) and time.monotonic() < deadline:
            time.sleep(0.01)
        data = big[0].read_bytes()
        s = _raw(busy_server.port, f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n",
                 data)
        time.sleep(0.05)
        s.close()  # gone while its image waits to be decoded or run
        assert all(f.result().status_code == 200 for f in busy)
    deadline = time.monotonic() + 30
    while busy_server.metric("yolokit_requests_in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_server.metric("nv_inference_request_failure", reason="CANCELED") == canceled + 1
    assert busy_server.metric("nv_inference_count") - ran == len(big)  # the one that left never ran
    p = images[9]
    result = tritonclient_http.InferenceServerClient(busy_server.http).infer(
        MODEL, [_bytes_input(tritonclient_http, [p.read_bytes()])])
    assert _result_labels(result, 0, p, names) == run_labels[p.stem]


# ------------------------------------------------------------------------------------------------------ lifecycle
def test_sigterm_drains_in_flight_requests_and_exits_0(onnx_model: Path, images: list[Path],
                                                       run_labels: dict[str, str], names: dict[int, str],
                                                       tmp_path: Path) -> None:
    s = serving.start(onnx_model, tmp_path / "serve.log", "--name", MODEL, "--grpc-port", "0", "--drain-timeout",
                      "60", grpc=False)
    try:
        sock, rest = _trickle(s.port, images[2].read_bytes())
        deadline = time.monotonic() + 30
        while s.metric("yolokit_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while httpx.get(s.url + "/v2/health/ready", timeout=10).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(s.url + "/v2/health/ready", timeout=10).status_code == 503
        assert httpx.get(s.url + "/v2/health/live", timeout=10).status_code == 200
        r = httpx.post(s.url + "/v1/detect", content=images[3].read_bytes(), timeout=10)
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        assert s.proc.poll() is None  # still draining: one request in flight
        sock.sendall(rest)
        status, _, body = _response(sock)
        sock.close()
        assert status == 200 and b"detections" in body
        assert s.proc.wait(60) == 0, s.output()
        assert "draining 1 request(s)" in s.output() and "stopped" in s.output()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_a_request_cut_by_the_end_of_the_drain_gets_the_protocols_503(onnx_model: Path, images: list[Path],
                                                                       tmp_path: Path) -> None:
    """Past --drain-timeout, uvicorn cancels the requests still running: the client got a plain-text 500 ("Internal
    Server Error") and the log about 45 lines of traceback ending in CancelledError."""
    s = serving.start(onnx_model, tmp_path / "serve.log", "--name", MODEL, "--grpc-port", "0", "--drain-timeout",
                      "1", grpc=False)
    got: dict[str, Any] = {}

    def big() -> None:  # about 5 s of work on 2 cores: still running when the drain ends
        body, json_size = tritonclient_http.InferenceServerClient.generate_request_body(
            [_bytes_input(tritonclient_http, [p.read_bytes() for p in images])])
        headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
        got["r"] = httpx.post(s.url + f"/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=120)

    try:
        worker = threading.Thread(target=big)
        worker.start()
        deadline = time.monotonic() + 30
        while s.metric("yolokit_requests_in_flight") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        worker.join(60)
        r = got["r"]
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert "the server stopped before this request finished (its drain ended" in r.json()["error"]
        assert s.proc.wait(60) == 0, s.output()
        assert "Traceback" not in s.output() and "CancelledError" not in s.output(), s.output()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_sigterm_while_loading_stops_and_says_nothing_after(yolov5n_pt: Path, tmp_path: Path) -> None:
    """SIGTERM while a .pt loaded: the process waited for the load and then printed its warm-up's note ("serving
    one image per execution ...") after "yolokit serve: stopped"."""
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(yolov5n_pt), "--port",
                                 str(serving.free_port()), "--grpc-port", "0"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"loading" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    lines = log.read_text().strip().splitlines()
    assert lines[-1] == "yolokit serve: stopped" and "yolokit serve: SIGTERM while loading; stopping" in lines, lines


def test_the_api_key_guards_every_route_but_the_probes(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    key = "s3cret-key"
    s = serving.start(onnx_model, tmp_path / "serve.log", "--name", MODEL, "--max-batch", "2",
                      env={"YOLOKIT_API_KEY": key}, headers={"Authorization": f"Bearer {key}"})
    try:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert httpx.get(s.url + path, timeout=10).status_code == 200
        for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                r = httpx.get(s.url + path, headers=headers, timeout=10)
                assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (path, headers)
            assert httpx.get(s.url + path, headers=s.headers, timeout=10).status_code == 200
        jpeg = images[0].read_bytes()
        assert httpx.post(s.url + "/v1/detect", content=jpeg, timeout=60).status_code == 401
        assert httpx.post(s.url + "/v1/detect", content=jpeg, headers=s.headers, timeout=60).status_code == 200
        h = tritonclient_http.InferenceServerClient(s.http)
        with pytest.raises(InferenceServerException) as e:
            h.infer(MODEL, [_bytes_input(tritonclient_http, [jpeg])])
        assert e.value.status() == "401"
        assert h.infer(MODEL, [_bytes_input(tritonclient_http, [jpeg])], headers=s.headers).as_numpy("num_dets")[0, 0]
        g = tritonclient_grpc.InferenceServerClient(s.grpc)
        assert g.is_server_live() and g.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            g.get_model_metadata(MODEL)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert g.get_model_metadata(MODEL, headers={"authorization": f"Bearer {key}"}).name == MODEL
        with pytest.raises(InferenceServerException) as e:
            g.infer(MODEL, [_bytes_input(tritonclient_grpc, [jpeg])], headers={"authorization": "Bearer nope"})
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert key not in s.output()
    finally:
        assert s.stop() == 0, s.output()


def test_listening_beyond_loopback_without_a_key_is_refused_with_exit_2(onnx_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "YOLOKIT_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", str(onnx_model), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "--host 0.0.0.0 listens beyond this machine" in r.stderr and "--insecure" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_ipv6_host_serves_http_and_grpc(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    """--host ::1 (unbracketed, as one writes it): gRPC was given "::1:PORT" (its own "Misformatted domain name"
    line, then "cannot listen on ::1:PORT (gRPC); choose another --grpc-port", exit 2), and the log printed
    http://::1:PORT, which no client reads."""
    from tests.helpers.ports import free_port

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port, grpc_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", str(onnx_model), "--name", MODEL,
                                 "--host", "::1", "--port", str(port), "--grpc-port", str(grpc_port)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://[::1]:{port}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert f"listening on http://[::1]:{port} and grpc [::1]:{grpc_port};" in log.read_text()
        jpeg = images[0].read_bytes()
        g = tritonclient_grpc.InferenceServerClient(f"[::1]:{grpc_port}")
        assert g.is_server_ready()
        want = httpx.post(f"http://[::1]:{port}/v1/detect", content=jpeg, timeout=60).json()["detections"]
        got = g.infer(MODEL, [_bytes_input(tritonclient_grpc, [jpeg])])
        assert int(got.as_numpy("num_dets")[0, 0]) == len(want) > 0
        g.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(("args", "message"), [
    # a traceback (OverflowError: int(inf) for uvicorn's graceful shutdown) after the server had started listening
    (("--drain-timeout", "inf"), "--drain-timeout must be in [0, 86400], got inf"),
    # the warm-up stacked 100000 images at once: numpy's _ArrayMemoryError (114 GiB), exit 1
    (("--max-batch", "100000"), "--max-batch must be in [0, 256], got 100000"),
])
def test_options_out_of_their_limits_are_one_line_with_exit_2(yolov5n_pt: Path, args: tuple[str, ...],
                                                               message: str) -> None:
    from tests.helpers.ports import free_port

    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", str(yolov5n_pt), "--port", str(free_port()),
                        "--grpc-port", "0", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"yolokit: {message}", r.stderr


def test_a_port_in_use_and_a_bad_model_are_one_line(onnx_model: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", str(onnx_model), "--port", str(port),
                            "--grpc-port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    from tests.helpers.ports import free_port

    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", str(bad), "--port", str(free_port()),
                        "--grpc-port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "broken.onnx" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------------ batch sizes
def test_which_runtimes_answer_an_image_the_same_in_any_batch(onnx_model: Path, yolov5n_pt: Path) -> None:
    """ONNX Runtime gives an image bit for bit the same output alone or in a batch, so the server batches it;
    PyTorch on the CPU does not (oneDNN's kernels differ with the batch, by about 1e-8), so an automatic
    --max-batch serves it one image per execution, as ``yolokit run`` runs it on a CPU."""
    from toolkit.engine.core import DetectorConfig
    from toolkit.io.samples import sample_paths
    from toolkit.serve.model import ServedModel, choose_batch

    onnx = ServedModel.load(DetectorConfig(weights=str(onnx_model)), instances=1)
    try:
        assert onnx.batch_difference(4, sample_paths()) == 0.0
    finally:
        onnx.close()
    torch = ServedModel.load(DetectorConfig(weights=str(yolov5n_pt)), instances=1)
    try:
        diff = torch.batch_difference(4, sample_paths())
        logged: list[str] = []
        if diff == 0.0:
            pytest.skip("this PyTorch build gives bit-identical outputs at batch 1 and 4 here")
        assert 0 < diff < 1e-4
        assert choose_batch(torch, 0, logged.append) == 1 and "one image per execution" in logged[0]
        assert choose_batch(torch, 4, logged.append) == 4 and "can differ" in logged[1]
    finally:
        torch.close()


def test_create_app_serves_a_detector_mounted_in_an_app_of_ones_own(onnx_model: Path, images: list[Path],
                                                                     run_labels: dict[str, str],
                                                                     names: dict[int, str]) -> None:
    """The library face: ``create_app(detector)`` is an ASGI app; mounted under /yolo in a Starlette app of one's
    own, on uvicorn in this process, with an API key."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from tests.helpers.ports import free_port
    from toolkit import Detector
    from toolkit.serve import ServeOptions, create_app

    with Detector(onnx_model) as det:
        app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("mine")),
                                Mount("/yolo", create_app(det, ServeOptions(api_key="k", max_delay_ms=0)))])
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            base, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
            assert httpx.get(base + "/", timeout=10).text == "mine"
            assert httpx.get(base + "/yolo/v2/health/ready", timeout=10).status_code == 200
            assert httpx.get(base + "/yolo/v2", timeout=10).status_code == 401
            for p in images[:4]:
                r = httpx.post(base + "/yolo/v1/detect", content=p.read_bytes(), headers=key, timeout=60)
                rows = r.json()["detections"]
                boxes = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in rows], np.float32).reshape(-1, 4)
                got = _labels(boxes, np.array([d["confidence"] for d in rows], np.float32),
                              np.array([d["class_id"] for d in rows]), len(rows), p, names)
                assert got == run_labels[p.stem]
            client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}/yolo")
            result = client.infer(det.weights.stem, [_bytes_input(tritonclient_http, [images[4].read_bytes()])],
                                  headers=key)
            assert _result_labels(result, 0, images[4], names) == run_labels[images[4].stem]
        finally:
            server.should_exit = True
            thread.join(30)
