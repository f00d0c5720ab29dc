"""How the command line writes values that are not a plain number or word: class lists (``0,2``), grid scales
(``1,0.5``), amounts (``500M``, ``2G``), comma lists; each with the inverse, which shows a default as it is typed.
The option declarations name these forms (``Option.text``); :mod:`toolkit.cli.params` applies them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from toolkit.errors import InputError
from toolkit.options import class_ids, parse_amount
from toolkit.tiling import MIN_SCALE


def parse_classes(text: str | None, flag: str = "--classes") -> tuple[int, ...] | None:
    """``0,2,5`` -> ``(0, 2, 5)``, read as the library reads ``classes``; None (the flag left out) -> None, every
    class. An empty value is refused as the library refuses it (``--classes ""`` kept every class)."""
    return class_ids(text, flag) if text is not None else None


def format_amount(value: int, base: int) -> str:
    """The shortest of ``value`` as an amount: ``1G`` for 2**30 in base 1024, ``500M`` for 5e8 in base 1000."""
    for unit, power in (("G", 3), ("M", 2), ("K", 1)):
        if value % base**power == 0:
            return f"{value // base**power}{unit}"
    return str(value)


def parse_scales(text: str, flag: str = "--tile-scales") -> tuple[float, ...]:
    """``1,0.5`` -> ``(1.0, 0.5)``; an empty part (``1,,0.5``, a slip) is refused, as ``--classes`` refuses one;
    :class:`~toolkit.tiling.TileOptions` checks the range."""
    with contextlib.suppress(ValueError):
        scales = tuple(float(c) for c in text.replace(" ", "").split(","))
        if scales and all(MIN_SCALE <= s <= 1 for s in scales):
            return scales
    raise InputError(f"{flag} takes scales in [{MIN_SCALE:g}, 1] like 1,0.5, got {text!r}")


def parse_list(text: str | None, kind: type, flag: str) -> list[Any] | None:
    """``a,b`` -> ``["a", "b"]`` (``kind`` int: numbers); empty or None -> None (the option's default)."""
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v] or None if text else None
    except ValueError:
        raise InputError(f"{flag} takes a comma list of {kind.__name__}s like 1,8, got {text!r}") from None


def _show_list(value: Any) -> str | None:
    return None if value is None else ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)


# text form -> (parse(text, flag), show(default))
FORMS: dict[str, tuple[Callable[[Any, str], Any], Callable[[Any], str | None]]] = {
    "classes": (parse_classes, _show_list),
    "scales": (parse_scales, _show_list),
    "bytes": (lambda text, flag: parse_amount(text, flag, 1024), lambda v: format_amount(v, 1024)),
    "pixels": (lambda text, flag: parse_amount(text, flag, 1000), lambda v: format_amount(v, 1000)),
    "strs": (lambda text, flag: parse_list(text, str, flag), _show_list),
    "ints": (lambda text, flag: parse_list(text, int, flag), _show_list),
}
