"""A labelled dataset as YOLOv5 v7.0's ``val.py`` reads it: its images, its label files, and the pure steps of its
loader (``LoadImagesAndLabels`` with ``rect``): the long-side resize of ``load_image``, the rectangular batches and
the label conversions, so that ``yolokit val`` sees the pixels and boxes ``val.py`` sees.

Label files follow YOLOv5's images -> labels rule (the last ``images`` folder of the path becomes ``labels``, the
suffix ``.txt``); a missing file means no objects. Rows are ``class xc yc w h`` normalised (or ``class x1 y1 x2 y2
...``, a polygon, whose bounding box is used), read as float32; duplicate rows count once (``val.py`` drops them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from toolkit.errors import InputError, yaml_problem
from toolkit.io.files import os_reason
from toolkit.io.imageheader import image_format
from toolkit.io.sources import IMAGE_SUFFIXES, InputRef, list_lines, walk_tree
from toolkit.ops import LetterboxInfo


@dataclass
class Sample:
    image: str
    shape: tuple[int, int]  # (h, w)
    cls: np.ndarray  # (M,)
    xyxy: np.ndarray  # (M, 4) pixels


def label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def dataset_images(data: str, take: tuple[str, ...] = ("val",)) -> tuple[list[Path], dict[int, str] | None]:
    """Image paths of a dataset, sorted as ``val.py`` sorts them (by the path's text), and its class names when a
    yaml gives them (or only ``nc``: then numbered names, for the count): a YOLO dataset yaml (its ``val`` split:
    folders or ``.txt`` lists), a folder with ``images/`` (and ``labels/`` beside it), or a folder of images whose
    labels follow the images -> labels rule. ``take``: the yaml's splits to take, the first it has (``yolokit val``
    and ``bench`` take ``val`` alone, as val.py does; INT8 calibration any split, ``val`` first)."""
    p = Path(data)
    names: dict[int, str] | None = None
    if p.suffix in (".yaml", ".yml") and p.is_file():
        import yaml

        fix = "a YOLO dataset yaml has the keys path, train, val and names"
        try:
            d = yaml.safe_load(p.read_bytes()) or {}  # bytes: the parser reads UTF-8 (or UTF-16 with its mark)
        except OSError as e:
            raise InputError(f"{p}: cannot read the dataset yaml ({os_reason(e)})") from None
        except yaml.YAMLError as e:
            raise InputError(f"{p}: not valid YAML ({yaml_problem(e)}); fix the file: {fix}") from None
        if not isinstance(d, dict):
            raise InputError(f"{p}: not a dataset yaml (it holds a {type(d).__name__}); {fix}")
        base = d.get("path") or ""
        split = next((d[k] for k in take if d.get(k) not in (None, "", [])), None)
        if split is None and take == ("val",):  # val.py's split: it refuses a yaml without one
            raise InputError(f"{p}: the dataset yaml has no val split (what yolokit val measures, as val.py does); "
                             f"add 'val:' with the folder or .txt list of the images to measure (coco128.yaml "
                             f"gives its train folder); {fix}")
        if split is None:
            raise InputError(f"{p}: the dataset yaml has no {', '.join(take)} split; {fix}")
        splits = split if isinstance(split, list) else [split]
        if not isinstance(base, str | Path) or not all(isinstance(s, str) for s in splits):
            raise InputError(f"{p}: its path and val split must be text (folders or .txt lists); {fix}")
        remote = [str(s) for s in (base, *splits) if "://" in str(s)]
        if remote:
            raise InputError(f"{p}: {remote[0]} is a URL; yolokit val reads a dataset on this machine: download and "
                             f"unpack it, then give its folder as path")
        roots = _roots(p, str(base))
        folders = [_split_path(roots, s) for s in splits]
        raw = d.get("names")
        if isinstance(raw, dict):
            try:
                names = {int(k): str(v) for k, v in raw.items()}
            except (TypeError, ValueError):
                raise InputError(f"{p}: its names map class numbers to names, and a key is not a number; "
                                 f"{fix}") from None
        elif isinstance(raw, list):
            names = dict(enumerate(map(str, raw)))
        elif raw is not None:
            raise InputError(f"{p}: its names must be a list or a mapping of class names, not {raw!r}; {fix}")
        nc = d.get("nc")
        if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1
                               or (names is not None and nc != len(names))):
            raise InputError(f"{p}: nc {nc!r} must be the number of classes"
                             f"{f' ({len(names)} names)' if names is not None else ''}; {fix}")
        if names is None and nc is not None:  # a count without names: checked against the model's as val.py does
            names = {i: str(i) for i in range(nc)}
    elif p.is_dir():
        folders = [p / "images"] if (p / "images").is_dir() else [p]
    elif not p.exists():
        raise InputError(f"{data}: no such file or folder (give a YOLO dataset .yaml, or a folder with images/ and "
                         f"labels/; coco128.yaml is not built in: give the dataset's own yaml or folder)")
    else:
        raise InputError(f"{data}: not a dataset yaml or folder (give a YOLO dataset .yaml, or a folder with "
                         f"images/ and labels/)")
    images: list[Path] = []
    for folder in folders:
        if folder.is_file():  # a list of images, whatever its suffix (val.py reads any file as one)
            try:
                lines = list_lines(folder.read_bytes(), name=str(folder), any_break=True)
            except OSError as e:
                raise InputError(f"{folder}: cannot read the dataset's image list ({os_reason(e)})") from None
            # relative lines from the current folder, ./ ones from the list's, as val.py reads them
            listed = [folder.parent / line[2:] if line.startswith("./") else Path(line) for line in lines if line]
            images += [f for f in listed if f.suffix.lower() in IMAGE_SUFFIXES]  # val.py keeps images alone
            continue
        if not folder.is_dir():
            hint = (" (a 'download:' key is not run: download the dataset and unpack it there)"
                    if p.suffix in (".yaml", ".yml") and "download" in d else "")
            raise InputError(f"{folder}: the dataset's split is not there{hint}; give the yaml a 'path:' (absolute, "
                             f"or relative to the yaml's folder) under which its val folder or list is")
        failed: list[tuple[InputRef, str]] = []
        for dirpath, dirnames, files in walk_tree(str(folder), str(folder), failed):
            dirnames[:] = [n for n in dirnames if not n.startswith(".")]  # glob's **/*.*, as val.py lists them
            images += [Path(dirpath) / f for f in files
                       if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if failed:
            raise InputError(f"{failed[0][0].path}: {failed[0][1]}")
    if not images:
        raise InputError(f"{data}: no images found")
    # one image listed twice is scored once (val.py's label cache holds one entry a path)
    return sorted(dict.fromkeys(images), key=str), names


def _roots(yaml_path: Path, base: str) -> list[Path]:
    """Where a dataset yaml's splits are looked for, in turn: its ``path`` if absolute; else below the yaml's folder
    (``path`` relative to it, or the folder itself without one), then below the current folder (val.py resolves a
    relative ``path`` from YOLOv5's folder, where it is run from: ``--data data/coco128.yaml`` with ``path:
    ../datasets/coco128``)."""
    given = Path(base)
    if given.is_absolute():
        return [given]
    return list(dict.fromkeys([(yaml_path.parent / given).resolve(), given.resolve()]))


def _split_path(roots: list[Path], split: str) -> Path:
    """A split's folder or list: below the first of ``roots`` that has it; with val.py's fallback, a split starting
    with ``../`` (Roboflow's exports) also without that part. Missing everywhere: where the first root would have
    it (the caller says so)."""
    tries = []
    for root in roots:
        tries.append((root / split).resolve())
        if split.startswith("../"):
            tries.append((root / split[3:]).resolve())
    return next((t for t in tries if t.exists()), tries[0])


# the formats val.py scores (its IMG_FORMATS, as Pillow names a file's format); others it leaves out with a warning
VAL_FORMATS = ("jpeg", "png", "bmp", "webp", "tiff")


def left_out(path: str, shape: tuple[int, int]) -> str | None:
    """Why val.py would leave out a readable image (``shape``: its size, h and w): under 10 pixels a side, or a format
    it does not score (a GIF or a PPM named .jpg: OpenCV reads them, Pillow names them); None when it scores it."""
    h, w = shape
    if min(h, w) < 10:
        return f"image size {w}x{h} is under 10 pixels a side, and val.py leaves such images out; remove it"
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None  # it was read a moment ago: what reads it next reports a change
    fmt = image_format(head)
    if fmt is None or fmt in VAL_FORMATS or (fmt == "pnm" and head[1:2] in b"fF"):  # PFM is one of val.py's
        return None
    return (f"a {fmt.upper()} image named {Path(path).suffix}, which val.py leaves out (it scores "
            f"{', '.join(f.upper() for f in VAL_FORMATS)}); convert it to JPEG or PNG")


def read_labels(image: Path) -> np.ndarray:
    """An image's labels as ``(M, 5)`` float32 rows ``class xc yc w h`` (normalised), duplicates dropped (the rows
    come back sorted, as ``val.py`` keeps them). Raises :class:`InputError` for a file ``val.py`` would reject."""
    lp = label_path(image)
    if not lp.is_file():
        return np.zeros((0, 5), np.float32)
    rows = [line.split() for line in list_lines(lp.read_bytes(), encoding="utf-8", name=str(lp), any_break=True)
            if line]
    fix = "fix it to 'class xc yc w h' rows, normalised to 0-1"
    try:
        if any(len(r) > 6 for r in rows):  # polygons: class x1 y1 x2 y2 ...
            boxes = []
            for r in rows:
                xy = np.array(r[1:], np.float32).reshape(-1, 2)
                (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
                boxes.append([float(r[0]), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
            arr = np.array(boxes, np.float32)
        else:
            arr = np.array(rows, np.float32)
    except ValueError:
        raise InputError(f"{lp}: a label line is not numbers or a polygon has an odd count; {fix}") from None
    if not len(arr):
        return np.zeros((0, 5), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise InputError(f"{lp}: labels need 5 columns (class xc yc w h); {fix}")
    if not np.isfinite(arr).all():  # val.py's (lb >= 0).all() is False for NaN too
        raise InputError(f"{lp}: a label value is not a number (nan or inf); {fix}")
    if (arr < 0).any():
        raise InputError(f"{lp}: negative label values; {fix}")
    if (arr[:, 0] != np.round(arr[:, 0])).any() or (arr[:, 0] >= 1 << 24).any():  # 1.5 read as 1; 1e23 overflowed
        raise InputError(f"{lp}: a class id is not a whole number below 16,777,216; {fix}")
    if (arr[:, 1:] > 1).any():
        raise InputError(f"{lp}: box coordinates above 1 (not normalised); {fix}")
    return np.unique(arr, axis=0)


def load_labels(image: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, xyxy pixel boxes) of an image's labels for an image of ``shape`` (h, w)."""
    arr = read_labels(image).astype(np.float64)
    h, w = shape
    xc, yc, bw, bh = arr[:, 1] * w, arr[:, 2] * h, arr[:, 3] * w, arr[:, 4] * h
    xyxy = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], 1).astype(np.float32).reshape(-1, 4)
    return arr[:, 0].astype(np.int64), xyxy


