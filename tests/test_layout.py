"""The layout keeps its promises: the core never names a backend, every backend keeps the whole contract, no module
grows past 800 lines, the defaults of conf, iou, max_det and imgsz are written once, and importing the errors loads
neither numpy nor OpenCV. (The import layers themselves are checked by ``lint-imports`` in the test command, from the
contracts in pyproject.toml.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import backends
from backends.base import Backend, ExportOptions, LoadOptions, PlanningHints
from toolkit.errors import BackendUnavailableError, InputError
from toolkit.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "toolkit").rglob("*.py"), *(REPO / "backends").rglob("*.py")])


MODULE_LOOKUPS = {"get", "import_module", "find_spec"}  # sys.modules.get("torch"): a module's name, not a backend's


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    lookups = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute) and node.func.attr in MODULE_LOOKUPS
               and ast.unparse(node.func.value) in ("sys.modules", "importlib", "importlib.util") for arg in node.args}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in lookups:
            out.append((node.lineno, node.value))
    return out


def test_no_backend_is_named_in_the_core() -> None:
    """A backend's name as a string literal in toolkit/ means the core decides something a backend should state."""
    names = set(backends.REGISTRY)
    found = [f"{p.relative_to(REPO)}:{line}: {value!r}" for p in sorted((REPO / "toolkit").rglob("*.py"))
             for line, value in _string_literals(p) if value in names]
    assert not found, "\n".join(found)


def test_the_literal_scan_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('import sys\nBACKEND = "onnx"\nOTHER = "the onnx backend"\nMOD = sys.modules.get("torch")\n')
    assert [v for _, v in _string_literals(sample) if v in backends.REGISTRY] == ["onnx"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_over_800_lines(path: Path) -> None:
    """Past about 500 lines a module is a prompt to review; past 800 it holds more than one concept."""
    assert len(path.read_text().splitlines()) <= 800


# Each option default, and the other defaults declared for it (yolokit val's), written once: in toolkit/options.py
# or in the one dataclass field that declares it. Everywhere else reads the declaration.
DEFAULTS = {"conf": (0.25, 0.001), "iou": (0.45, 0.6), "max_det": (1000, 300), "imgsz": (640,)}


def _default_literals(path: Path) -> list[tuple[str, int, float]]:
    """``(option, line, value)`` for each numeric literal that gives one of those options a default value: a
    parameter default, a (dataclass field) assignment, a keyword argument (``option(...)``, ``field(default=...)``,
    ``typer.Option``) or a dict entry, under the option's name, alone or in a tuple (``imgsz=(640, 640)``)."""

    def numbers(node: ast.AST | None) -> list[float]:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return [node.value]
        if isinstance(node, ast.Tuple):
            return [v for elt in node.elts for v in numbers(elt)]
        if isinstance(node, ast.Call):  # field(default=0.25), option(0.25, ...), CONF.field(default=0.001)
            return [v for arg in [*node.args[:1], *(k.value for k in node.keywords if k.arg == "default")]
                    for v in numbers(arg)]
        return []

    found: list[tuple[str, int, float]] = []

    def note(name: str | None, value: ast.AST | None, line: int) -> None:
        name = (name or "").lower()  # CONF = Option(0.25, ...) declares conf
        if name in DEFAULTS:
            found.extend((name, line, v) for v in numbers(value) if v in DEFAULTS[name])

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            for arg, default in zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True):
                note(arg.arg, default, default.lineno)
            for arg, kw_default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                note(arg.arg, kw_default, arg.lineno)
        elif isinstance(node, ast.AnnAssign):
            target = node.target
            note(target.id if isinstance(target, ast.Name) else getattr(target, "attr", None), node.value,
                 node.lineno)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                note(target.id if isinstance(target, ast.Name) else getattr(target, "attr", None), node.value,
                     node.lineno)
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                note(kw.arg, kw.value, kw.value.lineno)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    note(key.value, value, value.lineno)
    return found


