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
from annotator.fusion.selection import ModelSearch
from annotator.training import retrain, unlabelled_features
from annotator.runtime import Runtime
from annotator.versions import load_version

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


def test_retrain_then_predict(store, settings, encoders, tmp_path):
    make_project(store, tmp_path)
    result = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    assert result.model_version == "v1" and result.promoted and result.reason == "no active version"
    assert result.metrics["evaluation"] == "5-fold cross-validation x 2"  # 48 labels: folds repeated
    assert result.metrics["accuracy"] >= 0.9 and result.n_labels == 48
    assert 0 <= result.metrics["ece"] <= 1
    # the candidate table: every head, the linear baseline and each modality alone, the winner marked;
    # no image-only model, since two items in three have no image
    names = {row["name"] for row in result.metrics["candidates"]}
    assert {"logreg", "concat", "weighted", "attention", "gated", "tensor", "logreg [text]", "concat [text]"} <= names
    assert not any("[image]" in name for name in names)
    assert [row["name"] for row in result.metrics["candidates"] if row["chosen"]] == [result.model]
    assert all(0 <= row["macro_f1_mean"] <= 1 and row["macro_f1_sd"] >= 0 for row in result.metrics["candidates"])

    out = predict(store, settings, project_name="p", runtime=Runtime(settings, encoders=encoders), progress=False)
    assert out.model_version == "v1" and out.failed == [] and len(out.predictions) == 48
    accuracy = np.mean([p["label"] == p["id"].split("-")[0] for p in out.predictions])
    assert accuracy >= 0.9
    assert all(0 < p["score"] <= 1 and p["model_version"] == "v1" for p in out.predictions)
    with_image = next(p for p in out.predictions if p["id"] == "animal-0")
    used = set(result.model.split("[")[1].split("]")[0].split("+")) if "[" in result.model else {"text", "image"}
    assert set(with_image["modality_weights"]) == used
    with store.session() as s:
        assert len(s.scalars(select(Prediction)).all()) == 48


def test_worse_model_is_refused_unless_forced(store, settings, encoders, tmp_path):
    make_project(store, tmp_path)
    retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    bad = retrain(store, settings, project_name="p", head="attention", encoders=encoders, progress=False,
                  params={"epochs": 1, "min_steps": 1, "lr": 1e-6})
    assert bad.model_version == "v2" and not bad.promoted
    # like with like: v1's configuration was scored on the same folds of today's labels
    assert bad.previous["name"].startswith("active v1: ")
    assert bad.metrics["macro_f1"] < bad.previous["macro_f1_mean"]
    assert "kept v1" in bad.reason and _active(store) == "v1"
    forced = retrain(store, settings, project_name="p", head="attention", encoders=encoders, progress=False,
                     params={"epochs": 1, "min_steps": 1, "lr": 1e-6}, force=True)
    assert forced.promoted and _active(store) == "v3"
    with store.session() as s:
        statuses = {v.version: v.status for v in repo.list_model_versions(s, project=repo.get_project(s, name="p"))}
    assert statuses == {"v1": "retired", "v2": "candidate", "v3": "active"}


def test_crash_mid_training_leaves_active_version_serving(store, settings, encoders, tmp_path, monkeypatch):
    make_project(store, tmp_path)
    retrain(store, settings, project_name="p", encoders=encoders, progress=False)

    def explode(self, X, y, unlabelled=None):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ModelSearch, "fit", explode)
    with pytest.raises(RuntimeError, match="simulated"):
        retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    monkeypatch.undo()
    assert _active(store) == "v1"
    with store.session() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
        assert [r.status for r in runs] == ["succeeded", "failed"] and "simulated" in runs[1].error
        assert len(repo.list_model_versions(s, project=repo.get_project(s, name="p"))) == 1
    assert not (settings.project_dir("p") / "models" / "v2").exists()
    assert predict(store, settings, project_name="p", runtime=Runtime(settings, encoders=encoders), progress=False).model_version == "v1"


def test_item_with_only_an_image_still_gets_a_prediction(store, settings, encoders, tmp_path):
    """Every labelled item has text, and text alone would do; but the project also holds an item with
    only an image, so a text-only model is not a candidate and that item is pre-labelled too."""
    from annotator.indexing import embed_project

    make_project(store, tmp_path)
    path = tmp_path / "lonely.png"
    Image.new("RGB", (48, 48), COLORS["vehicle"]).save(path)
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "lonely", "image": str(path)}))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "more.jsonl")
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False, index=False)
    result = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    assert "[" not in result.model and not any("[text]" in r["name"] for r in result.metrics["candidates"])
    [pred] = predict(store, settings, project_name="p", item_ids=["lonely"], runtime=Runtime(settings, encoders=encoders), progress=False).predictions
    assert pred["modality_weights"] == {"text": 0.0, "image": 1.0}
    assert pred["label"] in WORDS


