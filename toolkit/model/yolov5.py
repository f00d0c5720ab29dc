"""yolokit's own YOLOv5 (v6.0/v7.0 architecture) in PyTorch.

The network is built from an architecture dict of the kind official checkpoints carry (``nc``,
``depth_multiple``, ``width_multiple``, ``anchors``, ``backbone``, ``head``), or from the built-in configs
for yolov5n/s/m/l/x and the P6 models n6..x6. Module attribute names follow the official layout so that a
checkpoint's state dict loads with ``strict=True``. The module names in the dict are parsed from an
allow-list; nothing in an architecture dict is ever evaluated.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch
from torch import nn

from toolkit.errors import ModelFileError
from toolkit.model.configs import BUILTIN_CONFIGS, SCALES
from toolkit.options import IMGSZ

# ----------------------------------------------------------------------------------------------- layers


def _autopad(k: int, p: int | None = None, d: int = 1) -> int:
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation; ``fuse()`` folds the BatchNorm into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: bool | nn.Module = True, default_act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, _autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2)
        if act is True:
            self.act: nn.Module = copy.deepcopy(default_act) if default_act is not None else nn.SiLU()
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if self.fused:
            return
        bn = self.bn
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_var is not None and bn.running_mean is not None
        conv = self.conv
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            scale = bn.weight / std
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                              conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                              conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            assert fused.bias is not None
            fused.bias.copy_(bias)
        self.conv = fused
        self.bn = nn.Identity()
        self.fused = True


class DWConv(Conv):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool = True,
                 default_act: nn.Module | None = None) -> None:
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act, default_act=default_act)


class Focus(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool = True, default_act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act, default_act=default_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                    x[..., 1::2, 1::2]), 1))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 default_act: nn.Module | None = None) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_, c2, 3, 1, g=g, default_act=default_act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 default_act: nn.Module | None = None) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv3 = Conv(2 * c_, c2, 1, default_act=default_act)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, default_act=default_act)
                                 for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class BottleneckCSP(nn.Module):
    """YOLOv5's CSP bottleneck (its backbone until v4.0, C3's predecessor): two paths, one through ``n`` bottlenecks
    and a plain conv, the other a plain conv, joined through a BatchNorm and an activation of their own (``csp_act``:
    LeakyReLU(0.1) in the releases that trained with it, SiLU in v7.0's code; a checkpoint's saved one)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 default_act: nn.Module | None = None, csp_act: nn.Module | None = None) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1, default_act=default_act)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = copy.deepcopy(csp_act) if csp_act is not None else nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, default_act=default_act)
                                 for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class SPP(nn.Module):
    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13),
                 default_act: nn.Module | None = None) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1, default_act=default_act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5, default_act: nn.Module | None = None) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_ * 4, c2, 1, 1, default_act=default_act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """Detection head. Output: ``(B, N, 5 + nc)`` with ``xywh`` in input pixels, objectness and class
    scores (sigmoid applied), levels concatenated P3..P5(P6), each level ordered (anchor, y, x)."""

    anchors: torch.Tensor

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        # anchors in grid units (pixels / stride) once the stride is known, as official checkpoints store them
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.stride: list[float] = [0.0] * self.nl
        self.raw = False  # True: return the per-level conv outputs (used to measure strides)
        self.dynamic = False  # True: never cache grids (tracing for export with dynamic shapes)
        self._grids: dict[tuple[int, int, int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, nx, ny, str(like.device), like.dtype)
        if not self.dynamic and key in self._grids:
            return self._grids[key]
        anchors = self.anchors.to(like.device)
        y = torch.arange(ny, device=like.device, dtype=like.dtype)
        x = torch.arange(nx, device=like.device, dtype=like.dtype)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2) - 0.5
        anchor_grid = (anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2)
        out = (grid, anchor_grid.to(like.dtype))
        if not self.dynamic:
            self._grids[key] = out
        return out

    def forward(self, xs: list[torch.Tensor]) -> Any:
        outs = [m(x) for m, x in zip(self.m, xs, strict=True)]
        if self.raw:
            return outs
        z = []
        for i, x in enumerate(outs):
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            grid, anchor_grid = self._grid(i, nx, ny, x)
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        return torch.cat(z, 1)


# ----------------------------------------------------------------------------------------------- builder

_P5_HEAD_BACKBONE: dict[str, Any] = {
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [
        [-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],
    ],
    "head": [
        [-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]], [-1, 3, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]], [[-1, 14], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]],
        [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
    ],
}

