"""Ctrl-C and SIGTERM in the middle of a retrain's model search, sent to a real `annotator` process:
it stops within seconds with one line and no traceback, leaves no worker process behind, marks the
run interrupted (its labels stay pending) and frees the training lock for the next run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli import ROOT, run_cli
from tests.conftest import stop_processes

WORDS = {"sport": "match goal team score league coach striker", "money": "bank rate loan price market stock fund"}


def _session_processes(sid: int) -> list[int]:
    """Every live process of session ``sid`` (the command and anything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _worker_started(sid: int) -> bool:
    for pid in _session_processes(sid):
        try:
            if b"LokyProcess" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def encoded_once(tmp_path_factory) -> Path:
    """A labelled text project's data dir, encoded once: 48 short texts of two topics."""
    folder = tmp_path_factory.mktemp("stop")
    rng = __import__("random").Random(0)
    rows = [{"id": f"{label}-{i}", "label": label,
             "text": " ".join(rng.sample(words.split(), 4))}
            for label, words in WORDS.items() for i in range(24)]
    manifest = folder / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"ANNOTATOR_DATA_DIR": str(folder / "data")}
    run_cli("import", str(manifest), "--project", "p", env_extra=env, check=True)
    run_cli("embed", "--project", "p", "--json", env_extra=env, check=True)
    return folder / "data"


@pytest.fixture
def embedded_project(encoded_once, tmp_path) -> dict[str, str]:
    """A copy of that data dir, never trained."""
    shutil.copytree(encoded_once, tmp_path / "data")
    return {"ANNOTATOR_DATA_DIR": str(tmp_path / "data")}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_retrain_stops_cleanly_and_is_redone(embedded_project, signum):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}, **embedded_project}
    # a new session, as a terminal's foreground job: Ctrl-C reaches the whole process group
    proc = subprocess.Popen([sys.executable, "-m", "annotator.cli.main", "retrain", "--project", "p"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not _worker_started(proc.pid):  # the model search's fold workers are running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(signum)  # what `kill` or a service manager does
        out, err = proc.communicate(timeout=60)  # ends only once no process holds its pipes
        stopped_in = time.monotonic() - sent
    finally:
        stop_processes(_session_processes(proc.pid), grace_s=2)
    assert proc.returncode == 128 + signum, err
    assert stopped_in < 10, stopped_in
    assert "Traceback" not in err and "Error" not in err, err
    lines = [line for line in err.splitlines() if "annotator: stopped" in line]
    assert lines == [f"annotator: stopped by {signal.Signals(signum).name}; what was finished is kept, "
                     "run the command again for the rest"]
    time.sleep(1)
    assert _session_processes(proc.pid) == []  # no fold worker left running

    versions = run_cli("models", "list", "--project", "p", "--json", env_extra=embedded_project, check=True)
    assert json.loads(versions.stdout) == []  # nothing half-trained was saved
    from annotator.config import Settings
    from annotator.store import open_store, repo
    from annotator.store.models import TrainingRun

    store = open_store(Settings(data_dir=Path(embedded_project["ANNOTATOR_DATA_DIR"])))
    try:
        with store.session() as s:
            statuses = [r.status for r in s.query(TrainingRun).order_by(TrainingRun.id)]
            pending, _ = repo.pending_labels(s, project=repo.get_project(s, name="p"))
    finally:
        store.close()
    assert statuses == ["interrupted"] and pending == 48  # the labels wait for the next training

    again = run_cli("retrain", "--project", "p", "--head", "logreg", "--json", env_extra=embedded_project)
    assert again.returncode == 0, again.stderr  # the training lock is free
    assert json.loads(again.stdout)["model_version"] and json.loads(again.stdout)["n_labels"] == 48


def _start(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}, **env_extra}
    return subprocess.Popen([sys.executable, "-m", "annotator.cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_a_retrain_killed_holding_the_training_lock_leaves_the_active_version_serving(embedded_project):
    """kill -9 of the process that holds the project's training lock, in the middle of its model
    search: its fold workers leave with it, the lock is free at once, the active version still
    serves, and the next training marks the dead run interrupted."""
    first = run_cli("retrain", "--project", "p", "--head", "logreg", "--json", env_extra=embedded_project, check=True)
    assert json.loads(first.stdout)["model_version"] == "v1"
    before = json.loads(run_cli("predict", "--project", "p", "--json", env_extra=embedded_project, check=True).stdout)
    proc = _start(["retrain", "--project", "p", "--force"], embedded_project)
    try:
        deadline = time.monotonic() + 240
        while not _worker_started(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _worker_started(proc.pid):  # its fold workers leave with it, not five idle minutes later
            assert time.monotonic() < deadline, "fold workers outlived the killed process"
            time.sleep(0.2)
    finally:
        stop_processes(_session_processes(proc.pid), grace_s=2)
    after = json.loads(run_cli("predict", "--project", "p", "--json", env_extra=embedded_project, check=True).stdout)
    assert after == before and {row["model_version"] for row in after} == {"v1"}
    again = run_cli("retrain", "--project", "p", "--head", "logreg", "--force", "--json", env_extra=embedded_project)
    assert again.returncode == 0, again.stderr  # not "being trained by another process"
    assert json.loads(again.stdout)["model_version"] == "v2"
    from annotator.config import Settings
    from annotator.store import open_store
    from annotator.store.models import TrainingRun

    store = open_store(Settings(data_dir=Path(embedded_project["ANNOTATOR_DATA_DIR"])))
    try:
        with store.session() as s:
            runs = [(r.status, r.error) for r in s.query(TrainingRun).order_by(TrainingRun.id)]
    finally:
        store.close()
    assert [status for status, _ in runs] == ["succeeded", "interrupted", "succeeded"]
    assert runs[1][1] == "the process ended during training"


@pytest.mark.slow
def test_an_embed_killed_halfway_is_finished_by_the_next_run_without_redoing_a_vector(tmp_path):
    """kill -9 of `annotator embed` once some chunks are cached: the cache keeps every row written
    before the kill, and the next run encodes exactly the rest."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(320):  # five chunks of 64
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": str(tmp_path / f"{i}.png")})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"ANNOTATOR_DATA_DIR": str(tmp_path / "data")}
    run_cli("import", str(tmp_path / "m.jsonl"), "--project", "p", env_extra=env, check=True)

    def image_rows() -> int:
        keys = list((tmp_path / "data").rglob("keys.txt"))
        return sum(len(k.read_text().split()) for k in keys if "image" in k.parent.name)

    proc = _start(["embed", "--project", "p"], env)
    try:
        deadline = time.monotonic() + 240
        while image_rows() < 64:  # the first chunk is in the cache
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        stop_processes(_session_processes(proc.pid), grace_s=2)
    kept = image_rows()
    assert 64 <= kept < 320, kept  # killed halfway
    again = run_cli("embed", "--project", "p", "--json", env_extra=env, check=True)
    report = json.loads(again.stdout)
    assert report["cached"]["image"] == kept and report["encoded"]["image"] == 320 - kept
    assert image_rows() == 320 and report["failed"] == []
