"""The newcomer's first run on the bundled sample project (48 emoji; half labelled).

Imports the sample items, encodes them with the offline default models, trains a fusion model on
the labelled half, and pre-labels the other half. A second run reuses the cache and the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotator.config import Settings
from annotator.embedding import embed_project
from annotator.importer import import_manifest
from annotator.prediction import predict
from annotator.runtime import Encoders
from annotator.store import Store, repo
from annotator.training import retrain

SAMPLE_DIR = Path(__file__).parent / "sample_data"
DEMO_PROJECT = "demo"


def run_offline_demo(store: Store, settings: Settings, *, project_name: str = DEMO_PROJECT,
                     progress: bool = True) -> dict[str, Any]:
    """Import → embed → retrain → predict on the sample data; returns a summary."""
    encoders = Encoders(settings)
    with store.session() as s:
        imported = import_manifest(s, project_name=project_name, manifest=SAMPLE_DIR / "items.jsonl")
    embedded = embed_project(store, settings, project_name=project_name, encoders=encoders, progress=progress)
    trained = retrain(store, settings, project_name=project_name, head="attention", encoders=encoders,
                      progress=progress, trigger="demo")
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        labelled = repo.current_labels(s, project=project)
        unlabelled = [it.external_id for it in repo.list_items(s, project=project) if it.id not in labelled]
        captions = {it.external_id: it.data.get("text", "") for it in repo.list_items(s, project=project)}
    predicted = predict(store, settings, project_name=project_name, item_ids=unlabelled, encoders=encoders,
                        progress=progress)
    return {
        "project": project_name,
        "imported": imported.imported,
        "embedded": embedded.to_dict(),
        "model_version": trained.model_version,
        "promoted": trained.promoted,
        "metrics": {k: trained.metrics[k] for k in ("accuracy", "macro_f1", "ece")},
        "predictions": [{**p, "text": captions[p["id"]]} for p in predicted.predictions],
    }
