"""A trained model's answers from cached vectors: labels, calibrated scores, probabilities and
modality shares. Prediction, pre-labels and the pool scoring of active learning (in-process, or in
a cluster's actors) all score through `score_cached`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annotator.embedding import load_features, usable_rows
from annotator.fusion.base import inputs_for
from annotator.encoders.registry import Encoders
from annotator.runtime import ActiveModel
from annotator.store.models import Item


def score_items(clf, features: dict[str, np.ndarray]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores (n,), probabilities (n, k), modality shares (n, M)) for feature matrices.

    The score is the calibrated probability of the predicted label (multi-label: the mean
    confidence over classes), so low means "worth a human look".
    """
    probs, shares = clf.predict_proba_and_contributions(inputs_for(clf, features))
    if clf.multilabel:
        labels = [[c for c, p in zip(clf.classes_, row) if p >= 0.5] for row in probs]
        scores = np.maximum(probs, 1 - probs).mean(axis=1)
    else:
        labels = [clf.classes_[i] for i in probs.argmax(axis=1)]
        scores = probs.max(axis=1)
    return labels, scores, probs, shares


@dataclass
class Scored:
    """A model's answers for the usable rows of a list of items (`score_cached`)."""

    rows: np.ndarray  # (r,) positions in the item list
    labels: list
    scores: np.ndarray  # (r,)
    probs: np.ndarray  # (r, k)
    shares: np.ndarray  # (r, M) modality shares

    @classmethod
    def concat(cls, parts: Sequence[Scored]) -> Scored:
        parts = [p for p in parts if len(p.rows)]
        if not parts:
            return cls(np.zeros(0, np.int64), [], np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0)))
        return cls(np.concatenate([p.rows for p in parts]), [lab for p in parts for lab in p.labels],
                   np.concatenate([p.scores for p in parts]), np.concatenate([p.probs for p in parts]),
                   np.concatenate([p.shares for p in parts]))


def score_cached(items: Sequence[Item], *, encoders: Encoders, model: ActiveModel) -> Scored:
    """The active model's labels, scores, probabilities and modality shares for every item with a
    cached vector it can use (nothing is fetched or encoded)."""
    features = load_features(items, encoders=encoders, modalities=model.modalities, parts=model.uses_parts)
    rows = np.flatnonzero(usable_rows(features, len(items)))
    if not len(rows):
        return Scored.concat([])
    labels, scores, probs, shares = score_items(model.classifier, {m: a[rows] for m, a in features.items()})
    return Scored(rows, list(labels), scores, probs, shares)
