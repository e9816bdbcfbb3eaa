"""The trainable MFCC-GRU audio encoder on synthetic clips whose class is the order of two tones."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from annotator.encoders import load_encoder
from annotator.encoders.mfcc_gru import MFCCGRUEncoder, default_path, train_mfcc_gru
from annotator.encoders.registry import Encoders
from annotator.errors import ConfigError

SR = 16000


def tone_pairs(n_per_class=24, seed=0):
    """Class "up": a 300 Hz tone then a 1200 Hz one; "down": the same tones the other way round.
    Both classes hold the same sounds for the same time; only the order differs."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(2 * n_per_class):
        up = i % 2 == 0
        half = int(SR * rng.uniform(0.4, 0.7))
        t = np.arange(half) / SR
        low, high = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 1200 * t)
        clip = np.concatenate([low, high] if up else [high, low]) * 0.5
        clips.append((clip + 0.05 * rng.normal(size=clip.shape)).astype(np.float32))
        labels.append("up" if up else "down")
    return clips, np.array(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    clips, labels = tone_pairs()
    path = tmp_path_factory.mktemp("gru") / "enc"
    result = train_mfcc_gru(clips, path, labels=list(labels), epochs=25)
    return path, result


def test_the_gru_learns_what_the_order_of_sounds_says(trained):
    path, result = trained
    assert result == {"path": str(path), "trained_on": "labels", "clips": 48}
    enc = MFCCGRUEncoder(path)
    train_clips, train_y = tone_pairs(seed=1)
    test_clips, test_y = tone_pairs(n_per_class=10, seed=2)
    probe = LogisticRegression(max_iter=2000).fit(enc.encode(train_clips), train_y)
    assert probe.score(enc.encode(test_clips), test_y) >= 0.9
    vectors = enc.encode(test_clips)
    assert vectors.shape == (20, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_trained_folder_is_an_encoder_by_path_named_by_its_weights(trained, tmp_path):
    path, _ = trained
    clips, _ = tone_pairs(n_per_class=3, seed=3)
    by_path = load_encoder("audio", str(path), device="cpu")
    assert by_path.name.startswith("audio:mfcc-gru:") and by_path.dim == 128
    np.testing.assert_allclose(by_path.encode(clips), MFCCGRUEncoder(path).encode(clips), atol=1e-6)
    np.testing.assert_allclose(by_path.encode(clips[:1]), by_path.encode(clips)[:1], atol=1e-5)  # batch-independent
    retrained = tmp_path / "retrained"
    train_mfcc_gru(clips, retrained, labels=["a", "b"] * 3, epochs=2)
    assert MFCCGRUEncoder(retrained).name != by_path.name  # other weights: other cache entries
    with pytest.raises(ConfigError, match="not a text model"):
        load_encoder("text", str(path))


def test_without_labels_it_learns_from_the_paired_texts(tmp_path):
    clips, labels = tone_pairs(n_per_class=16)
    rng = np.random.default_rng(0)
    prototypes = {"up": rng.normal(size=32), "down": rng.normal(size=32)}
    texts = np.stack([prototypes[y] + 0.3 * rng.normal(size=32) for y in labels]).astype(np.float32)
    result = train_mfcc_gru(clips, tmp_path / "paired", paired=texts, epochs=25)
    assert result["trained_on"] == "paired text"
    vectors = MFCCGRUEncoder(tmp_path / "paired").encode(clips)
    same = labels[:, None] == labels[None, :]
    similarity = vectors @ vectors.T
    assert similarity[same].mean() > similarity[~same].mean() + 0.1  # clips whose texts agree end up close


def test_the_keyword_finds_the_encoder_trained_under_the_data_folder(settings, trained):
    import shutil

    on = settings.model_copy(update={"audio_model": "mfcc-gru"})
    with pytest.raises(ConfigError, match="annotator audio-encoder --project"):
        Encoders(on).get("audio")
    shutil.copytree(trained[0], default_path(on.data_dir))
    assert Encoders(on).get("audio").name == MFCCGRUEncoder(trained[0]).name
