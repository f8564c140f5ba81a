"""A regular (non-editable) install must carry every file the package needs: the wheel is built, installed
into a fresh virtual environment outside the source tree, and `airtrace demo` runs from there."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoders", "monitor")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what a source distribution holds, so no stale build/ folder can fill the gaps."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(out)],
                   check=True, cwd=out)
    (built,) = out.glob("airtrace-*.whl")
    return built


def source_files() -> set[str]:
    """Every file of the packages in the source tree, as a wheel names it; caches and bytecode aside."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_holds_every_package_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.split("/")[0] in PACKAGES}
    missing = sorted(source_files() - packed)
    assert not missing, f"the wheel leaves out {missing}: list them in pyproject.toml's package data"


def test_installed_wheel_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    """A fresh environment with only the wheel of airtrace; its dependencies are borrowed from the test's
    environment through a .pth line (a path entry, so that environment's editable airtrace is not seen)."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=tmp_path)

    where = subprocess.run([python, "-c", "import monitor; print(monitor.__file__)"], check=True, capture_output=True,
                           text=True, cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(site), f"airtrace was imported from {where.strip()}, not the installed wheel"

    demo = subprocess.run([env_dir / "bin" / "airtrace", "demo", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    totals = re.search(r"precision (\S+)\s+recall (\S+)", demo.stdout)
    assert totals and float(totals[1]) >= 0.8 and float(totals[2]) >= 0.8, demo.stdout[-3000:]
