"""The suite's own guard against hangs: pytest-timeout, with the default from pyproject.toml, fails a test that does
not end (and the run goes on) instead of stalling it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HANGS = '''
import time
import pytest


@pytest.mark.timeout(2)
def test_hangs():
    time.sleep(3600)


def test_after_it():
    pass
'''


def test_a_hung_test_fails_and_the_run_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("pytest_timeout", reason="pip install 'yolokit[dev]' (pytest-timeout)")
    (tmp_path / "test_hang.py").write_text(HANGS)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir",
                        str(tmp_path), "-p", "no:cacheprovider", str(tmp_path / "test_hang.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert time.monotonic() - t0 < 60, out
    default = re.search(r"^timeout = (\d+)$", (REPO / "pyproject.toml").read_text(), re.M)
    assert default, "no timeout in pyproject.toml's [tool.pytest.ini_options]"
    assert f"timeout: {float(default[1])}s" in out, out  # the default every test gets
    assert r.returncode == 1 and "1 failed, 1 passed" in out and "Timeout" in out, out
