"""Where a run reads and writes: a folder on this machine or a prefix in object storage, behind one small interface.

A :class:`Store` is a root (a local folder, or a URL such as ``s3://bucket/runs/exp``) holding objects by
``/``-separated names. It does five things: :meth:`~Store.read` an object whole, :meth:`~Store.put` one whole (one
request: a reader never sees part of it, and a killed writer leaves none), :meth:`~Store.delete` one, say whether
one :meth:`~Store.exists`, and :meth:`~Store.names` (a listing that streams, page by page). A run folder, the Ray
actors' outputs and the run's bookkeeping all go through it, so local disk and object storage get the same code.

:class:`LocalStore` is a folder (writes through a temporary file and a rename). :class:`ObjectStore` is anything
fsspec opens (``s3://`` with s3fs, ``gs://`` with gcsfs, ``az://`` with adlfs, ...; imported on first use, with the
usual credentials and endpoint settings of each, e.g. ``AWS_*`` and ``AWS_ENDPOINT_URL``). Objects are also inputs:
:func:`list_objects` streams a prefix's listing with each object's size and ETag, and :func:`fetch_object` downloads
one within a run's limits, deadline and memory budget (:mod:`toolkit.io.transfer`), as an http(s) URL is."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import inspect
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import InputError, MissingExtraError, OutputError, first_line
from toolkit.io.transfer import Deadline, Download, FetchContext, FetchError, expect_image, expect_video, receive

# schemes read by yolokit's own readers (toolkit.io.remote, toolkit.io.streams), never through a store; a file:// URL
# is a local path by another name, which yolokit reads itself (only regular files, never blocking)
_OWN_SCHEMES = frozenset({"http", "https", "rtsp", "rtmp", "file", "local"})
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
BLOCK = 1 << 20  # bytes an object read asks for at once
PAGE = 1000  # listing entries taken from the store at once
RUN_HINT = "free some space or fix the permissions, then continue the run with --resume"
STORE_HINT = "check the store's credentials, permissions and endpoint, then continue the run with --resume"


def url_scheme(text: str) -> str:
    """``s3`` for ``s3://bucket/key`` (lower case), or "" for a local path."""
    m = _SCHEME.match(text)
    return m.group(1).lower() if m else ""


def local_path(text: str) -> str:
    """A ``file://`` URL (``file:///data/a.jpg``, ``file://localhost/data/a%20b.jpg``) as the local path it names;
    any other text as it is."""
    if url_scheme(text) != "file":
        return text
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        return text  # another machine's file: no local path (refused where it is read, naming the scheme)
    return urllib.request.url2pathname(parts.path)


def is_store_url(text: str) -> bool:
    """A URL of object storage or any other fsspec file system (``s3://``, ``gs://``, ``az://``, ``memory://``...),
    not one yolokit reads itself (http, https, rtsp, rtmp, file)."""
    scheme = url_scheme(text)
    return bool(scheme) and scheme not in _OWN_SCHEMES


