"""Sample photos for a first run: a few real images that scikit-image ships inside its package."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import InputError

SAMPLE_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def sample_dir() -> Path:
    """The folder of scikit-image's bundled sample photos (person, cat, cup, motorcycle, rocket)."""
    try:
        import skimage
    except ImportError:
        raise InputError("no SOURCE given and scikit-image (which ships the sample photos) is not installed: "
                         "pass a folder of images, or pip install 'yolokit[samples]'") from None
    d = Path(os.path.dirname(skimage.__file__)) / "data"
    if not all((d / f).is_file() for f in SAMPLE_FILES):
        raise InputError(f"{d}: scikit-image's sample photos are missing; pass a folder of images instead")
    return d


def sample_paths() -> list[str]:
    d = sample_dir()
    return [str(d / f) for f in SAMPLE_FILES]
