"""Typed errors. Every user-facing failure is a ``YolokitError`` subclass with a one-line message
that names the file and the fix; the CLI maps ``exit_code`` to the process exit status."""

from __future__ import annotations


class YolokitError(Exception):
    """Base class of every error yolokit raises on purpose."""

    exit_code = 1


class InputError(YolokitError):
    """A path, option or image the user gave cannot be used."""

    exit_code = 2


class DetectorClosedError(InputError):
    """The :class:`~toolkit.Detector` was closed (its model released), before or while a call used it."""


class ModelFileError(YolokitError):
    """A model file is missing, truncated, corrupt, of the wrong kind or unsupported."""

    exit_code = 3


class UnsafeCheckpointError(ModelFileError):
    """A checkpoint's pickle asks for something outside the allow-list; nothing was executed."""


class BackendUnavailableError(YolokitError):
    """The runtime a backend needs is not installed, or the device it needs is absent."""

    exit_code = 4


class MissingExtraError(YolokitError, ImportError):
    """An optional package a feature needs (pandas, supervision) is not installed; the message says what to pip
    install."""

    exit_code = 4


class DownloadError(YolokitError):
    """A weights download failed or did not match its checksum."""

    exit_code = 5


class ExportError(YolokitError):
    """An export failed or its parity check against PyTorch did not pass."""

    exit_code = 6


class OutputError(YolokitError):
    """The output folder cannot be created or written (permissions, full disk)."""

    exit_code = 7


def first_line(e: BaseException) -> str:
    """An exception's first non-empty line, or its type name: runtimes put the cause first and a trace after."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def last_line(e: BaseException) -> str:
    """An exception's last non-empty line, or its type name: wrapped errors put the cause last."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def yaml_problem(e: BaseException) -> str:
    """A YAML parser's error in one line: what is wrong and where (``line 2, column 6``), without the parser's
    quoted excerpt of the file."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or first_line(e)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"