# -- the steps of val.py's loader ------------------------------------------------------------------------------


def resized_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` after ``load_image``: the long side to ``size``, each side truncated."""
    h0, w0 = shape
    r = size / max(h0, w0)
    return (int(h0 * r), int(w0 * r)) if r != 1 else (h0, w0)


def load_resized(img: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """``load_image``'s resize of an image whose original size is ``shape`` (h, w): to :func:`resized_shape`, with
    INTER_AREA when shrinking and INTER_LINEAR when enlarging. ``img`` may have been decoded at a reduced size that
    is still at least the target (``fast_decode``)."""
    h, w = resized_shape(shape, size)
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_LINEAR if size / max(shape) > 1 else cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interp)


def rect_batches(shapes: np.ndarray, batch: int, size: int, stride: int,
                 pad: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``val.py``'s rectangular batches for images of ``shapes`` ``(n, 2)`` (h, w as read): the image order (sorted by
    aspect ratio h/w with numpy's default sort) and ``(n_batches, 2)`` letterbox shapes (h, w): per batch of
    ``batch`` consecutive images, the extreme aspect ratio scaled to ``size``, plus ``pad`` strides, rounded up to
    the stride."""
    hw = np.asarray(shapes, np.int64).reshape(-1, 2)
    ar = hw[:, 0] / hw[:, 1]
    order = ar.argsort()
    ar = ar[order]
    bi = np.floor(np.arange(len(hw)) / batch).astype(int)
    ratios = [[1.0, 1.0]] * (int(bi[-1]) + 1 if len(bi) else 0)
    for i in range(len(ratios)):
        ari = ar[bi == i]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            ratios[i] = [hi, 1]
        elif lo > 1:
            ratios[i] = [1, 1 / lo]
    shapes_out = np.ceil(np.array(ratios).reshape(-1, 2) * size / stride + pad).astype(int) * stride
    return order, shapes_out


def to_native(xyxy: np.ndarray, info: LetterboxInfo, gain: float, shape: tuple[int, int]) -> np.ndarray:
    """Boxes in letterboxed pixels back to the original image (``val.py``'s ``scale_boxes`` with its ratio and
    padding): minus the padding, divided by ``gain`` (resized over original height, times the letterbox ratio),
    clipped to ``shape`` (h, w); float32 throughout."""
    out = np.array(xyxy, np.float32).reshape(-1, 4)
    padw, padh = info.pad
    out[:, [0, 2]] -= np.float32(padw)
    out[:, [1, 3]] -= np.float32(padh)
    out /= np.float32(gain)
    out[:, [0, 2]] = out[:, [0, 2]].clip(np.float32(0), np.float32(shape[1]))
    out[:, [1, 3]] = out[:, [1, 3]].clip(np.float32(0), np.float32(shape[0]))
    return out


def native_labels(labels: np.ndarray, resized: tuple[int, int], info: LetterboxInfo, gain: float,
                  shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class, xyxy) float32 of ``labels`` (``read_labels`` rows) as ``val.py`` scores them: to letterboxed pixels,
    clipped a thousandth of a pixel inside the letterboxed image and normalised to it (the loader), back to pixels,
    to corners, and to the original image (:func:`to_native`)."""
    lab = np.asarray(labels, np.float32).reshape(-1, 5)
    h, w = resized
    r, (padw, padh) = info.ratio, info.pad
    sw, sh = np.float32(r * w), np.float32(r * h)
    x, y, bw, bh = lab[:, 1], lab[:, 2], lab[:, 3], lab[:, 4]
    x1 = sw * (x - bw / np.float32(2)) + np.float32(padw)
    y1 = sh * (y - bh / np.float32(2)) + np.float32(padh)
    x2 = sw * (x + bw / np.float32(2)) + np.float32(padw)
    y2 = sh * (y + bh / np.float32(2)) + np.float32(padh)
    hh, ww = info.dst_shape
    xs = np.clip(np.stack([x1, x2], 1), np.float32(0), np.float32(ww - 1e-3))
    ys = np.clip(np.stack([y1, y2], 1), np.float32(0), np.float32(hh - 1e-3))
    fw, fh = np.float32(ww), np.float32(hh)
    xc = (xs[:, 0] + xs[:, 1]) / np.float32(2) / fw * fw
    yc = (ys[:, 0] + ys[:, 1]) / np.float32(2) / fh * fh
    wn = (xs[:, 1] - xs[:, 0]) / fw * fw
    hn = (ys[:, 1] - ys[:, 0]) / fh * fh
    box = np.stack([xc - wn / np.float32(2), yc - hn / np.float32(2), xc + wn / np.float32(2),
                    yc + hn / np.float32(2)], 1)
    return lab[:, 0].copy(), to_native(box, info, gain, shape)
