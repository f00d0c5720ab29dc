"""Acceptance 2 of the core issue: `yolokit val` on coco128 is within 0.01 of the official val.py."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.cli import main


def test_val_coco128_matches_official(coco128: Path, yolov5n_pt: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["val", "--weights", str(yolov5n_pt), "--data", str(coco128), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["images"] == 128 and m["instances"] == 929
    assert abs(m["map50_95"] - 0.361) <= 0.01, m
    assert abs(m["map50"] - 0.560) <= 0.01, m
    assert abs(m["recall"] - 0.508) <= 0.02 and abs(m["precision"] - 0.568) <= 0.02
