"""ModelSearch: the model is chosen on the project's own labels, on shared folds, simplest within 1 SE."""

import numpy as np
import pytest

from annotator.errors import UnknownNameError
from annotator.fusion import Candidate, FusionClassifier, LinearClassifier, ModelSearch
from annotator.fusion.selection import CandidateResult, default_candidates, make_splits


def planted(n=240, seed=0, informative=("text", "image"), noise=("audio",), strength=1.0):
    """Four classes; the ``informative`` modalities carry the class, the ``noise`` ones are pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = {m: rng.normal(size=(4, 32))[y] * strength + rng.normal(size=(n, 32)) for m in informative}
    X.update({m: rng.normal(size=(n, 32)) for m in noise})
    return {m: a.astype(np.float32) for m, a in X.items()}, np.array(list("abcd"))[y]


def test_candidate_names_round_trip_and_bad_names_are_refused():
    for c in (Candidate("logreg"), Candidate("attention", ("text", "image")), Candidate("concat", ("text",), True)):
        assert Candidate.parse(c.name) == c
    assert Candidate.parse("concat [text] +self-training").name == "concat [text] +self-training"
    with pytest.raises(UnknownNameError, match="unknown model 'mlp'"):
        Candidate.parse("mlp")
    with pytest.raises(UnknownNameError):
        Candidate.parse("logreg [text")


def test_default_candidates_cover_heads_baseline_single_modalities_and_leave_one_out():
    names = {c.name for c in default_candidates(["text", "image", "audio"])}
    assert {"logreg", "kernel", "concat", "weighted", "attention", "gated", "tensor"} <= names
    assert {"logreg [text]", "concat [text]", "logreg [audio]", "concat [image]"} <= names
    assert {"logreg [text+image]", "logreg [text+audio]", "logreg [image+audio]"} <= names
    # one modality: attention weighs one vector (always 1), the same function as concat
    assert {c.name for c in default_candidates(["text"])} == {"logreg", "kernel", "concat", "weighted", "gated",
                                                               "tensor"}
    assert all(c.model not in ("logreg", "kernel") for c in default_candidates(["text", "image"], multilabel=True))


def test_splits_are_stratified_shared_and_repeated_only_when_labels_are_few():
    y = np.array(list("ab") * 50)
    few = make_splits(y)
    assert len(few) == 10  # 5 folds x 2 repeats below 200 labels
    assert make_splits(y) == [] or all((a == b).all() for s, t in zip(few, make_splits(y)) for a, b in zip(s, t))
    for train, test in few:
        assert set(y[test]) == {"a", "b"} and abs((y[test] == "a").mean() - 0.5) < 0.11
    assert len(make_splits(np.array(list("ab") * 150))) == 5
    assert len(make_splits(np.array(list("ab") * 2 + ["c"]), folds=5)) == 4  # 2 folds (smallest class), x 2
    assert make_splits(np.array(["a", "a", "b", "c"])) == []  # too few labels per class


def test_one_standard_error_rule_prefers_the_simpler_model():
    search = ModelSearch()
    close = [(Candidate("attention"), CandidateResult("attention", [0.82, 0.80, 0.84, 0.78, 0.81], [0.8] * 5)),
             (Candidate("logreg"), CandidateResult("logreg", [0.81, 0.80, 0.82, 0.79, 0.80], [0.8] * 5))]
    chosen, why = search._choose(close, 2)
    assert chosen.name == "logreg" and "within one standard error" in why
    far = [(c, CandidateResult(r.name, [v + (0.1 if c.model == "attention" else 0) for v in r.macro_f1], r.accuracy))
           for c, r in close]
    assert search._choose(far, 2)[0].name == "attention"
    plain = ModelSearch(one_standard_error=False)
    assert plain._choose(close, 2)[0].name == "attention"


def test_a_modality_that_is_pure_noise_is_left_out():
    X, y = planted(n=160, noise=("image",), informative=("text",))
    search = ModelSearch(folds=4, repeats=1, n_jobs=2).fit(X, y)
    assert search.best_.modalities == ("text",), search.metrics_["candidates"]
    rows = {r["name"]: r for r in search.metrics_["candidates"]}
    assert rows["logreg [image]"]["macro_f1_mean"] < 0.45  # chance is 0.25
    assert rows[search.best_.name]["macro_f1_mean"] > rows["logreg [image]"]["macro_f1_mean"] + 0.3
    probs, shares = search.best_estimator_.predict_proba_and_contributions({"text": X["text"]})
    assert probs.shape == (len(y), 4) and np.allclose(shares, 1.0)


def test_with_three_modalities_the_noisy_one_is_dropped_from_the_fused_model():
    X, y = planted(n=200, strength=0.6)
    search = ModelSearch(folds=4, repeats=1, n_jobs=2).fit(X, y)
    used = set(search.best_.modalities or X)
    assert "audio" not in used, search.metrics_["candidates"]
    rows = {r["name"]: r for r in search.metrics_["candidates"]}
    assert rows["logreg [text+image]"]["macro_f1_mean"] >= rows["logreg"]["macro_f1_mean"] - 0.02


def test_the_winner_is_refitted_on_every_label_and_the_table_says_why():
    X, y = planted(n=120, noise=())
    search = ModelSearch(["logreg", "concat"], n_jobs=1).fit(X, y)
    assert search.evaluation_ == "5-fold cross-validation x 2"
    assert isinstance(search.best_estimator_, (LinearClassifier, FusionClassifier))
    assert search.best_estimator_.predict_proba(X).shape == (120, 4)
    table = search.metrics_["candidates"]
    assert [r["name"] for r in table] == ["logreg", "concat"] and sum(r["chosen"] for r in table) == 1
    assert all(r["splits"] in (5, 10) for r in table) and max(r["splits"] for r in table) == 10
    assert search.metrics_["why"] and 0 <= search.metrics_["ece"] <= 1
    assert search.metrics_["macro_f1"] == pytest.approx(
        next(r["macro_f1_mean"] for r in table if r["chosen"]), abs=1e-4)


def test_the_reference_is_scored_on_the_same_folds_but_never_chosen():
    X, y = planted(n=120, noise=())
    reference = FusionClassifier(head="attention", epochs=1, min_steps=1, lr=1e-6)
    search = ModelSearch(["logreg"], reference=("active v1: attention", reference, ["text", "image"]), n_jobs=1).fit(X, y)
    assert search.best_.name == "logreg"
    ref = search.result("active v1: attention")
    assert len(ref.macro_f1) == len(search.result("logreg").macro_f1) == 10
    assert ref.mean < search.result("logreg").mean
    assert search.metrics_["reference"]["name"] == "active v1: attention"


def test_self_training_is_kept_only_when_asked_or_when_it_helps():
    X, y = planted(n=80, noise=())
    pool = {m: a[:60] + 0.01 for m, a in planted(n=200, seed=1, noise=())[0].items()}
    off = ModelSearch(["concat"], self_training="off", repeats=1, n_jobs=2).fit(X, y, unlabelled=pool)
    assert off.best_.name == "concat" and off.best_estimator_.n_pseudo_labels_ == 0
    assert [r["name"] for r in off.metrics_["candidates"]] == ["concat"]
    on = ModelSearch(["concat"], self_training="on", repeats=1, n_jobs=2).fit(X, y, unlabelled=pool)
    assert on.best_.name == "concat +self-training" and on.best_estimator_.n_pseudo_labels_ > 0
    auto = ModelSearch(["concat"], repeats=1, n_jobs=2).fit(X, y, unlabelled=pool)
    rows = {r["name"]: r["macro_f1_mean"] for r in auto.metrics_["candidates"]}
    helps = rows["concat +self-training"] > rows["concat"]
    assert auto.best_.self_training == helps
    with pytest.raises(UnknownNameError):
        ModelSearch(self_training="sometimes").fit(X, y)


def test_too_few_labels_fit_the_first_candidate_without_scores():
    X, y = planted(n=6, noise=())
    y = np.array(list("aabcde"))  # one class with two labels: no fold split can be scored
    search = ModelSearch(n_jobs=1).fit(X, y)
    assert search.best_.name == "logreg" and search.results_ == []
    assert np.isnan(search.metrics_["macro_f1"]) and "too few labels" in search.reason_
    assert search.best_estimator_.predict(X)[:2] is not None


def test_racing_drops_candidates_clearly_behind_and_returns_the_full_searchs_winner():
    X, y = planted(n=200, noise=("image",), informative=("text",), strength=0.5)
    full = ModelSearch(repeats=1, n_jobs=2, race=False).fit(X, y)
    raced = ModelSearch(repeats=1, n_jobs=2).fit(X, y)
    assert raced.best_ == full.best_ and raced.best_.modalities == ("text",)
    splits = {r.name: len(r.macro_f1) for r in raced.results_}
    assert set(splits.values()) == {2, 5}  # the race left some candidates after the first two folds
    assert splits["logreg [image]"] == 2 and splits[raced.best_.name] == 5  # the noise-only model, the winner
    # a candidate scored on all five folds has the same scores as in the full search: the folds are shared
    for name, n in splits.items():
        if n == 5:
            assert raced.result(name).macro_f1 == pytest.approx(full.result(name).macro_f1)
    # the winner's calibration error is measured on out-of-fold probabilities of every item
    assert raced.metrics_["ece"] == pytest.approx(full.metrics_["ece"])
