"""Active learning: which unlabelled items teach the model most, and which labels look wrong."""

from annotator.active.base import PoolExhaustedError, QueryStrategy
from annotator.active.registry import STRATEGIES, get_strategy

__all__ = ["PoolExhaustedError", "QueryStrategy", "STRATEGIES", "get_strategy"]
