"""``yolokit serve``: its options are built from the declarations of :class:`toolkit.serve.options.ServeSettings`
(the detector's, but those about files, URLs and videos, then the server's); it parses them and runs the server."""

from __future__ import annotations

from typing import Any

import typer

from toolkit.cli.params import collect, command
from toolkit.cli.root import app
from toolkit.serve.options import NOT_SERVED, ServeSettings

WEIGHTS_HELP = ("The model to serve: a .pt checkpoint, .onnx, OpenVINO .xml or folder, TensorRT .engine, an export "
                "with NMS inside, or a name (yolov5n, yolov5s, yolov5m, yolov5l, yolov5x).")


def serve(**kwargs: Any) -> None:
    """Serve a model over HTTP and gRPC: KServe v2 as Triton speaks it (tritonclient works unchanged), plus
    POST /v1/detect for curl, with dynamic batching; every answer is yolokit run's on the same file (bit for bit
    with ONNX Runtime and OpenVINO; a .pt's scores may differ in the last digit, see docs/guide/serving.md).

    Ready (GET /v2/health/ready) once the model is loaded and warm. SIGTERM or Ctrl-C drains: readiness turns 503,
    the requests in flight finish, and the process exits 0. docs/guide/serving.md has the routes and clients.

    Examples:\n
      yolokit serve yolov5n.onnx\n
      yolokit serve yolov5s.pt --port 9000 --grpc-port 0 --conf 0.4\n
      YOLOKIT_API_KEY=secret yolokit serve model.onnx --host 0.0.0.0\n
      curl --data-binary @bus.jpg http://127.0.0.1:8000/v1/detect
    """
    from toolkit.serve.server import serve as run_server

    settings = collect(ServeSettings, kwargs, omit=NOT_SERVED)
    run_server(settings, log=lambda line: typer.echo(line, err=True))


app.command()(command(serve, ServeSettings, omit=NOT_SERVED,
                      changes={"weights": {"argument": True, "help": WEIGHTS_HELP}}))
