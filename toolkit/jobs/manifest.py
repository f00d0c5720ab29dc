"""A run folder's bookkeeping: ``run.json`` (the settings that make its outputs), ``manifest.jsonl`` (one line per
finished input, written after its outputs, with the input's fingerprint and the files it got), ``failures.jsonl``
and ``predictions.jsonl``; resuming a run from them: same settings, changed inputs redone, vanished inputs' outputs
removed, failed inputs retried where that can help. The run folder is a :class:`toolkit.io.store.Store` (a local
folder or a prefix in object storage); the three ``.jsonl`` records are its journals (:mod:`toolkit.jobs.journal`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from toolkit.errors import InputError, OutputError
from toolkit.io.outputs import CSV_HEADER, json_bytes
from toolkit.io.store import LocalStore, Store, atomic_write_bytes
from toolkit.jobs.journal import journal, parse_lines
from toolkit.jobs.records import Outcome, as_path, identity_changes

# the files a run writes itself, besides each input's outputs
BOOKKEEPING = ("run.json", "manifest.jsonl", "failures.jsonl", "predictions.jsonl", "predictions.json",
               "predictions.csv", "summary.json")
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp(\.mp4)?")  # atomic writes' and video sinks' temporary files
RUN_FORMAT = 2  # run.json's "run_format": 2 records every output setting, manifest lines fingerprint their inputs

# Refusals of what an input is (its bytes, its kind, its size): trying again gives the same answer while the file
# is unchanged. Any other failure (a lost worker, a timeout, an I/O or permission error, a server's answer, a reason
# not listed here) may pass next time.
_LASTING = re.compile("|".join(re.escape(text) for text in (
    "re-copy or re-export the file",  # damaged, truncated or undecodable images
    "not an image; re-copy the image itself",  # text or an HTML page named as an image
    "a video, not an image",  # a video named as an image
    "the header says",  # impossible sizes, pixel counts over --max-pixels
    "empty file (0 bytes)",
    "not an image file", "not a video file", "not a regular file",  # named pipes, sockets, devices
    "limit; raise it with --max-file-size",
    "not an image or video file type",
    "a live stream: give it as SOURCE",
    "not a URL yolokit reads",
    "cannot open the video",
    "cannot decode this frame",
    "is longer than the file system allows",  # its output name: renaming the input makes another input
    "fewer frames than --vid-stride",  # a resume keeps the stride
    "the object is empty", "the object holds",  # an object store's words for an empty or non-image object
    "its key has a '..' part",  # an object's key: the same until the object is renamed
)))
RETRY_NOTE = "--resume retries it"
RESUME_HINT = "then continue the run with --resume"  # the end of an output error's fix (toolkit.io.store.RUN_HINT)
LASTING_NOTE = "--resume retries it only once the file changes, or with --retry-failed"


def retried_on_resume(reason: str, fingerprint: str) -> bool:
    """Whether ``--resume`` retries a failed input: not for a refusal of what the input is while its file is
    unchanged; always for an input without a fingerprint (a URL: nothing tells whether it changed)."""
    return not fingerprint or _LASTING.search(reason) is None


def with_resume_note(reason: str, retry: bool) -> str:
    """A failure's reason, saying what ``--resume`` will do with the input."""
    return f"{reason}; {RETRY_NOTE if retry else LASTING_NOTE}"


