"""``make`` on a machine without the Python it needs says so, and how to point it at one,
before it creates anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def make(tmp_path: Path, py: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(REPO), "install", f"PY={py}",
                           f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True,
                          check=False, timeout=60)


def test_make_without_python_3_11_says_how_to_point_it_at_one(tmp_path):
    res = make(tmp_path, "/no/such/python3.11")
    assert res.returncode != 0
    assert "error: no /no/such/python3.11 found on PATH" in res.stderr
    assert "make PY=/path/to/python3.11" in res.stderr
    assert not (tmp_path / "venv").exists()


def test_make_with_another_python_version_names_the_version(tmp_path):
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12\n")
    fake.chmod(0o755)
    res = make(tmp_path, str(fake))
    assert res.returncode != 0
    assert f"error: {fake} is Python 3.12, and branchpoint needs 3.11" in res.stderr
    assert not (tmp_path / "venv").exists()
