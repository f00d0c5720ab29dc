"""Options, declared once.

Every setting a user can give (on the command line, to ``Detector(...)``, to ``RunOptions``) is a dataclass field
declared with :func:`option`: its default, help text, limits or choices, command-line name, help panel, and whether it
changes what a run outputs. The dataclasses group settings by concept (``DetectorConfig``, ``SaveOptions``,
``AnnotateStyle``, ``TileOptions``, ``RunFolder``, ``EngineOptions``), and a composite (``RunOptions``) holds them as
:func:`group` fields instead of copying theirs. Everything else reads the declarations:

* the CLI builds its Typer options from them (``toolkit.cli.params``), and ``docs/guide/options.md`` is generated
  from the CLI so built;
* :func:`check` validates a dataclass's values against them (limits, choices), one line naming the flag;
* :func:`build` makes a composite from flat settings (``RunOptions.of(conf=0.5, save_txt=True)``) and refuses an
  unknown name, naming the nearest known one (:func:`refuse_unknown`, which ``Detector(**settings)`` uses too);
* :func:`identity` gives the settings that change a run's outputs, as plain JSON values (what a resumed run must
  share with the interrupted one).

The four settings whose defaults several layers need (the letterbox size and the NMS thresholds, also in
``meta.BakedNMS``, ``ops.NMSOptions`` and the export options) are declared here, as :data:`IMGSZ`, :data:`CONF`,
:data:`IOU` and :data:`MAX_DET`; the dataclasses use ``CONF.field()`` and the lower layers ``CONF.default``.

To add an option: add a field with ``option(default, "help", ...)`` to the dataclass of its concept; the CLI, the
keyword check, the identity and the options reference pick it up (regenerate the reference with
``python -m toolkit.cli.reference``).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from toolkit.errors import InputError

KEY = "yolokit.option"  # a field's Option, in its dataclass field metadata
GROUP = "yolokit.group"  # a composite's field that holds a group (a dataclass of options)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an option that must be given (``yolokit bench --weights``)

# The help panels ``yolokit run --help`` groups its options under, in this order.
MODEL = "Model"
DETECTION = "Detection"
INPUTS = "Inputs"
SPEED = "Faster, but detections differ from YOLOv5's"
SAVING = "What is saved"
SERVER = "Server"
DRAWING = "How boxes are drawn"
TILING = "Tiling (huge images)"
FOLDER = "Run folder"
CONCURRENCY = "Concurrency"
RAY = "Ray cluster"


@dataclass(frozen=True)
class Option:
    """One option's declaration. ``cli_name``: its command-line name when it is not the field's (``agnostic_nms``
    for ``DetectorConfig.agnostic``); ``decls``: Typer's spelling of the flag when it is not ``--name/--no-name``
    (``--half/--fp32``); ``text``: how the command line writes a value that is not a plain number or word
    (``classes``: 0,2; ``scales``: 1,0.5; ``bytes``: 1G; ``pixels``: 500M; ``strs``/``ints``: comma lists);
    ``cli_type``: the command-line type when the field's is wider (``imgsz``: int, though the library takes (h, w));
    ``cli``: shown on the command line (False: library only); ``off``: the value of a group's switch that leaves the
    whole group off (``--tile 0``); ``lo``/``hi``: limits, excluded when ``lo_open``/``hi_open``;
    ``affects_output``: changing it changes what a run writes (a resumed run must keep it); ``env``: an environment
    variable the command line reads the value from when the flag is not given (a secret: ``--api-key``)."""

    default: Any
    help: str
    panel: str = ""
    affects_output: bool = False
    cli_name: str = ""
    decls: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""
    cli_type: Any = None
    cli: bool = True
    off: Any = None
    argument: bool = False
    env: str = ""

    def field(self, **changes: Any) -> Any:
        """A dataclass field declared by this option (``changes`` make a variant: another default, help...)."""
        opt = replace(self, **changes) if changes else self
        meta = {KEY: opt}
        if opt.default is REQUIRED:
            return field(metadata=meta)
        if isinstance(opt.default, (list, dict, set)):
            value = opt.default
            return field(default_factory=lambda: type(value)(value), metadata=meta)
        return field(default=opt.default, metadata=meta)

    def limits(self) -> str:
        """The limits in words: ``in [0, 1]``, ``at least 1``, ``positive``, ``one of a, b``; "" when none."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return ("positive" if self.lo == 0 else f"above {self.lo:g}") if self.lo_open else f"at least {self.lo:g}"
        if self.hi is not None:
            return f"below {self.hi:g}" if self.hi_open else f"at most {self.hi:g}"
        return ""

    def flag(self, name: str) -> str:
        """The command-line flag of this option, declared on the field ``name``."""
        return flag_of(self.cli_name or name)

    def refused(self, value: Any) -> Any:
        """What to name of a value :meth:`allows` refuses: the value, or a tuple's first element out of the limits
        (as given: ``-1``, not ``(-1,)``)."""
        if isinstance(value, (tuple, list)):
            return next((v for v in value if not self.allows(v)), value)
        return value

    def allows(self, value: Any) -> bool:
        """Whether ``value`` keeps the limits (each element, for a tuple); None passes when the default is None."""
        if value is None:
            return self.default is None or not (self.choices or self.lo is not None or self.hi is not None)
        if isinstance(value, (tuple, list)):
            return all(self.allows(v) for v in value)
        if self.choices:
            return value in self.choices
        if self.lo is None and self.hi is None:
            return True
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's numbers too
            return False
        if isinstance(value, numbers.Integral):
            value = int(value)  # compared with the limits exactly: float() of 400 digits raised OverflowError
        elif math.isnan(value):
            return False
        else:
            value = float(value)
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return low and high


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field declared as an option (see :class:`Option` for ``spec``)."""
    return Option(default, help, **spec).field()


def group(cls: type, optional: bool = False) -> Any:
    """A composite's field holding the options of ``cls``; ``optional``: None (off) by default, switched on by the
    group's field that declares ``off`` (``RunOptions.tiling`` by ``--tile``)."""
    if optional:
        return field(default=None, metadata={GROUP: cls})
    return field(default_factory=cls, metadata={GROUP: cls})