_P6_HEAD_BACKBONE: dict[str, Any] = {
    "anchors": [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
                [436, 615, 739, 380, 925, 792]],
    "backbone": [
        [-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]], [-1, 1, "Conv", [768, 3, 2]], [-1, 3, "C3", [768]],
        [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C3", [1024]], [-1, 1, "SPPF", [1024, 5]],
    ],
    "head": [
        [-1, 1, "Conv", [768, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 8], 1, "Concat", [1]], [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]], [-1, 3, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]], [[-1, 20], 1, "Concat", [1]], [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]], [[-1, 16], 1, "Concat", [1]], [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [768, 3, 2]], [[-1, 12], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]],
        [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
    ],
}



def builtin_config(name: str, nc: int = 80) -> dict[str, Any]:
    """Architecture dict of a built-in model (``yolov5n`` .. ``yolov5x6``)."""
    m = re.fullmatch(r"yolov5([nsmlx])(6?)(\.yaml|\.pt)?", name)
    if not m:
        raise ModelFileError(f"unknown built-in model config {name!r}; choose one of {', '.join(BUILTIN_CONFIGS)}")
    gd, gw = SCALES[m.group(1)]
    base = _P6_HEAD_BACKBONE if m.group(2) else _P5_HEAD_BACKBONE
    return {"nc": nc, "depth_multiple": gd, "width_multiple": gw, **copy.deepcopy(base)}


_ACTIVATIONS = {
    "nn.SiLU()": nn.SiLU, "nn.ReLU()": nn.ReLU, "nn.Hardswish()": nn.Hardswish, "nn.Mish()": nn.Mish,
}


def _parse_activation(spec: Any) -> nn.Module | None:
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ModelFileError(f"unsupported activation {spec!r} in the architecture dict")
    spec = spec.replace(" ", "")
    if spec in _ACTIVATIONS:
        return _ACTIVATIONS[spec]()
    m = re.fullmatch(r"nn\.LeakyReLU\(([0-9.eE+-]*)\)", spec)
    if m:
        return nn.LeakyReLU(float(m.group(1)) if m.group(1) else 0.01)
    raise ModelFileError(f"unsupported activation {spec!r} in the architecture dict "
                         f"(yolokit supports SiLU, ReLU, LeakyReLU, Hardswish, Mish)")


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


_CONV_LIKE = {"Conv": Conv, "Bottleneck": Bottleneck, "SPP": SPP, "SPPF": SPPF, "DWConv": DWConv,
              "Focus": Focus, "C3": C3, "BottleneckCSP": BottleneckCSP}


