"""Set-up without surprises: what the Makefile does on a fresh machine, and what it
leaves alone."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"),
                           *args], cwd=folder, capture_output=True, text=True, timeout=60)


def recipe(target: str) -> str:
    """The recipe lines of one Makefile target."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n|\s*\n)*)", text, re.M)
    assert match, target
    return match.group(1)


@needs_make
def test_a_python_that_cannot_make_the_environment_is_one_clear_line(tmp_path):
    minimum = re.search(r'^requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml")
                        .read_text(), re.M).group(1)
    assert f"MIN_PYTHON := {minimum}\n" in (ROOT / "Makefile").read_text()
    assert make(tmp_path, "check-python", f"PYTHON={sys.executable}").returncode == 0
    too_old = make(tmp_path, "check-python", f"PYTHON={sys.executable}", "MIN_PYTHON=3.99")
    missing = make(tmp_path, "check-python", "PYTHON=no-such-python3")
    fake = tmp_path / "fake" / "ensurepip"  # Debian's python3 without python3-venv
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('python3-venv is not installed')\n")
    wrapper = tmp_path / "python-without-venv"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake.parent} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    no_venv = make(tmp_path, "check-python", f"PYTHON={wrapper}")
    for run, words in ((too_old, "needs Python >= 3.99"), (missing, "not found"),
                       (no_venv, "venv module is missing")):
        assert run.returncode != 0 and run.stdout.count("\n") == 1 and words in run.stdout, (
            run.stdout, run.stderr)
    assert not (tmp_path / ".venv").exists()


def test_installing_runs_no_apt_get_and_tcmalloc_has_its_own_target():
    install = recipe("$(STAMP)")
    assert "apt-get" not in install and "sudo" not in install
    assert "apt-get install -y libtcmalloc-minimal4" in recipe("tcmalloc")


@needs_make
def test_clean_removes_the_environment_and_caches_not_the_runs(tmp_path):
    made = [".venv/bin", ".pytest_cache/v", ".ruff_cache/0", "src/pkg/__pycache__",
            "runs/demo/checkpoints", "runs/demo/__pycache__"]
    for folder in made:
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "metrics.csv").write_text("epoch\n1\n")
    assert make(tmp_path, "clean").returncode == 0
    left = {folder for folder in made if (tmp_path / folder).exists()}
    assert left == {"runs/demo/checkpoints", "runs/demo/__pycache__"}
    assert (tmp_path / "runs" / "demo" / "metrics.csv").is_file()
    assert (tmp_path / "src" / "pkg").is_dir()


def test_test_tools_are_pinned_to_exact_versions():
    pins = dict(re.findall(r"^([A-Za-z0-9_-]+)==(\S+)$",
                           (ROOT / "constraints.txt").read_text(), re.M))
    assert {"pytest", "ruff", "torch"} <= set(pins)
    assert "-c constraints.txt -e \".[test" in recipe("$(STAMP)")


def test_license_is_the_one_pyproject_names():
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "unetkit developers" in text.splitlines()[2]


def test_install_hints_work_from_a_clone():
    # `pip install 'unetkit[extra]'` asks the package index for a unetkit it does not have;
    # from the clone the extra is `pip install -e '.[extra]'`.
    stale = [str(path.relative_to(ROOT)) for folder in ("src", "docs", "benchmarks")
             for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".md")
             and re.search(r"pip install '?unetkit\[", path.read_text())]
    readme = (ROOT / "README.md").read_text()
    assert not stale and not re.search(r"pip install '?unetkit\[", readme), stale
