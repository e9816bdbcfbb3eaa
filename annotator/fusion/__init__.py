"""Fusion of per-modality embeddings: alignment into one space, fusion heads, calibration."""

from annotator.fusion.classifier import HEADS, FusionClassifier

__all__ = ["HEADS", "FusionClassifier"]