# ------------------------------------------------------------------------------ declared here: several layers read them
# the largest --imgsz: a 16384-pixel square input is 3.2 GB as float32 before the model's own activations (99999
# asked for 120 GB and the process was killed without a word); larger images are for --tile
IMGSZ_MAX = 16384
IMGSZ = Option(640, "Inference size: the long side, in pixels (rounded up to a multiple of the model stride).",
               panel=MODEL, affects_output=True, cli_type=int, lo=1, hi=IMGSZ_MAX)
CONF = Option(0.25, "Confidence threshold: a box whose score (objectness x class score) is not above it is dropped.",
              panel=DETECTION, affects_output=True, lo=0, hi=1)
IOU = Option(0.45, "NMS IoU threshold: a box that overlaps a more confident box of its class by more than this is "
                   "suppressed.", panel=DETECTION, affects_output=True, lo=0, hi=1)
MAX_DET = Option(1000, "At most this many detections per image (the most confident).", panel=DETECTION,
                 affects_output=True, lo=1)


# ----------------------------------------------------------------------------------------------------- reading them
@dataclass(frozen=True)
class Entry:
    """One declared option of a (composite) dataclass: where it sits (``path``: group field names, then its own)."""

    path: tuple[str, ...]
    option: Option
    owner: type  # the dataclass that declares it

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def key(self) -> str:
        """The flat name: the command-line name (underscores), unique within a composite."""
        return self.option.cli_name or self.name

    @property
    def flag(self) -> str:
        return flag_of(self.key)


def flag_of(key: str) -> str:
    """The command-line flag of an option's flat name (``max_det`` -> ``--max-det``)."""
    return "--" + key.replace("_", "-")


def declared(cls: type, name: str) -> Option:
    """The declaration of ``cls``'s field ``name`` (to declare another command's option like it:
    ``declared(DetectorConfig, "device").field(help=...)``)."""
    for f in fields(cls):
        if f.name == name and KEY in f.metadata:
            return f.metadata[KEY]  # type: ignore[no-any-return]
    raise KeyError(f"{cls.__name__}.{name} is not a declared option")


def walk(cls: type, _path: tuple[str, ...] = ()) -> Iterator[Entry]:
    """Every declared option of ``cls``, groups included, in declaration order."""
    for f in fields(cls):
        if GROUP in f.metadata:
            yield from walk(f.metadata[GROUP], (*_path, f.name))
        elif KEY in f.metadata:
            yield Entry((*_path, f.name), f.metadata[KEY], cls)


def keys(cls: type) -> dict[str, Entry]:
    """The flat names of ``cls``'s options; two options with one name are a declaration error."""
    out: dict[str, Entry] = {}
    for e in walk(cls):
        if e.key in out:
            raise TypeError(f"{cls.__name__}: two options named {e.key!r} ({'.'.join(out[e.key].path)} and "
                            f"{'.'.join(e.path)}); give one a cli_name")
        out[e.key] = e
    return out


