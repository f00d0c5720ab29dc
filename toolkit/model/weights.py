"""Official YOLOv5 checkpoints: a pinned manifest, a verified resumable download, and the weights lookup.

Nothing here touches the network or the file system at import time.

The manifest pins the five official YOLOv5 v7.0 release checkpoints by size and sha256. ``download``
fetches one into the cache (``default_cache_dir()``) through ``<name>.part`` with HTTP Range resume, checks
size and sha256, and only then renames it atomically to ``<name>``; a file carrying the final name is
therefore always verified. ``resolve_weights`` turns what the user gave (a path, a manifest name, or
nothing) into a local file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from toolkit.errors import DownloadError, InputError, ModelFileError, OutputError
from toolkit.io.files import os_reason
from toolkit.io.remote import HttpStream, open_http
from toolkit.io.store import atomic_write_bytes, content_id, fetch_object, filesystem, is_store_url, store_reason
from toolkit.io.transfer import DEFAULT_DEADLINE, Deadline, FetchContext, FetchError, FetchLimits, FileStream, pump

__all__ = [
    "DEFAULT_WEIGHTS",
    "MANIFEST",
    "RELEASE_URL",
    "WeightsEntry",
    "default_cache_dir",
    "download",
    "fetch_stored_model",
    "get_entry",
    "known_names",
    "normalize_name",
    "resolve_weights",
    "sha256_file",
    "verify",
]

log = logging.getLogger(__name__)

RELEASE_URL: Final = "https://github.com/ultralytics/yolov5/releases/download/v7.0"
DEFAULT_WEIGHTS: Final = "yolov5n.pt"

ENV_CACHE_DIR: Final = "YOLOKIT_CACHE_DIR"
ENV_WEIGHTS: Final = "YOLOKIT_WEIGHTS"
ENV_WEIGHTS_URL: Final = "YOLOKIT_WEIGHTS_URL"
ENV_SHARED: Final = "YOLOKIT_SHARED"

_USER_AGENT = "yolokit-weights/0.1"
# Client errors that will not change on a retry; everything else (5xx, 408, 429, network trouble) is retried.
_PERMANENT_HTTP = frozenset({400, 401, 403, 404, 405, 410, 451})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint: file ``name`` (with ``.pt``), ``url``, byte ``size`` and ``sha256``."""

    name: str
    url: str
    size: int
    sha256: str


def _release(name: str, sha256: str, size: int) -> WeightsEntry:
    return WeightsEntry(name=name, url=f"{RELEASE_URL}/{name}", size=size, sha256=sha256)


MANIFEST: Final[Mapping[str, WeightsEntry]] = MappingProxyType(
    {
        e.name: e
        for e in (
            _release(
                "yolov5n.pt", "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3", 4062133
            ),
            _release(
                "yolov5s.pt", "8b3b748c1e592ddd8868022e8732fde20025197328490623cc16c6f24d0782ee", 14808437
            ),
            _release(
                "yolov5m.pt", "beef2600e80c86c23d40a3c74c87de7dd22e9dce0b0c960ee2bf1792698f0f69", 42806829
            ),
            _release(
                "yolov5l.pt", "c2323a42865bdc3d8e41795548d695b18593b3c99e9a1a8ee59b37fb46041af2", 93622629
            ),
            _release(
                "yolov5x.pt", "9f27a794fa0308e2606f90565164571d6f0a0ba18a3ce2e5e5d323b71c157859", 174114333
            ),
        )
    }
)


# --------------------------------------------------------------------------------------------- names


def known_names(manifest: Mapping[str, WeightsEntry] | None = None) -> list[str]:
    """The manifest's names without ``.pt`` (``["yolov5n", ...]``), for messages and CLI help."""
    return [n.removesuffix(".pt") for n in (MANIFEST if manifest is None else manifest)]


def normalize_name(name: str) -> str:
    """``"yolov5n"`` / ``"yolov5n.pt"`` / ``" YOLOv5n.PT "`` -> ``"yolov5n.pt"`` (no manifest check)."""
    n = name.strip()
    if n.lower().endswith(".pt"):
        n = n[:-3]
    return n.lower() + ".pt"


