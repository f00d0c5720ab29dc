"""A short fuzzing run (scripts/fuzz.py runs the same targets for longer)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="pip install 'yolokit[dev]'")


def _fuzz_module():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("yolokit_fuzz", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_checkpoint_loader_and_image_reader_briefly() -> None:
    _fuzz_module().run(examples=60)


def test_the_fuzz_oracle_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness reports a crash: only yolokit's own errors are allowed through, anything else escapes."""
    fuzz = _fuzz_module()

    def broken_loader(path: object) -> None:
        raise ValueError("a loader bug")

    monkeypatch.setattr(fuzz, "read_pickled_object", broken_loader)
    with pytest.raises(ValueError, match="a loader bug"):
        fuzz.check_checkpoint(b"anything", tmp_path)