def typed(obj: Any) -> None:
    """Each declared setting of ``obj`` of the type it declares, as the command line gives it (a dataclass calls
    this from ``__post_init__``, before :func:`check`): a switch True or False (``"no"`` was taken, and turned
    multi-label on), a count a whole number (``threads=1.5``, ``TileOptions(tile=640.5)`` failed later inside
    slicing), an amount a number or text like ``500M`` (read as the command line reads it), a mapping a mapping."""
    for f in fields(obj):
        opt, value = f.metadata.get(KEY), getattr(obj, f.name)
        if opt is None or value is None:
            continue
        kind, name = str(f.type), opt.flag(f.name) if opt.cli else f.name  # named as check() names it
        if opt.text in ("bytes", "pixels") and isinstance(value, str):
            value = parse_amount(value, name, 1024 if opt.text == "bytes" else 1000)
            object.__setattr__(obj, f.name, value)
        if kind.startswith("bool"):
            if not isinstance(value, bool) and not (type(value).__module__ == "numpy" and  # numpy's too
                                                    type(value).__name__ in ("bool", "bool_")):
                raise InputError(f"{name} takes True or False, got {brief(value)}")
            object.__setattr__(obj, f.name, bool(value))
        elif kind.startswith("int |") or kind == "int":
            if f.name != "imgsz" and not whole_number(value):
                raise InputError(f"{name} takes a whole number, got {brief(value)}")
        elif kind.startswith("dict") and not isinstance(value, Mapping):
            raise InputError(f"{name} takes a mapping of a runtime's options, got {brief(value)}")


def check(obj: Any) -> None:
    """Refuse, in one line naming the flag, a value of ``obj``'s own declared fields outside its limits or choices
    (a dataclass calls this from ``__post_init__``; its groups check themselves)."""
    for f in fields(obj):
        opt = f.metadata.get(KEY)
        if opt is None:
            continue
        value = getattr(obj, f.name)
        if not opt.allows(value):
            flag = opt.flag(f.name) if opt.cli else f.name
            raise InputError(f"{flag} must be {opt.limits()}, got {brief(opt.refused(value))}")


