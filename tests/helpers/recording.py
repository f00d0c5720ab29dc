"""A model factory for process-mode tests: :meth:`ModelRoutine.load`, with the runner's ``expect`` hint also written
as a line to the file named by ``$YOLOKIT_TEST_EXPECT_LOG`` (worker processes inherit the variable)."""

from __future__ import annotations

import os
from typing import Any

from toolkit.engine.core import DetectorConfig
from toolkit.engine.detector import ModelRoutine


def recording_load(config: DetectorConfig) -> ModelRoutine:
    routine = ModelRoutine.load(config)
    told = routine.runner.expect

    def expect(inferences: int | None) -> Any:
        with open(os.environ["YOLOKIT_TEST_EXPECT_LOG"], "a") as f:
            f.write(f"{os.getpid()} {inferences}\n")
        return told(inferences)

    routine.runner.expect = expect
    return routine
