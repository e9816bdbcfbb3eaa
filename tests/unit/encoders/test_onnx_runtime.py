"""The ONNX Runtime path of the default encoders: same vectors as torch, exported once, repaired when
damaged, chosen by ``auto`` on a CPU, refused where it cannot run."""

import json
import os
import logging
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from annotator.encoders import load_encoder
from annotator.encoders import onnx_runtime
from annotator.encoders.image import EfficientNetLiteEncoder, sample_images
from annotator.encoders.text import default_text_model_path
from annotator.errors import ConfigError
from tests.conftest import DATA

TEXTS = ["a cat sleeping on a sofa", "", "quarterly revenue grew by 4 %", "ünïcödé — text ✓",
         "a very long review that goes on " * 200, "short", "two words"]


def _images():
    cat, coffee = Image.open(DATA / "cat.png"), Image.open(DATA / "coffee.jpg")
    return [cat, coffee, ImageOps.mirror(cat), ImageOps.grayscale(coffee), Image.open(DATA / "astronaut.png")]


@pytest.fixture(scope="module")
def torch_encoders():
    return {"image": load_encoder("image", device="cpu", runtime="torch"),
            "text": load_encoder("text", device="cpu", runtime="torch")}


def _cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_auto_runs_the_default_encoders_on_onnx_on_a_cpu(offline_encoders):
    assert onnx_runtime.resolve_runtime("auto", "cpu") == "onnx"
    assert onnx_runtime.resolve_runtime("auto", "cuda") == "torch"
    assert offline_encoders["image"].runtime == offline_encoders["text"].runtime == "onnx"
    assert offline_encoders["text"]._forward is not None  # the ONNX session, not sentence-transformers
    assert offline_encoders["audio"].runtime == "ctranslate2-int8"


@pytest.mark.parametrize("modality", ["image", "text"])
def test_onnx_vectors_match_torch_item_by_item(modality, offline_encoders, torch_encoders):
    inputs = _images() if modality == "image" else TEXTS
    onnx_vectors = offline_encoders[modality].encode(inputs)
    torch_vectors = torch_encoders[modality].encode(inputs)
    assert onnx_vectors.shape == torch_vectors.shape
    assert _cosines(onnx_vectors, torch_vectors).min() >= 0.999
    # same vectors, so the same name: caches and trained models carry over between runtimes
    assert offline_encoders[modality].name == torch_encoders[modality].name


def test_int8_vectors_are_close_but_named_apart(tmp_path, offline_encoders, torch_encoders):
    image8 = load_encoder("image", device="cpu", runtime="onnx", int8=True, export_dir=tmp_path)
    text8 = load_encoder("text", device="cpu", runtime="onnx", int8=True, export_dir=tmp_path)
    assert image8.name != torch_encoders["image"].name and text8.name != torch_encoders["text"].name
    image_recipe = onnx_runtime.int8_recipe(static=True)
    assert image8.name.endswith(":onnx-" + image_recipe) and text8.name.endswith(":onnx-int8-w7")
    image_cos = _cosines(image8.encode(_images()), torch_encoders["image"].encode(_images()))
    text_cos = _cosines(text8.encode(TEXTS), torch_encoders["text"].encode(TEXTS))
    # 8-bit weights where the CPU cannot saturate, 7-bit ones elsewhere (`int8_recipe`)
    assert image_cos.mean() > (0.97 if image_recipe == "int8" else 0.95) and text_cos.mean() > 0.97
    assert image_cos.min() < 0.9999 or text_cos.min() < 0.9999  # quantised: not the fp32 graph again
    assert sorted(p.name for p in tmp_path.rglob("*.onnx")) == sorted(
        [f"model.{image_recipe}.onnx", "model.int8-w7.onnx", "model.onnx", "model.onnx"])


