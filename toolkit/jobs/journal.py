"""A run folder's append-only records (``manifest.jsonl``, ``failures.jsonl``, ``predictions.jsonl``), on local disk
or in object storage.

On local disk a journal is one file, appended a line at a time and flushed (:class:`FileJournal`). Object storage
cannot append, and rewriting a growing object on every line would cost the square of its size, so there a journal
is a series of whole objects (:class:`SegmentJournal`): ``.yolokit/NAME/0000000007.jsonl`` holds the lines appended
since the segment before it, put once a second or so (and before the run ends), and a *reset* segment
(``0000000009.reset.jsonl``) replaces everything before it (a resume that drops records). Reading takes the last
reset segment and the ones after it; the older ones are deleted after the reset is written, so a crash in between
leaves nothing that a reader would count. When the run ends the journal is also written as the plain ``NAME.jsonl``
object, for whoever reads the run folder. A line is never in a segment before the outputs it records exist: the
caller appends it after its outputs were put."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import IO, Any

from toolkit.io.store import Store, atomic_write_bytes

SEGMENTS = ".yolokit"  # the folder of the segment journals in a store's run folder
_SEGMENT = re.compile(r"(\d{10})(\.reset)?\.jsonl")
FLUSH_SECONDS = 1.0  # a segment journal puts what it holds at most this long after a line arrives ...
FLUSH_LINES = 500  # ... or once it holds this many lines


def parse_lines(text: str) -> list[dict[str, Any]]:
    """The complete JSON objects of JSON-lines text; a line cut short by a crash is dropped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _text(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Journal:
    """What a run folder's records need of a journal."""

    name: str

    def exists(self) -> bool:
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the journal's lines with ``rows``, as one step."""
        raise NotImplementedError

    def open(self) -> None:
        pass

    def append(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def due(self) -> bool:
        """Whether :meth:`flush` would write now (a segment journal batches its lines)."""
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def remove(self) -> None:
        """Delete the journal (a run folder that held nothing)."""
        raise NotImplementedError


class FileJournal(Journal):
    """``folder/NAME.jsonl`` on this machine, each line written and flushed as it is appended."""

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.path = folder / f"{name}.jsonl"
        self._file: IO[str] | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return parse_lines(self.path.read_text(errors="replace"))

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_bytes(self.path, _text(rows))

    def open(self) -> None:
        self._file = self.path.open("a")

    def append(self, row: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


class SegmentJournal(Journal):
    """A journal of whole objects in a store (see the module's description)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        self.folder = f"{SEGMENTS}/{name}/"
        self.plain = f"{name}.jsonl"
        self.next = 0
        self.buffer: list[str] = []
        self.since = 0.0

    def _segments(self) -> list[tuple[int, bool, str]]:
        found = []
        for name in self.store.names(self.folder):
            m = _SEGMENT.fullmatch(name.rsplit("/", 1)[-1])
            if m:
                found.append((int(m.group(1)), bool(m.group(2)), name))
        found.sort()
        if found:
            self.next = max(self.next, found[-1][0] + 1)
        return found

    def exists(self) -> bool:
        return bool(self._segments()) or self.store.exists(self.plain)

    def rows(self) -> list[dict[str, Any]]:
        segments = self._segments()
        resets = [i for i, (_, reset, _) in enumerate(segments) if reset]
        names = [name for _, _, name in segments[resets[-1] if resets else 0:]]
        texts = [] if resets or not self.store.exists(self.plain) else [self.store.read(self.plain)]
        texts += self.store.read_many(names)
        return [row for text in texts for row in parse_lines(text.decode(errors="replace"))]

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        old = self._segments()
        seq, self.next = self.next, self.next + 1
        self.store.put(f"{self.folder}{seq:010d}.reset.jsonl", _text(rows))
        for _, _, name in old:  # what the reset replaces: a reader no longer counts it
            self.store.delete(name)

    def open(self) -> None:
        self._segments()
        self.buffer = []

    def append(self, row: dict[str, Any]) -> None:
        if not self.buffer:
            self.since = time.monotonic()
        self.buffer.append(json.dumps(row) + "\n")

    def due(self) -> bool:
        return bool(self.buffer) and (len(self.buffer) >= FLUSH_LINES
                                      or time.monotonic() - self.since >= FLUSH_SECONDS)

    def flush(self) -> None:
        if not self.buffer:
            return
        seq, self.next = self.next, self.next + 1
        self.store.put(f"{self.folder}{seq:010d}.jsonl", "".join(self.buffer).encode())
        self.buffer = []

    def close(self) -> None:
        """Put what is held, then the plain ``NAME.jsonl`` of every line."""
        self.flush()
        self.store.put(self.plain, _text(self.rows()))

    def remove(self) -> None:
        for _, _, name in self._segments():
            self.store.delete(name)
        self.store.delete(self.plain)


def journal(store: Store, name: str) -> Journal:
    """The journal ``NAME`` of the run folder ``store``: a file on local disk, segments in object storage."""
    return FileJournal(store.local, name) if store.local is not None else SegmentJournal(store, name)


__all__ = ["FLUSH_LINES", "FLUSH_SECONDS", "SEGMENTS", "FileJournal", "Journal", "SegmentJournal", "journal",
           "parse_lines"]
