"""Fusion of per-modality embeddings: alignment into one space, fusion heads, a linear baseline,
calibration, and the per-project choice among them.

The names below are loaded on first use (PEP 562): importing one submodule, e.g. the aligner for
the search indexes, must not import torch (1.5 s of every ``annotator embed`` on the ONNX runtime)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "HEADS": "classifier", "FusionClassifier": "classifier", "LinearClassifier": "linear",
    "load_classifier": "persistence", "MODELS": "selection", "Candidate": "selection", "ModelSearch": "selection",
}
__all__ = ["HEADS", "MODELS", "Candidate", "FusionClassifier", "LinearClassifier", "ModelSearch", "load_classifier"]

if TYPE_CHECKING:
    from annotator.fusion.classifier import HEADS, FusionClassifier
    from annotator.fusion.linear import LinearClassifier
    from annotator.fusion.persistence import load_classifier
    from annotator.fusion.selection import MODELS, Candidate, ModelSearch


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
