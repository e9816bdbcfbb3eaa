"""Pre-label items with the active model version, re-scoring from cached embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.errors import ConfigError, NotFoundError
from annotator.fusion.classifier import FusionClassifier
from annotator.media import MediaFetcher
from annotator.runtime import Encoders
from annotator.store import Store, repo
from annotator.store.models import Item


@dataclass
class PredictResult:
    predictions: list[dict[str, Any]]
    failed: list[dict[str, str]] = field(default_factory=list)
    model_version: str | None = None


def score_items(clf: FusionClassifier, features: dict[str, np.ndarray]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores (n,), probabilities (n, k), modality shares (n, M)) for feature matrices.

    The score is the calibrated probability of the predicted label (multi-label: the mean
    confidence over classes), so low means "worth a human look".
    """
    X = {m: a for m, a in features.items() if m in clf.modalities_}
    probs, shares = clf.predict_proba_and_contributions(X)
    if clf.multilabel:
        labels = [[c for c, p in zip(clf.classes_, row) if p >= 0.5] for row in probs]
        scores = np.maximum(probs, 1 - probs).mean(axis=1)
    else:
        labels = [clf.classes_[i] for i in probs.argmax(axis=1)]
        scores = probs.max(axis=1)
    return labels, scores, probs, shares


def predict(store: Store, settings: Settings, *, project_name: str, item_ids: Sequence[str] | None = None,
            encoders: Encoders | None = None, save: bool = True, progress: bool = True) -> PredictResult:
    """Predict every item (or ``item_ids``) of a project with its active model version.

    Items whose media cannot be read are listed in ``failed`` with the reason; the others are
    predicted. Predictions are stored with the model version unless ``save`` is False.
    """
    from annotator.training import load_model

    encoders = encoders or Encoders(settings)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        active = repo.active_model_version(s, project=project)
        if active is None:
            raise NotFoundError(f"project {project_name!r} has no active model yet; run `annotator retrain --project {project_name}`")
        clf, trained_on = load_model(settings, active)
        for modality, name in trained_on.items():
            if encoders.get(modality).name != name:
                raise ConfigError(
                    f"model {active.version} was trained on {modality} encoder {name!r} but the settings give "
                    f"{encoders.get(modality).name!r}; retrain, or set ANNOTATOR_{modality.upper()}_MODEL back")
        items: list[Item] = repo.list_items(s, project=project, external_ids=item_ids)
        with MediaFetcher(settings) as fetcher:
            report = embed_items(items, encoders=encoders, fetcher=fetcher, modalities=clf.modalities_,
                                 progress=progress)
        failed = [{"id": f["id"], "error": f["error"]} for f in report.failed]
        features = load_features(items, encoders=encoders, modalities=clf.modalities_)
        usable = usable_rows(features, len(items))
        failed_ids = {f["id"] for f in failed}
        failed += [{"id": it.external_id, "error": f"no {'/'.join(clf.modalities_)} input the model can use"}
                   for it, ok in zip(items, usable) if not ok and it.external_id not in failed_ids]
        kept = [it for it, ok in zip(items, usable) if ok]
        results: list[dict[str, Any]] = []
        if kept:
            labels, scores, _, shares = score_items(clf, {m: a[usable] for m, a in features.items()})
            records = []
            for it, label, score, share in zip(kept, labels, scores, shares):
                weights = {m: round(float(w), 4) for m, w in zip(clf.modalities_, share)}
                results.append({"id": it.external_id, "label": label, "score": float(score),
                                "model_version": active.version, "modality_weights": weights})
                records.append(repo.PredictionRecord(it.id, label if isinstance(label, list) else [label],
                                                     float(score), active.version, weights))
            if save:
                repo.add_predictions(s, project=project, records=records)
    return PredictResult(results, failed, active.version)
