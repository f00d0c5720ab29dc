"""The OpenVINO backend class: IRs converted from the traced ONNX graph (:mod:`backends.shared.onnx_graph`) with
``openvino.convert_model``, FP32, FP16 or NNCF INT8 (:mod:`backends.openvino.int8`), run by
:mod:`backends.openvino.runner`.

One traced graph for every format, with stable ``/model.N/...`` node names that the INT8 ignored scope refers to.
``--dynamic`` makes batch, height and width dynamic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import Backend, ExportOptions, LoadOptions, PlanningHints
from backends.openvino.int8 import quantize
from backends.openvino.ir import FOLDER_SUFFIX, output_paths, read_meta, xml_in
from backends.openvino.runner import OpenVinoRunner
from backends.shared.onnx_graph import export_graph, export_meta
from toolkit.errors import ExportError, InputError, OutputError
from toolkit.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel


class OpenVinoBackend(Backend):
    """OpenVINO IRs, run on Intel/AMD CPUs (and Intel GPUs and NPUs, by OpenVINO's own device names)."""

    NAME = "openvino"
    EXTRA = "openvino"
    SUFFIXES = (".xml",)
    DESCRIPTION = "an OpenVINO IR (.xml, or its folder)"
    PACKAGES = ("openvino", "nncf")
    REQUIRES = ("openvino",)
    PRECISIONS = {"cpu": ("fp32", "fp16", "int8")}
    EXPORTS = True
    EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
    RUN_PRECISIONS = ("auto", "fp32", "bf16")  # bf16: the CPU plugin's INFERENCE_PRECISION_HINT, where the CPU has it
    # OpenVINO runs one compiled model's infer requests in parallel without the GIL, one stream each (the runner makes
    # cores / threads streams): threads beat processes. Batch, measured on 1920x1080 JPEGs, 2 cores, each order
    # alternated: FP32 at batch 1 costs 7-12 % less model time than at batch 4 (the ceiling's parts, 6 measurements)
    # and runs 100 images 4 % faster (1,000: within 1 %); INT8 at batch 4 runs 400 images 7 % faster (100: equal)
    PLANNING = PlanningHints(releases_gil=True, thread_batch=1, process_inputs_per_core=None, int8_thread_batch=4,
                             costly_new_shapes=True, workers_per_core=2)

    def claims(self, path: Path) -> bool:
        """An ``.xml`` file, or a folder holding one (or several: loading it then names them)."""
        if path.is_dir():
            return len(xml_in(path)) >= 1
        return path.suffix.lower() in self.SUFFIXES

    def sniff(self, head: bytes) -> bool:
        """Whether a file's first bytes are an OpenVINO IR: an XML document whose root element is ``<net``."""
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        return text.startswith((b"<?xml", b"<net")) and b"<net " in text[:4096]

    def written_files(self, target: Path) -> list[Path]:
        """The IR's .xml and the .bin beside it."""
        xml = output_paths(target)[1]
        return [xml, xml.with_suffix(".bin")]

    def output_path(self, path: Path) -> Path:
        """Export targets: an ``.xml`` file as given, anything else is the folder that gets the IR."""
        return Path(path)

    def default_name(self, stem: str, tag: str) -> str:
        return f"{stem}{tag}{FOLDER_SUFFIX}"

    def check_target(self, target: Path) -> None:
        """A folder target must hold no other IR (the run would not know which to load); an ``.xml`` target no
        folder."""
        artifact, xml = output_paths(target)
        if artifact == xml:
            super().check_target(target)
            return
        if target.exists() and not target.is_dir():
            raise OutputError(f"{target}: is a file, where the export writes a folder; choose another path with -o, "
                              f"or move the file")
        others = sorted(p.name for p in target.glob("*.xml") if p.name != xml.name) if target.is_dir() else []
        if others:
            raise InputError(f"{target}: the folder already holds another OpenVINO model ({', '.join(others[:3])}), "
                             f"and a folder holds one; export into a new or empty folder with -o, or to an .xml "
                             f"file (-o {target / xml.name})")

    def check_export(self, options: ExportOptions) -> None:
        super().check_export(options)
        if options.int8 and not options.calib_data and options.int8_data is None:
            raise InputError("--int8 needs calibration images: --data FOLDER")

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path:
        """Write an IR (``path`` is an .xml file or a folder) with the yolokit metadata in ``rt_info``."""
        import openvino as ov
        import torch

        if options.half and options.int8:
            raise InputError("choose one of --half and --int8")
        artifact, xml = output_paths(path)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="yolokit_ov_") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            # OpenVINO's NonMaxSuppression suppresses at IoU >= its threshold (YOLOv5: >): see
            # backends.shared.onnx_nms
            _, notes = export_graph(source, onnx_path, options, half=False, nms=options.nms, suppresses_at_equal=True)
            try:
                model = ov.convert_model(str(onnx_path))
            except Exception as e:
                raise ExportError(f"openvino.convert_model failed on the traced ONNX graph: {e}") from e
        precision = options.precision
        versions = {"openvino": ov.get_version(), "torch": torch.__version__}
        extra: dict[str, Any] = {"opset": options.opset, "via": "onnx", "notes": notes}
        if options.int8:
            model, qnotes, record = quantize(model, options, source.model.detect.i)  # type: ignore[arg-type]
            notes += qnotes
            extra["int8"] = record
            import nncf  # type: ignore[import-not-found]

            versions["nncf"] = nncf.__version__
        meta = export_meta(source, options, "openvino", precision, versions, extra=extra, nms=options.nms)
        model.set_rt_info(meta.to_json(), [META_KEY])
        xml.parent.mkdir(parents=True, exist_ok=True)
        try:
            ov.save_model(model, str(xml), compress_to_fp16=bool(options.half))
        except Exception as e:
            raise ExportError(f"{xml}: openvino.save_model failed: {e}") from e
        return artifact

    def read_meta(self, path: Path) -> ModelMeta:
        """The yolokit metadata of an IR (``.xml`` or its folder), for ``yolokit info``."""
        return read_meta(path)

    def load(self, path: Path, options: LoadOptions) -> OpenVinoRunner:
        return OpenVinoRunner(Path(path), options)
