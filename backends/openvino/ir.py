"""An OpenVINO IR on disk (``.xml`` + ``.bin``, or a folder holding one): finding it, reading it, and the yolokit
metadata in its ``rt_info``; :func:`runtime`, the ``openvino`` module as running an IR imports it."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

from toolkit.errors import ModelFileError
from toolkit.meta import META_KEY, ModelMeta

REEXPORT_HINT = "re-export it with `yolokit export WEIGHTS --to openvino`"
FOLDER_SUFFIX = "_openvino"  # what an exported IR's folder is named after the model: yolov5n_openvino/
CONVERSION = "openvino.tools.ovc"  # OpenVINO's model-conversion API (convert_model)


def runtime() -> Any:
    """The ``openvino`` module, for running IRs. ``import openvino`` also imports its model-conversion API
    (``openvino.tools.ovc``) and with it OpenVINO's telemetry client (urllib, http.client): about 70 of the 150 ms
    the import takes on a 2-core VM, paid by every process that runs a model (3 % of a 100-image run), and never used
    to run one. The first import made here goes without it: a module named like it, without ``convert_model``, stands
    in while ``openvino`` imports (its ``__init__`` then leaves the API out, as when it is not installed) and is
    removed at once; ``openvino.convert_model`` is then a function that imports the API on its first call, so code
    that converts models in the same process works as before."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    stand_in = None
    if CONVERSION not in sys.modules:
        stand_in = sys.modules[CONVERSION] = types.ModuleType(CONVERSION)
    try:
        import openvino
    finally:
        if stand_in is not None and sys.modules.get(CONVERSION) is stand_in:
            del sys.modules[CONVERSION]
    if not hasattr(openvino, "convert_model"):
        openvino.convert_model = convert_model  # type: ignore[attr-defined]
    return openvino


def convert_model(*args: Any, **kwargs: Any) -> Any:
    """``openvino.convert_model``, its API imported on the first call (see :func:`runtime`)."""
    from openvino.tools.ovc import convert_model as convert

    return convert(*args, **kwargs)


def xml_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.xml") if p.is_file())


def resolve_xml(path: Path) -> Path:
    """The IR's .xml for a path that is the .xml itself or a folder holding exactly one."""
    path = Path(path)
    if path.is_dir():
        found = xml_in(path)
        if len(found) > 1:
            names = ", ".join(f.name for f in found[:4]) + (", ..." if len(found) > 4 else "")
            raise ModelFileError(f"{path}: the folder holds {len(found)} OpenVINO models ({names}); give the .xml of "
                                 f"the one to load")
        if not found:
            raise ModelFileError(f"{path}: an OpenVINO model folder holds its model's .xml and .bin; found no .xml")
        return found[0]
    if not path.is_file():
        raise ModelFileError(f"{path}: no such OpenVINO .xml file or folder")
    return path


IR_ROOT = re.compile(rb"<net\b[^>]*\bversion\s*=\s*[\"']\d+[\"']")  # an IR's root element, as OpenVINO writes it


def read_model(path: Path) -> tuple[Any, Path]:
    """The ``openvino.Model`` of an IR (``.xml`` or its folder) and its .xml; one clear line when it cannot be read."""
    ov = runtime()
    xml = resolve_xml(path)
    if not xml.with_suffix(".bin").is_file():
        raise ModelFileError(f"{xml}: the weights file {xml.with_suffix('.bin').name} is missing beside it; "
                             f"{REEXPORT_HINT}")
    unreadable = ModelFileError(f"{xml}: not a readable OpenVINO IR; the file is corrupt or not an IR; {REEXPORT_HINT}")
    try:
        with open(xml, "rb") as f:
            head = f.read(4096)
    except OSError:
        raise unreadable from None
    if not IR_ROOT.search(head):  # not an IR: OpenVINO would try its other readers on it, and TensorFlow's logs
        raise unreadable  # its parse errors to stderr in lines of its own
    try:
        return ov.Core().read_model(str(xml)), xml
    except Exception:  # OpenVINO's parser text names its own sources: not a reason a user can act on
        raise ModelFileError(f"{xml}: not a readable OpenVINO IR; the file is corrupt or not an IR; "
                             f"{REEXPORT_HINT}") from None


def meta_of(model: Any, xml: Path) -> ModelMeta:
    """The yolokit metadata in a model's ``rt_info``."""
    if not model.has_rt_info([META_KEY]):
        raise ModelFileError(f"{xml}: this OpenVINO IR has no yolokit metadata (class names, stride, input size); "
                             f"it was not exported by yolokit; {REEXPORT_HINT}")
    try:
        return ModelMeta.from_json(model.get_rt_info([META_KEY]).astype(str))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{xml}: the yolokit metadata is unreadable ({e}); {REEXPORT_HINT}") from None


def read_meta(path: Path) -> ModelMeta:
    """The yolokit metadata of an IR (``.xml`` or its folder), for ``yolokit info``."""
    model, xml = read_model(Path(path))
    return meta_of(model, xml)


def output_paths(path: Path, stem: str | None = None) -> tuple[Path, Path]:
    """``(artifact, xml)`` for an export target: an ``.xml`` file, or a folder that gets ``<stem>.xml``."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return path, path
    name = stem or path.name.removesuffix(FOLDER_SUFFIX)
    return path, path / f"{name}.xml"
