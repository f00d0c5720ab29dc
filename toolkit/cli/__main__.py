"""``python -m toolkit.cli``: the ``yolokit`` command."""

from toolkit.cli import entry

entry()
