"""The ``yolokit`` command line. It parses, calls the library, prints, and maps errors to exit codes.

:mod:`toolkit.cli.root` holds the Typer app, the entry point and the exit codes; :mod:`~toolkit.cli.run`,
:mod:`~toolkit.cli.export`, :mod:`~toolkit.cli.tools` (val, info, bench, weights) and :mod:`~toolkit.cli.serve` the
commands, which register on the app when ``app`` or ``main`` is first taken from this package (or :func:`entry` runs);
:mod:`~toolkit.cli.params` builds their options from the option declarations, :mod:`~toolkit.cli.parse` reads values
such as ``500M`` or ``0,2``; :mod:`~toolkit.cli.reference` writes docs/guide/options.md from the commands so built.

Importing this package loads neither numpy nor the commands, so that :func:`entry` can set up the process first.
"""

from __future__ import annotations

from typing import Any


def entry() -> None:
    """The ``yolokit`` command (and ``python -m toolkit.cli``): this process set up as yolokit's own
    (:func:`toolkit.host.own_process`: one OpenBLAS thread, set before numpy is imported, and freed memory kept for
    reuse), then :func:`toolkit.cli.root.entry`."""
    from toolkit.host import own_process

    own_process()
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
