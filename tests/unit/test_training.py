"""retrain / predict on a real store with the real offline encoders."""

import json

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from annotator.errors import NotEnoughLabelsError, NotFoundError
from annotator.fusion import FusionClassifier
from annotator.importer import import_manifest
from annotator.prediction import predict
from annotator.store import repo
from annotator.store.models import Prediction, TrainingRun
from annotator.training import holdout_split, retrain, unlabelled_features

WORDS = {
    "animal": ["dog", "cat", "horse", "rabbit", "owl", "fox", "cow", "sheep"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "tram", "motorbike", "van"],
    "food": ["pizza", "apple", "bread", "salad", "soup", "cheese", "banana", "pasta"],
}
COLORS = {"animal": (200, 40, 40), "vehicle": (40, 40, 200), "food": (40, 180, 40)}


def make_project(store, tmp_path, n_per_class=16, labelled=None, images_every=3):
    rng = np.random.default_rng(0)
    rows = []
    for cls, words in WORDS.items():
        for i in range(n_per_class):
            row = {"id": f"{cls}-{i}", "text": f"a picture of a {words[i % len(words)]} {['today', 'outside', 'at home', 'here'][i % 4]}"}
            if i % images_every == 0:
                color = np.clip(np.array(COLORS[cls]) + rng.integers(-30, 30, 3), 0, 255)
                path = tmp_path / f"{cls}-{i}.png"
                Image.new("RGB", (48, 48), tuple(int(c) for c in color)).save(path)
                row["image"] = str(path)
            if labelled is None or i < labelled:
                row["label"] = cls
            rows.append(row)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")
    return rows


def _active(store):
    with store.session() as s:
        mv = repo.active_model_version(s, project=repo.get_project(s, name="p"))
        return mv.version if mv else None


def test_holdout_split_is_stable_and_covers_each_class():
    keys = [f"k{i}" for i in range(100)]
    labels = ["a"] * 50 + ["b"] * 48 + ["c"] * 2
    held = holdout_split(keys, labels)
    assert 0.1 < held.mean() < 0.3
    for c in "abc":
        rows = [i for i, lab in enumerate(labels) if lab == c]
        assert held[rows].any() and not held[rows].all()
    # adding items never moves an existing item across the split
    more = holdout_split(keys + [f"k{i}" for i in range(100, 200)], labels + ["a"] * 100)
    assert (more[:98] == held[:98]).all()


def test_retrain_then_predict(store, settings, encoders, tmp_path):
    make_project(store, tmp_path)
    result = retrain(store, settings, project_name="p", head="attention", encoders=encoders, progress=False)
    assert result.model_version == "v1" and result.promoted and result.reason == "no active version"
    assert result.metrics["evaluation"] == "holdout"
    assert result.metrics["accuracy"] >= 0.9 and result.n_labels == 48
    assert set(result.metrics["per_class_f1"]) == set(WORDS)
    assert 0 <= result.metrics["ece"] <= 1

    out = predict(store, settings, project_name="p", encoders=encoders, progress=False)
    assert out.model_version == "v1" and out.failed == [] and len(out.predictions) == 48
    accuracy = np.mean([p["label"] == p["id"].split("-")[0] for p in out.predictions])
    assert accuracy >= 0.9
    assert all(0 < p["score"] <= 1 and p["model_version"] == "v1" for p in out.predictions)
    with_image = next(p for p in out.predictions if p["id"] == "animal-0")
    assert set(with_image["modality_weights"]) == {"text", "image"}
    with store.session() as s:
        assert len(s.scalars(select(Prediction)).all()) == 48


def test_worse_model_is_refused_unless_forced(store, settings, encoders, tmp_path):
    make_project(store, tmp_path)
    retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    bad = retrain(store, settings, project_name="p", encoders=encoders, progress=False,
                  params={"epochs": 1, "lr": 1e-6})
    assert bad.model_version == "v2" and not bad.promoted
    assert bad.metrics["macro_f1"] < bad.previous["macro_f1"]
    assert "kept v1" in bad.reason and _active(store) == "v1"
    forced = retrain(store, settings, project_name="p", encoders=encoders, progress=False,
                     params={"epochs": 1, "lr": 1e-6}, force=True)
    assert forced.promoted and _active(store) == "v3"
    with store.session() as s:
        statuses = {v.version: v.status for v in repo.list_model_versions(s, project=repo.get_project(s, name="p"))}
    assert statuses == {"v1": "retired", "v2": "candidate", "v3": "active"}


