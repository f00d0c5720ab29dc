"""The TensorRT backend class: engines built by :mod:`backends.tensorrt.export`, run by :mod:`backends.tensorrt.runner`,
recognised by their header (:mod:`backends.tensorrt.engine_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import Backend, ExportOptions, LoadOptions, PlanningHints
from backends.tensorrt.engine_file import MAGIC, read_engine_meta
from backends.tensorrt.plan import engine_nms
from backends.tensorrt.runtime import cuda_unavailable_reason
from toolkit.errors import BackendUnavailableError
from toolkit.meta import ModelMeta

if TYPE_CHECKING:
    from backends.tensorrt.runner import TrtRunner
    from toolkit.model.load import LoadedModel


class TensorRTBackend(Backend):
    """yolokit TensorRT engines (``.engine``/``.plan`` with the yolokit header), built on and for an NVIDIA GPU."""

    NAME = "trt"
    EXTRA = "trt"
    SUFFIXES = (".engine", ".plan")
    DESCRIPTION = "a yolokit TensorRT engine"
    PACKAGES = ("tensorrt",)
    REQUIRES = ("tensorrt",)
    DEFAULT_DEVICE = "cuda"  # engines are built on, and for, an NVIDIA GPU
    PRECISIONS = {"cuda": ("fp16", "fp32")}
    EXPORTS = True
    EXPORT_PRECISIONS = ("fp32", "fp16")
    TUNES_BATCH = True  # the profile's optimum batch
    PLANNING = PlanningHints(releases_gil=True, thread_batch=1, process_inputs_per_core=None)

    def unavailable_reason(self) -> str | None:
        """TensorRT, and a CUDA GPU that PyTorch sees (the runner's buffers are PyTorch's)."""
        return super().unavailable_reason() or cuda_unavailable_reason()

    def sniff(self, head: bytes) -> bool:
        """Whether a file's first bytes are a yolokit engine (the ``YKTR`` header)."""
        return head[:4] == MAGIC

    def check_export(self, options: ExportOptions) -> None:
        super().check_export(options)
        if options.nms is not None:
            engine_nms(options.nms)

    def read_meta(self, path: Path) -> ModelMeta:
        """The metadata of an engine file, read from its header alone (no TensorRT needed)."""
        return read_engine_meta(path)

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path:
        """Build an engine for this GPU from the traced ONNX graph and write it with the yolokit header."""
        from backends.tensorrt.export import build_engine  # here: running an engine needs none of it

        self._require()
        return build_engine(source, path, options)

    def load(self, path: Path, options: LoadOptions) -> TrtRunner:
        from backends.tensorrt.runner import TrtRunner

        self._require()
        return TrtRunner(Path(path), options)

    def _require(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