def refuse_unknown(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """An :class:`InputError` for the first name in ``given`` that is not ``known``, naming the nearest known one."""
    known = list(known)
    for name in given:
        if name not in known:
            near = nearest(name, known)
            hint = f"did you mean {near!r}?" if near else "known: " + ", ".join(sorted(known))
            raise InputError(f"{what} has no setting {name!r}; {hint}")


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` most likely meant: one that contains it or that it contains (YOLOv5's
    ``conf_thres`` for ``conf``), else the closest spelling; None when nothing is close."""
    def score(k: str) -> tuple[bool, float]:
        inside = (len(k) >= 3 and k in name) or (len(name) >= 3 and name in k)
        return inside, difflib.SequenceMatcher(None, name, k).ratio()

    best = max(known, key=score, default=None)
    if best is None:
        return None
    contains, ratio = score(best)
    return best if contains or ratio >= 0.5 else None


def build(cls: type, values: dict[str, Any], what: str = "") -> Any:
    """A ``cls`` from flat settings by their flat names (:func:`keys`); the rest keep their defaults. An optional
    group is built when its switch is given and not ``off``."""
    table = keys(cls)
    refuse_unknown(values, table, what or cls.__name__)
    return _build(cls, values, table, ())


def _build(cls: type, values: dict[str, Any], table: dict[str, Entry], path: tuple[str, ...]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        sub = f.metadata.get(GROUP)
        if sub is not None:
            mine = {k: v for k, v in values.items() if table[k].path[:len(path) + 1] == (*path, f.name)}
            switch = next((e for e in walk(sub) if e.option.off is not None), None)
            if f.default is None and switch is not None:  # an optional group: on when its switch says so
                on = switch.key in mine and mine[switch.key] is not None and mine[switch.key] != switch.option.off
                if not on:
                    _unswitched(mine, table, switch)
                    continue
            if mine:
                kwargs[f.name] = _build(sub, mine, table, (*path, f.name))
        else:
            opt = f.metadata.get(KEY)
            key = (opt.cli_name or f.name) if opt is not None else f.name
            if opt is not None and key in values:
                kwargs[f.name] = values[key]
    return cls(**kwargs)


def _unswitched(values: dict[str, Any], table: dict[str, Entry], switch: Entry) -> None:
    """Refuse a setting of an optional group that is off (``--overlap 0.5`` without ``--tile``) given another value
    than its default: it was ignored without a word, its value unchecked (``--tile-merge foo`` ran)."""
    for key, value in values.items():
        entry = table[key]
        if key != switch.key and value is not None and plain(value) != plain(entry.option.default):
            pair = entry.option.decls[0].split("/") if entry.option.decls else []
            flag = pair[1] if value is False and len(pair) == 2 else entry.flag  # --no-tile-refocus, as typed
            raise InputError(f"{flag} works with {switch.flag} only, which is off; add {switch.flag} (e.g. "
                             f"{switch.flag} 640) or leave {flag} out")


def plain(value: Any) -> Any:
    """A value as JSON writes it back (tuples as lists), so that identities compare with what a run folder holds."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def identity(obj: Any) -> dict[str, Any]:
    """The settings of ``obj`` that change what a run outputs (``affects_output``), by flat name, as plain values; an
    optional group that is off gives its switch's ``off`` value only. Settings that only change how fast or where
    (workers, mode, batch, the device, the run folder) are not in it."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        sub = f.metadata.get(GROUP)
        if sub is not None:
            if value is not None:
                out.update(identity(value))
            else:
                out.update({e.key: e.option.off for e in walk(sub) if e.option.off is not None})
            continue
        opt = f.metadata.get(KEY)
        if opt is not None and opt.affects_output:
            out[opt.cli_name or f.name] = plain(value)
    return out


def class_ids(value: Any, flag: str = "--classes") -> tuple[int, ...]:
    """``--classes`` as class ids: ``0,2`` or ``0 2`` (text), one id, or a sequence of ids; :class:`InputError`
    naming ``flag`` otherwise. Strict, since a slip here silently changes what a run keeps: an empty part
    (``0,,2``), an id written ``1_0`` or in other digits than 0-9 (``int()`` takes both) and an empty list (it would
    keep no detection) are refused."""
    ids: tuple[int, ...] | None = None
    if isinstance(value, str):
        text = value.strip()
        parts = re.split(r"\s*,\s*|\s+", text) if text else []  # "0,2", "0, 2" or "0 2" (detect.py's form)
        if all(_ID.fullmatch(p) and len(p) <= MAX_DIGITS for p in parts):
            ids = tuple(int(p) for p in parts)
    elif whole_number(value):
        ids = (int(value),)
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        items = list(value)
        if all(whole_number(c) for c in items):
            ids = tuple(int(c) for c in items)
    if ids == ():
        raise InputError(f"{flag} is empty, which would keep no detection; leave it out for every class, or give ids "
                         f"like 0,2")
    if ids is None:
        raise InputError(f"{flag} takes class ids like 0,2 (or a list of them), got {brief(value)}")
    return ids


_ID = re.compile(r"-?[0-9]+")  # an id as text, in ASCII digits (a negative one is refused by --classes' limit)


def whole_number(value: Any) -> bool:
    """An integer (numpy's too), not a bool: what a count, a size or an id takes."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_amount(text: str, flag: str, base: int) -> int:
    """``500M``, ``2G``, ``1.5k`` or a plain number; K/M/G are powers of ``base`` (1024 for sizes, 1000 for
    pixel counts): the command line's and the library's reading of an amount (``text="bytes"`` or ``"pixels"``)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": base, "M": base**2, "G": base**3}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value * scale) or "_" in t or not t.isascii():  # nan, inf, 1e400; float() took 1_0 as 10
        raise InputError(f"{flag} takes a number like 500M or 2G, got {text!r}")
    if value <= 0:
        raise InputError(f"{flag} must be positive, got {text!r}")
    return int(value * scale)



MAX_DIGITS = 4300  # int() refuses a longer digit string (Python's default int_max_str_digits): no number we read


def ascii_digits(text: str) -> bool:
    """Text that is a whole number in digits 0-9 alone (``int()`` also takes ``1_0``, ``+5`` and other scripts'
    digits), of at most :data:`MAX_DIGITS` of them (``int()`` raised on 5,000 nines: a server's 500)."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (a refused value may be megabytes long)."""
    return clip(repr(value), limit)


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking the cut."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


__all__ = ["CONCURRENCY", "CONF", "DETECTION", "DRAWING", "FOLDER", "IMGSZ", "INPUTS", "IOU", "MAX_DET", "MAX_DIGITS",
           "MODEL", "RAY", "REQUIRED", "SAVING", "SERVER", "SPEED", "TILING", "Entry", "Option", "ascii_digits",
           "brief", "build", "check", "class_ids", "clip", "declared", "flag_of", "group", "identity", "keys",
           "nearest", "option", "parse_amount", "plain", "refuse_unknown", "walk", "whole_number"]
