"""Hybrid strategy: uncertainty to shortlist, clustering to spread the batch."""

from __future__ import annotations

import numpy as np

from annotator.active.base import Pool, QueryStrategy
from annotator.active.uncertainty import Margin


class MarginCluster(QueryStrategy):
    """Diverse mini-batch active learning (Zhdanov, 2019): shortlist the ``beta × k`` items with the
    smallest margin, cluster the shortlist into ``k`` groups with k-means weighted by uncertainty,
    and take the item nearest each centre. A batch then holds one hard item from each of ``k``
    different regions instead of ``k`` hard items from the one region the model finds hardest.

    Parameters
    ----------
    beta : int, default=10
        Shortlist size as a multiple of the batch size.
    """

    name = "margin-cluster"
    needs = ("probs", "embeddings")

    def __init__(self, beta: int = 10):
        self.beta = beta

    def _select(self, pool: Pool, k: int, rng):
        import faiss

        scores = Margin().uncertainty(np.asarray(pool.probs, dtype=np.float64))
        order = np.lexsort((rng.random(len(scores)), -scores))
        shortlist = order[: min(pool.n, max(k, self.beta * k))]
        if len(shortlist) == k:
            return shortlist, scores
        x = np.ascontiguousarray(pool.embeddings[shortlist], dtype=np.float32)
        weights = np.ascontiguousarray(scores[shortlist] + 1e-6, dtype=np.float32)
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=int(rng.integers(1 << 30)), verbose=False,
                          min_points_per_centroid=1)
        km.train(x, weights=weights)
        # nearest shortlist item to each centre, each item used once
        _, near = faiss.knn(km.centroids, x, min(len(x), 8))
        chosen: list[int] = []
        taken = np.zeros(len(x), dtype=bool)
        for row in near:
            free = [j for j in row if j >= 0 and not taken[j]]
            if free:
                taken[free[0]] = True
                chosen.append(int(free[0]))
        for j in np.flatnonzero(~taken)[: k - len(chosen)]:  # rare: two centres shared all neighbours
            chosen.append(int(j))
        chosen_rows = shortlist[np.array(chosen[:k])]
        return chosen_rows[np.argsort(-scores[chosen_rows], kind="stable")], scores


class TypiClustThenMargin(QueryStrategy):
    """TCM (Doucet et al., 2023): TypiClust while labels are few, margin once the model has enough
    to be trusted. With a handful of labels a model's uncertainty is mostly noise and typical points
    teach more; later the boundary cases do. Works with no model (cold start).

    Parameters
    ----------
    labels_per_class : int, default=5
        Switch to margin once the labelled set holds this many items per class on average.
    """

    name = "tcm"
    needs = ("embeddings",)

    def __init__(self, labels_per_class: int = 5):
        self.labels_per_class = labels_per_class

    def _select(self, pool: Pool, k: int, rng):
        from annotator.active.diversity import TypiClust

        labelled = 0 if pool.labelled_embeddings is None else len(pool.labelled_embeddings)
        if pool.probs is None or labelled < self.labels_per_class * pool.probs.shape[1]:
            return TypiClust()._select(pool, k, rng)
        return Margin()._select(pool, k, rng)
