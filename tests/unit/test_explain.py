"""Explanations by occlusion, on a real store with the real offline encoders, and their pictures."""

import numpy as np
import pytest
from PIL import Image

from annotator.errors import NotFoundError
from annotator.explain import GRID, explain_item
from annotator.report import draw_explanation
from annotator.runtime import Runtime
from annotator.training import retrain
from tests.unit.test_training import make_project


def test_the_word_that_carries_the_class_weighs_most_and_the_pictures_are_drawn(store, settings, encoders, tmp_path):
    make_project(store, tmp_path, n_per_class=8)
    runtime = Runtime(settings, encoders=encoders)
    with pytest.raises(NotFoundError, match="no active model"):
        explain_item(store, settings, project_name="p", item_id="animal-0", runtime=runtime)
    retrain(store, settings, project_name="p", head="logreg", encoders=encoders, progress=False)
    e = explain_item(store, settings, project_name="p", item_id="animal-0", runtime=runtime)  # "a picture of a dog today"
    assert e.label == "animal" and e.top_classes[0][0] == "animal"
    assert [p for _, p in e.top_classes] == sorted((p for _, p in e.top_classes), reverse=True)
    assert pytest.approx(sum(e.modality_weights.values())) == 1.0 and set(e.modality_weights) <= {"text", "image"}
    assert [w for w, _ in e.words] == "a picture of a dog today".split()
    assert max(e.words, key=lambda w: w[1])[0] == "dog"  # hiding "dog" costs the prediction most
    assert e.image is not None and e.image_heatmap.shape == (GRID, GRID) and (e.image_heatmap >= 0).all()
    assert "dog" in e.summary() and e.to_dict()["words"][0]["word"] == "a"

    draw_explanation(e, tmp_path / "why.png")
    with Image.open(tmp_path / "why.png") as picture:
        assert picture.size[0] > 2 * picture.size[1]  # image, text and scores side by side
        assert np.asarray(picture.convert("L")).std() > 10  # not a blank canvas
    draw_explanation(e, tmp_path / "why.html")
    page = (tmp_path / "why.html").read_text()
    assert ">dog</span>" in page and "data:image/png;base64," in page


def test_a_coattention_model_also_shows_its_own_attention(store, settings, encoders, tmp_path):
    on = settings.model_copy(update={"parts": True})
    encoders.settings = on
    make_project(store, tmp_path, n_per_class=8, images_every=1)
    runtime = Runtime(on, encoders=encoders)
    retrain(store, on, project_name="p", head="coattention", encoders=encoders, progress=False)
    e = explain_item(store, on, project_name="p", item_id="vehicle-1", runtime=runtime)  # "a picture of a bus outside"
    assert e.label == "vehicle"
    assert [t for t, _ in e.attention_tokens] == ["[CLS]", "a", "picture", "of", "a", "bus", "outside", "[SEP]"]
    assert e.attention_image.shape == (4, 4) and (e.attention_image >= 0).all()
    # one distribution per modality over its parts: the regions' and tokens' weights plus the pooled vector's make 1
    assert 0 < e.attention_image.sum() <= 1 + 1e-5 and 0 < sum(w for _, w in e.attention_tokens) <= 1 + 1e-5
    assert e.to_dict()["attention_tokens"][5] == {"token": "bus", "weight": round(e.attention_tokens[5][1], 4)}

    draw_explanation(e, tmp_path / "why.png")
    with Image.open(tmp_path / "why.png") as picture:
        assert picture.size[0] > 5 * picture.size[1]  # occlusion image and text, attention image and text, scores
    draw_explanation(e, tmp_path / "why.html")
    assert ">bus</span>" in (tmp_path / "why.html").read_text()
