"""Vector search: index planning, the `VectorIndex` engine wrapper, and per-project cross-modal search."""

from annotator.index.choose import IndexPlan, plan_index
from annotator.index.vector_index import VectorIndex

__all__ = ["IndexPlan", "VectorIndex", "plan_index"]
