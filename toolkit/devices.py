"""Device strings, read in one place.

``cpu`` is the CPU. ``cuda``, ``cuda:N``, ``gpu``, ``gpu:N`` and a bare ``N`` name an NVIDIA GPU (index 0 unless
given). Anything else is a runtime's own device name (OpenVINO's ``NPU``, ``GPU.1``, ``AUTO``) and is passed through
untouched, for the backend that knows it. ``None`` or ``""`` means "not chosen": the backend's own default device.

The plan, the backends and the bench all read devices through :func:`parse_device` (and :func:`is_gpu`), so that
``gpu`` and ``0`` get the GPU plan and the GPU runtimes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import InputError

__all__ = ["GPU_BATCH", "Device", "is_gpu", "parse_device"]

# The batch a GPU run uses unless told otherwise (and the optimum of a GPU engine's profile): enough images to keep
# a large GPU busy per launch, a few megabytes of letterboxed input.
GPU_BATCH = 32

_GPU_WORDS = ("cuda", "gpu")


@dataclass(frozen=True)
class Device:
    """A parsed device: ``kind`` is ``cpu``, ``cuda`` or ``other`` (a runtime's own name, in ``name``)."""

    kind: str
    index: int = 0
    name: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> str:
        """The string ``torch.device`` takes (``cpu``, ``cuda:N``); a runtime's own name is returned as given."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}" if self.kind == "cuda" else self.name

    def __str__(self) -> str:
        return self.torch


def parse_device(device: str | None, default: str = "cpu") -> Device:
    """Read a device string (see the module docstring); ``None`` or ``""`` reads ``default``.

    A malformed CUDA name (``cuda:x``, ``gpu:-1``) is refused with the forms that work."""
    text = (device if device not in (None, "") else default) or "cpu"
    d = str(text).strip().lower()
    if d == "cpu":
        return Device("cpu", 0, "cpu")
    if d.isdigit():
        return Device("cuda", int(d), str(text))
    for word in _GPU_WORDS:
        if d == word:
            return Device("cuda", 0, str(text))
        if d.startswith(word + ":"):
            tail = d[len(word) + 1:]
            if not tail.isdigit():
                raise InputError(f"device {text!r}: give cpu, cuda, cuda:N, gpu or a GPU index N")
            return Device("cuda", int(tail), str(text))
    return Device("other", 0, str(text))


def is_gpu(device: str | None) -> bool:
    """Whether a device string names an NVIDIA GPU (``cuda``, ``cuda:1``, ``gpu``, ``0``); a malformed one is not."""
    try:
        return parse_device(device).is_gpu
    except InputError:
        return False
