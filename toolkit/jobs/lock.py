"""One run at a time in a run folder.

On local disk: an OS lock (``flock``) on ``.yolokit.lock`` inside it, held while the run writes there. The kernel
releases it when the process ends, however it ends (SIGKILL included), so a killed run never leaves a stale lock
behind. The file also names the holder, for the refusal a second run gets.

In object storage no OS lock reaches the bucket, so the guard is the ``.yolokit.lock`` object itself
(:class:`StoreLock`): a run creates it with a conditional put that fails when it exists (S3's ``If-None-Match: *``;
see :attr:`toolkit.io.store.Store.exclusive`), so of two runs only one gets it. A lease stands in for the kernel:
the holder rewrites the object every :data:`BEAT` seconds with the time, and a lock not renewed for
:data:`LEASE` seconds belongs to a run that was killed, which the next run takes over (its summary says so). A new
run folder in a store is claimed the same way: ``exp`` is taken when its lock is created, else ``exp2``..."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from toolkit.errors import InputError, OutputError
from toolkit.io.store import Store, open_store
from toolkit.jobs.journal import journal

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked (the summary says so)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".yolokit.lock"
LEASE = 120.0  # seconds a store lock holds without being renewed
BEAT = 15.0  # seconds between two renewals


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
        text = f"{_holder()}: {' '.join(sys.argv[:1] + sys.argv[1:8])}"
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


def _holder() -> str:
    import platform  # the host's name without importing networking (socket: 1.8 ms of a local run)

    return f"process {os.getpid()} on {platform.node()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"


class StoreLock:
    """``with StoreLock(store) as lock:`` holds the run folder ``store`` (see the module's description) or raises
    :class:`InputError` naming the run that holds it. ``lock.note`` says what the summary should: a lock taken over
    from a killed run, or a store whose conditional put is not atomic. ``lease`` and ``beat``: seconds."""

    def __init__(self, store: Store, lease: float = LEASE, beat: float = BEAT) -> None:
        self.store, self.lease, self.beat = store, lease, beat
        self.token = os.urandom(8).hex()
        self.held = False
        self.lost = False  # another run took the lock over while this one held it
        self.note = ""
        self.problem = ""  # why its release failed (the lock object could not be deleted), for the summary
        self.since = _holder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"holder": self.since, "command": " ".join(sys.argv[:1] + sys.argv[1:8]),
                           "token": self.token, "time": time.time(), "lease": self.lease}).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            got = json.loads(self.store.read(LOCK_NAME))
        except FileNotFoundError:
            return None
        except (OSError, OutputError):
            return {"time": time.time()}  # could not be read now: taken for a live run's
        except ValueError:
            return {}  # not JSON: no run's lock (a store writes an object whole)
        return got if isinstance(got, dict) else {}

    def acquire(self, fresh: bool = False) -> None:
        """Create the lock object. ``fresh`` (claiming a new run folder): FileExistsError when another run holds
        it, for the caller to try the next name; otherwise a refusal naming the holder, or a take-over of a lock
        whose lease ran out."""
        if self.held:
            return
        for _ in range(5):
            try:
                self.store.put(LOCK_NAME, self._body(), create=True,
                               hint="choose another --project/--name, or check the store's permissions")
                break
            except FileExistsError:
                if fresh:
                    raise
            other = self._read()
            if other is None:
                continue  # released meanwhile: try again
            try:  # a store writes an object whole: a lock without its time is no run's (an empty object blocked the
                age = time.time() - float(other["time"])  # folder for ever, "one that is just starting")
                lease = float(other.get("lease") or self.lease)
                holder = str(other.get("holder") or "one that is just starting")
            except (KeyError, TypeError, ValueError):
                age, lease, holder = float("inf"), self.lease, "a lock object that is not a yolokit run's"
            if age < lease:
                raise InputError(f"{self.store}: another yolokit run ({holder}, last seen {max(age, 0):.0f} s ago) is "
                                 f"writing this run folder; wait for it to end, or give another --name (the lock "
                                 f"of a run that was killed runs out {lease:.0f} s after it was last seen)")
            self.note = (f"the run folder's lock was taken over from a run last seen {age:.0f} s ago ({holder}), "
                         f"past its {lease:.0f} s lease: that run was presumably killed")
            self.store.delete(LOCK_NAME)
        else:
            raise InputError(f"{self.store}: the run folder's lock keeps changing hands; wait for the other runs to "
                             f"end, or give another --name")
        mine = self._read()
        if mine is not None and mine.get("token") not in (None, self.token):
            raise InputError(f"{self.store}: another yolokit run ({mine.get('holder')}) took this run folder at the "
                             f"same moment; give another --name")
        if not self.store.exclusive:
            self.note = (f"this store ({self.store.root.split('://')[0]}://) cannot create an object only when it is "
                         f"absent, so the run folder's lock is only a check: make sure no other run writes it")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="yolokit-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.beat):
            with contextlib.suppress(Exception):  # a missed renewal is retried at the next beat
                now = self._read()
                if now is not None and now.get("token") not in (None, self.token):
                    self.lost = True
                    return
                self.store.put(LOCK_NAME, self._body())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            now = self._read()
            if now is not None and now.get("token") in (None, self.token):
                self.store.delete(LOCK_NAME)
        except Exception as e:  # noqa: BLE001 - said in the summary: a resume would wait for the lease unexplained
            self.problem = (f"the run folder's lock ({self.store}/{LOCK_NAME}) could not be deleted "
                            f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}): a --resume waits "
                            f"{self.lease:.0f} s for its lease to run out; check the store's permissions to delete")

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def claim_store_folder(project: str, name: str, exist_ok: bool, resume: bool) -> tuple[Store, StoreLock, bool]:
    """The run folder ``project/name`` in a store, held: to resume (it must hold a run) or with ``exist_ok``;
    otherwise a new one, ``name``, ``name2``, ``name3``... the first with nothing in it whose lock this run creates
    (two runs starting together never get the same). Also whether the folder is new (empty before)."""
    if not project.split("://", 1)[1].strip("/"):  # the client's "Parameter validation failed:" said nothing
        raise InputError(f"--project {project}: names no bucket; give {project.split('://', 1)[0]}://BUCKET/PREFIX")
    parent = open_store(project)
    if resume or exist_ok:
        store = parent.child(name)
        if resume and not journal(store, "manifest").exists():
            raise InputError(f"{store}: nothing to resume (no manifest.jsonl); run without --resume first")
        lock = StoreLock(store)
        new = not resume and store.empty()
        lock.acquire()
        return store, lock, new
    n = 1
    while True:
        store = parent.child(name if n == 1 else f"{name}{n}")
        n += 1
        if not store.empty():
            continue
        lock = StoreLock(store)
        try:
            lock.acquire(fresh=True)
        except FileExistsError:
            continue  # another run took it meanwhile: the next name
        return store, lock, True


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.split(": ", 1)[0] if text else "one that is just starting"


__all__ = ["BEAT", "LEASE", "LOCK_NAME", "FolderLock", "StoreLock", "claim_store_folder"]
