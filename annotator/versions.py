"""Model version folders: where a project's versions live, written whole, read back by version.

A version folder holds the classifier (`fusion.persistence`) and ``meta.json`` (the encoders it
was trained on, its metrics). It is written once, atomically, and never changed afterwards; with
``ANNOTATOR_ARTIFACTS_URL`` set it is also published there, and a worker on another host downloads
it the first time it serves that version. `prune_versions` removes all but the newest folders
(every automatic retrain writes one, and nothing else ever removed them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from annotator.artifacts import SharedArtifacts, atomic_directory, remove_directory
from annotator.config import Settings
from annotator.encoders.base import resolve_device
from annotator.fusion.persistence import load_classifier
from annotator.store.models import ModelVersion, Project


def version_dir(settings: Settings, project_name: str, version: str) -> Path:
    """A version's folder; a control's name in the version (``mood.v2``) is made safe for a path."""
    return settings.project_dir(project_name) / "models" / re.sub(r"[^\w.-]", "_", version)


def save_version(settings: Settings, path: Path, clf, encoder_names: dict[str, str], metrics: dict[str, Any],
                 n_trained_on: int) -> str:
    """Write a version folder (classifier + meta.json) in one atomic step, publish it to the shared
    artifacts, and return its path relative to the data dir (what the database records)."""
    with atomic_directory(path) as tmp:
        clf.save(tmp / "classifier")
        (tmp / "meta.json").write_text(json.dumps({
            "encoders": {m: encoder_names[m] for m in clf.modalities_}, "metrics": metrics,
            "trained_on": n_trained_on}, indent=2))
    shared = SharedArtifacts.for_settings(settings)
    if shared is not None:
        shared.publish(path)
    return path.relative_to(settings.data_dir).as_posix()


def load_version(settings: Settings, mv: ModelVersion) -> tuple[Any, dict[str, str]]:
    """The classifier of a model version (a fusion head or the linear model) and the encoder names
    it was trained on; fetched from the shared artifacts when this host does not have it yet."""
    return load_artifact(settings, mv.artifact_path)


def load_artifact(settings: Settings, artifact_path: str) -> tuple[Any, dict[str, str]]:
    """`load_version` by the version's ``artifact_path`` alone (a cluster worker has no database row)."""
    path = Path(artifact_path)
    path = path if path.is_absolute() else settings.data_dir / path  # absolute: written before 0.2
    shared = SharedArtifacts.for_settings(settings)
    if not path.exists() and shared is not None:
        shared.refresh(path)
    meta = json.loads((path / "meta.json").read_text())
    return load_classifier(path / "classifier", device=resolve_device(settings.device)), meta["encoders"]


def prune_versions(settings: Settings, session, project: Project) -> list[str]:
    """Remove the folders of all but the active version and the ``settings.keep_versions`` newest
    others, per control; their rows stay, marked ``pruned`` (their metrics remain in the history).
    Returns the versions pruned."""
    from annotator.store import repo

    kept = [mv for mv in repo.list_model_versions(session, project=project) if mv.status != "pruned"]
    pruned = []
    for control in {mv.control for mv in kept}:
        others = [mv for mv in kept if mv.status != "active" and mv.control == control]
        pruned += others[:max(0, len(others) - settings.keep_versions)]
    shared = SharedArtifacts.for_settings(settings)
    for mv in pruned:
        path = Path(mv.artifact_path)
        path = path if path.is_absolute() else settings.data_dir / path
        remove_directory(path)
        if shared is not None:
            shared.remove(path)
        mv.status = "pruned"
    return [mv.version for mv in pruned]
