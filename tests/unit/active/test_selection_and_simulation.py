"""select / errors / simulate on a real store with the real text and image encoders."""

import json

import numpy as np

import pytest

from annotator.active.selection import find_label_errors, select_next
from annotator.active.simulation import simulate
from annotator.runtime import Runtime
from annotator.errors import NotFoundError
from annotator.store import repo
from annotator.training import retrain
from tests.unit.test_training import WORDS, make_project


def test_typiclust_cold_start_with_zero_labels(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=0)
    picks = select_next(store, settings, project_name="p", strategy="typiclust", k=6, runtime=Runtime(settings, encoders=encoders), progress=False)
    assert len({p["id"] for p in picks}) == 6
    assert len({p["id"].split("-")[0] for p in picks}) >= 2  # spread over classes, not one corner
    with pytest.raises(NotFoundError, match="--strategy typiclust"):
        select_next(store, settings, project_name="p", strategy="margin", k=5, runtime=Runtime(settings, encoders=encoders), progress=False)


def test_margin_with_a_model_picks_only_unlabelled_items(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=10)
    settings = settings.model_copy(update={"self_training": "off"})  # any model will do: no search
    retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    picks = select_next(store, settings, project_name="p", strategy="margin", k=8, runtime=Runtime(settings, encoders=encoders), progress=False)
    with store.session() as s:
        p = repo.get_project(s, name="p")
        labelled = {repo.external_ids(s, project=p)[pk] for pk in repo.current_labels(s, project=p)}
    assert len(picks) == 8 and not {x["id"] for x in picks} & labelled
    assert picks[0]["score"] == max(x["score"] for x in picks)  # the most uncertain item comes first


def test_errors_rank_flipped_labels_first(store, settings, encoders, tmp_path):
    rows = make_project(store, tmp_path)
    flips = {"animal-1": "food", "vehicle-2": "animal", "food-3": "vehicle"}
    (tmp_path / "flip.jsonl").write_text("\n".join(
        json.dumps({**r, "label": flips[r["id"]]}) for r in rows if r["id"] in flips))
    from annotator.importer import import_manifest

    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "flip.jsonl")
    found = find_label_errors(store, settings, project_name="p", encoders=encoders, progress=False)
    assert {e["id"] for e in found[:3]} == set(flips)
    top = {e["id"]: e for e in found[:3]}
    assert all(top[i]["suggested"] == i.split("-")[0] for i in flips)


