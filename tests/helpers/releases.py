"""Where a run's model was released: :func:`note_releases` records the name of the thread each
``LocalEngine.close`` ran on; :func:`wait_for_releases` waits for the background ones (``yolokit-release``)."""

from __future__ import annotations

import threading

import pytest

from toolkit.jobs.run import LocalEngine


def note_releases(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    closed_on: list[str] = []
    close = LocalEngine.close

    def noted(self: LocalEngine) -> None:
        closed_on.append(threading.current_thread().name)
        close(self)

    monkeypatch.setattr(LocalEngine, "close", noted)
    return closed_on


def wait_for_releases(timeout: float = 30) -> None:
    for thread in threading.enumerate():
        if thread.name == "yolokit-release":
            thread.join(timeout)
