"""How good a fitted classifier is on labelled data: accuracy, macro-F1, per-class F1 and calibration.

The one evaluation used by benchmarks and simulations (model choice scores its folds itself, in
`fusion.selection`, where only macro-F1 and accuracy are needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from annotator.fusion.calibration import expected_calibration_error


def evaluate(clf, X: dict[str, np.ndarray], y: Sequence) -> dict[str, Any]:
    """accuracy, macro-F1, per-class F1 and ECE (calibrated and at temperature 1)."""
    from sklearn.metrics import f1_score

    probs = clf.predict_proba(X)
    if clf.multilabel:
        truth = np.array([[c in (v if isinstance(v, list) else [v]) for c in clf.classes_] for v in y])
        pred = probs >= 0.5
        per_class = f1_score(truth, pred, average=None, zero_division=0)
        return {"accuracy": float((truth == pred).all(axis=1).mean()),
                "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)),
                "per_class_f1": dict(zip(clf.classes_, map(float, per_class))), "ece": 0.0, "n_eval": len(y)}
    labels = [v[0] if isinstance(v, list) else v for v in y]
    index = {c: i for i, c in enumerate(clf.classes_)}
    known = np.array([lab in index for lab in labels])
    targets = np.array([index.get(lab, -1) for lab in labels])
    pred = probs.argmax(axis=1)
    raw = clf.decision_function(X) * clf.temperature_
    raw = np.exp(raw - raw.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    per_class = f1_score(targets, pred, labels=range(len(clf.classes_)), average=None, zero_division=0)
    return {
        "accuracy": float((pred == targets).mean()),
        "macro_f1": float(f1_score(targets, pred, labels=range(len(clf.classes_)), average="macro", zero_division=0)),
        "per_class_f1": dict(zip(clf.classes_, map(float, per_class))),
        "ece": expected_calibration_error(probs[known], targets[known]),
        "ece_uncalibrated": expected_calibration_error(raw[known], targets[known]),
        "n_eval": int(len(labels)),
    }
