"""When to stop labelling: stabilising predictions (Bloodgood & Vijay-Shanker, CoNLL 2009).

After each retrain the new model and the one it replaces label the same fixed sample of unlabelled
items with cached vectors (the *stop set*: what `annotator embed` or the backend encoded); Cohen's kappa between the two says how much the last labels changed the
model's mind. When the mean kappa of the last ``window`` retrains reaches ``threshold`` (0.99 over
3 in the paper, which found it stops early without losing accuracy on text tasks), more labels of
the same kind are unlikely to change the predictions: the signal says "stop". It needs no held-out
labels, so it works on the project's own data from the first retrain on. The slope of the
cross-validated macro-F1 per 100 labels across versions is reported beside it, as a second view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

STOP_SET_SIZE = 2000
KAPPA_THRESHOLD = 0.99
WINDOW = 3


def stop_set(items: Sequence, size: int = STOP_SET_SIZE) -> list:
    """A fixed sample of ``items`` (by a hash of their ids, so the same items are drawn for every
    version while they stay unlabelled, whatever order they come in)."""
    def key(it) -> str:
        return hashlib.sha256(str(it.external_id).encode()).hexdigest()

    return sorted(items, key=key)[:size]


def agreement(previous: Sequence, current: Sequence) -> float:
    """Cohen's kappa between two models' labels for the same items (label sets compared whole);
    1.0 when both give every item the same single label."""
    a = ["|".join(map(str, p)) if isinstance(p, (list, tuple)) else str(p) for p in previous]
    b = ["|".join(map(str, p)) if isinstance(p, (list, tuple)) else str(p) for p in current]
    if a == b:
        return 1.0
    kappa = cohen_kappa_score(a, b)
    return float(0.0 if np.isnan(kappa) else kappa)


def label_slope(history: Sequence[tuple[int, float]]) -> float | None:
    """Change of macro-F1 per 100 labels from the latest version back to the last one trained on a
    different label count (``history``: (labels, macro-F1), oldest first); None before there is one."""
    points = [(n, f1) for n, f1 in history if f1 is not None]
    if not points:
        return None
    n1, f1 = points[-1]
    for n0, f0 in reversed(points[:-1]):
        if n0 != n1:
            return round(100.0 * (f1 - f0) / (n1 - n0), 4)
    return None


def stopping_signal(kappas: Sequence[float | None], *, threshold: float = KAPPA_THRESHOLD,
                    window: int = WINDOW) -> dict[str, Any]:
    """"stop" when the last ``window`` kappas (newest last) all exist and their mean reaches
    ``threshold``; else "keep going", with the reason."""
    recent = list(kappas)[-window:]
    out: dict[str, Any] = {"threshold": threshold, "window": window, "recent_kappas": recent}
    if len(recent) < window or any(k is None for k in recent):
        have = sum(k is not None for k in recent)
        out.update(signal="keep going", mean_kappa=None,
                   why=f"{have} of the {window} retrains needed to judge stability so far")
        return out
    mean = float(np.mean(recent))
    out["mean_kappa"] = round(mean, 4)
    if mean >= threshold:
        out.update(signal="stop", why=f"the last {window} retrains changed almost no prediction on the stop set "
                                      f"(mean kappa {mean:.3f} ≥ {threshold})")
    else:
        out.update(signal="keep going", why=f"predictions still move between versions (mean kappa {mean:.3f} "
                                            f"< {threshold})")
    return out
