"""The distribution: every subpackage lands in the wheel under ``branchpoint``, nothing
generic lands at the top of site-packages, and both install modes work."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_INSTALLED = {"tests", "bench", "scripts", "build", "dist", ".venv", ".ci"}


def source_modules() -> set[str]:
    """Every module the package-dir mapping should ship, as wheel paths."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    out: set[str] = set()
    for package, folder in mapping.items():
        for path in (REPO / folder).glob("*.py"):
            out.add(f"{package.replace('.', '/')}/{path.name}")
    return out


def test_every_folder_with_python_code_is_a_mapped_subpackage():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapped = set(config["tool"]["setuptools"]["package-dir"].values())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == set(config["tool"]["setuptools"]["package-dir"])
    for init in REPO.glob("**/__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts[0] in NOT_INSTALLED or rel.parts[0].startswith("."):
            continue
        assert str(rel) in mapped, f"{rel} has code but is not mapped in pyproject.toml"


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_nothing_at_top_level(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                            str(tmp_path), str(REPO)], capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    # the build backend's own warnings (setuptools warned about `license = { text = ... }`)
    assert "DeprecationWarning" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("branchpoint-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = source_modules() - names
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"branchpoint"}
    assert "branchpoint/__init__.py" not in names  # a namespace, shared with plugins
    assert "branchpoint/store/schema.sql" in names or not (REPO / "store/schema.sql").exists()
    static = {f"branchpoint/viewer/static/{p.name}" for p in (REPO / "viewer/static").iterdir()}
    assert static <= names, f"viewer files missing from the wheel: {sorted(static - names)}"


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_pip_install_in_a_fresh_venv_puts_only_branchpoint_on_the_path(tmp_path, editable):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    target = ["-e", str(REPO)] if editable else [str(REPO)]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *target], check=True)
    site = Path(subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    for generic in ("store", "sdk", "sampler", "mcp_server", "viewer", "cli", "train"):
        assert not (site / generic).exists(), f"{generic}/ landed in site-packages"
    # Found without running it (installed with --no-deps, its imports would fail): the
    # namespace maps every subpackage, in both install modes.
    code = ("import importlib.util as u; print(u.find_spec('branchpoint.store.errors').origin);"
            "print(u.find_spec('branchpoint.viewer').origin)")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.split()
    assert out[0].endswith("errors.py") and out[1].endswith("__init__.py")

