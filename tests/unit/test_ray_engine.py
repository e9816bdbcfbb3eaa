"""The batch jobs on a real local Ray cluster (the test session's) against the in-process path,
on a few hundred items made from the bundled sample data: the same vectors, predictions and
selected batch; a corrupt file fails its item only; a re-run encodes nothing."""

import json
import shutil

import numpy as np
import pytest

from annotator.batch import LocalEngine
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.importer import import_manifest
from annotator.indexing import embed_project
from annotator.sample_data import SAMPLE_DIR
from annotator.store import open_store, repo
from tests.conftest import DATA

pytest.importorskip("ray")
COPIES = 5


def _manifest(path):
    """The 48 sample items five times over (240 items): each copy's text differs, its media are the
    same files (cached once); only the first copy keeps its labels, the rest is the pool."""
    rows = []
    for line in (SAMPLE_DIR / "items.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k in range(COPIES):
            copy = {"id": f"{row['id']}-{k}", "text": f"{row['text']} ({k})"}
            copy.update({m: str(SAMPLE_DIR / row[m]) for m in ("image", "audio") if m in row})
            if k == 0 and "label" in row:
                copy["label"] = row["label"]
            rows.append(copy)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _project(root, name, offline_encoders, extra=()):
    settings = Settings(data_dir=root / name)
    store = open_store(settings)
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=_manifest(root / f"{name}.jsonl"))
        for manifest in extra:
            import_manifest(s, project_name="p", manifest=manifest)
    return settings, store, Encoders(settings, overrides=dict(offline_encoders))


@pytest.fixture(scope="module")
def ray_engine(tmp_path_factory, ray_address):
    from annotator.cluster.ray_engine import RayEngine

    engine = RayEngine(Settings(data_dir=tmp_path_factory.mktemp("ray-settings")), address=ray_address, block_rows=32)
    assert engine.cpus == 2 and engine.actors == 1  # the session's cluster: one actor per two CPUs
    yield engine
    engine.close()  # disconnects this process; the session's cluster stays up


@pytest.fixture(scope="module")
def both(tmp_path_factory, offline_encoders, ray_engine):
    """The same items embedded in-process and on Ray, into separate caches."""
    root = tmp_path_factory.mktemp("ray")
    bad = root / "bad.jsonl"
    shutil.copy(DATA / "truncated.png", root / "truncated.png")
    shutil.copy(DATA / "cat.png", root / "gone.png")
    bad.write_text("\n".join(json.dumps(r) for r in [
        {"id": "corrupt", "text": "a broken picture", "image": str(root / "truncated.png")},
        {"id": "missing", "image": str(root / "gone.png")}]))
    local = _project(root, "local", offline_encoders, [bad])
    on_ray = _project(root, "ray", offline_encoders, [bad])
    (root / "gone.png").unlink()  # deleted after the import
    ray_engine.settings = on_ray[0]
    ray_engine.parquet_dir = str(root / "parquet")
    reports = {"local": embed_project(local[1], local[0], project_name="p", encoders=local[2], progress=False),
               "ray": embed_project(on_ray[1], on_ray[0], project_name="p", encoders=on_ray[2], progress=False,
                                    engine=ray_engine)}
    return local, on_ray, reports, root


def _vectors(project):
    settings, store, encoders = project
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
    from annotator.embedding import load_features

    return load_features(items, encoders=encoders)


def test_ray_encodes_the_same_vectors_and_fails_bad_items_alone(both):
    local, on_ray, reports, root = both
    assert reports["ray"].encoded == reports["local"].encoded == {"text": 241, "image": 48, "audio": 16}
    failed = sorted((f["id"], f["modality"]) for f in reports["ray"].failed)
    assert failed == [("corrupt", "image"), ("missing", "image")]
    errors = {f["id"]: f["error"] for f in reports["ray"].failed}
    assert "corrupt or truncated image" in errors["corrupt"] and "file not found" in errors["missing"]
    a, b = _vectors(local), _vectors(on_ray)
    assert set(a) == set(b) == {"text", "image", "audio"}
    for m in a:
        np.testing.assert_array_equal(np.isnan(a[m]), np.isnan(b[m]))
        np.testing.assert_allclose(np.nan_to_num(a[m]), np.nan_to_num(b[m]), atol=1e-5)
    import pyarrow.parquet as pq

    shards = pq.read_table(root / "parquet" / "image").to_pydict()
    assert len(shards["sha"]) == 48 and len(shards["vector"][0]) == a["image"].shape[1]


