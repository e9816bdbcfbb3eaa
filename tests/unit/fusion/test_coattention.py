"""The co-attention head over part-level features, on synthetic parts with planted structure."""

import numpy as np
import pytest

from annotator.fusion import FusionClassifier
from annotator.fusion.linear import LinearClassifier
from annotator.fusion.selection import ModelSearch, default_candidates

N_PARTS, WIDTH = 8, 16


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def planted_parts(n=240, seed=0):
    """Each item has 8 text parts and 8 image parts of random noise; the class is which of two
    prototypes sits in one image region, at a random place. Pooled vectors are the parts' means."""
    rng = np.random.default_rng(seed)
    text, image = _unit(rng.normal(size=(n, N_PARTS, WIDTH))), _unit(rng.normal(size=(n, N_PARTS, WIDTH)))
    y = rng.integers(0, 2, n)
    where = rng.integers(0, N_PARTS, n)
    image[np.arange(n), where] = _unit(rng.normal(size=(2, WIDTH)))[y]
    X = {"text": _unit(text.mean(1)), "image": _unit(image.mean(1)),
         "text:parts": text.reshape(n, -1).astype(np.float16), "image:parts": image.reshape(n, -1).astype(np.float16)}
    return X, np.array(["no", "yes"])[y], where


def rows(X, index):
    return {k: a[index] for k, a in X.items()}


@pytest.fixture(scope="module")
def fitted():
    X, y, _ = planted_parts()
    return FusionClassifier(head="coattention", min_steps=200, random_state=0).fit(rows(X, slice(0, 160)), y[:160])


def test_attention_moves_to_the_part_that_carries_the_label(fitted):
    X, y, where = planted_parts()
    test = slice(160, None)
    assert (np.array(fitted.predict(rows(X, test))) == y[test]).mean() > 0.9
    weights = fitted.part_weights(rows(X, test))
    assert set(weights) == {"text", "image"} and weights["image"].shape == (80, 1 + N_PARTS)
    for w in weights.values():
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)  # a distribution over the parts
    regions = weights["image"][:, 1:]  # part 0 is the pooled vector
    carrying = regions[np.arange(80), where[test]]
    assert carrying.mean() > 0.5 > 1 / (1 + N_PARTS)  # uniform attention would give each part 1/9


def test_padding_and_missing_parts_get_no_weight_and_the_item_is_still_predicted(fitted):
    X, y, _ = planted_parts()
    test = rows(X, slice(160, 170))
    padded = dict(test, **{"text:parts": test["text:parts"].copy()})
    padded["text:parts"][:, 4 * WIDTH:] = 0  # only 4 tokens: the rest is padding
    assert (fitted.part_weights(padded)["text"][:, 5:] == 0).all()

    no_parts = {"text": test["text"], "image": test["image"]}  # parts not cached: pooled vectors only
    weights = fitted.part_weights(no_parts)
    np.testing.assert_allclose(weights["image"][:, 0], 1.0)
    assert np.isfinite(fitted.predict_proba(no_parts)).all()

    text_only = rows(test, slice(None))
    text_only["image"] = np.full_like(test["image"], np.nan)  # the modality is missing
    weights = fitted.part_weights(text_only)
    assert (weights["image"] == 0).all() and np.allclose(weights["text"].sum(axis=1), 1.0)
    np.testing.assert_allclose(fitted.modality_contributions(text_only)[:, 1], 0.0)


def test_save_and_load_keep_the_parts_layout(fitted, tmp_path):
    X, _, _ = planted_parts()
    fitted.save(tmp_path / "m")
    loaded = FusionClassifier.load(tmp_path / "m")
    assert loaded.part_dims_ == [WIDTH, WIDTH] and loaded.uses_parts
    np.testing.assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_other_models_ignore_part_features_and_the_search_offers_coattention_only_with_them():
    X, y, _ = planted_parts(n=120)
    pooled = {m: X[m] for m in ("text", "image")}
    with_parts = LinearClassifier().fit(X, y).predict_proba(X)
    np.testing.assert_allclose(with_parts, LinearClassifier().fit(pooled, y).predict_proba(pooled))
    assert "coattention" not in {c.model for c in default_candidates(["text", "image"])}
    assert "coattention" in {c.model for c in default_candidates(["text", "image"], parts=True)}

    search = ModelSearch(["logreg", "coattention"], folds=3, repeats=1, params={"min_steps": 100}).fit(X, y)
    scored = {r.name: r for r in search.results_}
    assert scored["coattention"].error is None
    # the prototype hides in one of 8 regions: the mean of the parts blurs it, attention over them does not
    assert scored["coattention"].mean > scored["logreg"].mean
    assert search.best_.model == "coattention" and search.best_estimator_.uses_parts
