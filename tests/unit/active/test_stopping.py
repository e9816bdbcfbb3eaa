"""The stop signal (stabilising predictions): its rule on simulated curves, and on real retrains."""

from types import SimpleNamespace

import pytest

from annotator.active.stopping import agreement, label_slope, stop_set, stopping_signal


def test_the_signal_flips_when_a_simulated_curve_flattens():
    # kappa between successive models rises as the learning curve flattens (a saturating curve)
    kappas = [None] + [round(1 - 0.5 * 0.45 ** i, 4) for i in range(1, 10)]
    signals = [stopping_signal(kappas[:n + 1])["signal"] for n in range(len(kappas))]
    first_stop = signals.index("stop")
    assert set(signals[:first_stop]) == {"keep going"} and set(signals[first_stop:]) == {"stop"}
    window = kappas[first_stop - 2:first_stop + 1]
    assert sum(window) / 3 >= 0.99 and sum(kappas[first_stop - 3:first_stop]) / 3 < 0.99
    # one version that moves a lot flips it back: more labels of that kind still matter
    assert stopping_signal(kappas + [0.8])["signal"] == "keep going"
    report = stopping_signal([None, 1.0, 1.0])
    assert report["signal"] == "keep going" and "2 of the 3" in report["why"]


def test_agreement_is_kappa_over_whole_label_sets():
    assert agreement(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert agreement(["a"] * 4, ["a"] * 4) == 1.0  # one label everywhere: no disagreement
    assert agreement(["a", "b", "a", "b"], ["b", "a", "b", "a"]) == pytest.approx(-1.0)
    assert agreement([["a", "b"], ["a"]], [["a", "b"], ["b"]]) < 1.0


def test_stop_set_is_the_same_sample_whatever_the_order_and_slope_uses_the_last_new_count():
    items = [SimpleNamespace(external_id=str(i)) for i in range(50)]
    first = [it.external_id for it in stop_set(items, size=10)]
    assert first == [it.external_id for it in stop_set(items[::-1], size=10)] and len(set(first)) == 10
    # labelled items leave the pool; the rest of the sample stays
    rest = [it for it in items if it.external_id != first[0]]
    assert [it.external_id for it in stop_set(rest, size=10)][:9] == first[1:]
    assert label_slope([(20, 0.6)]) is None
    assert label_slope([(20, 0.6), (40, 0.7), (40, 0.72)]) == pytest.approx(0.6)  # +0.12 over 20 labels
