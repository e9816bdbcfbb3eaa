import numpy as np
from sklearn.metrics import roc_auc_score

from annotator.active.label_errors import knn_disagreement, out_of_fold_probs, suspicion_scores
from annotator.fusion import FusionClassifier


def test_planted_label_flips_rank_above_clean_labels():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    X = {"text": (rng.normal(size=(k, 32))[y] * 1.2 + rng.normal(size=(n, 32))).astype(np.float32)}
    names = np.array(["a", "b", "c", "d"])
    given = names[y].copy()
    flipped = rng.random(n) < 0.1
    given[flipped] = names[(y[flipped] + 1) % k]  # asymmetric noise: a→b, b→c, ...
    probs, classes = out_of_fold_probs(lambda: FusionClassifier(head="concat", min_steps=150), X, list(given))
    emb = X["text"] / np.linalg.norm(X["text"], axis=1, keepdims=True)
    disagreement, _ = knn_disagreement(emb, list(given))
    scores, suggested = suspicion_scores(list(given), probs, classes, disagreement=disagreement)
    assert roc_auc_score(flipped, scores) > 0.9
    top = np.argsort(-scores)[: flipped.sum()]
    assert flipped[top].mean() > 0.7
    correct_suggestion = np.mean([s == t for s, t in zip(np.array(suggested)[flipped], names[y][flipped])])
    assert correct_suggestion > 0.8
