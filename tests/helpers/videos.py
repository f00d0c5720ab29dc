"""Writing test videos with the ffmpeg command (scripts/test.sh installs it): the containers and codecs OpenCV's
own writer does not make (interleaved audio, H.264, Matroska, MPEG-TS, fragmented MP4)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def ffmpeg(*args: str, skip_if_it_cannot: bool = False) -> None:
    """Run ``ffmpeg -v error -y ARGS``; skip the test when the command is missing. A failure fails the test, or
    skips it with ffmpeg's reason where ``skip_if_it_cannot`` (an encoder a build may lack, such as libx264)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (scripts/test.sh installs it) to write the video")
    proc = subprocess.run(["ffmpeg", "-v", "error", "-y", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        if skip_if_it_cannot:
            pytest.skip(f"this ffmpeg cannot write the video: {proc.stderr.strip()[-200:]}")
        raise AssertionError(f"ffmpeg failed: {proc.stderr.strip()[-400:]}")
