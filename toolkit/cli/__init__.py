"""The ``yolokit`` command line. It parses, calls the library, prints, and maps errors to exit codes.

:mod:`toolkit.cli.app` holds the Typer app, the entry point and the exit codes; :mod:`~toolkit.cli.run`,
:mod:`~toolkit.cli.export`, :mod:`~toolkit.cli.tools` (val, info, bench, weights) and :mod:`~toolkit.cli.serve` the
commands, which register on the app when this package is imported; :mod:`~toolkit.cli.params` builds their options
from the option declarations, :mod:`~toolkit.cli.parse` reads values such as ``500M`` or ``0,2``;
:mod:`~toolkit.cli.reference` writes docs/guide/options.md from the commands so built.
"""

from __future__ import annotations

from toolkit.cli import export, run, serve, tools  # noqa: F401  (the commands register on the app)
from toolkit.cli.app import app, entry, main

__all__ = ["app", "entry", "main"]
