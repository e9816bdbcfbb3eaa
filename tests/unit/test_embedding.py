import json
import time
import shutil

import numpy as np
import pytest

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


class _RecordingEncoder:
    """The real image encoder, slowed down, recording when media are prepared and encoded."""

    def __init__(self, inner):
        self.inner, self.events = inner, []
        self.name, self.modality, self.dim = inner.name, inner.modality, inner.dim

    def prepare(self, image):
        self.events.append("prepare")
        return self.inner.prepare(image)

    def encode_prepared(self, prepared):
        self.events.append("encode")
        time.sleep(0.5)  # a slow network: the next chunk's media must not wait for it
        vectors = self.inner.encode_prepared(prepared)
        self.events.append("encoded")
        return vectors

    def encode(self, images):
        return self.encode_prepared([self.prepare(img) for img in images])


def test_media_of_the_next_chunk_are_prepared_while_a_chunk_encodes(store, settings, offline_encoders, tmp_path):
    from PIL import Image

    from annotator.encoders.registry import Encoders

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    recording = _RecordingEncoder(offline_encoders["image"])
    encoders = Encoders(settings, overrides={"image": recording})
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        with MediaFetcher(settings) as f:
            report = embed_items(items, encoders=encoders, fetcher=f, chunk_size=4, progress=False)
        vectors = load_features(items, encoders=encoders)["image"]
    assert report.encoded == {"image": 12} and not report.failed
    first_done = recording.events.index("encoded")
    assert recording.events[:first_done].count("prepare") == 8  # chunk 2 was ready before chunk 1 was encoded
    alone = offline_encoders["image"].encode([Image.open(tmp_path / f"{it.external_id}.png") for it in items])
    assert _cos_min(vectors, alone) >= 0.9999  # the pipeline changes when, not what, is encoded


def test_the_report_says_where_the_time_went(store, settings, offline_encoders, tmp_path):
    """Per-stage seconds (`embed --json` prints them): media stages on the threads, the network,
    the cache; a second run spends nothing on media or the network."""
    from PIL import Image

    from annotator.encoders.registry import Encoders

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": str(i), "image": f"{i}.jpg"}) for i in range(6)))
    encoders = Encoders(settings, overrides={"image": offline_encoders["image"]})
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        with MediaFetcher(settings) as f:
            first = embed_items(items, encoders=encoders, fetcher=f, progress=False).to_dict()["stages"]
            second = embed_items(items, encoders=encoders, fetcher=f, progress=False).to_dict()["stages"]
    assert {"fetch", "decode", "prepare", "media_wait", "network", "cache_write"} <= set(first)
    assert all(first[k] > 0 for k in ("fetch", "decode", "prepare", "network"))
    assert not {"fetch", "decode", "network"} & set(second) and "cache_read" in second


def test_a_query_image_is_decoded_as_embed_decodes_it(project_with_photo):
    """JPEGs are decoded at the smallest scale covering the encoder's input: a search by an item's
    own image must meet the very vector `embed` stored for it."""
    index, store, photo, item_vector = project_with_photo
    _, query = index.encode_query(image=str(photo), trusted=True)
    assert float(query @ item_vector) > 0.99999


def _cos_min(a, b):
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_part_features_are_cached_beside_the_vectors_once_turned_on(store, settings, encoders, tmp_path):
    _project(store, tmp_path)
    _, before, ids = _embed(store, settings, encoders)  # parts off (the default): pooled vectors only
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        nothing_yet = load_features(items, encoders=encoders, parts=True)
    assert np.isnan(nothing_yet["text:parts"]).all() and np.isnan(nothing_yet["image:parts"]).all()
    on = settings.model_copy(update={"parts": True})
    encoders.settings = on
    report, _, _ = _embed(store, on, encoders)
    assert report.encoded == {"text": 4, "image": 2, "audio": 1}  # cached without parts: encoded again
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        features = load_features(items, encoders=encoders, parts=True)
    assert set(features) == {"text", "image", "audio", "text:parts", "image:parts", "audio:parts"}
    assert features["text:parts"].shape == (4, 64 * 384) and features["text:parts"].dtype == np.float16
    assert features["image:parts"].shape == (4, 16 * 1280) and features["audio:parts"].shape == (4, 50 * 384)
    for m in ("text", "image", "audio"):  # the pooled vectors did not change
        np.testing.assert_array_equal(features[m], before[m])
    missing = {i: bool(np.isnan(row).all()) for i, row in zip(ids, features["image:parts"])}
    assert missing == {"cat": False, "coffee": False, "broken": True, "text-only": True}
    again, _, _ = _embed(store, on, encoders)
    assert again.encoded == {"text": 0, "image": 0, "audio": 0}


def test_audio_chunks_are_bounded_by_their_decoded_bytes(store, settings, encoders, tmp_path, monkeypatch):
    """64 clips of the longest decodable audio (600 s, float32 at 16 kHz) were 2.4 GB in one chunk:
    audio chunks hold as many of the longest clips as fit in DECODED_CHUNK_BYTES."""
    import soundfile as sf

    from annotator import embedding

    assert embedding.chunk_rows("audio", 600.0) == 6 and embedding.chunk_rows("image", 600.0) == 64
    assert embedding.chunk_rows("audio", 1.0) == 64 and embedding.chunk_rows("audio", 1e9) == 1
    # here: room for two clips of the configured longest length
    monkeypatch.setattr(embedding, "DECODED_CHUNK_BYTES", 2 * settings.max_audio_s * embedding.AUDIO_BYTES_PER_S)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        sf.write(tmp_path / f"{i}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        rows.append({"id": str(i), "audio": f"{i}.wav"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        with MediaFetcher(settings) as f:
            report = embed_items(items, encoders=encoders, fetcher=f, progress=False)
    audio = encoders.get("audio")
    assert report.encoded == {"audio": 5} and (audio.calls, audio.inputs) == (3, 5)  # 2 + 2 + 1


@pytest.fixture
def project_with_photo(store, settings, offline_encoders, tmp_path):
    from PIL import Image

    from annotator.encoders.registry import Encoders
    from annotator.index.cross_modal import ProjectIndex

    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([(x * 0.3 + y * 0.1) % 256, (y * 0.4) % 256, (x * 0.2 + 40) % 256], -1).astype(np.uint8)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(photo, quality=90)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "photo", "image": "photo.jpg"}))
    encoders = Encoders(settings, overrides={"image": offline_encoders["image"]})
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "m.jsonl")
        items = repo.list_items(s, project=repo.get_project(s, name="p"))
        with MediaFetcher(settings) as f:
            embed_items(items, encoders=encoders, fetcher=f, progress=False)
        vector = load_features(items, encoders=encoders)["image"][0]
    return ProjectIndex(settings, "p", encoders), store, photo, vector
