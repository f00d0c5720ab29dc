"""yolokit's YOLOv5 model code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toolkit.errors import ModelFileError
from toolkit.model.load import load_model
from toolkit.model.yolov5 import YOLOv5, build_model, builtin_config, count_gflops, count_parameters

# parameter counts (unfused, fused) of the official architectures, from the YOLOv5 v7.0 model summaries
OFFICIAL_PARAMS = {"yolov5n": (1872157, 1867405), "yolov5s": (7235389, 7225885)}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_builtin_parameter_counts(name: str) -> None:
    m = build_model(name)
    assert count_parameters(m) == OFFICIAL_PARAMS[name][0]
    assert count_parameters(m.fuse()) == OFFICIAL_PARAMS[name][1]


def test_p5_and_p6_strides_and_output_shape() -> None:
    m = build_model("yolov5n")
    assert m.detect.stride == [8.0, 16.0, 32.0]
    y = m(torch.rand(2, 3, 256, 320))
    assert y.shape == (2, 3 * (32 * 40 + 16 * 20 + 8 * 10), 85)
    m6 = build_model("yolov5n6")
    assert m6.detect.stride == [8.0, 16.0, 32.0, 64.0]
    assert m6.stride == 64


def test_fuse_keeps_outputs() -> None:
    m = build_model("yolov5n")
    # make BatchNorm non-trivial so fusion is really exercised
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        a = m(x)
        b = m.fuse()(x)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_gflops_yolov5n() -> None:
    assert count_gflops(build_model("yolov5n")) == pytest.approx(4.5, abs=0.1)


def test_unsupported_layers_and_activations_are_refused() -> None:
    arch = builtin_config("yolov5n")
    arch["backbone"][2][2] = "C3TR"
    with pytest.raises(ModelFileError, match="unsupported architecture.*C3TR"):
        YOLOv5(arch)
    arch = builtin_config("yolov5n")
    arch["activation"] = "__import__('os').system('x')"
    with pytest.raises(ModelFileError, match="unsupported activation"):
        YOLOv5(arch)


def test_official_checkpoint_loads_with_its_batchnorm_eps(yolov5n_pt: Path) -> None:
    loaded = load_model(yolov5n_pt)
    assert loaded.meta.names[0] == "person" and len(loaded.meta.names) == 80
    assert loaded.meta.stride == 32
    assert loaded.meta.source_sha256 and loaded.meta.source_sha256.startswith("4f180cf2")
    # every Conv is fused; unfused with the checkpoint's eps=1e-3 gives the same output
    from toolkit.model.checkpoint import read_checkpoint

    raw = read_checkpoint(yolov5n_pt)
    assert set(raw.bn_eps.values()) == {0.001}
    ref = YOLOv5(raw.arch)
    ref.load_state_dict({k: v.float() for k, v in raw.state_dict.items()})
    for mod in ref.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eps = 1e-3
    ref.set_strides(raw.stride)
    ref.eval()
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref(x), atol=2e-3, rtol=1e-3)


def test_yaml_architecture_file(tmp_path: Path) -> None:
    import yaml

    arch = builtin_config("yolov5n", nc=3)
    arch["names"] = ["a", "b", "c"]
    p = tmp_path / "custom.yaml"
    p.write_text(yaml.safe_dump(arch))
    loaded = load_model(p)
    assert loaded.meta.names == {0: "a", 1: "b", 2: "c"}
    assert loaded.model(torch.rand(1, 3, 64, 64)).shape[-1] == 8
    arch["names"] = ["птица", "鸟", "c"]  # UTF-8, whatever the locale
    p.write_bytes(yaml.safe_dump(arch, allow_unicode=True).encode())
    assert load_model(p).meta.names == {0: "птица", 1: "鸟", 2: "c"}
    p.write_text("nc: 3\nbackbone: [[-1, 1, Conv, [16, 3]]\n")
    with pytest.raises(ModelFileError, match="not valid YAML .* at line 3, column 1.; fix the file") as e:
        load_model(p)
    assert "\n" not in str(e.value)


def test_yolov5_v3_architecture_builds_as_its_checkpoints_hold_it() -> None:
    """YOLOv5 v3's yolov5s (Focus, BottleneckCSP, SPP; Hardswish Conv layers; LeakyReLU(0.1) inside each
    BottleneckCSP) was refused as an unsupported architecture. Its modules carry the official state-dict names
    (checkpoints load strictly), its activations are the ones asked for, and it runs."""
    arch = {"nc": 80, "depth_multiple": 0.33, "width_multiple": 0.5, "activation": "nn.Hardswish()",
            "csp_activation": "nn.LeakyReLU(0.1)",
            "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
            "backbone": [[-1, 1, "Focus", [64, 3]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "BottleneckCSP", [128]],
                         [-1, 1, "Conv", [256, 3, 2]], [-1, 9, "BottleneckCSP", [256]], [-1, 1, "Conv", [512, 3, 2]],
                         [-1, 9, "BottleneckCSP", [512]], [-1, 1, "Conv", [1024, 3, 2]],
                         [-1, 1, "SPP", [1024, [5, 9, 13]]], [-1, 3, "BottleneckCSP", [1024, False]]],
            "head": [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                     [[-1, 6], 1, "Concat", [1]], [-1, 3, "BottleneckCSP", [512, False]],
                     [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                     [[-1, 4], 1, "Concat", [1]], [-1, 3, "BottleneckCSP", [256, False]],
                     [-1, 1, "Conv", [256, 3, 2]], [[-1, 14], 1, "Concat", [1]],
                     [-1, 3, "BottleneckCSP", [512, False]],
                     [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]],
                     [-1, 3, "BottleneckCSP", [1024, False]],
                     [[17, 20, 23], 1, "Detect", ["nc", "anchors"]]]}
    model = build_model(arch)
    keys = set(model.state_dict())
    for k in ("model.2.cv1.conv.weight", "model.2.cv2.weight", "model.2.cv3.weight", "model.2.cv4.conv.weight",
              "model.2.bn.running_var", "model.2.m.0.cv2.conv.weight", "model.0.conv.conv.weight"):
        assert k in keys, k
    csp = model.model[2]
    assert isinstance(csp.act, torch.nn.LeakyReLU) and csp.act.negative_slope == 0.1
    assert isinstance(csp.cv1.act, torch.nn.Hardswish)
    assert count_parameters(model) == 7_468_157  # YOLOv5 v3.1 yolov5s: 7.47M parameters (its README)
    assert model.fuse()(torch.zeros(1, 3, 64, 64)).shape == (1, 252, 85)