def is_local(location: str | os.PathLike[str]) -> bool:
    return not is_store_url(os.fspath(location))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path within it. A missing package is a :class:`MissingExtraError`
    naming what to install; a scheme fsspec does not know is an :class:`InputError`."""
    scheme = url_scheme(url)
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise MissingExtraError(f"{url}: reading {scheme}:// needs fsspec and the store's own package: pip install "
                                f"'yolokit[cloud]' (s3://), or gcsfs (gs://), adlfs (az://)") from None
    try:
        return url_to_fs(url)  # type: ignore[no-any-return]
    except ImportError as e:
        raise MissingExtraError(f"{url}: {scheme}:// needs a package that is not installed ({first_line(e)}); for "
                                f"s3:// pip install 'yolokit[cloud]'") from None
    except ValueError as e:
        if "not known" in str(e) or "protocol" in str(e).lower():
            raise InputError(f"{url}: {scheme}:// is not a file system yolokit can read (fsspec does not know it); "
                             f"use a local path, http(s), or an fsspec URL such as s3://") from None
        raise InputError(f"{url}: not a valid {scheme}:// URL ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - a file system that connects when made (ftp, sftp) and cannot
        raise InputError(f"{url}: cannot reach the store ({store_reason(e)})") from None


def store_reason(e: BaseException) -> str:
    """A store's error in a few plain words (s3fs and the others raise OSError subclasses)."""
    if isinstance(e, FileNotFoundError):
        return "no such object, prefix or bucket"
    if isinstance(e, PermissionError):
        return "access denied (check the store's credentials)"
    # asyncio's own before Python 3.11 (none can have been raised where asyncio was never imported)
    if isinstance(e, (TimeoutError, getattr(sys.modules.get("asyncio"), "TimeoutError", TimeoutError))):
        return "the store did not answer in time"
    kind = type(e).__name__
    text = str(e.strerror) if isinstance(e, OSError) and e.strerror else first_line(e)
    # botocore's own words, with a request's whole URL in them
    if kind in ("EndpointConnectionError", "ConnectTimeoutError") or text.startswith("Could not connect to"):
        where = re.search(r'"(\w+://[^/"]+)', text)
        return (f"cannot connect to the store{' at ' + where.group(1) if where else ''}; check its endpoint "
                f"(AWS_ENDPOINT_URL) and that it is running")
    if kind == "NoCredentialsError" or "Unable to locate credentials" in text:
        return ("no credentials for the store; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
                "(AWS_PROFILE)")
    return _plain(text)


