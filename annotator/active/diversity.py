"""Diversity and hybrid strategies: k-center greedy (core-set), TypiClust (cold start), BADGE, random."""

from __future__ import annotations

import numpy as np

from annotator.active.base import Pool, QueryStrategy

MAX_CANDIDATES = 100_000  # larger pools are subsampled: cost stays bounded at 1M items


def _subsample(n: int, rng, limit: int = MAX_CANDIDATES) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


class RandomSampling(QueryStrategy):
    """Uniformly at random (the baseline every strategy must beat)."""

    name = "random"

    def _select(self, pool: Pool, k: int, rng):
        chosen = rng.choice(pool.n, k, replace=False)
        scores = np.zeros(pool.n)
        scores[chosen] = 1.0
        return chosen, scores


class KCenterGreedy(QueryStrategy):
    """Core-set (Sener & Savarese, 2018): repeatedly take the pool item farthest from everything
    labelled or already chosen, so the batch covers the embedding space."""

    name = "kcenter"
    needs = ("embeddings",)

    def _select(self, pool: Pool, k: int, rng):
        cand = _subsample(pool.n, rng)
        x = np.ascontiguousarray(pool.embeddings[cand], dtype=np.float32)
        min_dist = np.full(len(x), np.inf, dtype=np.float32)  # squared distance to nearest centre
        chosen: list[int] = []
        lab = pool.labelled_embeddings
        if lab is not None and len(lab):
            lab = np.asarray(lab, dtype=np.float32)
            for s in range(0, len(lab), 4096):
                min_dist = np.minimum(min_dist, (2.0 - 2.0 * (x @ lab[s:s + 4096].T)).min(axis=1))
        else:  # nothing labelled: start from a random item
            chosen.append(int(rng.integers(len(x))))
            min_dist = np.minimum(min_dist, 2.0 - 2.0 * (x @ x[chosen[0]]))
            min_dist[chosen[0]] = -1.0
        scores = np.zeros(pool.n)
        scores[cand] = np.maximum(min_dist, 0)
        while len(chosen) < k:
            i = int(np.argmax(min_dist))
            chosen.append(i)
            min_dist = np.minimum(min_dist, 2.0 - 2.0 * (x @ x[i]))
            min_dist[i] = -1.0
        return cand[np.array(chosen)], scores


class TypiClust(QueryStrategy):
    """TypiClust (Hacohen et al., 2022): cluster labelled + pool into |L| + k clusters and take the
    most *typical* point (densest neighbourhood) of each cluster that holds no label yet, largest
    clusters first. Works with zero labels: the cold-start strategy."""

    name = "typiclust"
    needs = ("embeddings",)

    def __init__(self, n_neighbors: int = 20, max_clusters: int = 500):
        self.n_neighbors, self.max_clusters = n_neighbors, max_clusters

    def _select(self, pool: Pool, k: int, rng):
        import faiss

        cand = _subsample(pool.n, rng)
        x = np.ascontiguousarray(pool.embeddings[cand], dtype=np.float32)
        lab = (np.asarray(pool.labelled_embeddings, dtype=np.float32)
               if pool.labelled_embeddings is not None and len(pool.labelled_embeddings) else np.zeros((0, x.shape[1]), np.float32))
        n_clusters = int(min(len(lab) + k, self.max_clusters, len(x)))
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=int(rng.integers(1 << 30)), verbose=False,
                          min_points_per_centroid=1)
        km.train(np.vstack([x, lab]) if len(lab) else x)
        _, assign = km.index.search(x, 1)
        assign = assign[:, 0]
        covered = set(km.index.search(lab, 1)[1][:, 0].tolist()) if len(lab) else set()
        typicality = self._typicality(x, assign)
        sizes = np.bincount(assign, minlength=n_clusters)
        chosen: list[int] = []
        taken = np.zeros(len(x), dtype=bool)
        while len(chosen) < k:
            open_clusters = [c for c in np.argsort(-sizes) if c not in covered and sizes[c] > 0]
            if not open_clusters:  # every cluster has a label: start a new round over all of them
                covered = set()
                continue
            c = int(open_clusters[0])
            members = np.flatnonzero((assign == c) & ~taken)
            if len(members) == 0:
                sizes[c] = 0
                continue
            best = int(members[np.argmax(typicality[members])])
            chosen.append(best)
            taken[best] = True
            covered.add(c)
        scores = np.zeros(pool.n)
        scores[cand] = typicality
        return cand[np.array(chosen)], scores

    def _typicality(self, x: np.ndarray, assign: np.ndarray) -> np.ndarray:
        """Inverse mean distance to the nearest neighbours inside the point's own cluster."""
        import faiss

        typ = np.zeros(len(x), dtype=np.float64)
        for c in np.unique(assign):
            members = np.flatnonzero(assign == c)
            if len(members) == 1:
                typ[members] = 1.0
                continue
            nn = min(self.n_neighbors + 1, len(members))
            d, _ = faiss.knn(x[members], x[members], nn)  # squared L2
            typ[members] = 1.0 / (np.sqrt(np.maximum(d[:, 1:], 0)).mean(axis=1) + 1e-6)
        return typ


class Badge(QueryStrategy):
    """BADGE (Ash et al., 2020): k-means++ seeding on gradient embeddings g = (p − onehot(ŷ)) ⊗ h,
    which trades uncertainty (gradient size) against diversity (direction).

    The (n, classes × hidden) gradient embedding is never built: distances use
    ⟨g_i, g_j⟩ = ⟨a_i, a_j⟩ · ⟨h_i, h_j⟩ with a = p − onehot(ŷ), so memory is O(n · (classes + hidden)).
    """

    name = "badge"
    needs = ("probs", "hidden")

    def _select(self, pool: Pool, k: int, rng):
        cand = _subsample(pool.n, rng)
        p = np.asarray(pool.probs[cand], dtype=np.float32)
        h = np.asarray(pool.hidden[cand], dtype=np.float32)
        a = p.copy()
        a[np.arange(len(a)), p.argmax(axis=1)] -= 1.0
        norm2 = (a * a).sum(1) * (h * h).sum(1)  # |g_i|²
        first = int(np.argmax(norm2))
        chosen = [first]
        min_d2 = np.maximum(norm2 + norm2[first] - 2.0 * (a @ a[first]) * (h @ h[first]), 0)
        min_d2[first] = 0.0
        for _ in range(k - 1):
            total = min_d2.sum()
            i = int(rng.choice(len(min_d2), p=min_d2 / total)) if total > 0 else int(rng.integers(len(min_d2)))
            chosen.append(i)
            d2 = np.maximum(norm2 + norm2[i] - 2.0 * (a @ a[i]) * (h @ h[i]), 0)
            min_d2 = np.minimum(min_d2, d2)
            min_d2[i] = 0.0
        scores = np.zeros(pool.n)
        scores[cand] = np.sqrt(norm2)
        return cand[np.array(chosen)], scores
