"""Kernel-level fusion: kernel weights from centred alignment, kernel ridge, the shared interface."""

import numpy as np
import pytest

from annotator.errors import UnknownNameError
from annotator.fusion.kernel import KernelFusionClassifier, centred_alignment
from annotator.fusion.persistence import load_classifier
from annotator.fusion.selection import Candidate


def synthetic(n=150, d=24, seed=0):
    """Text carries the class (separated means); the image is noise."""
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"] * (n // 3))
    means = rng.normal(size=(3, d)) * 2.0
    text = means[np.searchsorted(["a", "b", "c"], y)] + rng.normal(size=(n, d))
    image = rng.normal(size=(n, d))
    return {"text": text.astype(np.float32), "image": image.astype(np.float32)}, y


def test_alignment_of_the_label_kernel_with_itself_is_one():
    T = np.where(np.arange(3) == np.array([0, 1, 2, 0, 1, 2])[:, None], 1.0, -1.0)
    assert centred_alignment(T @ T.T, T) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=(6, 6))
    assert abs(centred_alignment(noise @ noise.T, T)) < 1.0


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
def test_kernel_weights_favour_the_informative_modality(kernel):
    X, y = synthetic()
    train, test = np.arange(0, 120), np.arange(120, 150)
    clf = KernelFusionClassifier(kernel=kernel).fit({m: a[train] for m, a in X.items()}, y[train])
    weights = dict(zip(clf.modalities_, clf.weights_))
    assert weights["text"] > 0.8 > 0.2 > weights["image"] and sum(weights.values()) == pytest.approx(1.0)
    assert clf.alignments_[clf.modalities_.index("text")] > 5 * abs(clf.alignments_[clf.modalities_.index("image")])
    accuracy = np.mean(np.array(clf.predict({m: a[test] for m, a in X.items()})) == y[test])
    assert accuracy >= 0.9
    probs, shares = clf.predict_proba_and_contributions({m: a[test] for m, a in X.items()})
    assert np.allclose(probs.sum(axis=1), 1) and np.allclose(shares.sum(axis=1), 1)
    assert shares[:, clf.modalities_.index("text")].mean() > 0.7  # the explanation names the modality it listens to


def test_missing_modalities_save_load_and_clone(tmp_path):
    X, y = synthetic(n=90)
    X["image"][::3] = np.nan  # a third of the items have no image
    clf = KernelFusionClassifier().fit(X, y)
    probs, shares = clf.predict_proba_and_contributions(X)
    assert np.allclose(shares[::3, clf.modalities_.index("image")], 0)
    only_text = clf.predict_proba({"text": X["text"][:5]})  # a modality absent from the input entirely
    assert only_text.shape == (5, 3) and np.isfinite(only_text).all()
    clf.save(tmp_path / "k")
    loaded = load_classifier(tmp_path / "k")
    assert isinstance(loaded, KernelFusionClassifier) and np.allclose(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.get_params() == clf.get_params() and not hasattr(clf.clone(), "dual_coef_")


def test_kernel_is_a_model_choice_candidate_for_single_label_projects():
    assert isinstance(Candidate.parse("kernel [text]").build(), KernelFusionClassifier)
    with pytest.raises(UnknownNameError):
        Candidate("kernel").build(multilabel=True)
