"""The built wheel, installed into a clean virtualenv, as a user gets it from PyPI: one top-level
import name (`annotator`), the `annotator` command, and the migrations and sample data inside."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.cli.test_cli import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_claims_one_top_level_name(wheel):
    assert wheel.name.startswith("multimodal_annotator-")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"annotator", dist_info}
    assert "annotator = annotator.cli.main:main" in entry_points
    for needed in ("annotator/cli/main.py", "annotator/backends/app.py", "annotator/migrations/env.py",
                   "annotator/migrations/script.py.mako", "annotator/migrations/versions/0004_controls.py",
                   "annotator/sample_data/items.jsonl"):
        assert needed in names


def test_the_installed_wheel_runs_from_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True)
    # the dependencies come from the test environment's site-packages (not its editable annotator,
    # which a .pth file there would add): the clean venv's annotator is the wheel's
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], ANNOTATOR_DATA_DIR=str(tmp_path / "data"))

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    where = run(str(venv / "bin" / "python"), "-c", "import annotator, annotator.cli.main; print(annotator.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stderr
    for generic in ("cli", "backends", "migrations"):
        assert run(str(venv / "bin" / "python"), "-c", f"import {generic}").returncode == 1
    script = str(venv / "bin" / "annotator")
    version = run(script, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "annotator 0.1.0"
    assert run(script, "--help").returncode == 0
    usage = run(script, "select")
    assert usage.returncode == 2 and "Missing option '--project'" in usage.stderr and "Traceback" not in usage.stderr
    upgraded = run(script, "db", "upgrade")  # the migrations travel inside the package
    assert upgraded.returncode == 0 and "database at revision 0004" in upgraded.stderr, upgraded.stderr
