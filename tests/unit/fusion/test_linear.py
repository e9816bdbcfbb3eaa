"""LinearClassifier: the logistic-regression baseline, served like any fusion head."""

import json

import numpy as np
import pytest

from annotator.errors import DimensionMismatchError, NotEnoughLabelsError, NotFittedError
from annotator.fusion import LinearClassifier, load_classifier
from tests.unit.fusion.test_heads import planted, split


@pytest.fixture(scope="module")
def fitted():
    X, y = planted(noise_modality=True)
    (Xtr, ytr), _ = split(X, y)
    return LinearClassifier().fit(Xtr, ytr)


def test_learns_calibrates_and_keeps_the_modality_order(fitted):
    X, y = planted(noise_modality=True)
    _, (Xte, yte) = split(X, y)
    assert (np.array(fitted.predict(Xte)) == yte).mean() > 0.9
    assert fitted.modalities_ == ["text", "image", "audio"] and fitted.classes_ == ["cat", "dog", "owl"]
    probs = fitted.predict_proba(Xte)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert fitted.temperature_ != 1.0  # fitted on out-of-fold logits
    assert LinearClassifier(calibrate=False).fit(*split(X, y)[0]).temperature_ == 1.0


def test_modality_shares_follow_the_weights_and_missing_modalities_get_none(fitted):
    X, y = planted(noise_modality=True)
    _, (Xte, _) = split(X, y)
    shares = fitted.modality_contributions(Xte)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)
    full = ~np.isnan(Xte["image"]).any(axis=1)
    assert shares[full, 2].mean() < shares[full, 0].mean()  # noise counts for less than text
    np.testing.assert_allclose(shares[~full, 1], 0.0)
    only_text = fitted.predict_proba({"text": Xte["text"]})  # a task with one modality still gets a label
    assert only_text.shape == (len(Xte["text"]), 3)


def test_save_load_round_trip_without_pickle(fitted, tmp_path):
    X, _ = planted(noise_modality=True)
    fitted.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["config.json", "weights.safetensors"]
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["estimator"] == "LinearClassifier"
    again = load_classifier(tmp_path / "clf")
    assert isinstance(again, LinearClassifier)
    np.testing.assert_allclose(again.predict_proba(X), fitted.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(again.transform(X), fitted.transform(X))


def test_two_classes_and_clear_errors():
    X, y = planted()
    two = np.where(y == "owl", "dog", y)
    clf = LinearClassifier().fit(X, two)
    assert clf.predict_proba(X).shape == (len(two), 2) and clf.coef_.shape[0] == 2
    assert (np.array(clf.predict(X)) == two).mean() > 0.85
    with pytest.raises(NotFittedError, match="call fit"):
        LinearClassifier().predict(X)
    with pytest.raises(DimensionMismatchError, match="expected vectors of dimension 24, got 5"):
        clf.predict({"text": np.zeros((2, 5), np.float32)})
    with pytest.raises(NotEnoughLabelsError, match="at least 2 classes"):
        LinearClassifier().fit(X, ["cat"] * len(y))
    with pytest.raises(ValueError, match="invalid parameter 'head'"):
        LinearClassifier().set_params(head="x")


def test_a_warm_refit_reaches_the_cold_fits_model_and_other_classes_start_from_zero():
    """A refit after a few more labels goes on from the fitted coefficients: the problem is convex,
    so it lands on the model a fit from zero finds; labels of another class set start afresh."""
    X, y = planted(noise_modality=True)
    (Xtr, ytr), (Xte, _) = split(X, y)
    n = len(ytr) - 5
    warm = LinearClassifier(warm_start=True).fit({m: a[:n] for m, a in Xtr.items()}, ytr[:n])
    assert not warm.warm_started_  # nothing to go on from yet
    warm.fit(Xtr, ytr)
    cold = LinearClassifier().fit(Xtr, ytr)
    assert warm.warm_started_ and not cold.warm_started_
    # the same optimum, reached within the solver's tolerance (lbfgs stops at a gradient of 1e-4)
    np.testing.assert_allclose(warm.predict_proba(Xte), cold.predict_proba(Xte), atol=1e-2)
    assert warm.predict(Xte) == cold.predict(Xte)
    assert abs(warm.temperature_ - cold.temperature_) < 0.02 * cold.temperature_
    two = np.isin(ytr, ["cat", "dog"])
    warm.fit({m: a[two] for m, a in Xtr.items()}, ytr[two])
    assert not warm.warm_started_ and warm.classes_ == ["cat", "dog"]