def test_few_labels_use_cross_validation(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=4)
    result = retrain(store, settings, project_name="p", head="concat", encoders=encoders, progress=False)
    assert result.n_labels == 12 and result.metrics["evaluation"] == "4-fold cross-validation x 2"
    # a forced model: no other candidate; self-training only if the same folds say it helps
    assert result.model in ("concat", "concat +self-training")
    assert {r["name"] for r in result.metrics["candidates"]} <= {"concat", "concat +self-training"}
    assert result.metrics["accuracy"] > 0.6


def test_errors_name_the_fix(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=1)
    with pytest.raises(NotEnoughLabelsError, match="3 labelled item"):
        retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    with pytest.raises(NotFoundError, match="run `annotator retrain --project p`"):
        predict(store, settings, project_name="p", runtime=Runtime(settings, encoders=encoders), progress=False)


def test_only_one_process_trains_a_project_at_a_time(store, settings, encoders, tmp_path):
    from annotator.errors import TrainingInProgressError
    from annotator.training import training_lock

    make_project(store, tmp_path)
    with training_lock(store, "p") as acquired:  # as if `annotator serve` were training it now
        assert acquired
        with pytest.raises(TrainingInProgressError, match="being trained by another process"):
            retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    with store.session() as s:  # the refused attempt left no run behind, and nothing marked interrupted
        assert s.scalars(select(TrainingRun)).all() == []
    assert retrain(store, settings, project_name="p", encoders=encoders, progress=False).model_version == "v1"


def test_retrain_self_trains_where_the_folds_say_so(store, settings, encoders, tmp_path):
    from annotator.indexing import embed_project

    make_project(store, tmp_path, labelled=6)  # 18 labels, 30 unlabelled items
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False, index=False)
    on = retrain(store, settings.model_copy(update={"self_training": "on"}), project_name="p", head="attention",
                 encoders=encoders, progress=False)
    assert on.model == "attention +self-training" and 0 < on.metrics["pseudo_labels"] <= 30
    off = retrain(store, settings.model_copy(update={"self_training": "off"}), project_name="p", head="attention",
                  encoders=encoders, progress=False, force=True)
    assert off.model == "attention" and off.metrics["pseudo_labels"] == 0
    assert not any("self-training" in r["name"] for r in off.metrics["candidates"] if r["name"] != off.previous["name"])
    auto = retrain(store, settings, project_name="p", head="attention", encoders=encoders, progress=False, force=True)
    rows = {r["name"]: r for r in auto.metrics["candidates"]}
    kept = rows["attention +self-training"]["macro_f1_mean"] > rows["attention"]["macro_f1_mean"]
    assert auto.model == ("attention +self-training" if kept else "attention")  # the folds decided
    assert ("self-training raises it" if kept else "self-training left off") in auto.metrics["why"]
    ratio_zero = retrain(store, settings.model_copy(update={"self_training": "on"}), project_name="p",
                         head="attention", encoders=encoders, progress=False, force=True,
                         params={"pseudo_label_ratio": 0})
    assert ratio_zero.metrics["pseudo_labels"] == 0
    with store.session() as s:
        project = repo.get_project(s, name="p")
        labels = repo.current_labels(s, project=project)
        pool = [it for it in repo.list_items(s, project=project) if it.id not in labels]
    assert len(pool) == 30
    sample = unlabelled_features(pool, encoders, ["text"], limit=7)  # a large pool is sampled down
    assert set(sample) == {"text"} and sample["text"].shape == (7, encoders.cache("text").dim)


def test_the_served_model_saw_every_label(store, settings, encoders, tmp_path, monkeypatch):
    """The promoted version is fitted on all 48 labels, not on the folds' four fifths."""
    from annotator.fusion import LinearClassifier

    make_project(store, tmp_path)
    seen: list[int] = []
    for cls in (FusionClassifier, LinearClassifier):
        original = cls.fit

        def spy(self, X, y, unlabelled=None, _original=original):
            seen.append(len(y))
            return _original(self, X, y, unlabelled=unlabelled)

        monkeypatch.setattr(cls, "fit", spy)
    result = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    assert seen[-1] == 48 == result.n_labels  # the last fit in this process is the served model's
    with store.session() as s:
        mv = repo.active_model_version(s, project=repo.get_project(s, name="p"))
        assert mv.head == result.model
        clf, _ = load_version(settings, mv)
    assert type(clf).__name__ == ("LinearClassifier" if result.model.startswith("logreg") else "FusionClassifier")
    assert json.loads((settings.project_dir("p") / "models" / "v1" / "meta.json").read_text())["trained_on"] == 48


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database_settings(request, settings):
    """Settings on SQLite, or on a fresh database of the session's Postgres server."""
    if request.param == "sqlite":
        return settings
    return settings.model_copy(update={"database_url": request.getfixturevalue("pg_database")})


