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


def test_the_gradient_reversal_layer_flips_the_gradient():
    import torch

    from annotator.fusion.align import reverse_gradient

    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(reverse_gradient(x.detach(), 0.5), x.detach())  # identity forward
    assert x.grad.tolist() == [-1.0, -1.5, -2.0]  # -scale x the gradient backward


def test_adversarial_alignment_closes_the_modality_gap_and_still_retrieves():
    text, image = _pairs()
    rng = np.random.default_rng(5)  # each modality sits off-centre in its own direction: a gap to close
    text = text + 4.0 * rng.normal(size=(1, text.shape[1])).astype(np.float32)
    image = image + 4.0 * rng.normal(size=(1, image.shape[1])).astype(np.float32)
    plain = CrossModalAligner(dim=24, epochs=40).fit({"text": text[:250], "image": image[:250]})
    adv = CrossModalAligner(dim=24, epochs=40, adversarial=3.0).fit({"text": text[:250], "image": image[:250]})

    def gap(al):  # distance between the modalities' centroids in the shared space
        return float(np.linalg.norm(al.transform("text", text).mean(0) - al.transform("image", image).mean(0)))

    assert gap(adv) < 0.95 * gap(plain)
    zt, zi = adv.transform("text", text[250:]), adv.transform("image", image[250:])
    assert (np.argmax(zt @ zi.T, axis=1) == np.arange(50)).mean() > 0.6