def test_each_option_default_is_written_once() -> None:
    where: dict[tuple[str, float], list[str]] = {}
    for path in SOURCES:
        for name, line, value in _default_literals(path):
            where.setdefault((name, value), []).append(f"{path.relative_to(REPO)}:{line}")
    twice = {f"{name}={value}": places for (name, value), places in where.items() if len(places) > 1}
    assert not twice, f"a default written again instead of read from its declaration: {twice}"
    assert set(where) == {(n, v) for n, values in DEFAULTS.items() for v in values}, "a declaration moved"
    for name, values in DEFAULTS.items():  # the defaults of a run: where the lower layers can read them too
        assert where[(name, values[0])][0].startswith("toolkit/options.py:"), where[(name, values[0])]


def test_the_default_scan_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from dataclasses import dataclass, field\n\n"
                      "CONF = Option(0.25, 'the threshold')\n"
                      "def letterbox(img, imgsz=640, stride=32): ...\n"
                      "def run(*, conf: float = 0.25, threshold: float = 0.25): ...\n"
                      "@dataclass\nclass Opts:\n    iou: float = 0.45\n    max_det: int = field(default=1000)\n"
                      "    imgsz: tuple[int, int] = (640, 640)\n    tile: int = 640\n"
                      "SETTINGS = {'conf': 0.001, 'iou': 0.5}\n"
                      "detector(max_det=300, batch=640)\n")
    assert sorted((name, value) for name, _, value in _default_literals(sample)) == [
        ("conf", 0.001), ("conf", 0.25), ("conf", 0.25), ("imgsz", 640), ("imgsz", 640), ("imgsz", 640), ("iou", 0.45),
        ("max_det", 300), ("max_det", 1000)]


@pytest.mark.parametrize("name", list(backends.REGISTRY))
def test_every_backend_keeps_the_whole_contract(name: str, tmp_path: Path) -> None:
    m: Any = backends.REGISTRY[name]
    assert isinstance(m, Backend) and name == m.NAME and isinstance(m.DESCRIPTION, str) and m.DESCRIPTION
    assert m.EXTRA is None or isinstance(m.EXTRA, str)
    assert isinstance(m.SUFFIXES, tuple) and m.SUFFIXES and all(s.startswith(".") for s in m.SUFFIXES)
    assert isinstance(m.PACKAGES, tuple) and m.PACKAGES and isinstance(m.REQUIRES, tuple)
    assert m.DEFAULT_DEVICE in ("cpu", "cuda") and m.DEFAULT_DEVICE in m.PRECISIONS
    assert all(set(p) <= {"fp32", "fp16", "int8"} and p for p in m.PRECISIONS.values())
    assert isinstance(m.EXPORTS, bool) and set(m.EXPORT_PRECISIONS) <= {"fp32", "fp16", "int8"}
    assert bool(m.EXPORT_PRECISIONS) == m.EXPORTS
    assert isinstance(m.PLANNING, PlanningHints)
    for fn in ("is_available", "unavailable_reason", "claims", "sniff", "output_path", "default_name", "read_meta",
               "describe", "check_export", "load", "export"):
        assert callable(getattr(m, fn)), fn
    assert m.is_available() == (m.unavailable_reason() is None)
    assert m.sniff(b"") is False and m.sniff(b"\x00" * 64) is False
    assert m.claims(tmp_path / f"model{m.SUFFIXES[0]}")
    target = m.output_path(tmp_path / "mymodel")
    assert target.name.startswith("mymodel")
    if target.suffix:  # a file target: named so that this backend claims it
        assert m.claims(target) and backends.backend_for(target) == name
    assert (name in backends.exporters()) == m.EXPORTS


@pytest.mark.parametrize("name", [n for n, b in backends.REGISTRY.items() if b.EXPORTS])
def test_exporting_backends_refuse_what_they_cannot_write(name: str) -> None:
    m: Any = backends.REGISTRY[name]
    for precision in ("fp32", "fp16", "int8"):
        options = ExportOptions(half=precision == "fp16", int8=precision == "int8", calib_data="x")
        if precision in m.EXPORT_PRECISIONS:
            m.check_export(options)
        else:
            with pytest.raises(InputError):
                m.check_export(options)