def test_the_training_lock_holds_across_processes(any_database_settings, tmp_path):
    """A file lock beside the SQLite file; an advisory lock on Postgres (which also holds across hosts)."""
    import subprocess
    import sys
    import time

    from annotator.store import open_store
    from annotator.training import training_lock

    settings = any_database_settings
    store = open_store(settings)
    ready = tmp_path / "held"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib\n"
        "from annotator.config import Settings\n"
        "from annotator.store import open_store\n"
        "from annotator.training import training_lock\n"
        "with training_lock(open_store(Settings(data_dir=sys.argv[1], database_url=sys.argv[3])), 'p') as got:\n"
        "    assert got\n"
        "    pathlib.Path(sys.argv[2]).touch()\n"
        "    time.sleep(30)\n"), str(settings.data_dir), str(ready), settings.resolved_database_url])
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists()
        with training_lock(store, "p") as acquired:
            assert not acquired  # another process trains this project
        with training_lock(store, "q") as acquired:
            assert acquired  # ... but not this one
    finally:
        child.kill()
        child.wait()
    deadline = time.time() + 10  # Postgres notices the killed client's closed connection within moments
    while True:
        with training_lock(store, "p") as acquired:
            if acquired or time.time() > deadline:
                break
        time.sleep(0.1)
    assert acquired  # a killed holder leaves the lock free
    store.close()

def test_old_version_folders_are_pruned_to_the_retention(store, settings, encoders, tmp_path):
    """#15: every retrain wrote a version folder and none was ever removed."""
    from annotator.versions import version_dir

    make_project(store, tmp_path, n_per_class=6)
    settings = settings.model_copy(update={"keep_versions": 2})
    for _ in range(4):
        retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False, force=True)
    with store.session() as s:
        statuses = {v.version: v.status for v in repo.list_model_versions(s, project=repo.get_project(s, name="p"))}
    assert statuses == {"v1": "pruned", "v2": "retired", "v3": "retired", "v4": "active"}
    folders = sorted(p.name for p in (settings.project_dir("p") / "models").iterdir() if not p.name.startswith("."))
    assert folders == ["v2", "v3", "v4"] and not version_dir(settings, "p", "v1").exists()
    hidden = [p for p in (settings.project_dir("p") / "models").iterdir() if p.name.startswith(".")]
    assert len(hidden) == 3  # one generation per kept version, none left behind by v1
    with store.session() as s, pytest.raises(NotFoundError, match="pruned"):
        repo.promote_model_version(s, project=repo.get_project(s, name="p"), version="v1")
    with store.session() as s:  # a kept one still rolls back
        repo.promote_model_version(s, project=repo.get_project(s, name="p"), version="v2")
    assert _active(store) == "v2"


def test_retrains_report_when_labelling_can_stop(store, settings, encoders, tmp_path):
    """The new model and the active one label the same unlabelled sample; when three retrains in a
    row change (almost) nothing, the signal says stop. Every item labelled: nothing left to do."""
    make_project(store, tmp_path, labelled=3)
    first = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    assert first.metrics["stopping"]["kappa"] is None and first.metrics["stopping"]["signal"] == "keep going"
    make_project(store, tmp_path, labelled=6)  # the same manifest with more labels: a re-import
    more = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False, force=True)
    # the stop set: unlabelled items with cached vectors (here those sharing a caption with a labelled one)
    assert more.metrics["stopping"]["compared_with"] == "v1" and 0 < more.metrics["stopping"]["stop_set"] <= 48 - 18
    assert -1 <= more.metrics["stopping"]["kappa"] <= 1
    signals = []
    for _ in range(3):  # no new label: the predictions cannot move
        again = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False, force=True)
        assert again.metrics["stopping"]["kappa"] == 1.0
        signals.append(again.metrics["stopping"]["signal"])
    assert signals[-1] == "stop" and again.to_dict()["stopping"]["mean_kappa"] == 1.0
    make_project(store, tmp_path)  # every item labelled
    done = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False, force=True)
    assert done.metrics["stopping"]["signal"] == "stop" and done.metrics["stopping"]["why"] == "every item is labelled"
    assert done.metrics["stopping"]["f1_per_100_labels"] is not None