def test_seven_bit_weights_where_the_cpu_would_saturate(tmp_path, torch_encoders, monkeypatch):
    """On x86 without VNNI, 8-bit weights overflow ONNX Runtime's 16-bit pair sums (the image's
    vectors fell to 0.92 cosine on such a CPU): the convolutions then get 7-bit weights, and a name
    of their own. Forced here, so every machine runs this recipe."""
    monkeypatch.setattr(onnx_runtime, "cpu_sums_int8_products_exactly", lambda: False)
    image7 = load_encoder("image", device="cpu", runtime="onnx", int8=True, export_dir=tmp_path)
    assert image7.name.endswith(":onnx-int8-w7") and image7.runtime == "onnx-int8"
    assert [p.name for p in tmp_path.rglob("*.int8*.onnx")] == ["model.int8-w7.onnx"]
    cos = _cosines(image7.encode(_images()), torch_encoders["image"].encode(_images()))
    assert cos.mean() > 0.95 and cos.min() > 0.9


def test_the_export_is_made_once_and_reused(tmp_path, monkeypatch):
    first = EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path)
    (exported,) = tmp_path.rglob("model.onnx")
    stamp = exported.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    again = EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path)
    assert exported.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.encode(_images()[:2]), again.encode(_images()[:2]))


def test_a_damaged_export_is_made_again(tmp_path, caplog, torch_encoders):
    EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path)
    (exported,) = tmp_path.rglob("model.onnx")
    exported.write_bytes(b"half a model")
    with caplog.at_level(logging.WARNING):
        repaired = EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path)
    assert "exporting it again" in caplog.text
    assert _cosines(repaired.encode(_images()), torch_encoders["image"].encode(_images())).min() >= 0.999


def _max_pooling_model(tmp_path):
    """The default text model with max pooling: sentence-transformers runs it, our export does not."""
    source = default_text_model_path()
    model = tmp_path / "minilm-max"
    shutil.copytree(source, model, symlinks=True)
    config = model / "1_Pooling" / "config.json"
    settings = json.loads(config.read_text())
    if "pooling_mode" in settings:  # sentence-transformers >= 6
        settings["pooling_mode"] = "max"
    else:
        settings.update({k: k == "pooling_mode_max_tokens" for k in settings if k.startswith("pooling_mode_")})
    config.unlink()  # a copy, not the packaged file behind a link
    config.write_text(json.dumps(settings))
    return str(model)


def test_a_model_onnx_cannot_take_falls_back_to_torch_under_auto_only(tmp_path, caplog):
    model = _max_pooling_model(tmp_path)
    with caplog.at_level(logging.WARNING):
        encoder = load_encoder("text", model, device="cpu", runtime="auto", export_dir=tmp_path / "x")
    assert encoder._forward is None and "runs on torch" in caplog.text
    assert encoder.encode(["still encodes"]).shape == (1, 384)
    with pytest.raises(ConfigError, match="cannot run on ONNX Runtime"):
        load_encoder("text", model, device="cpu", runtime="onnx", export_dir=tmp_path / "x")


def test_runtime_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown runtime"):
        onnx_runtime.resolve_runtime("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        onnx_runtime.resolve_runtime("onnx", "cuda")
    with pytest.raises(ConfigError, match="int8 needs the onnx runtime"):
        load_encoder("image", device="cpu", runtime="torch", int8=True)


def test_int8_calibration_uses_the_packaged_images():
    images = sample_images()
    assert len(images) >= 16 and all(img.mode == "RGB" for img in images)


def test_text_batches_hold_similar_lengths():
    batches = onnx_runtime.length_sorted_batches([5, 100, 7, 90, 6], 2)
    assert [sorted(b.tolist()) for b in batches] == [[1, 3], [2, 4], [0]]


def test_changed_weights_are_exported_again(tmp_path):
    from annotator.encoders.image import default_image_weights_path

    weights = tmp_path / "weights.pth"
    shutil.copy(default_image_weights_path(), weights)
    EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path / "x", weights_path=str(weights))
    EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path / "x", weights_path=str(weights))
    assert len(list((tmp_path / "x").rglob("model.onnx"))) == 1  # the same weights: reused
    os.utime(weights, ns=(1, 1))  # fine-tuned in place, say
    EfficientNetLiteEncoder(runtime="onnx", export_dir=tmp_path / "x", weights_path=str(weights))
    assert len(list((tmp_path / "x").rglob("model.onnx"))) == 2