def test_a_rerun_on_ray_encodes_nothing(both, ray_engine):
    settings, store, encoders = both[1]
    again = embed_project(store, settings, project_name="p", encoders=encoders, progress=False, engine=ray_engine)
    assert again.encoded == {"text": 0, "image": 0, "audio": 0}
    assert again.cached == {"text": 241, "image": 240, "audio": 80}
    assert sorted(f["id"] for f in again.failed) == ["corrupt", "missing"]  # still reported, still alone


def test_ray_gives_the_same_predictions_and_selected_batch(both, ray_engine):
    from annotator.active.selection import select_next
    from annotator.prediction import predict
    from annotator.runtime import Runtime
    from annotator.training import retrain

    settings, store, encoders = both[1]
    retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    runtime = Runtime(settings, encoders=encoders)
    here = predict(store, settings, project_name="p", runtime=runtime, save=False, progress=False,
                   engine=LocalEngine(settings))
    there = predict(store, settings, project_name="p", runtime=runtime, save=False, progress=False, engine=ray_engine)
    assert len(here.predictions) == 241  # "missing" has no usable input
    assert [(p["id"], p["label"]) for p in there.predictions] == [(p["id"], p["label"]) for p in here.predictions]
    np.testing.assert_allclose([p["score"] for p in there.predictions], [p["score"] for p in here.predictions],
                               atol=1e-6)
    assert [f["id"] for f in there.failed] == [f["id"] for f in here.failed]
    picks = {name: select_next(store, settings, project_name="p", strategy="margin", k=15, runtime=runtime,
                               progress=False, engine=engine)
             for name, engine in (("local", None), ("ray", ray_engine))}
    assert [p["id"] for p in picks["ray"]] == [p["id"] for p in picks["local"]]
    np.testing.assert_allclose([p["score"] for p in picks["ray"]], [p["score"] for p in picks["local"]], atol=1e-6)


def test_part_features_on_ray_and_a_coattention_model_scores_the_same_there(both, ray_engine):
    from annotator.embedding import load_features
    from annotator.prediction import predict
    from annotator.runtime import Runtime
    from annotator.training import retrain

    settings, store, encoders = both[1]
    on = settings.model_copy(update={"parts": True})
    encoders.settings = ray_engine.settings = on
    try:
        report = embed_project(store, on, project_name="p", encoders=encoders, progress=False, engine=ray_engine)
        assert report.encoded == {"text": 241, "image": 48, "audio": 16}  # cached without parts: encoded again
        with store.session() as s:
            items = repo.list_items(s, project=repo.get_project(s, name="p"))
        features = load_features(items, encoders=encoders, parts=True)
        for m in ("text", "image", "audio"):  # every item with a vector has its parts
            np.testing.assert_array_equal(np.isnan(features[m]).all(axis=1),
                                          np.isnan(features[f"{m}:parts"]).all(axis=1))
        retrain(store, on, project_name="p", head="coattention", encoders=encoders, progress=False,
                params={"min_steps": 40, "epochs": 5})
        runtime = Runtime(on, encoders=encoders)
        here = predict(store, on, project_name="p", runtime=runtime, save=False, progress=False,
                       engine=LocalEngine(on))
        there = predict(store, on, project_name="p", runtime=runtime, save=False, progress=False, engine=ray_engine)
        assert [(p["id"], p["label"]) for p in there.predictions] == [(p["id"], p["label"]) for p in here.predictions]
        np.testing.assert_allclose([p["score"] for p in there.predictions], [p["score"] for p in here.predictions],
                                   atol=1e-5)
    finally:
        encoders.settings = ray_engine.settings = settings