def test_each_control_gets_its_own_versions_and_a_control_with_few_labels_is_skipped(store, settings, encoders, tmp_path):
    """A Label Studio config with several questions: each control with labels is trained after the
    primary, versioned and promoted on its own; one with under 4 labels is reported, not fatal."""
    make_project(store, tmp_path, n_per_class=8)
    with store.session() as s:
        p = repo.get_project(s, name="p")
        items = repo.list_items(s, project=p)
        alive = [repo.LabelRecord(it.id, ["living" if it.external_id.startswith("animal") else "thing"],
                                  f"ls:{it.id}#alive", control="alive") for it in items]
        few = [repo.LabelRecord(it.id, ["x"], f"ls:{it.id}#few", control="few") for it in items[:2]]
        repo.upsert_labels(s, project=p, records=alive + few)
    first = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    assert first.model_version == "v1" and first.control is None
    by_control = {c.control: c for c in first.controls}
    assert set(by_control) == {"alive", "few"}
    assert by_control["alive"].model_version == "alive.v1" and by_control["alive"].promoted
    assert by_control["alive"].metrics["accuracy"] >= 0.75  # a third are animals: 0.67 by always saying "thing"
    assert by_control["few"].model_version == "" and "need at least 4" in by_control["few"].reason
    summary = first.to_dict()
    assert summary["controls"]["alive"]["model_version"] == "alive.v1" and "controls" not in summary["controls"]["alive"]

    second = retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    assert second.model_version == "v2" and second.controls[0].model_version == "alive.v2"
    with store.session() as s:
        p = repo.get_project(s, name="p")
        assert repo.active_model_version(s, project=p).version == "v2"  # promoting alive.v2 left v2 active
        assert repo.active_model_version(s, project=p, control="alive").version == "alive.v2"
        assert [v.version for v in repo.list_model_versions(s, project=p, control="alive")] == ["alive.v1", "alive.v2"]
    runtime = Runtime(settings, encoders=encoders)
    with store.session() as s:
        p = repo.get_project(s, name="p")
        model = runtime.active_model(s, p, "alive")
    assert model.version == "alive.v2" and set(model.classifier.classes_) == {"living", "thing"}
    assert (settings.project_dir("p") / "models" / "alive.v2" / "meta.json").exists()


def test_with_part_features_coattention_competes_and_serves_from_them(store, settings, encoders, tmp_path):
    from annotator.embedding import load_features
    from annotator.explain import explain_item

    on = settings.model_copy(update={"parts": True})
    encoders.settings = on
    make_project(store, tmp_path, n_per_class=10)
    auto = retrain(store, on, project_name="p", encoders=encoders, progress=False)
    row = next(r for r in auto.metrics["candidates"] if r["name"] == "coattention")
    assert row["macro_f1_mean"] is not None and row.get("error") is None

    forced = retrain(store, on, project_name="p", head="coattention", force=True, encoders=encoders, progress=False)
    assert forced.promoted and forced.model == "coattention"
    runtime = Runtime(on, encoders=encoders)
    out = predict(store, on, project_name="p", runtime=runtime, progress=False)
    assert np.mean([p["label"] == p["id"].split("-")[0] for p in out.predictions]) >= 0.9
    # served from the parts: the scores are the model's on the cached part-level features
    with store.session() as s:
        mv = repo.active_model_version(s, project=repo.get_project(s, name="p"))
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        clf, _ = load_version(on, mv)
        features = load_features(items, encoders=encoders, parts=True)
    assert clf.uses_parts and features["text:parts"].shape[1] == 64 * 384
    expected = clf.predict_proba(features).max(axis=1)
    served = {p["id"]: p["score"] for p in out.predictions}
    np.testing.assert_allclose([served[it.external_id] for it in items], expected, rtol=1e-4)

    e = explain_item(store, on, project_name="p", item_id="animal-0", runtime=runtime)
    assert e.label == "animal" and [w for w, _ in e.words] == "a picture of a dog today".split()


def test_coattention_without_part_features_is_a_clear_error(store, settings, encoders, tmp_path):
    from annotator.errors import ConfigError

    make_project(store, tmp_path, n_per_class=4)
    with pytest.raises(ConfigError, match="ANNOTATOR_PARTS=true"):
        retrain(store, settings, project_name="p", head="coattention", encoders=encoders, progress=False)
    assert _active(store) is None


