import numpy as np

from annotator.fusion.calibration import expected_calibration_error, fit_temperature


def _sample(n=4000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return logits, y, p


def test_temperature_recovers_overconfidence():
    logits, y, _ = _sample()
    assert abs(fit_temperature(logits * 3.0, y) - 3.0) < 0.3


def test_ece_is_low_when_calibrated_and_high_when_not():
    logits, y, p = _sample()
    assert expected_calibration_error(p, y) < 0.03
    sharp = np.exp(logits * 4) / np.exp(logits * 4).sum(1, keepdims=True)
    assert expected_calibration_error(sharp, y) > 0.1
    t = fit_temperature(logits * 4, y)
    fixed = np.exp(logits * 4 / t) / np.exp(logits * 4 / t).sum(1, keepdims=True)
    assert expected_calibration_error(fixed, y) < 0.03
