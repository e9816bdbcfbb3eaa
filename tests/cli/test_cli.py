import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, env_extra=None, check=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "annotator.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"annotator {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path):
    return {"ANNOTATOR_DATA_DIR": str(tmp_path / "data")}


def test_help_lists_every_design_command():
    out = run_cli("--help").stdout
    for cmd in ("import", "embed", "retrain", "predict", "search", "select", "errors", "agreement", "simulate",
                "serve", "ls", "db", "models", "duplicates", "demo"):
        assert re.search(rf"│ {cmd}\b", out), cmd


def test_import_json_output_and_exit_codes(tmp_path, env):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "1", "text": "hello", "label": "a"}\n{"id": "2"}\n')
    proc = run_cli("import", str(good), "--project", "p", "--json", env_extra=env, check=True)
    assert json.loads(proc.stdout) == {
        "imported": 1, "skipped": [{"line": 2, "error": "no modality: the row has no text, image or audio"}]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "3"}\n')
    proc = run_cli("import", str(bad), "--project", "p", "--json", env_extra=env)
    assert proc.returncode == 1 and json.loads(proc.stdout)["imported"] == 0


def test_library_errors_become_one_line(tmp_path, env):
    proc = run_cli("import", str(tmp_path / "missing.jsonl"), "--project", "p", env_extra=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: manifest {tmp_path / 'missing.jsonl'} does not exist")
    assert "Traceback" not in proc.stderr


def test_database_behind_head_exits_3_and_names_the_fix(tmp_path, env):
    import sqlite3

    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data" / "annotator.db").execute("CREATE TABLE projects (id INTEGER)").connection.commit()
    proc = run_cli("import", str(tmp_path / "x.jsonl"), "--project", "p", env_extra=env)
    assert proc.returncode == 3 and "run `annotator db upgrade`" in proc.stderr


def test_unknown_project_exits_4(env):
    proc = run_cli("select", "--project", "nope", env_extra=env)
    assert proc.returncode == 4 and "no project named 'nope'" in proc.stderr


def test_cli_and_backend_hold_no_ml_imports():
    pattern = re.compile(r"^\s*(import|from)\s+(torch|numpy|faiss|sklearn|transformers|sentence_transformers)\b", re.M)
    offenders = [str(p) for d in ("cli", "backends") for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("args", [("select",), ("retrain", "--project", "p", "--no-such-option"),
                                  ("search", "--project", "p", "-k", "many"), ("no-such-command",),
                                  ("embed", "--project", "p", "--engine", "spark"),
                                  ("embed", "--project", "p", "--parquet-dir", "/tmp/x"),
                                  ("select", "--project", "p", "--actors", "2")])
def test_usage_errors_print_usage_and_exit_2_without_a_traceback(args, env):
    proc = run_cli(*args, env_extra=env)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: " in proc.stderr and "Traceback" not in proc.stderr


def test_version_through_the_installed_console_script(env):
    from importlib.metadata import version

    script = Path(sys.executable).parent / "annotator"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0 and proc.stdout.strip() == f"annotator {version('multimodal-annotator')}"
    missing = subprocess.run([str(script), "select"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
    assert missing.returncode == 2 and "Missing option '--project'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_simulate_prints_its_results_before_the_report_can_fail(tmp_path, env):
    words = {"animal": ["dog", "cat", "owl", "fox"], "food": ["pizza", "apple", "soup", "bread"]}
    rows = [{"id": f"{c}-{i}", "text": f"a photo of a {w} {i}", "label": c}
            for c, ws in words.items() for i, w in enumerate(ws * 4)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    proc = run_cli("simulate", str(tmp_path / "m.jsonl"), "--strategy", "margin", "--budget", "8", "--step", "4",
                   "--seeds", "1", "--head", "logreg", "--json", "--report", str(tmp_path / "no" / "such" / "dir.png"),
                   env_extra={**env, "ANNOTATOR_SELF_TRAINING": "off"})
    assert proc.returncode != 0  # the plot could not be written...
    result = json.loads(proc.stdout)  # ...but the simulation's results were printed first
    assert set(result["curves"]) == {"margin", "random"} and result["items"] == 32
    ok = run_cli("simulate", str(tmp_path / "m.jsonl"), "--strategy", "margin", "--budget", "8", "--step", "4",
                 "--seeds", "1", "--head", "logreg", "--report", str(tmp_path / "curve.png"),
                 env_extra={**env, "ANNOTATOR_SELF_TRAINING": "off"}, check=True)
    assert (tmp_path / "curve.png").stat().st_size > 1000 and "report written to" in ok.stderr
