"""Load a saved classifier of any kind: the folder's config names the estimator that wrote it."""

from __future__ import annotations

import json
from pathlib import Path

from annotator.fusion.classifier import FusionClassifier
from annotator.fusion.kernel import KernelFusionClassifier
from annotator.fusion.linear import LinearClassifier

ESTIMATORS = {"FusionClassifier": FusionClassifier, "LinearClassifier": LinearClassifier,
              "KernelFusionClassifier": KernelFusionClassifier}


def load_classifier(path: Path, device: str | None = None) -> FusionClassifier | LinearClassifier | KernelFusionClassifier:
    """The estimator saved in folder ``path`` (folders written before the key existed are fusion heads)."""
    kind = json.loads((Path(path) / "config.json").read_text()).get("estimator", "FusionClassifier")
    if kind not in ESTIMATORS:
        raise ValueError(f"{path}: unknown estimator {kind!r}; written by a newer annotator?")
    return ESTIMATORS[kind].load(path, device=device)
