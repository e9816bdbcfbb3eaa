"""Suspected label errors: out-of-fold probabilities plus neighbourhood disagreement.

A label is suspicious when a model that never saw it gives it low probability (self-confidence,
as in cleanlab) *and* the item's nearest labelled neighbours carry a different label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def out_of_fold_probs(make_classifier, X: Mapping[str, np.ndarray], labels: Sequence[str], *,
                      folds: int = 5, random_state: int = 0) -> tuple[np.ndarray, list[str]]:
    """(n, c) probabilities for each item from a classifier trained on the other folds, and the classes."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    counts = np.unique(labels, return_counts=True)[1]
    folds = int(max(2, min(folds, counts.min())))
    probs = np.zeros((len(labels), len(classes)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=random_state).split(labels, labels):
        clf = make_classifier().fit({m: a[train] for m, a in X.items()}, labels[train])
        p = clf.predict_proba({m: a[test] for m, a in X.items()})
        for j, c in enumerate(clf.classes_):
            probs[test, classes.index(c)] = p[:, j]
    return probs, classes


def knn_disagreement(embeddings: np.ndarray, labels: Sequence[str], k: int = 10) -> tuple[np.ndarray, list[str]]:
    """(fraction of each item's k nearest labelled neighbours with another label, their majority label)."""
    import faiss

    labels = np.asarray(labels)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = min(k, len(x) - 1)
    if k <= 0:
        return np.zeros(len(x)), list(labels)
    sims, idx = faiss.knn(x, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    neighbour_labels = labels[idx[:, 1:]]
    weights = np.maximum(sims[:, 1:], 0) + 1e-6
    disagree = ((neighbour_labels != labels[:, None]) * weights).sum(1) / weights.sum(1)
    majority = []
    for row, w in zip(neighbour_labels, weights):
        votes: dict[str, float] = {}
        for lab, wt in zip(row, w):
            votes[lab] = votes.get(lab, 0.0) + float(wt)
        majority.append(max(votes, key=votes.get))
    return disagree, majority


def suspicion_scores(labels: Sequence[str], oof_probs: np.ndarray, classes: Sequence[str], *,
                     disagreement: np.ndarray | None = None, knn_weight: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """Per-label suspicion in [0, 1] (higher = more likely wrong) and the suggested label.

    Parameters
    ----------
    labels : (n,) given labels
    oof_probs : (n, c) out-of-fold probabilities; must not come from a model trained on these labels
    disagreement : (n,) optional kNN disagreement from `knn_disagreement`
    """
    labels = list(labels)
    index = {c: i for i, c in enumerate(classes)}
    given = np.array([oof_probs[i, index[lab]] if lab in index else 0.0 for i, lab in enumerate(labels)])
    masked = oof_probs.copy()
    for i, lab in enumerate(labels):
        if lab in index:
            masked[i, index[lab]] = -1.0
    suggested = [classes[j] for j in masked.argmax(axis=1)]
    # cleanlab-style normalised margin: how much more the best other class is believed than the given one
    margin = np.clip(masked.max(axis=1) - given, -1, 1) * 0.5 + 0.5
    score = margin if disagreement is None else (1 - knn_weight) * margin + knn_weight * disagreement
    return score, suggested


# --- multi-label projects: each (item, class) bit is a label that can be wrong -------------------

def out_of_fold_multilabel_probs(make_classifier, X: Mapping[str, np.ndarray], labels: Sequence[Sequence[str]], *,
                                 folds: int = 5, random_state: int = 0) -> tuple[np.ndarray, list[str]]:
    """(n, c) per-class probabilities for each item from a multi-label classifier trained on the
    other folds, and the classes. A class absent from a fold's training items gets probability 0
    there (that model cannot propose it)."""
    from sklearn.model_selection import KFold

    classes = sorted({c for row in labels for c in row})
    folds = int(max(2, min(folds, len(labels))))
    probs = np.zeros((len(labels), len(classes)))
    for train, test in KFold(folds, shuffle=True, random_state=random_state).split(np.zeros(len(labels))):
        clf = make_classifier().fit({m: a[train] for m, a in X.items()}, [list(labels[i]) for i in train])
        p = clf.predict_proba({m: a[test] for m, a in X.items()})
        for j, c in enumerate(clf.classes_):
            probs[test, classes.index(c)] = p[:, j]
    return probs, classes


def label_matrix(labels: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """(n, c) {0, 1}: which classes each item was given."""
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)))
    for i, row in enumerate(labels):
        y[i, [index[c] for c in row if c in index]] = 1
    return y


def knn_set_disagreement(embeddings: np.ndarray, y: np.ndarray, k: int = 10) -> np.ndarray:
    """1 − the similarity-weighted mean Jaccard overlap of each item's label set with its k nearest
    labelled neighbours' sets."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = min(k, len(x) - 1)
    if k <= 0:
        return np.zeros(len(x))
    sims, idx = faiss.knn(x, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    neighbours = y[idx[:, 1:]]  # (n, k, c)
    inter = (neighbours * y[:, None, :]).sum(-1)
    union = np.maximum(neighbours, y[:, None, :]).sum(-1)
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    weights = np.maximum(sims[:, 1:], 0) + 1e-6
    return 1 - (jaccard * weights).sum(1) / weights.sum(1)


def multilabel_suspicion(y: np.ndarray, oof_probs: np.ndarray, classes: Sequence[str], *,
                         disagreement: np.ndarray | None = None, knn_weight: float = 0.3
                         ) -> tuple[np.ndarray, list[list[str]]]:
    """Per-item suspicion in [0, 1] and the suggested label set.

    Every class is a yes/no label: a given class the out-of-fold model doubts (low probability)
    or a missing class it believes (high probability) contradicts the annotation by that much;
    an item is as suspicious as its worst-explained class (one wrong tag makes the set wrong).
    """
    contradiction = np.where(y == 1, 1 - oof_probs, oof_probs)
    score = contradiction.max(axis=1)
    if disagreement is not None:
        score = (1 - knn_weight) * score + knn_weight * disagreement
    suggested = [[c for c, p in zip(classes, row) if p >= 0.5] for row in oof_probs]
    return score, suggested