def get_entry(name: str, manifest: Mapping[str, WeightsEntry] | None = None) -> WeightsEntry:
    """The manifest entry for ``name`` (with or without ``.pt``); unknown names raise ``InputError``."""
    table = MANIFEST if manifest is None else manifest
    key = normalize_name(name)
    entry = table.get(key)
    if entry is None:
        raise InputError(
            f"unknown weights name {name!r}: no file or folder has that name here, and the known names are "
            f"{', '.join(known_names(table))} (give one of them, or the path of a model: a .pt, .onnx or .engine "
            "file, or an OpenVINO folder)"
        )
    return entry


# --------------------------------------------------------------------------------------------- places


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _checkout_weights_dir() -> Path | None:
    d = _repo_root() / "weights"
    return d if (d / "README.md").is_file() else None


def default_cache_dir() -> Path:
    """Where downloaded weights go: ``$YOLOKIT_CACHE_DIR`` if set; else the repository's ``weights/`` folder
    when running from a source checkout (it holds ``README.md``); else ``~/.cache/yolokit/weights``."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    checkout = _checkout_weights_dir()
    if checkout is not None:
        return checkout
    return Path.home() / ".cache" / "yolokit" / "weights"


def _default_shared_dirs() -> list[Path]:
    env = os.environ.get(ENV_SHARED, "").strip()
    if env:
        return [Path(env).expanduser()]
    dirs = [Path.cwd().parent / "shared"]
    if _checkout_weights_dir() is not None:
        dirs.append(_repo_root().parent / "shared")
    unique: list[Path] = []
    for d in dirs:
        if not any(_same_path(d, u) for u in unique):
            unique.append(d)
    return unique


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


# --------------------------------------------------------------------------------------------- checks


def _sha256(data: bytes = b"") -> Any:
    """A sha256 hasher; hashlib is imported here, so that a run from a local model loads no OpenSSL (3 ms)."""
    import hashlib

    return hashlib.sha256(data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = _sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike[str], entry: WeightsEntry) -> bool:
    """True when ``path`` is a regular file of ``entry.size`` bytes whose sha256 is ``entry.sha256``.

    The size is checked first, so a wrong-size file costs no hashing; a file already hashed in this process, unchanged
    since (same size, modification time and inode), is not hashed again (a run resolves its model twice: for the run
    folder's records and to load it)."""
    p = Path(path)
    try:
        st = p.stat()
        if not p.is_file() or st.st_size != entry.size:
            return False
        return _sha256_of(str(p), st.st_size, st.st_mtime_ns, st.st_ino) == entry.sha256.lower()
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """:func:`sha256_file` of ``path`` as it was with this size, modification time and inode (the cache's key)."""
    return sha256_file(path)


# --------------------------------------------------------------------------------------------- download


class _Retryable(Exception):
    """One attempt failed in a way another attempt (resuming the .part) may fix."""


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _source_url(entry: WeightsEntry, url: str | None) -> str:
    if url:
        return url
    base = os.environ.get(ENV_WEIGHTS_URL, "").strip()
    if base:
        return f"{base.rstrip('/')}/{entry.name}"
    return entry.url


def _hash_prefix(path: Path) -> tuple[Any, int]:
    h = _sha256()
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h, n


def _mismatch(entry: WeightsEntry, src: str, part: Path, what: str) -> DownloadError:
    _unlink(part)
    return DownloadError(
        f"{entry.name} downloaded from {src} does not match the manifest: {what}; "
        f"the partial file was deleted. Fix: retry, or point --url / ${ENV_WEIGHTS_URL} at a mirror "
        "of the official v7.0 release file"
    )


def _open(entry: WeightsEntry, src: str, part: Path, start: int, timeout: float,
          deadline: Deadline) -> HttpStream | FileStream:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    if src.lower().startswith("file://"):
        try:
            from urllib.request import url2pathname

            return FileStream(url2pathname(src[7:]))
        except OSError as e:
            raise DownloadError(f"could not download {entry.name}: cannot read {src} ({e.strerror or e})") from None
    try:
        return open_http(src, timeout, deadline, headers)
    except FetchError as e:
        if e.kind == "http" and e.code == 416 and start:
            _unlink(part)  # our .part does not fit the server's file: restart from zero
            raise _Retryable(f"HTTP 416 for a resume from byte {start}") from None
        if e.retryable or (e.kind == "http" and e.code not in _PERMANENT_HTTP):
            raise _Retryable(e.reason) from None
        if e.kind == "deadline":
            raise
        raise DownloadError(f"could not download {entry.name} from {src}: {e.reason}. Fix: check the name/URL (--url "
                            f"or ${ENV_WEIGHTS_URL}), or place the file at {part.with_suffix('')} yourself") from None


def _attempt(
    entry: WeightsEntry,
    src: str,
    part: Path,
    progress: Callable[[int, int], object] | None,
    timeout: float,
    deadline: Deadline,
) -> None:
    """One request. Returns with ``part`` complete and verified, raises ``_Retryable`` to try again (the .part
    kept when it is a valid prefix), or ``DownloadError`` (or the deadline's ``FetchError``) for good."""
    start = 0
    if part.exists():
        have = part.stat().st_size
        if have >= entry.size:
            # A complete (or oversized) leftover: use it if it verifies, else start over.
            if have == entry.size and verify(part, entry):
                return
            _unlink(part)
        else:
            start = have

    stream = _open(entry, src, part, start, timeout, deadline)
    with contextlib.closing(stream):
        if stream.status == 206:
            m = _CONTENT_RANGE.match(stream.headers.get("Content-Range", "") or "")
            if m is None or int(m.group(1)) != start:
                _unlink(part)
                raise _Retryable("server answered a resume with an unexpected Content-Range")
            if m.group(3) != "*" and int(m.group(3)) != entry.size:
                raise _mismatch(entry, src, part, f"expected size {entry.size} bytes, got {m.group(3)}")
            hasher, done = _hash_prefix(part)
            mode = "ab"
        else:
            # 200 (or a file:// URL, status None): the whole body follows, restart from zero.
            start = 0
            hasher, done = _sha256(), 0
            mode = "wb"

        if stream.length is not None and start + stream.length != entry.size:
            raise _mismatch(entry, src, part, f"expected size {entry.size} bytes, got {start + stream.length}")

        try:
            with open(part, mode) as f:
                def write(block: bytes) -> None:
                    nonlocal done
                    f.write(block)
                    hasher.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(min(done, entry.size), entry.size)

                try:
                    # at most the expected size: bounded even if lied to; the clock checked on every chunk
                    pump(stream, src, deadline, entry.size - done, timeout, write, start=done)
                except FetchError as e:
                    if e.kind == "size":
                        raise _mismatch(entry, src, part, f"expected size {entry.size} bytes, got more") from None
                    if e.kind == "deadline":
                        raise
                    raise _Retryable(f"transfer interrupted at byte {done} of {entry.size}: {e.reason}") from None
                finally:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise DownloadError(
                f"cannot write {part}: {e}. Fix: free disk space or set ${ENV_CACHE_DIR} to a writable folder"
            ) from None

    if done < entry.size:
        raise _Retryable(f"connection closed early at byte {done} of {entry.size}")
    got = hasher.hexdigest()
    if got != entry.sha256.lower():
        raise _mismatch(entry, src, part, f"expected sha256 {entry.sha256}, got {got}")


def download(
    name: str | WeightsEntry,
    cache_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    progress: Callable[[int, int], object] | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    *,
    backoff: float = 1.0,
    deadline: float = DEFAULT_DEADLINE,
) -> Path:
    """Download a checkpoint into the cache, verified, and return its path ``<cache_dir>/<name>.pt``.

    ``name`` is a manifest name (``"yolov5n"`` or ``"yolov5n.pt"``) or an explicit ``WeightsEntry`` (mirrors,
    tests). The source is ``url`` if given, else ``$YOLOKIT_WEIGHTS_URL/<name>.pt`` if that variable is set,
    else the manifest URL. An existing file that verifies is returned without any request; one that does not
    is replaced. Bytes go to ``<name>.pt.part`` (resumed with an HTTP Range request when present), are checked
    for size and sha256, then renamed atomically. A checksum/size mismatch deletes the .part and raises
    ``DownloadError`` at once; server errors (5xx), refused connections and truncated transfers are retried up
    to ``retries`` times, resuming the kept .part, waiting ``backoff`` seconds (doubling, at most 10 s)
    between attempts. ``progress(bytes_done, total)`` is called as bytes arrive. ``timeout``: seconds of silence;
    ``deadline``: seconds for the whole call, however slow (the .part is kept). Redirects: http(s) only.
    """
    entry = name if isinstance(name, WeightsEntry) else get_entry(name)
    if retries < 0:
        raise InputError(f"retries must be >= 0, got {retries}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / entry.name
    part = cache / (entry.name + ".part")

    if final.exists():
        if verify(final, entry):
            log.debug("weights %s already present and verified", final)
            return final
        log.warning("%s does not match its manifest checksum; downloading it again", final)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = "--cache-dir" if cache_dir is not None else f"${ENV_CACHE_DIR}"
        raise OutputError(f"cannot create the weights cache folder {cache} "
                          f"({'a file is in the way' if isinstance(e, FileExistsError) else os_reason(e)}); "
                          f"set {where} to a writable folder") from None

    src = _source_url(entry, url)
    attempts = retries + 1
    last = ""
    ok = False
    clock = Deadline(deadline, f"more time: `yolokit weights download {entry.name[:-3]} --download-timeout SECONDS`")
    try:
        for i in range(attempts):
            if i:
                time.sleep(max(0.0, min(backoff * 2 ** (i - 1), 10.0, clock.remaining())))
            log.info("downloading %s from %s (attempt %d/%d)", entry.name, src, i + 1, attempts)
            try:
                _attempt(entry, src, part, progress, timeout, clock)
            except FetchError as e:  # the deadline: another attempt would be past it too
                kept = f" (it resumes the partial file kept at {part})" if part.exists() else ""
                raise DownloadError(f"could not download {entry.name} from {src}: {e.reason}{kept}") from None
            except _Retryable as e:
                last = str(e)
                log.warning("download of %s: %s", entry.name, last)
                continue
            try:
                os.replace(part, final)
            except OSError as e:
                raise DownloadError(f"cannot move {part} to {final}: {e}") from None
            ok = True
            return final
    finally:
        clock.close()
        if not ok and final.exists() and not verify(final, entry):
            _unlink(final)  # never leave an unverified file under the final name
    kept = f"partial file kept at {part}; " if part.exists() else ""
    raise DownloadError(
        f"could not download {entry.name} from {src} after {attempts} attempt(s): {last}; {kept}"
        f"Fix: rerun to resume, use a mirror (--url or ${ENV_WEIGHTS_URL}), or place the file at {final}"
    )


# --------------------------------------------------------------------------------------------- object storage

MODEL_MAX_BYTES: Final = 8 << 30  # a model file in a store larger than this is refused


def fetch_stored_model(url: str, cache_dir: str | os.PathLike[str] | None = None,
                       deadline: float = DEFAULT_DEADLINE) -> Path:
    """A model file in object storage (``s3://bucket/models/yolov5s.onnx``), downloaded once into the cache
    (``<cache>/store/<hash of the URL>/<name>``) and downloaded again when the object's ETag changes. An OpenVINO
    ``.xml`` brings its ``.bin``. The download has the limits of any other (a deadline, the silence timeout)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fs, path = filesystem(url)
    try:
        tag = content_id(fs.info(path))
    except FileNotFoundError:
        raise ModelFileError(f"{url}: no such model object (check the bucket, the key and the store's "
                             f"endpoint)") from None
    except Exception as e:  # noqa: BLE001 - a store's client error
        raise DownloadError(f"{url}: cannot read the model object ({store_reason(e)})") from None
    folder = cache / "store" / _sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1]
    target, stamp = folder / name, folder / f".{name}.etag"
    with contextlib.suppress(OSError):
        if tag and target.is_file() and stamp.read_text() == tag:
            return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the weights cache folder {folder}: {e.strerror or e}. Fix: set "
                            f"${ENV_CACHE_DIR} to a writable folder") from None
    ctx = FetchContext(FetchLimits(MODEL_MAX_BYTES, 30.0, deadline), directory=str(folder))
    parts = [url] + ([url[:-4] + ".bin"] if url.lower().endswith(".xml") else [])
    for part in parts:
        try:
            got = fetch_object(part, ctx, to_file=True, suffix=".part")
        except FetchError as e:
            raise DownloadError(f"could not download the model {part}: {e.reason}") from None
        try:
            os.replace(str(got.path), folder / part.rsplit("/", 1)[-1])
        except OSError as e:
            raise DownloadError(f"cannot write the model into {folder}: {e.strerror or e}") from None
        finally:
            got.close()
    if tag:
        atomic_write_bytes(stamp, tag.encode())
    return target


# --------------------------------------------------------------------------------------------- lookup


def _looks_like_path(text: str, manifest: Mapping[str, WeightsEntry]) -> bool:
    if os.sep in text or (os.altsep and os.altsep in text) or text.startswith("~"):
        return True
    suffix = Path(text).suffix
    if not suffix:
        return False
    return not (suffix.lower() == ".pt" and normalize_name(text) in manifest)


def found_locally(name: str) -> Path | None:
    """Where the official checkpoint ``name`` is found here as a run given the name finds it (the cache, then the
    shared folders; checksum checked), without downloading; None when it is not. A file of that name in the current
    folder is not looked at: a run given the name does not take it (review: it was listed as found, unchecked)."""
    return _verified_copy(get_entry(name), _default_shared_dirs(), warn=False)


def _verified_copy(entry: WeightsEntry, shared_roots: list[Path], warn: bool = True) -> Path | None:
    """The first copy of ``entry`` in the cache, then in ``shared_roots``' weights/ folders, that matches its
    checksum; one that does not is passed over (and, with ``warn``, logged)."""
    for candidate in [default_cache_dir() / entry.name, *(root / "weights" / entry.name for root in shared_roots)]:
        if candidate.exists():
            if verify(candidate, entry):
                return candidate
            if warn:
                log.warning("%s does not match its manifest checksum; ignoring it", candidate)
    return None


def resolve_weights(
    weights: str | os.PathLike[str] | None,
    *,
    allow_download: bool = True,
    shared_dir: str | os.PathLike[str] | None = None,
    manifest: Mapping[str, WeightsEntry] | None = None,
) -> Path:
    """Turn a weights argument (a path, a manifest name, or ``None``) into an existing local file.

    Lookup order, first hit wins:

    0. A store URL (``s3://...``): downloaded into the cache, again when its ETag changes
       (:func:`fetch_stored_model`).
    1. ``weights`` itself when it is an existing path (file or folder; taken as given, not checksummed).
    2. When ``weights`` is ``None``: ``$YOLOKIT_WEIGHTS`` (a path, or a manifest name that continues below).
       Otherwise the name is ``weights``, and with neither the default ``yolov5n.pt``.
    3. The cache: ``default_cache_dir()/<name>.pt``, if it verifies against the manifest.
    4. A shared folder: ``<shared>/weights/<name>.pt``, if it verifies, where ``<shared>`` is ``shared_dir``;
       by default ``$YOLOKIT_SHARED``, else ``../shared`` beside the current directory and, in a source
       checkout, ``../shared`` beside the repository.
    5. ``download(name)`` into the cache (only when ``allow_download``; otherwise ``ModelFileError``).

    A ``weights`` that looks like a path (has a folder separator, or a suffix and is not a manifest name) but
    does not exist raises ``InputError``; an unknown bare name raises ``InputError`` listing the known names.
    ``manifest`` replaces ``MANIFEST`` (mirrors, tests).
    """
    table = MANIFEST if manifest is None else manifest
    names = ", ".join(known_names(table))

    source = "argument"
    given: str | None = os.fspath(weights) if weights is not None else None
    if given is not None and not given.strip():
        given = None
    if given is None:
        env = os.environ.get(ENV_WEIGHTS, "").strip()
        if env:
            given, source = env, f"${ENV_WEIGHTS}"

    if given is not None and is_store_url(given):
        return fetch_stored_model(given)
    if given is not None and given.lower().startswith(("http://", "https://")):  # "weights file not found: http://"
        raise InputError(f"--weights {given}: yolokit does not download models from web addresses (only the "
                         f"official names, {names.split(', ')[0]} ..., and s3:// or gs:// objects); download it and "
                         f"give its path")
    if given is not None:
        p = Path(given).expanduser()
        if p.exists():
            return p
        if _looks_like_path(given, table):
            where = "" if source == "argument" else f" (from {source})"
            raise InputError(
                f"weights file not found: {given}{where} (give an existing .pt/.onnx/... path, "
                f"or a name from the manifest: {names})"
            )
        try:
            entry = get_entry(given, table)
        except InputError as e:
            if source == "argument":
                raise
            raise InputError(f"{source}: {e}") from None  # where the name came from, not a flag the user gave
    else:
        entry = get_entry(DEFAULT_WEIGHTS, table)

    cache = default_cache_dir()
    shared_roots = [Path(shared_dir).expanduser()] if shared_dir is not None else _default_shared_dirs()
    found = _verified_copy(entry, shared_roots)
    if found is not None:
        return found

    if not allow_download:
        looked = ", ".join(str(r / "weights") for r in shared_roots)
        raise ModelFileError(
            f"weights {entry.name} not found in the cache ({cache}) or shared folders ({looked}) "
            f"and downloads are off. Fix: run `yolokit weights download {entry.name.removesuffix('.pt')}` "
            "or give a path"
        )
    return download(entry, cache_dir=cache)