class _Foo(Backend):
    """A backend that states its facts and implements only the three abstract methods."""

    NAME = "foo"
    EXTRA = "foo"
    DESCRIPTION = "a foo model"
    SUFFIXES = (".foo", ".bar")
    PACKAGES = ("foo-runtime",)
    REQUIRES = ("yolokit_test_no_such_module",)
    EXPORTS = True
    EXPORT_PRECISIONS = ("fp32",)

    def read_meta(self, path: Path) -> ModelMeta:
        return ModelMeta(names={0: "a"})

    def load(self, path: Path, options: LoadOptions) -> Any:
        raise NotImplementedError

    def export(self, source: Any, path: Path, options: ExportOptions) -> Path:
        return path


def test_a_backend_states_its_facts_and_inherits_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What adding a backend takes: a subclass with its facts and read_meta/load/export gets availability from
    REQUIRES, claims by suffix, export targets and the precision refusal from the base class, and the registry
    serves it with one entry."""
    foo = _Foo()
    assert foo.unavailable_reason() == ("the foo backend needs yolokit_test_no_such_module, which is not installed: "
                                        "pip install 'yolokit[foo]'")
    assert not foo.is_available()
    assert foo.claims(tmp_path / "m.FOO") and foo.claims(tmp_path / "m.bar") and not foo.claims(tmp_path / "m.onnx")
    (tmp_path / "folder.foo").mkdir()
    assert not foo.claims(tmp_path / "folder.foo")
    assert not foo.sniff(b"anything") and foo.describe(tmp_path / "m.foo") == {}
    assert foo.output_path(tmp_path / "m") == tmp_path / "m.foo" and foo.output_path(tmp_path / "m.bar").name == "m.bar"
    assert foo.default_name("yolov5n", "_fp16") == "yolov5n_fp16.foo"
    foo.check_export(ExportOptions())
    with pytest.raises(InputError, match=r"FP16 export is not supported for --to foo \(it writes FP32\)"):
        foo.check_export(ExportOptions(half=True))
    monkeypatch.setitem(backends.REGISTRY, "foo", foo)
    assert backends.backend_for(tmp_path / "m.foo") == "foo" and "foo" in backends.exporters()
    with pytest.raises(BackendUnavailableError, match=r"yolokit\[foo\]"):
        backends.require("foo")


def test_a_backend_must_implement_the_work() -> None:
    class Incomplete(Backend):
        NAME = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_the_contract_is_written_once_and_whole() -> None:
    """Every fact and method of the base class is described in its docstring (the one place the contract is
    written); docs/design.md links to it instead of repeating it."""
    doc = Backend.__doc__ or ""
    members = [n for n in vars(Backend) if n.isupper() or (not n.startswith("_") and callable(vars(Backend)[n]))]
    members += list(Backend.__annotations__)
    missing = sorted({n for n in members if f"``{n}``" not in doc and f":meth:`{n}`" not in doc})
    assert not missing, missing
    design = (REPO / "docs" / "design.md").read_text()
    assert "backends.base.Backend" in design and "| member |" not in design


def test_artifacts_are_recognised_by_their_first_bytes(tmp_path: Path) -> None:
    """Each backend's sniff claims its own files' first bytes and nobody else's."""
    from backends.tensorrt.engine_file import pack_engine

    heads = {"torch": b"PK\x03\x04" + bytes(60), "onnx": b"\x08\x08\x12\x07pytorch" + bytes(50),
             "openvino": b'<?xml version="1.0"?>\n<net name="main_graph" version="11">',
             "trt": pack_engine(ModelMeta(names={0: "a"}), b"x")[:64]}
    for owner, head in heads.items():
        claimed = [n for n, b in backends.REGISTRY.items() if b.sniff(head)]
        assert claimed == [owner], (owner, claimed)


def test_importing_the_errors_loads_neither_numpy_nor_opencv() -> None:
    code = ("import sys, toolkit.errors, toolkit; heavy = [m for m in ('numpy', 'cv2', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy; from toolkit import Detector; assert 'numpy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_lint_imports_finds_a_broken_layer(tmp_path: Path) -> None:
    """The layer contracts can fail: an import from a lower layer up into a higher one is reported."""
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed: pip install 'yolokit[dev]'")
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("import demo.low\n")
    (pkg / "low.py").write_text("import demo.high\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = demo\n\n[importlinter:contract:1]\n"
        "name = demo layers\ntype = layers\nlayers =\n    demo.high\n    demo.low\n")
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "BROKEN" in out.stdout
