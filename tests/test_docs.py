"""The documentation holds together: every relative link in README.md and docs/**/*.md points to a file that exists
(and to a heading that exists, when it names one), and the README stays a front page (at most 250 lines, the two
commands in its first 40, the exit codes the CLI documents)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
COMMANDS_WITHIN = 40

# Guide pages that other branches of issue 23/25 are writing; the README links them already. A link to one of these
# may point nowhere until that branch is merged; once the page exists, its links and anchors are checked like any.
PENDING: set[str] = set()  # pages linked before they are merged

_FENCE = re.compile(r"^(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in the file's prose (not in code blocks or code spans)."""
    out = []
    for n, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            out.append((n, target))
    return out


def broken_links(path: Path, root: Path = ROOT, pending: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One line per relative link in ``path`` that points to no file, or to no heading of an existing file."""
    problems = []
    for n, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{n}: {target}"
        try:
            rel = dest.relative_to(root).as_posix()
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            if rel not in pending:
                problems.append(f"{where}: {rel} does not exist")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: {rel} has no heading #{anchor}")
    return problems


def test_every_relative_link_points_to_a_file_and_heading_that_exist() -> None:
    problems = [p for f in doc_files() for p in broken_links(f, pending=PENDING)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_finds_a_missing_file_a_missing_heading_and_ignores_code(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## NMS inside the model: `--nms`\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#nms-inside-the-model---nms) [ok](#top) [ext](https://example.org/x)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [pending](docs/c.md)\n"
        "`[in a span](docs/nothing.md)`\n```\n[in a block](docs/nothing.md)\n```\n<a name=\"top\"></a>\n",
        encoding="utf-8")
    problems = broken_links(page, root=tmp_path, pending={"docs/c.md"})
    assert len(problems) == 2, problems
    assert "docs/b.md does not exist" in problems[0]
    assert "has no heading #nope" in problems[1]


def test_slugs_follow_github() -> None:
    assert slug("NMS inside the model: `--nms`") == "nms-inside-the-model---nms"
    assert slug("Exact decoding vs `--fast-decode`") == "exact-decoding-vs---fast-decode"
    assert slug("`yolokit val` against YOLOv5's `val.py` (issue 28)") == "yolokit-val-against-yolov5s-valpy-issue-28"
    assert slug("Scale out: `--engine ray`") == "scale-out---engine-ray"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    top = "\n".join(lines[:COMMANDS_WITHIN])
    for command in ("bash scripts/run.sh", "bash scripts/test.sh"):
        assert command in top, f"README.md: {command!r} is not in its first {COMMANDS_WITHIN} lines"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8"), \
        "the README says .ci/run calls scripts/test.sh"


def _documented_exit_codes() -> set[int]:
    """The exit codes the CLI's docstring lists (``Exit codes: 0 ...; 1 ...``), wherever the CLI module lives."""
    sources = [ROOT / "toolkit" / "cli.py", *sorted((ROOT / "toolkit" / "cli").glob("*.py"))]
    for src in sources:
        if src.is_file():
            text = src.read_text(encoding="utf-8")
            m = re.search(r"Exit codes:(.*?)(?:\n\s*\n|\"\"\")", text, re.S)
            if m:
                return {int(c) for c in re.findall(r"(?:^|;)\s*(\d+)\s", m.group(1))}
    pytest.fail("no 'Exit codes:' docstring in toolkit/cli")


def test_readme_lists_the_exit_codes_the_cli_documents() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Exit codes\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Exit codes' section"
    listed = {int(c) for c in re.findall(r"^\|\s*(\d+)\s*\|", section.group(1), re.M)}
    codes = _documented_exit_codes()
    assert {0, 1, 2, 130} <= codes, codes
    assert listed == codes, f"README exit codes {sorted(listed)} differ from the CLI's {sorted(codes)}"
