"""Pre-label items from cached vectors: with the project's active model, or zero-shot before any
training. The backend's /predict, publishing to Label Studio and ``annotator predict`` all end here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator.batch import BatchEngine, LocalEngine
from annotator.config import Settings
from annotator.embedding import load_features, usable_rows
from annotator.encoders.registry import Encoders
from annotator.errors import NotFoundError
from annotator.runtime import ActiveModel, Runtime
from annotator.scoring import Scored, score_cached
from annotator.store import Store, repo
from annotator.store.models import Item

SAVE_CHUNK = 5000  # predictions written per statement batch
ZERO_SHOT = "zero-shot"
UNTRAINED = "untrained"
# Zero-shot compares the item's text with each class name in this prompt. The softmax is sharp
# (sentence-embedding cosines differ by a few hundredths) and the score is capped: a guess to start
# from, never a confident pre-label that Label Studio would sort past the uncertain ones.
ZERO_SHOT_PROMPT = "a {}"
ZERO_SHOT_TEMPERATURE = 0.05
ZERO_SHOT_MAX_SCORE = 0.5


@dataclass
class Prediction:
    labels: list[str]
    score: float
    model_version: str
    modality_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictResult:
    predictions: list[dict[str, Any]]
    failed: list[dict[str, str]] = field(default_factory=list)
    model_version: str | None = None


def serving_version(model: ActiveModel | None, classes: Sequence[str] | None) -> str:
    """What answers for a project now: its active version, else zero-shot (when it has classes)."""
    if model is not None:
        return model.version
    return ZERO_SHOT if classes else UNTRAINED


def zero_shot(encoders: Encoders, classes: Sequence[str], text: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    """Cold start: each class name, as text, against the items' text vectors (one space).
    Items without text get no label."""
    names = encoders.get("text").encode([ZERO_SHOT_PROMPT.format(c) for c in classes])
    probs = np.exp(np.nan_to_num(text) @ names.T / ZERO_SHOT_TEMPERATURE)
    probs /= probs.sum(axis=1, keepdims=True)
    has_text = ~np.isnan(text).any(axis=1)
    labels = [[classes[b]] if ok else [] for b, ok in zip(probs.argmax(axis=1), has_text)]
    return labels, ZERO_SHOT_MAX_SCORE * probs.max(axis=1)


def as_predictions(scored: Scored, n: int, *, version: str, modalities: Sequence[str]) -> list[Prediction | None]:
    """One `Prediction` per item (None where ``scored`` has no row for it)."""
    out: list[Prediction | None] = [None] * n
    for r, lab, sc, share in zip(scored.rows, scored.labels, scored.scores, scored.shares):
        out[r] = Prediction(lab if isinstance(lab, list) else [lab], float(sc), version,
                            {m: round(float(w), 4) for m, w in zip(modalities, share)})
    return out


def predict_cached(items: Sequence[Item], *, encoders: Encoders, model: ActiveModel | None,
                   classes: Sequence[str] | None) -> list[Prediction | None]:
    """One prediction per item from cached vectors (nothing is fetched or encoded), or None for an
    item with no vector the model can use (or, zero-shot, no text). A multi-label prediction may
    have no label."""
    if model is not None:
        return as_predictions(score_cached(items, encoders=encoders, model=model), len(items),
                              version=model.version, modalities=model.modalities)
    out: list[Prediction | None] = [None] * len(items)
    if not classes:
        return out
    text = load_features(items, encoders=encoders, modalities=["text"]).get("text")
    rows = np.flatnonzero(usable_rows({"text": text} if text is not None else {}, len(items)))
    if not len(rows):
        return out
    labels, scores = zero_shot(encoders, list(classes), text[rows])
    return as_predictions(Scored(rows, labels, scores, np.zeros((len(rows), 0)), np.ones((len(rows), 1))),
                          len(items), version=serving_version(None, classes), modalities=["text"])


def predict(store: Store, settings: Settings, *, project_name: str, item_ids: Sequence[str] | None = None,
            runtime: Runtime | None = None, save: bool = True, progress: bool = True,
            engine: BatchEngine | None = None) -> PredictResult:
    """Predict every item (or ``item_ids``) of a project with its active model version.

    Items not encoded yet are encoded first; items whose media cannot be read are listed in
    ``failed`` with the reason, the others are predicted. Encoding and scoring run on ``engine``
    (this process by default, or a Ray cluster). Predictions are stored with the model version
    unless ``save`` is False, in batches.
    """
    runtime = runtime or Runtime(settings)
    engine = engine or LocalEngine(settings)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        model = runtime.active_model(s, project)
        if model is None:
            raise NotFoundError(f"project {project_name!r} has no active model yet; run `annotator retrain --project {project_name}`")
        items: list[Item] = repo.list_items(s, project=project, external_ids=item_ids)
        report = engine.embed(items, encoders=runtime.encoders, modalities=model.modalities, progress=progress)
        failed = [{"id": f["id"], "error": f["error"]} for f in report.failed]
        failed_ids = {f["id"] for f in failed}
        results: list[dict[str, Any]] = []
        records = []
        scored = engine.score(items, encoders=runtime.encoders, model=model, progress=progress)
        predictions = as_predictions(scored, len(items), version=model.version, modalities=model.modalities)
        for it, p in zip(items, predictions):
            if p is None:
                if it.external_id not in failed_ids:
                    failed.append({"id": it.external_id, "error": f"no {'/'.join(model.modalities)} input the model can use"})
                continue
            label = p.labels if model.classifier.multilabel else p.labels[0]
            results.append({"id": it.external_id, "label": label, "score": p.score, "model_version": p.model_version,
                            "modality_weights": p.modality_weights})
            records.append(repo.PredictionRecord(it.id, p.labels, p.score, p.model_version, p.modality_weights))
        if save:
            for start in range(0, len(records), SAVE_CHUNK):
                repo.add_predictions(s, project=project, records=records[start:start + SAVE_CHUNK])
                s.flush()
    return PredictResult(results, failed, model.version)
