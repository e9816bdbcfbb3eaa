import json
import shutil

import numpy as np

from annotator.embedding import embed_items, load_features
from annotator.importer import import_manifest
from annotator.media import MediaFetcher
from annotator.store import repo
from tests.conftest import DATA


def _project(store, tmp_path):
    for name in ("cat.png", "coffee.jpg", "truncated.png", "cat_speech.wav"):
        shutil.copy(DATA / name, tmp_path / name)
    rows = [
        {"id": "cat", "text": "a cat", "image": "cat.png", "audio": "cat_speech.wav"},
        {"id": "coffee", "text": "a coffee", "image": "coffee.jpg"},
        {"id": "broken", "text": "broken image", "image": "truncated.png"},
        {"id": "text-only", "text": "just words"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")


def _embed(store, settings, encoders):
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        with MediaFetcher(settings) as f:
            report = embed_items(items, encoders=encoders, fetcher=f, progress=False)
        return report, load_features(items, encoders=encoders), [i.external_id for i in items]


def test_corrupt_image_fails_its_item_and_the_rest_is_encoded(store, settings, encoders, tmp_path):
    _project(store, tmp_path)
    report, features, ids = _embed(store, settings, encoders)
    assert report.encoded == {"text": 4, "image": 2, "audio": 1}
    assert [(f["id"], f["modality"]) for f in report.failed] == [("broken", "image")]
    assert "corrupt or truncated image" in report.failed[0]["error"]
    image = features["image"]
    present = {i: not np.isnan(row).any() for i, row in zip(ids, image)}
    assert present == {"cat": True, "coffee": True, "broken": False, "text-only": False}
    assert not np.isnan(features["text"]).any()


def test_second_embed_does_no_model_work(store, settings, encoders, tmp_path):
    _project(store, tmp_path)
    _, first, _ = _embed(store, settings, encoders)
    calls = {m: encoders.get(m).inputs for m in ("text", "image", "audio")}
    report, second, _ = _embed(store, settings, encoders)
    assert {m: encoders.get(m).inputs for m in calls} == calls  # not one more input reached a model
    assert report.encoded == {"text": 0, "image": 0, "audio": 0}
    assert report.cached == {"text": 4, "image": 2, "audio": 1}
    for m in first:
        np.testing.assert_array_equal(first[m], second[m])
