import numpy as np
import pytest
from PIL import Image, ImageOps

from annotator.config import Settings
from annotator.encoders import load_encoder
from annotator.encoders.registry import Encoders
from annotator.errors import ConfigError, UnknownNameError
from annotator.media import load_audio
from tests.conftest import DATA
from tests.unit.encoders import tiny_models


def _img(name):
    return Image.open(DATA / name).convert("RGB")


def _wav(name):
    return load_audio((DATA / name).read_bytes(), name)


def _check(vectors, n, dim):
    assert vectors.shape == (n, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_default_text_encoder_is_semantic(offline_encoders):
    enc = offline_encoders["text"]
    v = enc.encode(["a cat sleeping on a sofa", "a kitten napping on the couch", "quarterly revenue grew"])
    _check(v, 3, 384)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_default_image_encoder_sees_the_same_photo(offline_encoders):
    enc = offline_encoders["image"]
    v = enc.encode([_img("cat.png"), ImageOps.mirror(_img("cat.png")), _img("coffee.jpg")])
    _check(v, 3, 1280)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def _spanning_forward_passes(enc):
    """Images that span several CPU forward passes, with an odd remainder."""
    images = [_img("cat.png"), _img("coffee.jpg"), ImageOps.mirror(_img("cat.png"))] * enc.cpu_batch_size
    return images[: 2 * enc.cpu_batch_size + 1]


def test_default_image_encoder_gives_each_image_the_same_vector_in_any_batch(offline_encoders):
    """The CPU encodes a few images per forward pass (faster than one big pass): a batch that spans
    several of them must match encoding each image alone."""
    enc = offline_encoders["image"]
    images = _spanning_forward_passes(enc)
    np.testing.assert_allclose(enc.encode(images), np.vstack([enc.encode([img]) for img in images]), atol=1e-5)


def test_forward_batch_size_caps_only_the_cpu():
    from annotator.encoders.base import forward_batch_size

    assert forward_batch_size(32, "cpu", 4) == 4
    assert forward_batch_size(2, "cpu", 4) == 2
    assert forward_batch_size(32, "cuda", 4) == forward_batch_size(32, "cuda:1", 4) == 32


def test_default_audio_encoder_separates_speech_from_a_tone(offline_encoders):
    enc = offline_encoders["audio"]
    v = enc.encode([_wav("cat_speech.wav"), _wav("coffee_speech.wav"), _wav("tone.wav")])
    _check(v, 3, enc.dim)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1


def test_whisper_handles_clips_longer_than_its_window(offline_encoders):
    enc = offline_encoders["audio"]
    long_clip = np.tile(_wav("cat_speech.wav"), 20)[: 16000 * 45]  # 45 s: two windows
    _check(enc.encode([long_clip]), 1, enc.dim)


def test_mfcc_baseline():
    enc = load_encoder("audio", "mfcc")
    v = enc.encode([_wav("cat_speech.wav"), _wav("tone.wav")])
    _check(v, 2, 80)


def test_empty_batches_keep_the_width(offline_encoders):
    for enc in offline_encoders.values():
        assert enc.encode([]).shape == (0, enc.dim)


def test_clip_checkpoint_by_path_gives_one_shared_space(tmp_path):
    path = tiny_models.tiny_clip(tmp_path)
    text, image = load_encoder("text", str(path), device="cpu"), load_encoder("image", str(path), device="cpu")
    assert text.dim == image.dim == 16 and text.space == image.space
    _check(text.encode(["a cat", "dog"]), 2, 16)
    _check(image.encode([_img("cat.png")]), 1, 16)
    with pytest.raises(ConfigError, match="no audio tower"):
        load_encoder("audio", str(path))


def test_a_shared_space_is_asked_without_loading_models_that_cannot_share_one(tmp_path):
    path = tiny_models.tiny_clip(tmp_path)
    clip = Encoders(Settings(data_dir=tmp_path, text_model=str(path), image_model=str(path), device="cpu"))
    assert clip.share_space("text", "image")
    defaults = Encoders(Settings(data_dir=tmp_path))
    assert not defaults.share_space("text", "image") and defaults.names() == {}  # nothing loaded to say so
    mixed = Encoders(Settings(data_dir=tmp_path, text_model=str(path), device="cpu"))
    assert not mixed.share_space("text", "image") and mixed.names() == {}


@pytest.mark.parametrize("builder,dim", [(tiny_models.tiny_resnet, 16), (tiny_models.tiny_vit, 32)])
def test_transformers_image_models_by_path(tmp_path, builder, dim):
    enc = load_encoder("image", str(builder(tmp_path)), device="cpu")
    _check(enc.encode([_img("cat.png"), _img("coffee.jpg")]), 2, dim)
    images = _spanning_forward_passes(enc)  # several CPU forward passes give what one image alone gives
    np.testing.assert_allclose(enc.encode(images), np.vstack([enc.encode([img]) for img in images]), atol=1e-5)


def test_transformers_audio_model_by_path(tmp_path):
    enc = load_encoder("audio", str(tiny_models.tiny_wav2vec2(tmp_path)), device="cpu")
    _check(enc.encode([_wav("cat_speech.wav"), _wav("tone.wav")[:4000]]), 2, 32)


def test_plain_bert_checkpoint_as_text_encoder(tmp_path):
    enc = load_encoder("text", str(tiny_models.tiny_bert(tmp_path)), device="cpu")
    _check(enc.encode(["hello world", "another sentence"]), 2, 32)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown modality 'video'"):
        load_encoder("video")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_encoder("text", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not an audio model"):
        load_encoder("audio", str(tiny_models.tiny_vit(tmp_path)))


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_a_vector_does_not_depend_on_its_batch(offline_encoders, modality):
    """The cache keys vectors by content alone, so batch-mates must not change them."""
    inputs = {"text": ["short", "a much longer sentence about a cat on a sofa in the sun", "x y"],
              "image": [_img("cat.png"), _img("coffee.jpg"), _img("astronaut.png")],
              "audio": [_wav("cat_speech.wav"), _wav("tone.wav")[:5000], _wav("coffee_speech.wav")]}[modality]
    enc = offline_encoders[modality]
    together = enc.encode(inputs)
    alone = np.vstack([enc.encode([x]) for x in inputs])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_whisper_padding_modes_have_distinct_cache_names():
    from annotator.encoders.audio import WhisperEncoder

    fast, exact = WhisperEncoder(), WhisperEncoder(pad_to_window=True)
    assert fast.name != exact.name
    clip = _wav("cat_speech.wav")
    assert float(fast.encode([clip])[0] @ exact.encode([clip])[0]) > 0.9


def test_gpu_preprocessing_path_matches_the_image_processor(tmp_path):
    """The CUDA fast path (resize/crop/normalise as tensors) runs on CPU tensors too: check it
    reproduces CLIP's own image processor, including mixed image sizes and original order."""
    from annotator.encoders.clip import CLIPImageEncoder

    enc = CLIPImageEncoder(str(tiny_models.tiny_clip(tmp_path)), device="cpu")
    images = [_img("cat.png").convert("RGB").resize((80, 64)), _img("coffee.jpg").convert("L").resize((50, 75)),
              _img("astronaut.png").convert("L").resize((80, 64))]  # colour modes differ from the sizes' grouping
    reference = enc._processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"].numpy()
    fast = enc._gpu_pixels(images).numpy()
    assert fast.shape == reference.shape
    assert np.abs(fast - reference).mean() < 0.02


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_part_features_come_with_the_same_vectors(offline_encoders, modality):
    """One forward pass gives both: the pooled vectors equal `encode`'s, the parts are unit-norm
    float16 rows, zero past the text's last token (and past a short clip's last frame)."""
    enc = offline_encoders[modality]
    inputs = {"text": ["a cat", "a long sentence about a small grey cat sitting on a warm window sill"],
              "image": [_img("cat.png"), _img("coffee.jpg")],
              "audio": [_wav("cat_speech.wav"), np.zeros(800, np.float32) + 0.01]}[modality]
    vectors, parts = enc.encode_parts(inputs)
    np.testing.assert_allclose(vectors, enc.encode(inputs), atol=1e-5)
    assert parts.shape == (2, enc.n_parts, enc.dim) and parts.dtype == np.float16
    norms = np.linalg.norm(parts.astype(np.float32), axis=2)
    present = norms > 0
    np.testing.assert_allclose(norms[present], 1.0, atol=2e-3)
    if modality == "text":  # [CLS] a cat [SEP]: 4 tokens; the longer sentence has more
        assert present[0].sum() == 4 and present[1].sum() > 10 and not present[:, present[1].sum():].any()
    elif modality == "image":  # every region of the 4 x 4 grid holds features, and they differ across the image
        assert present.all() and np.linalg.norm(parts[0, 0].astype(np.float32) - parts[0, -1].astype(np.float32)) > 0.1
    else:  # the speech fills all 50 segments; 50 ms of audio is a few frames
        assert present[0].all() and 0 < present[1].sum() < 10 and not present[1, present[1].sum():].any()
