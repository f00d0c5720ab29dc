"""The ``yolokit`` command line. It parses, calls the library, prints, and maps errors to exit codes.

:mod:`toolkit.cli.root` holds the Typer app, the entry point and the exit codes; :mod:`~toolkit.cli.run`,
:mod:`~toolkit.cli.export`, :mod:`~toolkit.cli.tools` (val, info, bench, weights) and :mod:`~toolkit.cli.serve` the
commands, which register on the app when ``app`` or ``main`` is first taken from this package (or :func:`entry` runs);
:mod:`~toolkit.cli.params` builds their options from the option declarations, :mod:`~toolkit.cli.parse` reads values
such as ``500M`` or ``0,2``; :mod:`~toolkit.cli.reference` writes docs/guide/options.md from the commands so built.

Importing this package loads neither numpy nor the commands, so that :func:`entry` can set up the process first.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# numpy's OpenBLAS starts a thread per core when numpy is imported; with nothing to do, it spins on its core for about
# 0.1 s of each start (measured: a 100-photo OpenVINO run used 3.58 core-s with it, 3.35 without, 1.89 -> 1.86 s).
# yolokit makes no BLAS call (no matrix products: letterbox, decode, NMS and box scaling are elementwise), so the
# command's own process and the worker processes it starts (which inherit the setting) take one.
BLAS_THREADS = "OPENBLAS_NUM_THREADS"


def entry() -> None:
    """The ``yolokit`` command (and ``python -m toolkit.cli``): one BLAS thread unless the environment says otherwise
    (set before numpy is imported, which is when OpenBLAS reads it), then :func:`toolkit.cli.root.entry`."""
    if "numpy" not in sys.modules:
        os.environ.setdefault(BLAS_THREADS, "1")
    commands().entry()


def commands() -> Any:
    """:mod:`toolkit.cli.root` with every command registered on its app (``app`` and ``main`` of this package are
    that app and :func:`~toolkit.cli.root.main`)."""
    import importlib

    module = importlib.import_module("toolkit.cli.root")
    for name in ("export", "run", "serve", "tools"):  # the commands register on the app
        importlib.import_module(f"toolkit.cli.{name}")
    globals().update(app=module.app, main=module.main)
    return module


def __getattr__(name: str) -> Any:
    if name in ("app", "main"):  # the Typer app and main(argv), as ``from toolkit.cli import app, main`` takes them
        return getattr(commands(), name)
    raise AttributeError(f"module 'toolkit.cli' has no attribute {name!r}")


__all__ = ["app", "entry", "main"]