def test_crash_mid_training_leaves_active_version_serving(store, settings, encoders, tmp_path, monkeypatch):
    make_project(store, tmp_path)
    retrain(store, settings, project_name="p", encoders=encoders, progress=False)

    def explode(self, X, y, unlabelled=None):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(FusionClassifier, "fit", explode)
    with pytest.raises(RuntimeError, match="simulated"):
        retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    monkeypatch.undo()
    assert _active(store) == "v1"
    with store.session() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
        assert [r.status for r in runs] == ["succeeded", "failed"] and "simulated" in runs[1].error
        assert len(repo.list_model_versions(s, project=repo.get_project(s, name="p"))) == 1
    assert not (settings.project_dir("p") / "models" / "v2").exists()
    assert predict(store, settings, project_name="p", encoders=encoders, progress=False).model_version == "v1"


def test_item_with_only_an_image_still_gets_a_prediction(store, settings, encoders, tmp_path):
    make_project(store, tmp_path)
    retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    path = tmp_path / "lonely.png"
    Image.new("RGB", (48, 48), COLORS["vehicle"]).save(path)
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "lonely", "image": str(path)}))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "more.jsonl")
    [pred] = predict(store, settings, project_name="p", item_ids=["lonely"], encoders=encoders, progress=False).predictions
    assert pred["modality_weights"] == {"text": 0.0, "image": 1.0}
    assert pred["label"] in WORDS


def test_few_labels_use_cross_validation(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=4)
    result = retrain(store, settings, project_name="p", head="concat", encoders=encoders, progress=False)
    assert result.n_labels == 12 and result.metrics["evaluation"] == "4-fold cross-validation"
    assert result.metrics["accuracy"] > 0.6


def test_errors_name_the_fix(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=1)
    with pytest.raises(NotEnoughLabelsError, match="3 labelled item"):
        retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    with pytest.raises(NotFoundError, match="run `annotator retrain --project p`"):
        predict(store, settings, project_name="p", encoders=encoders, progress=False)


def test_only_one_process_trains_a_project_at_a_time(store, settings, encoders, tmp_path):
    from annotator.errors import TrainingInProgressError
    from annotator.training import training_lock

    make_project(store, tmp_path)
    with training_lock(settings, "p") as acquired:  # as if `annotator serve` were training it now
        assert acquired
        with pytest.raises(TrainingInProgressError, match="being trained by another process"):
            retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    with store.session() as s:  # the refused attempt left no run behind, and nothing marked interrupted
        assert s.scalars(select(TrainingRun)).all() == []
    assert retrain(store, settings, project_name="p", encoders=encoders, progress=False).model_version == "v1"


def test_retrain_self_trains_on_unlabelled_items_with_cached_vectors(store, settings, encoders, tmp_path):
    from annotator.embedding import embed_project

    make_project(store, tmp_path, labelled=6)  # 18 labels, 30 unlabelled items
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False, index=False)
    on = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    assert 0 < on.metrics["pseudo_labels"] <= 30  # some of the 30 unlabelled items, never more
    off = retrain(store, settings.model_copy(update={"self_training": False}), project_name="p", encoders=encoders,
                  progress=False, force=True)
    assert off.metrics["pseudo_labels"] == 0
    ratio_zero = retrain(store, settings, project_name="p", encoders=encoders, progress=False, force=True,
                         params={"pseudo_label_ratio": 0})
    assert ratio_zero.metrics["pseudo_labels"] == 0
    with store.session() as s:
        project = repo.get_project(s, name="p")
        labels = repo.current_labels(s, project=project)
        pool = [it for it in repo.list_items(s, project=project) if it.id not in labels]
    assert len(pool) == 30
    sample = unlabelled_features(pool, encoders, ["text"], limit=7)  # a large pool is sampled down
    assert set(sample) == {"text"} and sample["text"].shape == (7, encoders.cache("text").dim)
