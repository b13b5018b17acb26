"""The package as `pip install` users get it: the wheel built from this checkout, installed without
-e into a fresh folder and run from a folder that is not the checkout. The recipes come with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(folder the wheel is installed into, a clean working folder, the environment to run in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools writes build/ beside them, and a stale build/
    # would put files into the wheel that the checkout no longer has.
    source = tmp / "source"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "runs", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [*wheel_cmd, "-w", str(tmp / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=source,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("distill-*.whl")
    target = tmp / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp / "elsewhere"
    work.mkdir()
    # The installed copy first on the path; the dependencies come from this environment.
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return target, work, env


def distill(installed, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    target, work, env = installed
    return subprocess.run(
        [sys.executable, str(target / "bin" / "distill"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
        env=env,
    )


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    target, work, env = installed
    where = subprocess.run(
        [sys.executable, "-c", "import distill; print(distill.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout
    assert sorted(p.name for p in (target / "distill" / "recipes").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "recipes").glob("*.yaml")
    )
    version = distill(installed, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "distill 0.1.0"


def test_recipes_validate_and_copy_from_outside_the_checkout(installed):
    _, work, _ = installed
    listed = distill(installed, "recipes")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert "quickstart" in names and "num2words_en_fr" in names
    assert "Tweet sentiment" in listed.stdout or "tweet" in listed.stdout.lower()

    checked = distill(installed, "validate", "quickstart")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert checked.stdout.startswith("recipe OK:")
    assert not (work / "runs").exists()  # validate writes nothing

    copied = distill(installed, "copy", "quickstart")
    assert copied.returncode == 0, copied.stderr
    assert (work / "quickstart.yaml").read_text() == (ROOT / "recipes" / "quickstart.yaml").read_text()
    again = distill(installed, "copy", "quickstart")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr

    keys = distill(installed, "keys", "--section", "train")
    assert keys.returncode == 0
    steps = next(line for line in keys.stdout.splitlines() if line.startswith("train.steps "))
    assert steps.split()[1:3] == ["int", "500"] and "# optimizer steps" in steps