def increment_dir(project: str, name: str, exist_ok: bool) -> Path:
    """``project/name``, or ``name2``, ``name3``... when it exists and ``exist_ok`` is false."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def claim_out_dir(project: str, name: str, exist_ok: bool, resume: bool) -> Path:
    """The run folder, created: ``project/name`` to resume (it must hold a run) or with ``exist_ok``; otherwise a
    new one (``name2``, ``name3``... when taken), made with an exclusive ``mkdir`` so two runs starting together
    never pick the same."""
    base = Path(project) / name
    if resume:
        if not (base / "manifest.jsonl").is_file():
            raise InputError(f"{base}: nothing to resume (no manifest.jsonl); run without --resume first")
        return base
    while True:
        path = increment_dir(project, name, exist_ok)
        try:
            path.mkdir(parents=True, exist_ok=exist_ok)
        except FileExistsError:
            if exist_ok:  # a file where the folder should be
                raise OutputError(f"{path}: cannot write the output folder (a file has its name); choose another "
                                  f"with --project/--name") from None
            continue  # another run took it meanwhile: the next name
        except OSError as e:
            raise OutputError(f"{path}: cannot write the output folder ({e.strerror or e}); "
                              f"choose another with --project/--name or free some space") from None
        return path


def prepare_out_dir(path: Path) -> None:
    """Create the output folder and prove it is writable, or fail now with a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".yolokit-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{path}: cannot write the output folder ({e.strerror or e}); "
                          f"choose another with --project/--name or free some space") from None


