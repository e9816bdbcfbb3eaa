"""Contract suite run over every fusion head, on synthetic data with planted structure."""

import numpy as np
import pytest

from annotator.errors import DimensionMismatchError, NotFittedError, UnknownNameError
from annotator.fusion import HEADS, FusionClassifier


def planted(n=500, seed=0, noise_modality=False):
    """Three classes; 'text' and 'image' both informative (image missing for 25 %); optional pure-noise 'audio'."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = {"text": rng.normal(size=(3, 24))[y] * 0.8 + rng.normal(size=(n, 24)),
         "image": rng.normal(size=(3, 16))[y] * 0.8 + rng.normal(size=(n, 16))}
    X["image"][rng.random(n) < 0.25] = np.nan
    if noise_modality:
        X["audio"] = rng.normal(size=(n, 12))
    return {m: a.astype(np.float32) for m, a in X.items()}, np.array(["cat", "dog", "owl"])[y]


def split(X, y, k=400):
    return ({m: a[:k] for m, a in X.items()}, y[:k]), ({m: a[k:] for m, a in X.items()}, y[k:])


@pytest.fixture(scope="module")
def fitted():
    X, y = planted()
    (Xtr, ytr), _ = split(X, y)
    return {h: FusionClassifier(head=h, epochs=25, random_state=0).fit(Xtr, ytr) for h in HEADS}


@pytest.mark.parametrize("head", HEADS)
def test_learns_a_separable_task(fitted, head):
    X, y = planted()
    _, (Xte, yte) = split(X, y)
    acc = (np.array(fitted[head].predict(Xte)) == yte).mean()
    assert acc > 0.9, f"{head}: {acc}"


@pytest.mark.parametrize("head", HEADS)
def test_save_load_gives_identical_probabilities(fitted, head, tmp_path):
    X, _ = planted()
    fitted[head].save(tmp_path / head)
    loaded = FusionClassifier.load(tmp_path / head)
    np.testing.assert_allclose(loaded.predict_proba(X), fitted[head].predict_proba(X), rtol=1e-6, atol=1e-7)
    assert loaded.get_params() == fitted[head].get_params()


@pytest.mark.parametrize("head", HEADS)
def test_one_modality_still_predicts_and_weights_show_it(fitted, head):
    X, y = planted()
    _, (Xte, yte) = split(X, y)
    text_only = {"text": Xte["text"]}
    probs = fitted[head].predict_proba(text_only)
    assert probs.shape == (len(yte), 3) and np.isfinite(probs).all()
    assert (np.array(fitted[head].predict(text_only)) == yte).mean() > 0.75
    shares = fitted[head].modality_contributions(text_only)
    np.testing.assert_allclose(shares[:, 0], 1.0)  # all weight on the one present modality
    np.testing.assert_allclose(shares[:, 1], 0.0)
    both = fitted[head].modality_contributions(Xte)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, rtol=1e-5)


def test_attention_puts_weight_on_the_informative_modality():
    X, y = planted(noise_modality=True)
    clf = FusionClassifier(head="attention", epochs=40, modality_dropout=0.4).fit(X, y)
    shares = clf.modality_contributions(X)
    full = ~np.isnan(X["image"]).any(axis=1)
    audio = clf.modalities_.index("audio")
    assert shares[full, audio].mean() < 1 / 3  # pure noise gets less than an equal share


def test_weighted_head_chooses_weights_by_cross_validation():
    X, y = planted(noise_modality=True)
    clf = FusionClassifier(head="weighted", epochs=20).fit(X, y)
    w = dict(zip(clf.modalities_, clf.modality_weights_))
    assert abs(sum(w.values()) - 1) < 1e-6
    assert w["audio"] <= min(w["text"], w["image"])
    fixed = FusionClassifier(head="weighted", modality_weights=[0.2, 0.8, 0.0], epochs=5).fit(X, y)
    assert fixed.modality_weights_ == [0.2, 0.8, 0.0]


def test_multilabel():
    rng = np.random.default_rng(1)
    n = 400
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
    X = {"text": np.c_[a, b, rng.normal(size=(n, 6)) * 0.3].astype(np.float32)}
    y = [[c for c, on in (("a", a[i]), ("b", b[i])) if on] or ["none"] for i in range(n)]
    clf = FusionClassifier(head="concat", multilabel=True, epochs=40).fit(X, y)
    pred = clf.predict(X)
    exact = np.mean([set(p) == set(t) for p, t in zip(pred, y)])
    assert exact > 0.9
    # self-training is single-label only: unlabelled items are ignored here, not mislabelled
    assert FusionClassifier(head="concat", multilabel=True, epochs=5).fit(X, y, unlabelled=X).n_pseudo_labels_ == 0


def test_same_seed_same_model():
    X, y = planted()
    p1 = FusionClassifier(head="gated", epochs=5, random_state=3).fit(X, y).predict_proba(X)
    p2 = FusionClassifier(head="gated", epochs=5, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)  # up to float reduction order across threads


def test_refit_after_calibration_trains_on_every_label():
    """The held-out calibration slice is learnt too: with arbitrary labels a network can only be
    right on items it was trained on."""
    rng = np.random.default_rng(0)
    X = {"text": rng.normal(size=(200, 32)).astype(np.float32)}
    y = rng.choice(["a", "b"], 200)
    params = dict(head="concat", hidden_dim=64, min_steps=600, dropout=0.0, random_state=0)
    refit = FusionClassifier(**params).fit(X, y)
    held_out_only = FusionClassifier(**params, refit=False).fit(X, y)
    _, cal = held_out_only._calibration_split(np.array([c == "b" for c in y], dtype=np.int64), np.random.default_rng(0))
    assert len(cal) >= 20
    right = {name: float((np.array(clf.predict({"text": X["text"][cal]})) == y[cal]).mean())
             for name, clf in (("refit", refit), ("held_out_only", held_out_only))}
    assert right["refit"] > 0.9 and right["held_out_only"] < 0.75, right
    assert refit.temperature_ == pytest.approx(held_out_only.temperature_)


def test_self_training_on_unlabelled_items_helps_with_few_labels():
    """scikit-learn's digits (pixels as one modality), 3 labels per class and ~1,270 unlabelled
    images: pseudo-labels from the pool raise test accuracy over the 30 labels alone."""
    from sklearn.datasets import load_digits

    pixels, digits = load_digits(return_X_y=True)
    X = (pixels / np.linalg.norm(pixels, axis=1, keepdims=True)).astype(np.float32)
    y = digits.astype(str)
    gains = []
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(y))
        test, rest = order[:500], order[500:]
        labelled = np.concatenate([rest[y[rest] == c][:3] for c in np.unique(y)])
        pool = np.setdiff1d(rest, labelled)
        accuracy = {}
        for ratio in (0, 15):
            clf = FusionClassifier(head="concat", pseudo_label_ratio=ratio, random_state=0).fit(
                {"text": X[labelled]}, y[labelled], unlabelled={"text": X[pool]})
            assert (clf.n_pseudo_labels_ == 0) if ratio == 0 else (0 < clf.n_pseudo_labels_ <= 15 * 30)
            accuracy[ratio] = float((np.array(clf.predict({"text": X[test]})) == y[test]).mean())
        gains.append(accuracy[15] - accuracy[0])
    assert np.mean(gains) > 0.015 and min(gains) > -0.01, gains


def test_pseudo_labels_are_each_class_s_most_confident_predictions():
    rng = np.random.default_rng(0)

    def around(x0, n, spread):
        points = rng.normal(scale=0.3, size=(n, 8)).astype(np.float32)
        points[:, 0] = x0 + rng.uniform(-spread, spread, n)
        return points

    X = {"text": np.vstack([around(-3, 5, 0.2), around(3, 5, 0.2)])}
    y = ["a"] * 5 + ["b"] * 5
    unlabelled = {"text": np.vstack([around(0, 40, 0.5), around(-3, 10, 0.2), around(3, 10, 0.2)])}
    clf = FusionClassifier(head="concat", pseudo_label_ratio=1, pseudo_label_threshold=0.0, random_state=0).fit(
        X, y, unlabelled=unlabelled)
    assert clf.n_pseudo_labels_ == 10
    arrays, _, targets = clf._pseudo_labels(unlabelled, np.array([0] * 5 + [1] * 5))
    x0 = arrays[0][:, 0]
    assert (np.abs(x0) > 2).all()  # none of the ambiguous items near the boundary
    assert (targets == (x0 > 0)).all() and targets.sum() == 5  # five per class, with the right label
    off = FusionClassifier(head="concat", pseudo_label_ratio=0, random_state=0)
    np.testing.assert_allclose(off.fit(X, y, unlabelled=unlabelled).predict_proba(X),
                               FusionClassifier(head="concat", random_state=0).fit(X, y).predict_proba(X), atol=1e-6)


def test_pseudo_labels_stay_above_the_threshold_and_under_the_cap():
    rng = np.random.default_rng(1)
    X, y = planted(n=60)
    unlabelled = {m: np.vstack([a, a + 0.5 * rng.standard_normal(a.shape).astype(np.float32)]) for m, a in X.items()}
    clf = FusionClassifier(head="concat", pseudo_label_ratio=100, pseudo_label_threshold=0.0, random_state=0)
    clf.fit(X, y)
    confidence = clf.predict_proba(unlabelled).max(axis=1)
    threshold = float(np.median(confidence))  # half the pool is below it
    clf.set_params(pseudo_label_threshold=threshold)
    arrays, mask, _ = clf._pseudo_labels(unlabelled, clf._targets(y))
    kept = clf._probabilities(clf._logits(arrays, mask) / clf.temperature_).max(axis=1)
    assert 0 < len(kept) <= (confidence >= threshold).sum() and (kept >= threshold - 1e-6).all()
    clf.set_params(pseudo_label_threshold=0.0, max_pseudo_labels=9)
    targets = clf._pseudo_labels(unlabelled, clf._targets(y))[2]
    assert 0 < len(targets) <= 9 and len(np.unique(targets)) > 1  # the cap shrinks every class's share


def test_errors_are_clear():
    X, y = planted(n=60)
    with pytest.raises(NotFittedError, match="call fit"):
        FusionClassifier().predict_proba(X)
    with pytest.raises(UnknownNameError, match="unknown fusion head 'mlp'"):
        FusionClassifier(head="mlp").fit(X, y)
    clf = FusionClassifier(head="concat", epochs=2).fit(X, y)
    with pytest.raises(DimensionMismatchError, match="modality 'text': expected vectors of dimension 24, got 5"):
        clf.predict_proba({"text": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match="invalid parameter 'heads'"):
        clf.set_params(heads="x")
    nothing = {m: np.full_like(a, np.nan) for m, a in X.items()}
    with pytest.raises(ValueError, match="row 0 has no modality"):
        FusionClassifier().fit(nothing, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        FusionClassifier().fit(X, ["same"] * len(y))


def test_warm_start_goes_on_from_the_fitted_network_and_keeps_its_calibration(tmp_path):
    X, y = planted(n=300)
    first = FusionClassifier(head="concat", random_state=0).fit({m: a[:250] for m, a in X.items()}, y[:250])
    first.save(tmp_path / "v1")
    served = FusionClassifier.load(tmp_path / "v1")  # a refit starts from the saved version, as the backend's
    before = {k: v.clone() for k, v in served.network_.state_dict().items()}
    warm = served.set_params(warm_start=True).fit(X, y)  # 50 more labels
    assert warm.warm_started_ and warm.temperature_ == first.temperature_
    after = warm.network_.state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)  # it trained on
    assert np.mean(np.array(warm.predict({m: a[250:] for m, a in X.items()})) == y[250:]) >= 0.9
    # a new class (or a new width, modality, pseudo-labels) cannot go on from the old network: afresh
    relabelled = np.where(np.arange(len(y)) % 7 == 0, "new", y)
    assert not FusionClassifier.load(tmp_path / "v1").set_params(warm_start=True).fit(X, relabelled).warm_started_
    assert not FusionClassifier(head="concat").fit(X, y).warm_started_


def test_training_stops_on_a_plateau_of_the_training_loss_and_predicts_as_well():
    """`plateau_loss`: once the last 25 steps' mean loss is below it, training stops (the labels are
    fitted); 0 trains every planned step. Model search's folds use it."""
    X, y = planted(n=160)
    (Xtr, ytr), (Xte, yte) = split(X, y, k=100)
    full = FusionClassifier(head="concat", calibrate=False, random_state=0).fit(Xtr, ytr)
    stopped = FusionClassifier(head="concat", calibrate=False, plateau_loss=0.05, random_state=0).fit(Xtr, ytr)
    assert full.n_steps_ == 300  # min_steps: one batch per epoch at 100 items
    assert stopped.n_steps_ % 25 == 0 and stopped.n_steps_ < full.n_steps_ / 2
    agree = (np.array(full.predict(Xte)) == np.array(stopped.predict(Xte))).mean()
    assert agree >= 0.9
