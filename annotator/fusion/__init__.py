"""Fusion of per-modality embeddings: alignment into one space, fusion heads, a linear baseline,
calibration, and the per-project choice among them."""

from annotator.fusion.classifier import HEADS, FusionClassifier
from annotator.fusion.linear import LinearClassifier
from annotator.fusion.persistence import load_classifier
from annotator.fusion.selection import MODELS, Candidate, ModelSearch

__all__ = ["HEADS", "MODELS", "Candidate", "FusionClassifier", "LinearClassifier", "ModelSearch", "load_classifier"]