def test_simulate_is_reproducible_and_its_worker_processes_change_nothing(settings, encoders, tmp_path):
    rows = [{"id": f"{c}-{i}", "text": f"a photo of a {w} {i}", "label": c}
            for c, words in WORDS.items() for i, w in enumerate(words * 3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    settings = settings.model_copy(update={"self_training": "off"})  # a forced model: nothing to choose per round
    a = simulate(settings, tmp_path / "m.jsonl", strategy="margin", budget=15, step=5, seeds=1, encoders=encoders,
                 progress=False, head="concat", n_jobs=1)
    b = simulate(settings, tmp_path / "m.jsonl", strategy="margin", budget=15, step=5, seeds=1, encoders=encoders,
                 progress=False, head="concat", n_jobs=2)  # its curves and full-pool fit in two processes
    # Same seed: identical up to BLAS rounding (kernels may round differently with memory alignment
    # and thread counts), which can flip at most one prediction on this 15-item test split.
    one_item = 1 / 15 + 1e-9
    assert set(a["curves"]) == set(b["curves"]) == {"margin", "random"}
    for name in a["curves"]:
        assert [p["labels"] for p in a["curves"][name]] == [p["labels"] for p in b["curves"][name]] == [5, 10, 15]
        assert all(abs(p["accuracy"] - q["accuracy"]) <= one_item for p, q in zip(a["curves"][name], b["curves"][name]))
    assert abs(a["full_accuracy"] - b["full_accuracy"]) <= one_item and a["full_accuracy"] > 0.8


def test_simulation_warm_starts_model_strategies_with_typiclust():
    """Before a model exists, margin's first batch is TypiClust's (same seed, same picks), not random's."""
    from annotator.active.simulation import run_curve

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    y = np.repeat(np.array(list("abcd")), 30)
    x = centres[np.repeat(np.arange(4), 30)] + 0.6 * rng.normal(size=(120, 16))
    features = {"text": (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)}
    test = np.zeros(120, dtype=bool)
    test[::5] = True
    curves = {s: run_curve(features, y, test, s, budget=8, step=4, seed=0) for s in ("margin", "typiclust", "random")}
    assert curves["margin"][0] == curves["typiclust"][0]
    assert curves["margin"][0] != curves["random"][0]


def test_simulation_and_retrain_train_the_same_model_for_the_same_data(store, settings, encoders, tmp_path):
    from annotator.fusion.selection import fit_model
    from annotator.embedding import load_features
    from annotator.indexing import embed_project
    from annotator.training import unlabelled_features
    from annotator.versions import load_version

    make_project(store, tmp_path, labelled=10, images_every=1)
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False, index=False)
    result = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    with store.session() as s:
        project = repo.get_project(s, name="p")
        labels = repo.current_labels(s, project=project)
        items = repo.list_items(s, project=project)
        served, _ = load_version(settings, repo.active_model_version(s, project=project))
    labelled = [it for it in items if it.id in labels]
    X = load_features(labelled, encoders=encoders)
    pool = unlabelled_features([it for it in items if it.id not in labels], encoders, list(X))
    simulated = fit_model(X, [labels[it.id][0] for it in labelled], unlabelled=pool)
    assert type(simulated) is type(served) and simulated.modalities_ == served.modalities_
    assert getattr(simulated, "head", None) == getattr(served, "head", None)
    assert simulated.get_params() == served.get_params() and result.model
    used = {m: X[m] for m in served.modalities_}
    np.testing.assert_allclose(simulated.predict_proba(used), served.predict_proba(used), atol=1e-4)

    # simulations train on the backend's schedule: a search first, then refits of its choice until
    # the labels grow by half (then a search, which chooses what retrain chose on the same labels);
    # on the same labels, the refit is the served model again
    from annotator.fusion.selection import TrainingSchedule

    y = [labels[it.id][0] for it in labelled]
    few = len(y) // 2 + 1  # from here, all the labels are more than half again as many: a search
    schedule = TrainingSchedule().fit({m: a[:few] for m, a in X.items()}, y[:few], unlabelled=pool)
    assert schedule.training_ == "search" and schedule.searches_ == 1
    schedule.fit(X, y, unlabelled=pool)
    assert (schedule.training_, schedule.searches_, schedule.config_.name) == ("search", 2, result.model)
    np.testing.assert_allclose(schedule.estimator_.predict_proba(used), served.predict_proba(used), atol=1e-4)
    schedule.fit(X, y, unlabelled=pool)
    assert schedule.training_ == "refit" and schedule.searches_ == 2
    np.testing.assert_allclose(schedule.estimator_.predict_proba(used), served.predict_proba(used), atol=1e-4)


def test_errors_in_a_multi_label_project_check_every_tag(store, settings, encoders, tmp_path):
    """A missing tag and a wrong extra tag are both found, with the tag set the model suggests."""
    from itertools import combinations

    from annotator.importer import import_manifest

    rows = []
    for n, (a, b) in enumerate(list(combinations(WORDS, 2)) * 5 + [(c, None) for c in WORDS] * 5):
        wa, wb = WORDS[a][n % 8], WORDS[b][(n + 3) % 8] if b else None
        text = f"a picture of a {wa} next to a {wb}" if b else f"a picture of a {wa} alone"
        rows.append({"id": f"m{n}", "text": text, "label": sorted({a, b} - {None})})
    truth = {r["id"]: r["label"] for r in rows}
    wrong = {rows[0]["id"]: rows[0]["label"][:1],  # a tag left out
             rows[-1]["id"]: sorted(rows[-1]["label"] + ["animal" if "animal" not in rows[-1]["label"] else "food"])}
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({**r, "label": wrong.get(r["id"], r["label"])}) for r in rows))
    with store.session() as s:
        import_manifest(s, project_name="tags", manifest=tmp_path / "m.jsonl")
    found = find_label_errors(store, settings, project_name="tags", encoders=encoders, progress=False)
    top = {e["id"]: e for e in found[:4]}
    assert set(wrong) <= set(top)
    assert all(top[i]["label"] == wrong[i] and top[i]["suggested"] == truth[i] for i in wrong)
