"""CLI names → strategy classes; the one place that knows them all."""

from __future__ import annotations

from annotator.active.base import QueryStrategy
from annotator.active.diversity import Badge, KCenterGreedy, RandomSampling, TypiClust
from annotator.active.hybrid import MarginCluster, TypiClustThenMargin
from annotator.active.uncertainty import Entropy, LeastConfidence, Margin
from annotator.errors import UnknownNameError

STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls for cls in (LeastConfidence, Margin, Entropy, MarginCluster, TypiClustThenMargin, KCenterGreedy,
                            Badge, TypiClust, RandomSampling)
}


def get_strategy(name: str) -> QueryStrategy:
    if name not in STRATEGIES:
        raise UnknownNameError("strategy", name, list(STRATEGIES))
    return STRATEGIES[name]()
