"""Typer options built from the option declarations (:mod:`toolkit.options`), so that a command's flags, defaults,
help texts and help panels are the library's own: :func:`command` gives a command function the signature Typer
reads (``Annotated[type, typer.Option(...)]`` parameters, one per declared option), and :func:`collect` turns what
Typer parsed back into the options dataclass."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, get_type_hints

import typer

from toolkit.cli.parse import FORMS
from toolkit.options import REQUIRED, Entry, build, walk


def cli_default(entry: Entry) -> Any:
    """An option's default as the command line shows and takes it (``--tile 0``, ``--max-file-size 1G``)."""
    opt = entry.option
    value = opt.off if opt.off is not None else opt.default
    if value is REQUIRED:
        return inspect.Parameter.empty
    return FORMS[opt.text][1](value) if opt.text and value is not None else value


def _type(entry: Entry, hints: dict[type, dict[str, Any]]) -> Any:
    opt = entry.option
    if opt.text:
        return str if cli_default(entry) is not None else str | None
    if opt.cli_type is not None:
        return opt.cli_type
    if entry.owner not in hints:
        hints[entry.owner] = get_type_hints(entry.owner)
    return hints[entry.owner][entry.name]


def entries(cls: type, omit: Collection[str] = (), changes: Mapping[str, Mapping[str, Any]] | None = None
            ) -> list[Entry]:
    """The command-line options of ``cls`` (a composite included), but those whose flat names are in ``omit``,
    with ``changes`` made to some declarations (``{"weights": {"argument": True}}``: a command that takes the model
    as its argument)."""
    out = []
    for entry in walk(cls):
        if not entry.option.cli or entry.key in omit:
            continue
        if changes and entry.key in changes:
            entry = replace(entry, option=replace(entry.option, **changes[entry.key]))
        out.append(entry)
    return out


def parameters(cls: type, omit: Collection[str] = (), changes: Mapping[str, Mapping[str, Any]] | None = None
               ) -> list[inspect.Parameter]:
    """One keyword parameter per command-line option of :func:`entries`."""
    hints: dict[type, dict[str, Any]] = {}
    out = []
    for entry in entries(cls, omit, changes):
        opt = entry.option
        text = opt.help.replace("[", "\\[")  # rich markup would take 'yolokit[ray]' for a tag and drop it
        info = (typer.Argument(help=text, metavar=entry.key.upper()) if opt.argument
                else typer.Option(*opt.decls, help=text, rich_help_panel=opt.panel or None, envvar=opt.env or None,
                                  show_envvar=bool(opt.env)))
        out.append(inspect.Parameter(entry.key, inspect.Parameter.KEYWORD_ONLY, default=cli_default(entry),
                                     annotation=Annotated[_type(entry, hints), info]))
    return out


def command(fn: Callable[..., Any], cls: type, extra: Sequence[inspect.Parameter] = (), omit: Collection[str] = (),
            changes: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[..., Any]:
    """``fn`` (which takes ``**kwargs``) with the signature Typer reads: ``cls``'s options (see :func:`entries`),
    then ``extra``."""
    fn.__signature__ = inspect.Signature([*parameters(cls, omit, changes), *extra])  # type: ignore[attr-defined]
    return fn


def context() -> inspect.Parameter:
    """The parameter ``ctx`` through which Typer hands a command its context (``ctx.obj``: the
    :class:`~toolkit.cli.root.Invocation`); not an option."""
    return inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def flag(name: str, help: str, decls: tuple[str, ...] = (), default: Any = False) -> inspect.Parameter:
    """A command's own option that is no library setting (``--json``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[type(default), typer.Option(*decls, help=help)])


def collect(cls: type, kwargs: dict[str, Any], omit: Collection[str] = ()) -> Any:
    """The ``cls`` that Typer's parsed ``kwargs`` describe (each text form parsed; the options in ``omit`` keep
    their defaults); ``kwargs`` keeps the rest."""
    values: dict[str, Any] = {}
    for entry in entries(cls, omit):
        opt = entry.option
        value = kwargs.pop(entry.key)
        if opt.text and value is not None:
            value = FORMS[opt.text][0](value, entry.flag)
        if value is None and opt.default is not None and opt.off is None:
            continue  # an empty list: the declared default
        values[entry.key] = value
    return build(cls, values)
