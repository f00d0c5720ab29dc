"""What the benchmark scripts run on: sets of large JPEGs made from real photos (1920x1080 by default), list files
naming them, and exported models made once and reused.

The photos are resized in turn with ``cv2.INTER_LINEAR`` and written at JPEG quality 90; after the first pass over
the photos each one is mirrored on every other pass, and from the third pass on, pass ``k`` first crops ``k`` percent
off the photo's right and bottom edges, so no two files of a set are the same image (nor the same bytes), however
many passes it takes. A set is kept in its folder with the recipe that made it (``recipe.json``) and reused while the
recipe is the same; generated images never belong in the repository (``bench_out/`` is ignored)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import InputError

if TYPE_CHECKING:
    from backends.base import ExportOptions

SIZE_1080P = (1920, 1080)  # (width, height)
QUALITY = 90


def photo_set(photos: str | Path, folder: str | Path, n: int, size: tuple[int, int] = SIZE_1080P) -> list[Path]:
    """``n`` JPEGs of ``size`` (width, height), ``folder/00000.jpg`` on, made from the JPEG photos in the folder
    ``photos`` (sorted by name, taken in turn); made in parallel, reused when present with the same recipe. The
    folder holds exactly this set afterwards (images of another recipe or past ``n`` are removed)."""
    import cv2

    sources = sorted(Path(photos).glob("*.jpg"))
    if not sources:
        raise InputError(f"{photos}: no .jpg photos to make the benchmark images from; give a folder of JPEGs "
                         "such as coco128/images/train2017")
    folder = Path(folder)
    recipe = {"photos": str(Path(photos).resolve()), "size": list(size), "quality": QUALITY, "resize": "linear",
              "mirror": "every other pass", "crop": "pass k >= 2: k percent off the right and bottom"}
    stamp = folder / "recipe.json"
    same = stamp.is_file() and json.loads(stamp.read_text()) == recipe
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):  # the folder holds exactly this set: other recipes' and surplus images go
        if not same or not old.stem.isdigit() or int(old.stem) >= n:
            old.unlink()
    stamp.write_text(json.dumps(recipe))

    def make(i: int) -> Path:
        path = folder / f"{i:05d}.jpg"
        if not path.is_file():
            src = sources[i % len(sources)]
            img = cv2.imread(str(src))
            if img is None:
                raise InputError(f"{src}: cannot be read as an image; remove it from {photos}")
            rounds = i // len(sources)
            if rounds >= 2:
                img = img[: img.shape[0] * (100 - rounds) // 100, : img.shape[1] * (100 - rounds) // 100]
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            if rounds % 2:
                img = cv2.flip(img, 1)
            _, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
            tmp = path.with_name(path.name + ".part")  # a set cut short never holds a half-written image
            tmp.write_bytes(data.tobytes())
            tmp.replace(path)
        return path

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(make, range(n)))


def list_file(paths: list[Path], path: str | Path) -> Path:
    """A list file naming ``paths`` (absolute), one a line, as ``yolokit run LIST`` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.resolve()}\n" for p in paths))
    return path


def exported(weights: str | Path, to: str, path: str | Path, options: ExportOptions | None = None) -> Path:
    """The model ``weights`` exported to format ``to`` at ``path`` with ``options`` (the default export: dynamic
    batch and shape), made once: an existing ``path`` is reused as it is."""
    from toolkit.jobs.export import export

    path = Path(path)
    if not path.exists():
        export(weights, to, path, options)
    return path
