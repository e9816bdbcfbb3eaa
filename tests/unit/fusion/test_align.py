import numpy as np
import pytest

from annotator.errors import NotEnoughLabelsError
from annotator.fusion.align import CrossModalAligner


def _pairs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 12))
    return (latent @ rng.normal(size=(12, 40)) + 0.3 * rng.normal(size=(n, 40))).astype(np.float32), \
           (latent @ rng.normal(size=(12, 30)) + 0.3 * rng.normal(size=(n, 30))).astype(np.float32)


def test_aligned_pairs_retrieve_each_other_and_roundtrip(tmp_path):
    text, image = _pairs()
    image[:50] = np.nan  # items without an image still train nothing wrong
    al = CrossModalAligner(dim=24, epochs=40).fit({"text": text[:250], "image": image[:250]})
    zt, zi = al.transform("text", text[250:]), al.transform("image", image[250:])
    r_at_1 = (np.argmax(zt @ zi.T, axis=1) == np.arange(50)).mean()
    assert r_at_1 > 0.8
    al.save(tmp_path / "al")
    np.testing.assert_allclose(type(al).load(tmp_path / "al").transform("text", text[:5]), al.transform("text", text[:5]))


def test_alignment_needs_pairs():
    text, image = _pairs(20)
    image[:] = np.nan
    with pytest.raises(NotEnoughLabelsError, match="two modalities"):
        CrossModalAligner().fit({"text": text, "image": image})
