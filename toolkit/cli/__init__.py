"""The ``yolokit`` command line. It parses, calls the library, prints, and maps errors to exit codes.

:mod:`toolkit.cli.root` holds the Typer app, the entry point and the exit codes; :mod:`~toolkit.cli.run`,
:mod:`~toolkit.cli.export`, :mod:`~toolkit.cli.tools` (val, info, bench, weights) and :mod:`~toolkit.cli.serve` the
commands, which register on the app when ``app`` or ``main`` is first taken from this package (:func:`entry` registers
only the command it runs);
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
    import sys

    from toolkit.host import own_process

    own_process()
    commands(sys.argv[1:2]).entry()


# the module each command registers from (toolkit.cli.<module>)
COMMAND_MODULES = {"run": "run", "export": "export", "serve": "serve", "val": "tools", "info": "tools",
                   "bench": "tools", "weights": "tools"}


def commands(named: list[str] | None = None) -> Any:
    """:mod:`toolkit.cli.root` with every command registered on its app (``app`` and ``main`` of this package are
    that app and :func:`~toolkit.cli.root.main`). With ``named``, the command line's first word, only the command
    it names where it names one: the process that runs it imports no other command's modules (measured: 17-27 ms
    of every ``yolokit run``); the help, a misspelt command and everything else get them all."""
    import importlib

    module = importlib.import_module("toolkit.cli.root")
    wanted = COMMAND_MODULES.get(named[0]) if named else None
    for name in (wanted,) if wanted else sorted(set(COMMAND_MODULES.values())):  # they register on the app
        importlib.import_module(f"toolkit.cli.{name}")
    if not wanted:
        globals().update(app=module.app, main=module.main)
    return module


def __getattr__(name: str) -> Any:
    if name in ("app", "main"):  # the Typer app and main(argv), as ``from toolkit.cli import app, main`` takes them
        return getattr(commands(), name)
    raise AttributeError(f"module 'toolkit.cli' has no attribute {name!r}")


__all__ = ["app", "entry", "main"]
