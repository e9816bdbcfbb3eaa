"""Uncertainty sampling: least confidence, margin (breaking ties), entropy."""

from __future__ import annotations

import numpy as np

from annotator.active.base import Pool, QueryStrategy, diverse_top_k


class _Uncertainty(QueryStrategy):
    needs = ("probs",)

    def uncertainty(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _select(self, pool: Pool, k: int, rng):
        scores = self.uncertainty(np.asarray(pool.probs, dtype=np.float64))
        # ties broken at random, not by position in the pool
        order = np.lexsort((rng.random(len(scores)), -scores))
        return diverse_top_k(order, k, pool.embeddings), scores


class LeastConfidence(_Uncertainty):
    """1 − p(most likely class)."""

    name = "least-confidence"

    def uncertainty(self, probs):
        return 1.0 - probs.max(axis=1)


class Margin(_Uncertainty):
    """1 − (p₁ − p₂): items the model can barely tell between two classes."""

    name = "margin"

    def uncertainty(self, probs):
        top2 = -np.partition(-probs, 1, axis=1)[:, :2] if probs.shape[1] > 1 else np.c_[probs, np.zeros(len(probs))]
        return 1.0 - (top2[:, 0] - top2[:, 1])


class Entropy(_Uncertainty):
    """Shannon entropy of the predicted distribution."""

    name = "entropy"

    def uncertainty(self, probs):
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)
