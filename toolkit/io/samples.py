"""Sample photos for a first run and for export parity checks: four small public-domain or CC0 photos shipped
inside the package (``toolkit/data/samples``, sources and licences in its README)."""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import InputError

SAMPLE_FILES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")


def sample_dir() -> Path:
    """The folder of the bundled sample photos (a person, a cat, a cup, a rocket launch)."""
    d = Path(__file__).resolve().parents[1] / "data" / "samples"
    if not all((d / f).is_file() for f in SAMPLE_FILES):
        raise InputError(f"{d}: the sample photos shipped with yolokit are missing (a broken install?); reinstall "
                         f"yolokit or pass a folder of images")
    return d


def sample_paths() -> list[str]:
    d = sample_dir()
    return [str(d / f) for f in SAMPLE_FILES]