class YOLOv5(nn.Module):
    """A YOLOv5 detection model. ``forward(x)`` takes ``(B, 3, H, W)`` RGB in [0, 1] and returns
    ``(B, N, 5 + nc)`` decoded predictions."""

    def __init__(self, arch: dict[str, Any], ch: int = 3) -> None:
        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.model, self.save = self._parse(self.arch, ch)
        det = self.model[-1]
        if not isinstance(det, Detect):
            raise ModelFileError("unsupported architecture: the last layer is not a YOLOv5 Detect head")
        self.nc = det.nc

    @property
    def detect(self) -> Detect:
        det = self.model[-1]
        assert isinstance(det, Detect)
        return det

    @staticmethod
    def _parse(d: dict[str, Any], ch_in: int) -> tuple[nn.Sequential, list[int]]:
        try:
            anchors, nc = d["anchors"], int(d["nc"])
            gd, gw = float(d["depth_multiple"]), float(d["width_multiple"])
            layers_spec = list(d["backbone"]) + list(d["head"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"the architecture dict is missing or has a bad field: {e}") from e
        last = layers_spec[-1] if layers_spec else None
        if not isinstance(last, (list, tuple)) or len(last) != 4 or last[2] != "Detect":
            raise ModelFileError("unsupported architecture: its last layer is not a Detect head (a YOLOv5 detection "
                                 "model's is)")
        act = _parse_activation(d.get("activation"))
        # BottleneckCSP's own activation: yolokit's key, from the modules a checkpoint saved (checkpoint.py)
        csp_act = _parse_activation(d.get("csp_activation"))
        if isinstance(anchors, int):
            raise ModelFileError("unsupported architecture: auto-anchor counts (anchors: int) are not supported")
        na = len(anchors[0]) // 2
        no = na * (nc + 5)
        layers: list[nn.Module] = []
        save: list[int] = []
        ch = [ch_in]
        for i, spec in enumerate(layers_spec):
            try:
                f, n, name, args = spec
            except (TypeError, ValueError) as e:
                raise ModelFileError(f"the architecture dict has a malformed layer {i}: {spec!r}") from e
            args = list(args)
            literals = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
            for j, a in enumerate(args):
                if isinstance(a, str) and a in literals:
                    args[j] = literals[a]
            n = max(round(n * gd), 1) if n > 1 else n
            c2: int
            module: nn.Module
            if name in _CONV_LIKE:
                cls = _CONV_LIKE[name]
                c1, c2 = ch[f], args[0]
                if c2 != no:
                    c2 = _make_divisible(c2 * gw, 8)
                margs = [c1, c2, *args[1:]]
                if name in ("C3", "BottleneckCSP"):
                    margs.insert(2, n)
                    n = 1
                if name == "SPP" and len(margs) > 2:
                    margs[2] = tuple(margs[2])
                extra = {"csp_act": csp_act} if name == "BottleneckCSP" else {}
                blocks = [cls(*margs, default_act=act, **extra) for _ in range(n)]
                module = nn.Sequential(*blocks) if n > 1 else blocks[0]
            elif name == "nn.BatchNorm2d":
                c2 = ch[f]
                module = nn.BatchNorm2d(c2)
            elif name == "Concat":
                c2 = sum(ch[x] for x in f)
                module = Concat(*args)
            elif name == "nn.Upsample":
                c2 = ch[f]
                size, scale, mode = (list(args) + [None, None, "nearest"])[:3]
                module = nn.Upsample(size=size, scale_factor=scale, mode=mode)
            elif name == "Detect":
                det_anchors = args[1]
                if isinstance(det_anchors, int):
                    raise ModelFileError("unsupported architecture: Detect with an anchor count, not anchors")
                c2 = 0
                module = Detect(int(args[0]), det_anchors, [ch[x] for x in f])
            else:
                raise ModelFileError(
                    f"unsupported architecture: layer {i} is {name!r}; yolokit supports YOLOv5 detection "
                    f"models built from Conv, C3, BottleneckCSP, Bottleneck, SPP(F), Focus, DWConv, Concat, Upsample, "
                    f"Detect")
            module.f, module.i = f, i  # type: ignore[assignment]
            save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(module)
            if i == 0:
                ch = []
            ch.append(c2)
        return nn.Sequential(*layers), sorted(set(save))

    def forward(self, x: torch.Tensor) -> Any:
        y: list[torch.Tensor | None] = []
        for m in self.model:
            f = m.f  # type: ignore[union-attr]
            if f != -1:
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]  # type: ignore
            x = m(x)
            y.append(x if m.i in self.save else None)  # type: ignore[operator]
        return x

    def fuse(self) -> YOLOv5:
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    def set_strides(self, strides: list[float] | None = None, anchors_in_pixels: bool = False) -> None:
        """Set the Detect strides; measure them with a forward pass when not given. With
        ``anchors_in_pixels`` (a freshly built model), divide the anchors by the strides as checkpoints do."""
        det = self.detect
        if strides is None:
            det.raw = True
            try:
                p = next(self.parameters())
                with torch.no_grad():
                    outs = self.forward(torch.zeros(1, 3, 256, 256, device=p.device, dtype=p.dtype))
            finally:
                det.raw = False
            strides = [256.0 / o.shape[-2] for o in outs]
        det.stride = [float(s) for s in strides]
        if anchors_in_pixels:
            with torch.no_grad():
                det.anchors /= torch.tensor(det.stride, device=det.anchors.device).view(-1, 1, 1)
        det._grids.clear()

    @property
    def stride(self) -> int:
        return int(max(self.detect.stride))

    def init_biases(self) -> None:
        """The usual YOLOv5 prior for a fresh model: few objects per image, classes near uniform."""
        det = self.detect
        with torch.no_grad():
            for conv, s in zip(det.m, det.stride, strict=True):
                bias = conv.bias
                assert isinstance(bias, torch.Tensor)
                b = bias.view(det.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (det.nc - 0.99)) if det.nc > 1 else 0.0


def build_model(arch: dict[str, Any] | str, nc: int = 80, seed: int | None = 0) -> YOLOv5:
    """A randomly initialised model from an architecture dict or a built-in name (for tests and benchmarks)."""
    if isinstance(arch, str):
        arch = builtin_config(arch, nc)
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        model = YOLOv5(arch)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
    model.set_strides(anchors_in_pixels=True)
    model.init_biases()
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: YOLOv5, imgsz: tuple[int, int] = (IMGSZ.default, IMGSZ.default)) -> float:
    """Multiply-accumulates x 2 of the conv layers for one image of ``imgsz``, in GFLOPs."""
    total = 0

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv2d)
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += 2 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return total / 1e9
