"""One run at a time in a run folder: an OS lock (``flock``) on ``.yolokit.lock`` inside it, held while the run
writes there. The kernel releases it when the process ends, however it ends (SIGKILL included), so a killed run
never leaves a stale lock behind. The file also names the holder, for the refusal a second run gets."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from toolkit.errors import InputError, OutputError

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked (the summary says so)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".yolokit.lock"


class FolderLock:
    """``with FolderLock(folder) as lock:`` holds ``folder`` for this process or raises :class:`InputError`
    naming the process that holds it. ``lock.note`` is set when the folder's file system cannot lock (the run goes
    on unlocked and its summary says so)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.fd: int | None = None
        self.note = ""

    def acquire(self) -> None:
        if fcntl is None:
            self.note = "this system has no file locks: make sure no other run writes this run folder"
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise OutputError(f"{self.folder}: cannot write the output folder ({e.strerror or e}); choose another "
                              f"with --project/--name or free some space") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(f"{self.folder}: another yolokit run ({holder}) is writing this run folder; wait for "
                             f"it to end, or give another --name") from None
        except OSError as e:  # a file system without locks (some network or FUSE mounts)
            os.close(fd)
            self.note = (f"the run folder could not be locked ({e.strerror or e}): make sure no other run writes "
                         f"it")
            return
        self.fd = fd
        text = (f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv[:1] + sys.argv[1:8])}")
        with contextlib.suppress(OSError):  # naming the holder is a courtesy: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(errors="replace")[:1000], 0)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.split(": ", 1)[0] if text else "one that is just starting"


__all__ = ["LOCK_NAME", "FolderLock"]