def remove_partial_writes(out_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left behind (``.NAME.HEX.tmp``, and
    ``.NAME.HEX.tmp.mp4`` of unfinished videos)."""
    for p in [*out_dir.rglob(".*.tmp"), *out_dir.rglob(".*.tmp.mp4")]:
        if TEMP_NAME.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a file; a line cut short by a crash is dropped."""
    if not path.is_file():
        return []
    return parse_lines(path.read_text(errors="replace"))


def output_names(record: dict[str, Any]) -> list[str]:
    """The run-folder names of the outputs a manifest record lists: annotated images and videos, then crops."""
    return [str(n) for n in [*(record.get("files") or ()), *(f"crops/{c}" for c in record.get("crops") or ())]]


def _distinct_ids(preds: list[dict[str, Any]], manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The COCO results of ``preds`` (predictions.jsonl's rows), with an image id that numbers more than one file
    (``day1/0001.jpg`` and ``day2/0001.jpg``, or ``1.jpg`` and ``0001.jpg``: both 1, as val.py numbers a stem) given
    as each input's key instead, so that no two images share an id; a file listed twice keeps its number."""
    paths = {m.get("key"): m.get("src") or m.get("path") for m in manifest}
    files: dict[int, set[Any]] = {}
    for r in preds:
        for p in r.get("results") or ():
            if isinstance(p.get("image_id"), int):
                files.setdefault(p["image_id"], set()).add(paths.get(r.get("key"), r.get("key")))
    shared = {i for i, named in files.items() if len(named) > 1}
    return [{**p, "image_id": r.get("key")} if p.get("image_id") in shared and isinstance(p.get("image_id"), int)
            else p for r in preds for p in r.get("results") or ()]


def rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


@dataclass
class Reconciled:
    """What a resume found: inputs (their paths) done again because they changed, failed inputs retried, and
    inputs gone from SOURCE whose outputs were removed."""

    changed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


Inputs = dict[str, tuple[str, str]]  # an input's id (its key; a video's key) -> (its path, its fingerprint)


def input_id(record: dict[str, Any]) -> str:
    """The input a manifest line belongs to: a video frame's video, else its own key."""
    return str(record.get("video") or record.get("key"))


class Manifest:
    """The run folder's records. :meth:`open` checks a resume, reconciles it with the inputs SOURCE now holds and
    tidies what a crash left; :meth:`record` appends an input's lines (the manifest line last: a manifest line means
    the input's outputs exist). ``out_dir``: the run folder, a :class:`~toolkit.io.store.Store` or a local path."""

    def __init__(self, out_dir: Store | Path) -> None:
        self.store = out_dir if isinstance(out_dir, Store) else LocalStore(out_dir)
        self.out_dir = self.store.local  # the folder on this machine, or None in object storage
        self.manifest, self.failures = journal(self.store, "manifest"), journal(self.store, "failures")
        self.preds = journal(self.store, "predictions")
        self.previous: list[dict[str, Any]] = []
        self.recorded = 0  # inputs recorded by this run

    @property
    def done_keys(self) -> set[str]:
        return {str(r.get("key")) for r in self.previous}

    @property
    def done_videos(self) -> set[str]:
        """Videos whose outputs (their annotated .mp4 too) were complete: a resumed run skips them."""
        return {str(r["video"]) for r in self.previous if r.get("video_done") and r.get("video")}

    @property
    def crop_names(self) -> list[str]:
        return [str(c) for r in self.previous for c in r.get("crops") or ()]

    def open(self, identity: dict[str, Any], resume: bool, inputs: Inputs | None = None,
             retry_failed: bool = False) -> Reconciled:
        """Start the records of a run with ``identity`` (:func:`toolkit.jobs.records.run_identity`). To resume,
        check the settings and reconcile the records with ``inputs``, the inputs SOURCE holds now."""
        found = Reconciled()
        if resume:
            if not self.manifest.exists():
                raise InputError(f"{self.store}: nothing to resume (no manifest.jsonl); run without --resume first")
            self._check(identity)
            self.previous = self.manifest.rows()
            if inputs is not None:
                found = self._reconcile(inputs, retry_failed)
        if self.out_dir is not None:
            prepare_out_dir(self.out_dir)
        self.store.put("run.json", json_bytes({**identity, "run_format": RUN_FORMAT}))
        done = self.done_keys
        # a crash can leave a torn last line or outputs of inputs that never reached the manifest: tidy both
        self.manifest.rewrite(self.previous)
        self.failures.rewrite([r for r in self.failures.rows() if r.get("key") in done])
        self.preds.rewrite([r for r in self.preds.rows() if r.get("key") in done])
        if resume and self.out_dir is not None:
            remove_partial_writes(self.out_dir)
        return found

    def _check(self, identity: dict[str, Any]) -> None:
        try:
            before = json.loads(self.store.read("run.json"))
        except (OSError, ValueError):
            before = {}
        if not isinstance(before, dict) or before.get("run_format") != RUN_FORMAT:
            raise InputError(f"{self.store}: this run folder was made by an earlier yolokit, whose run.json does "
                             f"not record every setting that shapes the outputs, so --resume cannot check them; "
                             f"start a new run without --resume")
        changes = identity_changes(before, identity)
        if changes:
            raise InputError(f"{self.store}: --resume continues a run with the settings it started with, and "
                             f"these differ: {'; '.join(changes)}. Resume with the run's settings (its run.json "
                             f"lists them), or start a new run without --resume")

    def _reconcile(self, inputs: Inputs, retry_failed: bool) -> Reconciled:
        """Keep the records of inputs that are unchanged and done (or failed for good); drop the others, deleting
        their outputs first (so a crash meanwhile leaves records that a next resume drops again, never outputs
        without records). Inputs below a folder that cannot be listed now are kept, not taken for gone."""
        found = Reconciled()
        unlisted = tuple(k for k in inputs if k.endswith(os.sep))
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.previous:
            groups.setdefault(input_id(r), []).append(r)
        kept: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        for key, recs in groups.items():
            first = recs[0]
            shown = str(first.get("src") or first.get("path"))
            now = inputs.get(key)
            if now is None:
                if key.startswith(unlisted) and unlisted:
                    kept.extend(recs)
                    continue
                found.removed.append(shown)
            elif (as_path(str(first.get("src") or first.get("path"))), str(first.get("fp", ""))) != \
                    (as_path(now[0]), now[1]):  # the same file: src/a.jpg is ./src/a.jpg
                found.changed.append(shown)
            elif any(not r.get("ok") and (retry_failed or r.get("retry", True)) for r in recs):
                found.retried.append(shown)
            else:
                kept.extend(recs)
                continue
            dropped.extend(recs)
        if dropped:
            for r in dropped:
                for name in output_names(r):
                    # only files of this folder, whatever the lines say (the store refuses a name with "..")
                    with contextlib.suppress(OSError, OutputError):
                        self.store.delete(str(name))
            self.previous = kept
        return found

    @contextlib.contextmanager
    def removed_unless_used(self, new: bool, folders: list[Path] | None = None,
                            also: tuple[str, ...] = ()) -> Iterator[None]:
        """Remove a ``new`` run folder again, with the parent ``folders`` this run made on local disk (deepest
        first), when the run fails before recording any input (a model that cannot be found, downloaded or loaded;
        no inputs at all): only the files a run writes itself (and ``also``) are deleted, and a folder only when
        that leaves it empty."""
        try:
            yield
        except BaseException as e:
            if new and not self.recorded and not self.previous:
                for name in (*BOOKKEEPING, *also):
                    with contextlib.suppress(OSError, OutputError):
                        self.store.delete(name)
                for j in (self.manifest, self.failures, self.preds):
                    with contextlib.suppress(OSError, OutputError):
                        j.remove()
                for folder in folders or ():
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                if isinstance(e, OutputError) and RESUME_HINT in str(e):  # a full disk before the first input
                    raise OutputError(str(e).replace(RESUME_HINT, "then run the command again (nothing was "
                                                                  "recorded: there is nothing to resume)")) from None
            raise

    def __enter__(self) -> Manifest:
        for j in (self.manifest, self.failures, self.preds):
            j.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:  # what a segment journal holds is put, the failures and predictions before the manifest
            for j in (self.failures, self.preds, self.manifest):
                j.close()
        except (OSError, OutputError):
            if kind is None:
                raise

    def record(self, oc: Outcome, source: str = "", fingerprint: str = "", retry: bool = True) -> None:
        """Append ``oc``'s lines. ``source``: the input's path (when it is not ``oc.path``: a video frame's video);
        ``fingerprint``: the input's, from before it was read; ``retry``: whether a failure is retried on resume."""
        entry: dict[str, Any] = {"key": oc.key, "path": oc.path}
        if source and source != oc.path:
            entry["src"] = source
        entry["fp"] = fingerprint
        if oc.error is not None:
            self.failures.append({"key": oc.key, "path": oc.path, "reason": oc.error, "retry": retry})
            entry.update(ok=False, reason=oc.error, retry=retry)
        else:
            if oc.coco is not None or oc.rows is not None:
                row: dict[str, Any] = {"key": oc.key}
                if oc.coco is not None:
                    row["results"] = oc.coco
                if oc.rows is not None:
                    row["rows"] = oc.rows
                self.preds.append(row)
            entry.update(ok=True, n=oc.n, classes=oc.classes)
            if oc.crops:
                entry["crops"] = oc.crops
        if oc.files:
            entry["files"] = oc.files
        if oc.video:
            entry["video"] = oc.video
            if oc.video_done:
                entry["video_done"] = True
        self.manifest.append(entry)  # after the outputs: a manifest line means done
        if self.manifest.due():  # a segment journal puts its lines together, the manifest's last
            for j in (self.failures, self.preds, self.manifest):
                j.flush()
        self.recorded += 1

    def write_predictions(self, coco: bool = True, rows: bool = False) -> None:
        """``predictions.json`` (COCO results) and ``predictions.csv`` (one row per box) of the whole run, resumed
        parts included: both come from ``predictions.jsonl``, which holds only inputs the manifest records, so a
        killed and resumed run has every box once."""
        records = self.preds.rows()
        if coco:
            self.store.put("predictions.json", json_bytes(_distinct_ids(records, self.manifest.rows())))
        if rows:
            text = io.StringIO()
            out = csv.writer(text, lineterminator="\n")
            out.writerow(CSV_HEADER)
            for r in records:
                out.writerows(r.get("rows") or ())
            # a file name that is not UTF-8 (its odd bytes kept as Python keeps them, \udce9 for 0xe9) is written
            # escaped, as predictions.json writes it: the file stays UTF-8 that pandas and csv read (its raw bytes
            # made the whole file unreadable as UTF-8; a UnicodeEncodeError before that)
            self.store.put("predictions.csv", text.getvalue().encode("utf-8", "backslashreplace"))