def _versions(store):
    with store.session() as s:
        return {mv.version: (mv.status, mv.head, mv.metrics.get("training"))
                for mv in repo.list_model_versions(s, project=repo.get_project(s, name="p"))}


def test_refits_serve_the_chosen_configuration_and_say_when_a_search_is_due(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, labelled=6)  # 18 labels
    first = retrain(store, settings, project_name="p", mode="refit", encoders=encoders, progress=False)
    # before any search: the plain baseline serves at once, and the search is due
    assert (first.model_version, first.promoted, first.model, first.training) == ("v1", True, "logreg", "refit")
    assert first.search_due == "no model search yet"
    assert 0 <= first.metrics["macro_f1"] <= 1 and first.metrics["evaluation"].endswith("-fold cross-validation")
    again = retrain(store, settings, project_name="p", mode="refit", encoders=encoders, progress=False)
    assert again.model == "logreg" and again.metrics["warm_start"]  # from v1's coefficients

    searched = retrain(store, settings, project_name="p", encoders=encoders, progress=False)
    assert searched.training == "search" and searched.search_due is None and searched.promoted
    assert sorted(searched.metrics["classes"]) == sorted(WORDS)

    make_project(store, tmp_path, labelled=7)  # 21 labels: fewer than half again as many
    refit = retrain(store, settings, project_name="p", mode="refit", encoders=encoders, progress=False)
    assert refit.training == "refit" and refit.promoted and refit.n_labels == 21
    assert refit.model == searched.model  # the search's choice, fitted again on every label
    assert refit.search_due is None
    assert _versions(store)["v4"] == ("active", searched.model, "refit")

    make_project(store, tmp_path, labelled=10)  # 30 labels: grown by half since the search
    grown = retrain(store, settings, project_name="p", mode="refit", encoders=encoders, progress=False)
    assert grown.search_due == "labels grew from 18 to 30 since the last search"


def test_a_refit_serves_while_a_search_runs_and_a_better_search_result_is_promoted(store, settings, encoders, tmp_path,
                                                                                  monkeypatch):
    import threading

    import annotator.training as training

    make_project(store, tmp_path, labelled=12)  # 36 labels
    bad = {"epochs": 1, "min_steps": 1, "lr": 1e-6}  # a configuration that has not learned anything
    v1 = retrain(store, settings, project_name="p", head="attention", params=bad, force=True, encoders=encoders,
                 progress=False)
    assert v1.promoted

    searching, release = threading.Event(), threading.Event()
    waiting = training._training_lock_waiting

    def held_before_recording(*args, **kwargs):  # the search has its result; hold it until the refit served
        searching.set()
        assert release.wait(120)
        return waiting(*args, **kwargs)

    monkeypatch.setattr(training, "_training_lock_waiting", held_before_recording)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", training.search_in_background(
        store, settings, project_name="p", controls=[None], encoders=encoders)))
    thread.start()
    assert searching.wait(300)
    # a second search of the project waits for nobody: it is refused at once
    assert training.search_in_background(store, settings, project_name="p", controls=[None], encoders=encoders) is None

    make_project(store, tmp_path, labelled=13)  # a correction arrives while the search runs
    refit = retrain(store, settings, project_name="p", mode="refit", head="attention", params=bad,
                    encoders=encoders, progress=False)
    assert thread.is_alive() and refit.promoted and _active(store) == refit.model_version == "v2"
    assert refit.metrics["warm_start"]  # the serving network, trained on with the new label

    release.set()
    thread.join(300)
    [found] = out["r"]
    # compared with the configuration that served when it began (still serving, refitted), on the same folds
    assert found.training == "search" and found.model != "attention" and found.promoted, found.reason
    assert found.metrics["macro_f1"] > found.previous["macro_f1_mean"]
    assert _active(store) == found.model_version == "v3"
    with store.session() as s:
        p = repo.get_project(s, name="p")
        assert repo.has_training_request(s, project=p)  # so the labels that came meanwhile are used
        run = s.scalars(select(TrainingRun).where(TrainingRun.trigger == "backend search")).one()
        assert run.status == "searched" and run.model_version == "v3" and run.finished_at >= run.started_at

    # refits now follow the search's choice: a refit never goes back to the configuration it replaced
    after = retrain(store, settings, project_name="p", mode="refit", encoders=encoders, progress=False)
    assert after.model == found.model and after.promoted and after.n_labels == 39
