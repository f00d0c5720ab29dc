"""A run folder's bookkeeping: ``run.json`` (the settings), ``manifest.jsonl`` (one line per finished input, written
after its outputs), ``failures.jsonl`` and ``predictions.jsonl``; resuming an interrupted run from them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from toolkit.errors import InputError, OutputError
from toolkit.io.outputs import CSV_HEADER, atomic_write_bytes, write_json
from toolkit.jobs.records import Outcome

# the files a run writes itself, besides each input's outputs
BOOKKEEPING = ("run.json", "manifest.jsonl", "failures.jsonl", "predictions.jsonl", "predictions.json",
               "predictions.csv", "summary.json")
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp(\.mp4)?")  # atomic writes' and video sinks' temporary files


def increment_dir(project: str, name: str, exist_ok: bool) -> Path:
    """``project/name``, or ``name2``, ``name3``... when it exists and ``exist_ok`` is false."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


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
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


class Manifest:
    """The run folder's records. :meth:`open` checks a resume and tidies what a crash left; :meth:`record` appends an
    input's lines (the manifest line last: a manifest line means the input's outputs exist)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.manifest, self.failures = out_dir / "manifest.jsonl", out_dir / "failures.jsonl"
        self.preds = out_dir / "predictions.jsonl"
        self.previous: list[dict[str, Any]] = []
        self.recorded = 0  # inputs recorded by this run
        self._files: list[IO[str]] = []

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

    def open(self, run_info: dict[str, Any], resume: bool) -> None:
        if resume:
            if not self.manifest.is_file():
                raise InputError(f"{self.out_dir}: nothing to resume (no manifest.jsonl); run without --resume first")
            info = self.out_dir / "run.json"
            before = json.loads(info.read_text()) if info.is_file() else {}
            changed = [k for k in run_info if k in before and before[k] != run_info[k]]
            if changed:
                raise InputError(f"{self.out_dir}: --resume needs the same settings as the interrupted run; "
                                 f"{', '.join(changed)} differ")
            self.previous = read_jsonl(self.manifest)
        prepare_out_dir(self.out_dir)
        write_json(self.out_dir / "run.json", run_info)
        done = self.done_keys
        # a crash can leave a torn last line or outputs of inputs that never reached the manifest: tidy both
        rewrite_jsonl(self.manifest, self.previous)
        rewrite_jsonl(self.failures, [r for r in read_jsonl(self.failures) if r.get("key") in done])
        rewrite_jsonl(self.preds, [r for r in read_jsonl(self.preds) if r.get("key") in done])
        if resume:
            remove_partial_writes(self.out_dir)

    @contextlib.contextmanager
    def removed_unless_used(self) -> Iterator[None]:
        """Remove the run folder again (and the parents this run made) when the run fails before recording any input
        (a model that cannot be found, downloaded or loaded; no inputs at all): only the files a run writes itself
        are deleted, and a folder only when that leaves it empty."""
        made = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]  # deepest first
        try:
            yield
        except BaseException:
            if made and not self.recorded and not self.previous:
                for name in BOOKKEEPING:
                    with contextlib.suppress(OSError):
                        (self.out_dir / name).unlink()
                for folder in made:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise

    def __enter__(self) -> Manifest:
        self._files = [p.open("a") for p in (self.manifest, self.failures, self.preds)]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files = []

    def record(self, oc: Outcome) -> None:
        manifest, failures, preds = self._files
        entry: dict[str, Any] = {"key": oc.key, "path": oc.path}
        if oc.error is not None:
            failures.write(json.dumps({**entry, "reason": oc.error}) + "\n")
            failures.flush()
            entry.update(ok=False, reason=oc.error)
        else:
            if oc.coco is not None or oc.rows is not None:
                row: dict[str, Any] = {"key": oc.key}
                if oc.coco is not None:
                    row["results"] = oc.coco
                if oc.rows is not None:
                    row["rows"] = oc.rows
                preds.write(json.dumps(row) + "\n")
                preds.flush()
            entry.update(ok=True, n=oc.n, classes=oc.classes)
            if oc.crops:
                entry["crops"] = oc.crops
        if oc.video:
            entry["video"] = oc.video
            if oc.video_done:
                entry["video_done"] = True
        manifest.write(json.dumps(entry) + "\n")  # after the outputs: a manifest line means done
        manifest.flush()
        self.recorded += 1

    def write_predictions(self, coco: bool = True, rows: bool = False) -> None:
        """``predictions.json`` (COCO results) and ``predictions.csv`` (one row per box) of the whole run, resumed
        parts included: both come from ``predictions.jsonl``, which holds only inputs the manifest records, so a
        killed and resumed run has every box once."""
        records = read_jsonl(self.preds)
        if coco:
            write_json(self.out_dir / "predictions.json", [p for r in records for p in r.get("results") or ()])
        if rows:
            text = io.StringIO()
            out = csv.writer(text, lineterminator="\n")
            out.writerow(CSV_HEADER)
            for r in records:
                out.writerows(r.get("rows") or ())
            atomic_write_bytes(self.out_dir / "predictions.csv", text.getvalue().encode(),
                               "free some space or fix the permissions, then continue the run with --resume")
