"""The query-strategy contract: arrays in, chosen pool indices out.

Strategies never see a model. They receive what they need as arrays: calibrated class
probabilities of the pool, embeddings of the pool and of the labelled set, and (for BADGE) the
classifier's hidden features. ``select`` returns indices into the pool, best first; the scores of
the last call are kept in ``last_scores_`` for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotator.errors import AnnotatorError


class PoolExhaustedError(AnnotatorError, ValueError):
    """More items were asked for than the pool holds, or the pool is empty."""


@dataclass
class Pool:
    """Inputs a strategy may use; each strategy checks that what it needs is there.

    Attributes
    ----------
    n : int
        Unlabelled items in the pool.
    probs : (n, c) float, optional
        Calibrated class probabilities of the pool items.
    embeddings : (n, d) float, optional
        L2-normalised pool embeddings (for diversity).
    labelled_embeddings : (m, d) float, optional
        Embeddings of already labelled items.
    hidden : (n, h) float, optional
        The classifier's last hidden features (BADGE's gradient embedding uses them).
    """

    n: int
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labelled_embeddings: np.ndarray | None = None
    hidden: np.ndarray | None = None


class QueryStrategy:
    """Base class. Subclasses set ``name``, ``needs`` and implement ``_select``."""

    name = "base"
    needs: tuple[str, ...] = ()

    @property
    def needs_model(self) -> bool:
        """Whether choosing needs a trained model's output; False: works cold, with no labels."""
        return bool({"probs", "hidden"} & set(self.needs))

    def select(self, pool: Pool, k: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Indices of the ``k`` pool items to label next, best first."""
        validate_query(pool, k, self)
        rng = rng if rng is not None else np.random.default_rng(0)
        chosen, scores = self._select(pool, k, rng)
        self.last_scores_ = scores
        return np.asarray(chosen, dtype=np.int64)

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def validate_query(pool: Pool, k: int, strategy: QueryStrategy) -> None:
    """Shared checks with the numbers in the message."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if pool.n == 0:
        raise PoolExhaustedError("the pool is empty: every item is labelled")
    if k > pool.n:
        raise PoolExhaustedError(f"asked for {k} items but the pool holds {pool.n}")
    for name in strategy.needs:
        value = getattr(pool, name)
        if value is None:
            raise ValueError(f"strategy {strategy.name!r} needs {name}, which was not given")
        if len(value) != pool.n:
            raise ValueError(f"{name} has {len(value)} rows but the pool has {pool.n} items")
    if pool.probs is not None and not np.isfinite(pool.probs).all():
        raise ValueError("probs contain NaN or infinite values")


def diverse_top_k(order: np.ndarray, k: int, embeddings: np.ndarray | None, *, max_similarity: float = 0.95,
                  candidates: int = 20) -> np.ndarray:
    """Walk ``order`` (best first) and skip items nearly identical (cosine > ``max_similarity``) to
    one already taken, so a batch of k is not k copies of one hard example."""
    if embeddings is None:
        return order[:k]
    shortlist = order[: max(k * candidates, k)]
    chosen: list[int] = []
    picked = np.empty((k, embeddings.shape[1]), dtype=np.float32)
    for i in shortlist:
        if len(chosen) == k:
            break
        if chosen and float(np.max(picked[: len(chosen)] @ embeddings[i])) > max_similarity:
            continue
        picked[len(chosen)] = embeddings[i]
        chosen.append(int(i))
    if len(chosen) < k:  # everything left is a near-duplicate: fill in order
        rest = [int(i) for i in order if int(i) not in set(chosen)]
        chosen += rest[: k - len(chosen)]
    return np.array(chosen, dtype=np.int64)
