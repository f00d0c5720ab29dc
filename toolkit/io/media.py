"""Annotated video out: one ``.mp4`` per input video or stream (OpenCV's ``mp4v`` writer), written under a temporary
name and renamed when complete, like every other output; into object storage, uploaded whole once complete."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np

from toolkit.errors import OutputError
from toolkit.io.files import opencv_name
from toolkit.io.store import Store

DEFAULT_FPS = 30.0  # when a source does not say its frame rate


class VideoSink:
    """Frames in order into the object ``name`` (an ``.mp4``) of ``store`` at ``fps``, sized like the first frame.
    :meth:`close` finishes the file and gives it its name; until then it is ``.NAME.HEX.tmp.mp4`` beside it
    (deleted by ``--resume``), or, for object storage, a temporary file on this machine uploaded whole at the end."""

    def __init__(self, store: Store, name: str, fps: float) -> None:
        self.store, self.name = store, name
        self.path = Path(store.url(name))  # refuses a name outside the run folder (a key with '..' wrote anywhere)
        self.fps = fps if fps > 0 else DEFAULT_FPS
        import tempfile

        folder = self.path.parent if store.local is not None else Path(tempfile.gettempdir())
        self.tmp = folder / f".{self.path.name[:200]}.{os.urandom(6).hex()}.tmp.mp4"  # within 255 bytes as the name
        self._names = contextlib.ExitStack()  # a name OpenCV can take for a path that is not UTF-8 (opencv_name)
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            try:
                self.tmp.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{self.path}: cannot write ({e.strerror or e}); free some space or fix the "
                                  f"permissions, then continue the run with --resume") from None
            name = self._names.enter_context(opencv_name(str(self.tmp)))
            self.writer = cv2.VideoWriter(name, cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                self.writer = None
                self._names.close()
                raise OutputError(f"{self.path}: cannot write the annotated video (this OpenCV cannot encode "
                                  f"MPEG-4, or the folder is not writable); use --nosave, or check the folder")
            self.size = (w, h)
        if self.size is not None and (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)  # a stream that changed size
        self.writer.write(frame)
        self.frames += 1

    def discard(self) -> None:
        """Stop without giving the file its name (a file video cut short by Ctrl-C: under its name it looked
        finished; ``--resume`` redoes the video)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            self._names.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def close(self) -> None:
        """Finish the file and rename it to its name (nothing is written for a video without a processed frame)."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        self._names.close()
        if self.store.local is None:
            self.store.put_file(self.name, self.tmp)  # one whole upload; the temporary file is removed
            return
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            raise OutputError(f"{self.path}: cannot write ({e.strerror or e}); free some space or fix the "
                              f"permissions, then continue the run with --resume") from None