def _plain(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 160 else text[:157] + "..."


def _safe_name(name: str) -> str:
    """A name inside a store: relative, no ``..`` segment (a manifest line cannot point outside its run folder)."""
    if outside(name):
        raise OutputError(f"{name!r}: not a name inside the run folder")
    return store_name(name)


def store_name(name: str) -> str:
    """``name`` as a run folder spells it (``a//b``, ``./c`` and ``a\\b`` are ``a/b``, ``c`` and ``a/b``); a name of
    nothing at all as it is."""
    return "/".join(_parts(name)) or name


def outside(name: str) -> bool:
    """Whether ``name`` names nothing inside a run folder (a ``..`` segment, or no name at all): what a store
    refuses to write, and what an input's output key must not be."""
    parts = _parts(name)
    return not parts or ".." in parts


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


# ----------------------------------------------------------------------------------------------------- stores


class Store:
    """Objects by name below :attr:`root` (see the module's description). ``local`` is the folder when the store is
    one on this machine (a video is then encoded in place), else None. ``exclusive``: whether ``put(...,
    create=True)`` is one atomic request that fails when the object exists (what guards a run folder)."""

    root: str
    local: Path | None = None
    exclusive: bool = True

    def url(self, name: str) -> str:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """An object whole; FileNotFoundError when it does not exist."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_many(self, names: list[str]) -> list[bytes]:
        """Several objects whole, in the order named (at once where the store can)."""
        return [self.read(name) for name in names]

    def put(self, name: str, data: bytes, create: bool = False, hint: str = RUN_HINT) -> None:
        """Write ``data`` as the object ``name``, whole. ``create``: only when there is none (FileExistsError
        otherwise). A failure is an :class:`OutputError`: the object's name, the cause and ``hint``."""
        raise NotImplementedError

    def put_file(self, name: str, path: str | os.PathLike[str], hint: str = RUN_HINT) -> None:
        """A finished local file as the object ``name``, whole (moved into place for a local store)."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove an object; one that does not exist is fine."""
        raise NotImplementedError

    def names(self, prefix: str = "") -> Iterator[str]:
        """The names of the objects below ``prefix`` (a folder name ending in ``/``, or ""), streamed."""
        raise NotImplementedError

    def child(self, name: str) -> Store:
        """The store rooted at ``name`` below this one."""
        raise NotImplementedError

    def empty(self) -> bool:
        """Whether nothing is stored below the root."""
        return next(iter(self.names()), None) is None

    def __str__(self) -> str:
        return self.root


def atomic_write_bytes(path: Path, data: bytes, hint: str = "check free space and permissions",
                       create: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (``create``: a link that
    fails with FileExistsError when ``path`` exists). A failure (full disk, permissions) raises
    :class:`OutputError`: one line naming the file, the cause and ``hint``."""
    tmp = None
    try:  # creating the folder or the temporary file fails too on a full disk or a read-only folder
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the mode, as for any other file (mkstemp would give 0600)
        tmp = str(path.parent / f".{path.name[:200]}.{os.urandom(6).hex()}.tmp")  # within 255 bytes as the name is
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if create:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if create:
            raise
        raise OutputNameError(f"{path}: cannot write (a file is in the way of its folder); {hint}") from None
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if e.errno == errno.ENAMETOOLONG:  # this name's fault, not the folder's: its input fails, the run goes on
            raise OutputNameError(f"its output name {path.name[:60]}... is longer than the file system allows "
                                  f"(255 bytes a name); rename the input") from None
        if e.errno in (errno.EISDIR, errno.ENOTDIR):  # a folder where the file goes, a file where a folder goes
            raise OutputNameError(f"{path}: cannot write (a {'folder' if e.errno == errno.EISDIR else 'file'} is in "
                                  f"the way); {hint}") from None
        raise OutputError(f"{path}: cannot write ({e.strerror or e}); {hint}") from None


class OutputNameError(OutputError):
    """An output cannot have its name (longer than the file system takes, or a folder or file in its way: another
    input's outputs, ``a.jpg`` beside a folder ``a.jpg/``): written by a run, that input fails, not the run."""


class LocalStore(Store):
    """A folder on this machine."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.local = Path(folder)
        self.root = str(self.local)

    def path(self, name: str) -> Path:
        assert self.local is not None
        return self.local / _safe_name(name)

    def url(self, name: str) -> str:
        return str(self.path(name))

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def put(self, name: str, data: bytes, create: bool = False, hint: str = RUN_HINT) -> None:
        atomic_write_bytes(self.path(name), data, hint, create)

    def put_file(self, name: str, path: str | os.PathLike[str], hint: str = RUN_HINT) -> None:
        target = self.path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise OutputError(f"{target}: cannot write ({e.strerror or e}); {hint}") from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            self.path(name).unlink()

    def names(self, prefix: str = "") -> Iterator[str]:
        assert self.local is not None
        top = self.local / prefix if prefix else self.local
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.local)
            for f in sorted(filenames):
                yield f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}"

    def child(self, name: str) -> LocalStore:
        return LocalStore(self.path(name))


class ObjectStore(Store):
    """A prefix of object storage, or of any fsspec file system (see the module's description)."""

    def __init__(self, url: str) -> None:
        self.fs, path = filesystem(url)
        self.scheme = url_scheme(url)
        self.base = path.rstrip("/")
        self.root = f"{self.scheme}://{self.base}"
        self.exclusive = _exclusive_create(self.fs)

    def __reduce__(self) -> tuple[Any, ...]:  # sent to Ray actors by its URL: each opens its own client
        return ObjectStore, (self.root,)

    def _path(self, name: str) -> str:
        return f"{self.base}/{_safe_name(name)}" if name else self.base

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self._path(name)}"

    def _refused(self, what: str, name: str, e: BaseException) -> OutputError:
        return OutputError(f"{self.url(name)}: cannot {what} ({store_reason(e)}); check the store's credentials, "
                           f"permissions and endpoint")

    def read(self, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - stores raise OSError subclasses and their own client errors
            raise self._refused("read", name, e) from None

    def exists(self, name: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(name)))
        except Exception as e:  # noqa: BLE001
            raise self._refused("read", name, e) from None

    def read_many(self, names: list[str]) -> list[bytes]:
        paths = [self._path(name) for name in names]
        try:
            got = self.fs.cat(paths, on_error="raise") if paths else {}
        except Exception as e:  # noqa: BLE001
            raise self._refused("read", names[0] if names else "", e) from None
        return [bytes(got[p]) for p in paths]

    def put(self, name: str, data: bytes, create: bool = False, hint: str = STORE_HINT) -> None:
        try:
            self.fs.pipe_file(self._path(name), data, mode="create" if create else "overwrite")
        except FileExistsError:
            if create:
                raise
            raise OutputError(f"{self.url(name)}: cannot write (the store refused it); {hint}") from None
        except Exception as e:  # noqa: BLE001 - stores raise OSError subclasses and their own client errors
            if create and "precondition" in str(e).lower():  # the create's condition, as some stores word it
                raise FileExistsError(self.url(name)) from None
            raise OutputError(f"{self.url(name)}: cannot write ({store_reason(e)}); {hint}") from None

    def put_file(self, name: str, path: str | os.PathLike[str], hint: str = STORE_HINT) -> None:
        try:
            self.fs.put_file(os.fspath(path), self._path(name))
        except Exception as e:  # noqa: BLE001
            raise OutputError(f"{self.url(name)}: cannot write ({store_reason(e)}); {hint}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._refused("delete", name, e) from None

    def names(self, prefix: str = "") -> Iterator[str]:
        start = len(self.base) + 1
        listing = _listing(self.fs, self._path(prefix.rstrip("/")) if prefix else self.base)
        while True:
            try:
                info = next(listing)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001
                raise self._refused("list", prefix, e) from None
            yield str(info["name"])[start:]

    def child(self, name: str) -> ObjectStore:
        return ObjectStore(self.url(name))


def _exclusive_create(fs: Any) -> bool:
    """Whether the file system writes ``mode="create"`` as one conditional request (s3fs: If-None-Match; the
    in-memory one: an exclusive open), rather than fsspec's default of a check and then a write."""
    from fsspec.spec import AbstractFileSystem

    for attr in ("_pipe_file", "pipe_file"):
        own = getattr(type(fs), attr, None)
        if own is None or own is getattr(AbstractFileSystem, "pipe_file", None):
            continue
        if attr == "_pipe_file" and not getattr(fs, "async_impl", False):
            continue
        try:
            params = inspect.signature(own).parameters
        except (TypeError, ValueError):
            continue
        if "mode" in params and own.__qualname__.split(".")[0] not in ("AbstractFileSystem", "AsyncFileSystem"):
            return True
    return False


def open_store(location: str | os.PathLike[str]) -> Store:
    """The store at ``location``: a URL (see :func:`is_store_url`) or a local folder."""
    text = os.fspath(location)
    return ObjectStore(text) if is_store_url(text) else LocalStore(text)


# ----------------------------------------------------------------------------------------------------- listing


def _run(fs: Any, coro: Any, timeout: float | None = None) -> Any:
    """Run one of an async file system's coroutines on its own event loop, from this thread."""
    import asyncio  # not at the top: a run that reads no store does not pay for it

    return asyncio.run_coroutine_threadsafe(coro, fs.loop).result(timeout)


async def _take(agen: Any, n: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        try:
            out.append(await agen.__anext__())
        except StopAsyncIteration:
            break
    return out


def _listing(fs: Any, path: str) -> Iterator[dict[str, Any]]:
    """Every object below ``path`` (recursively, no folders) as fsspec's info dicts, a page at a time: a store that
    pages its listing (s3fs) is asked for the next page only when this one is used up, and nothing is cached, so a
    million keys never sit in memory together. Other file systems are walked a folder at a time."""
    pager = getattr(fs, "_iterdir", None)
    if getattr(fs, "async_impl", False) and pager is not None and "prefix" in inspect.signature(pager).parameters:
        bucket, _, key = path.partition("/")
        agen = pager(bucket, delimiter="", prefix=f"{key}/" if key else "")
        try:
            while True:
                page = _run(fs, _take(agen, PAGE))
                for info in page:
                    if info.get("type", "file") == "file" and not str(info.get("name", "")).endswith("/"):
                        yield info
                if len(page) < PAGE:
                    return
        finally:
            with contextlib.suppress(Exception):
                _run(fs, agen.aclose(), 30)
    for _, _, files in fs.walk(path, detail=True):
        for name in sorted(files):
            info = files[name]
            if info.get("type", "file") == "file":
                yield info


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its URL, size in bytes and content id (its ETag or hash; else size and time)."""

    url: str
    size: int
    content_id: str


def content_id(info: dict[str, Any]) -> str:
    """What identifies an object's content in a store's info dict: its ETag (S3, Azure, GCS), hash, or
    generation; else its size and modification time."""
    for key in ("ETag", "etag", "md5Hash", "content_md5", "generation", "sha256", "md5"):
        value = info.get(key)
        if value:
            return f"etag:{str(value).strip(chr(34))}"
    for key in ("LastModified", "last_modified", "mtime", "updated", "modified"):
        value = info.get(key)
        if value:
            return f"{info.get('size', 0)}:{value}"
    return ""


def list_objects(url: str) -> Iterator[ObjectInfo]:
    """The objects below ``url`` (a prefix: recursively; an object: itself), in key order, streamed from the
    store's listing pages. A prefix with nothing below it gives nothing; a store that refuses the listing is an
    :class:`InputError` in one line."""
    fs, path = filesystem(url)
    scheme = url_scheme(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = {"type": "directory"}  # a prefix is no object: list what is below it
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{url}: cannot read ({store_reason(e)})") from None
    if info.get("type") == "file":
        yield ObjectInfo(url, int(info.get("size") or 0), content_id(info))
        return
    try:
        for item in _listing(fs, path.rstrip("/")):
            yield ObjectInfo(f"{scheme}://{item['name']}", int(item.get("size") or 0), content_id(item))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{url}: cannot list ({store_reason(e)})") from None


def glob_objects(pattern: str) -> list[ObjectInfo]:
    """The objects a ``*``/``?``/``[]`` pattern matches, sorted by URL, each with its ETag (``content_id``) as a
    prefix's listing gives it: the fingerprint a resume compares."""
    fs, path = filesystem(pattern)
    scheme = url_scheme(pattern)
    try:
        found = fs.glob(path, detail=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{pattern}: cannot list ({store_reason(e)})") from None
    return sorted((ObjectInfo(f"{scheme}://{name}", int(info.get("size") or 0), content_id(info))
                   for name, info in found.items() if info.get("type", "file") == "file"), key=lambda o: o.url)


def read_object(url: str, max_bytes: int) -> bytes:
    """A small object (a list file), refused past ``max_bytes``."""
    fs, path = filesystem(url)
    try:
        size = int(fs.size(path) or 0)
        if size > max_bytes:
            raise InputError(f"{url}: the list file is over {max_bytes} bytes")
        return bytes(fs.cat_file(path))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{url}: cannot read ({store_reason(e)})") from None


# ----------------------------------------------------------------------------------------------------- reading


class ObjectStream:
    """An object read as a :class:`toolkit.io.transfer.Stream`: its size from the store first (``length``, so the
    size limit refuses it before any byte is read), then ranged reads of :data:`BLOCK` bytes. Each request runs
    apart from the reading thread (on an async file system's event loop: s3fs, gcsfs, adlfs; in a thread of its own
    otherwise), so ``timeout`` seconds without an answer is silence, and :meth:`abort` (the deadline) ends the wait
    at once and cancels the request where the file system can."""

    def __init__(self, fs: Any, path: str, url: str, timeout: float) -> None:
        self.fs, self.path, self.url, self.timeout = fs, path, url, timeout
        self.length: int | None = None
        self.pos = 0
        self.buffer = b""
        self._lock = threading.Lock()
        self._waiting: concurrent.futures.Future[Any] | None = None
        self._request: concurrent.futures.Future[Any] | None = None
        self._aborted = False

    def _submit(self, name: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if getattr(self.fs, "async_impl", False):
            import asyncio

            coro = getattr(self.fs, "_" + name)(*args, **kwargs)
            return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)
        # a daemon thread per request: one stuck in a file system that never answers cannot hold the process at exit
        request: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def work() -> None:
            if not request.set_running_or_notify_cancel():
                return
            try:
                request.set_result(getattr(self.fs, name)(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the reader
                request.set_exception(e)

        threading.Thread(target=work, name="yolokit-object", daemon=True).start()
        return request

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        waiting: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("the read was cut")
            request = self._submit(name, *args, **kwargs)
            self._waiting, self._request = waiting, request
        request.add_done_callback(lambda done: _pass_on(done, waiting))
        try:
            return waiting.result(self.timeout)
        except concurrent.futures.TimeoutError:
            request.cancel()
            if self._aborted:
                raise ConnectionAbortedError("the read was cut") from None
            raise TimeoutError from None
        except concurrent.futures.CancelledError:
            raise ConnectionAbortedError("the read was cut") from None
        finally:
            with self._lock:
                self._waiting = self._request = None

    def open(self) -> None:
        """Ask the store for the object's size (FetchError when it is missing or refused)."""
        try:
            info = self._call("info", self.path)
        except (TimeoutError, ConnectionAbortedError):
            raise
        except Exception as e:  # noqa: BLE001
            raise FetchError(self.url, f"cannot read the object ({store_reason(e)})",
                             "refused" if isinstance(e, (FileNotFoundError, PermissionError)) else "broken") from None
        if info.get("type", "file") != "file":
            raise FetchError(self.url, "not an object (a prefix or folder)", "content")
        self.length = int(info.get("size") or 0)

    def read1(self, n: int) -> bytes:
        if not self.buffer:
            if self.length is not None and self.pos >= self.length:
                return b""
            end = self.pos + BLOCK if self.length is None else min(self.pos + BLOCK, self.length)
            try:
                block = self._call("cat_file", self.path, start=self.pos, end=end)
            except (TimeoutError, ConnectionAbortedError):
                raise
            except Exception as e:  # noqa: BLE001 - a store's client error: the transfer broke
                raise ConnectionError(store_reason(e)) from None
            self.buffer = bytes(block)
            self.pos += len(self.buffer)
            if not self.buffer:
                return b""
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            waiting, request = self._waiting, self._request
        if request is not None:
            request.cancel()
        if waiting is not None and not waiting.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                waiting.set_exception(ConnectionAbortedError("the read was cut"))

    def close(self) -> None:
        self.buffer = b""


def _pass_on(done: concurrent.futures.Future[Any], waiting: concurrent.futures.Future[Any]) -> None:
    """Hand a request's outcome to the future its reader waits on (unless the deadline already ended the wait)."""
    if waiting.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if done.cancelled():
            waiting.set_exception(ConnectionAbortedError("the read was cut"))
        elif done.exception() is not None:
            waiting.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            waiting.set_result(done.result())


def fetch_object(url: str, ctx: FetchContext, to_file: bool = False, suffix: str = "") -> Download:
    """An object's bytes within ``ctx`` (limits, memory budget, temporary folder): see
    :func:`toolkit.io.transfer.receive`. Its size is asked first, so one over the limit is refused unread."""
    try:
        fs, path = filesystem(url)
    except (InputError, MissingExtraError) as e:
        raise FetchError(url, str(e).split(": ", 1)[-1], "refused") from None
    with ctx.deadline() as deadline:
        stream = ObjectStream(fs, path, url, ctx.limits.timeout)
        deadline.watch(stream.abort)
        try:
            _opened(stream, deadline)
            return receive(stream, url, ctx, deadline, to_file, suffix)
        finally:
            stream.close()


def _opened(stream: ObjectStream, deadline: Deadline) -> None:
    try:
        stream.open()
    except TimeoutError:
        if deadline.passed:
            raise deadline.refusal(stream.url, 0) from None
        raise FetchError(stream.url, f"the store did not answer within {stream.timeout:g} s (--stream-timeout)",
                         "silence") from None
    except ConnectionAbortedError:
        raise deadline.refusal(stream.url, 0) from None


def fetch_object_image(url: str, ctx: FetchContext) -> Download:
    """An image object's bytes, refused with the reason when the object holds something else."""
    return expect_image(fetch_object(url, ctx), url, "the object holds")


def fetch_object_video(url: str, ctx: FetchContext) -> Download:
    """A video object downloaded to a temporary file (``path``), refused when it is not a video."""
    return expect_video(fetch_object(url, ctx, to_file=True, suffix=os.path.splitext(url)[1].lower() or ".mp4"),
                        url, "the object holds")


__all__ = ["BLOCK", "LocalStore", "ObjectInfo", "ObjectStore", "ObjectStream", "Store", "atomic_write_bytes",
           "content_id", "fetch_object", "fetch_object_image", "fetch_object_video", "filesystem", "glob_objects",
           "is_local", "is_store_url", "list_objects", "open_store", "outside", "read_object", "store_reason",
           "url_scheme"]
