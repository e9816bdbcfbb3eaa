"""Contract suite over every strategy, plus each strategy's own promise on constructed data."""

import tracemalloc

import numpy as np
import pytest

from annotator.active import STRATEGIES, PoolExhaustedError, get_strategy
from annotator.active.base import Pool
from annotator.errors import UnknownNameError


def clusters(n_clusters=5, per=40, d=16, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    assign = np.repeat(np.arange(n_clusters), per)
    x = centers[assign] + spread * rng.normal(size=(len(assign), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), assign


def full_pool(n=200, c=4, seed=0):
    x, _ = clusters(per=n // 5, seed=seed)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(x), c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Pool(n=len(x), probs=probs, embeddings=x, labelled_embeddings=x[:3], hidden=rng.normal(size=(len(x), 8)))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
class TestContract:
    def test_returns_k_distinct_pool_indices(self, name):
        strategy = get_strategy(name)
        assert not hasattr(strategy, "last_scores_")
        picks = strategy.select(full_pool(), 10, rng=np.random.default_rng(1))
        assert len(picks) == 10 and len(set(picks.tolist())) == 10 and picks.min() >= 0 and picks.max() < 200
        assert strategy.last_scores_.shape == (200,)

    def test_can_take_the_whole_pool(self, name):
        pool = full_pool()
        assert sorted(get_strategy(name).select(pool, pool.n).tolist()) == list(range(pool.n))

    def test_exhausted_and_empty_pools_are_refused_with_counts(self, name):
        with pytest.raises(PoolExhaustedError, match="asked for 201 items but the pool holds 200"):
            get_strategy(name).select(full_pool(), 201)
        with pytest.raises(PoolExhaustedError, match="pool is empty"):
            get_strategy(name).select(Pool(n=0), 1)

    def test_same_seed_same_batch(self, name):
        a = get_strategy(name).select(full_pool(), 15, rng=np.random.default_rng(7))
        b = get_strategy(name).select(full_pool(), 15, rng=np.random.default_rng(7))
        np.testing.assert_array_equal(a, b)


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="'margin' needs probs"):
        get_strategy("margin").select(Pool(n=5, embeddings=np.eye(5, dtype=np.float32)), 2)
    with pytest.raises(ValueError, match="'badge' needs hidden"):
        get_strategy("badge").select(Pool(n=5, probs=np.full((5, 2), 0.5)), 2)
    with pytest.raises(UnknownNameError, match="unknown strategy 'coreset'"):
        get_strategy("coreset")


def test_strategies_that_work_cold_are_those_needing_no_model_output():
    assert {n for n in STRATEGIES if not get_strategy(n).needs_model} == {"typiclust", "kcenter", "tcm", "random"}


def test_uncertainty_orderings_on_known_distributions():
    probs = np.array([[0.98, 0.01, 0.01],   # confident
                      [0.50, 0.49, 0.01],   # near a two-class boundary
                      [0.34, 0.33, 0.33],   # uniform
                      [0.60, 0.20, 0.20],
                      [0.45, 0.45, 0.10]])  # exactly on a boundary
    pool = Pool(n=5, probs=probs)
    assert get_strategy("margin").select(pool, 3).tolist() == [4, 2, 1]
    assert get_strategy("least-confidence").select(pool, 2).tolist() == [2, 4]
    assert get_strategy("entropy").select(pool, 1).tolist() == [2]


def test_margin_picks_points_near_the_decision_boundary():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 500)
    p1 = 1 / (1 + np.exp(-8 * x))
    picks = get_strategy("margin").select(Pool(n=500, probs=np.c_[p1, 1 - p1]), 20)
    assert np.abs(x[picks]).max() < np.quantile(np.abs(x), 0.1)


def test_uncertainty_batch_skips_near_duplicates():
    x, assign = clusters(n_clusters=5, per=20, spread=0.001)
    probs = np.where(assign[:, None] == 0, [0.5, 0.5], [0.9, 0.1])  # cluster 0: all equally uncertain copies
    picks = get_strategy("margin").select(Pool(n=len(x), probs=probs, embeddings=x), 5)
    assert (assign[picks] == 0).sum() == 1  # one representative, not five copies


def test_margin_cluster_spreads_a_batch_of_uncertain_items_over_regions():
    x, assign = clusters(n_clusters=6, per=40, spread=0.15)  # members alike, but not near-duplicates
    rng = np.random.default_rng(0)
    # clusters 0-2 hold the uncertain items; cluster 0 is a little more uncertain than 1 and 2
    margin = np.where(assign == 0, 0.02, np.where(assign < 3, 0.06, 0.9)) + 0.01 * rng.random(len(x))
    probs = np.c_[(1 + margin) / 2, (1 - margin) / 2]
    pool = Pool(n=len(x), probs=probs, embeddings=x)
    plain = get_strategy("margin").select(pool, 6, rng=np.random.default_rng(0))
    spread = get_strategy("margin-cluster").select(pool, 6, rng=np.random.default_rng(0))
    assert set(assign[plain].tolist()) == {0}  # plain margin: every pick from the hardest region
    assert set(assign[spread].tolist()) == {0, 1, 2}  # hybrid: every uncertain region, no confident item
    assert (margin[spread][:-1] <= margin[spread][1:]).all()  # most uncertain first


def test_tcm_uses_typiclust_while_labels_are_few_then_margin():
    pool = full_pool()  # 4 classes, 3 labelled: below 5 per class
    assert get_strategy("tcm").select(pool, 5, rng=np.random.default_rng(2)).tolist() == \
        get_strategy("typiclust").select(pool, 5, rng=np.random.default_rng(2)).tolist()
    pool.labelled_embeddings = np.repeat(pool.embeddings[:5], 4, axis=0)  # 20 labels = 5 per class
    assert get_strategy("tcm").select(pool, 5, rng=np.random.default_rng(2)).tolist() == \
        get_strategy("margin").select(pool, 5, rng=np.random.default_rng(2)).tolist()
    no_model = Pool(n=pool.n, embeddings=pool.embeddings)  # cold start: no probabilities at all
    assert len(get_strategy("tcm").select(no_model, 5)) == 5


def test_kcenter_covers_every_cluster_before_repeating_one():
    x, assign = clusters(n_clusters=6)
    picks = get_strategy("kcenter").select(Pool(n=len(x), embeddings=x), 6, rng=np.random.default_rng(3))
    assert sorted(assign[picks].tolist()) == list(range(6))
    labelled = x[assign == 0][:2]  # a covered cluster is avoided
    picks = get_strategy("kcenter").select(Pool(n=len(x), embeddings=x, labelled_embeddings=labelled), 5)
    assert 0 not in assign[picks]


def test_typiclust_cold_start_takes_a_typical_point_per_cluster():
    x, assign = clusters(n_clusters=5, per=60, spread=0.08)
    picks = get_strategy("typiclust").select(Pool(n=len(x), embeddings=x), 5, rng=np.random.default_rng(0))
    assert sorted(assign[picks].tolist()) == list(range(5))
    for i in picks:  # typical: closer to its cluster's centre than the median member
        members = x[assign == assign[i]]
        centre = members.mean(0)
        assert np.linalg.norm(x[i] - centre) <= np.median(np.linalg.norm(members - centre, axis=1))


def test_badge_prefers_uncertain_and_diverse():
    x, assign = clusters(n_clusters=4, per=50)
    probs = np.where(assign[:, None] < 2, [0.55, 0.45], [0.99, 0.01])  # clusters 0 and 1 are uncertain
    picks = get_strategy("badge").select(Pool(n=len(x), probs=probs, hidden=x), 4, rng=np.random.default_rng(0))
    assert set(assign[picks].tolist()) >= {0, 1}


def test_badge_on_100k_items_10_classes_384_dims_stays_under_2_gb():
    rng = np.random.default_rng(0)
    n, c, d = 100_000, 10, 384
    logits = rng.normal(size=(n, c)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    tracemalloc.start()
    picks = get_strategy("badge").select(Pool(n=n, probs=probs, hidden=hidden), 100, rng=np.random.default_rng(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(set(picks.tolist())) == 100
    assert peak < 2 << 30, f"peak {peak / 2**30:.2f} GiB"
    assert peak < n * c * d * 4  # far below the n × classes × dims tensor it never builds
