"""Load a saved classifier of any kind: the folder's config names the estimator that wrote it."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from annotator.fusion.classifier import FusionClassifier
    from annotator.fusion.kernel import KernelFusionClassifier
    from annotator.fusion.linear import LinearClassifier

# by module, imported when a folder needs one: reading a logistic regression must not import torch
ESTIMATORS = {"FusionClassifier": "annotator.fusion.classifier", "LinearClassifier": "annotator.fusion.linear",
              "KernelFusionClassifier": "annotator.fusion.kernel"}


def load_classifier(path: Path, device: str | None = None) -> FusionClassifier | LinearClassifier | KernelFusionClassifier:
    """The estimator saved in folder ``path`` (folders written before the key existed are fusion heads)."""
    kind = json.loads((Path(path) / "config.json").read_text()).get("estimator", "FusionClassifier")
    if kind not in ESTIMATORS:
        raise ValueError(f"{path}: unknown estimator {kind!r}; written by a newer annotator?")
    return getattr(import_module(ESTIMATORS[kind]), kind).load(path, device=device)
