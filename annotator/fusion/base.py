"""What every estimator of ours shares: the scikit-learn parameter contract (constructor arguments
named in ``_PARAMS`` are what `get_params` returns, what `set_params` accepts and what `clone`
rebuilds from, so cross-validation and retraining copy any model without knowing its kind), the
``{modality: (n, d)}`` input check, and an atomic, pickle-free folder format for saved models."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from annotator.artifacts import atomic_directory
from annotator.encoders.base import base_modality, is_parts_key, modality_order
from annotator.errors import DimensionMismatchError, NotEnoughLabelsError, NotFittedError


class EstimatorParams:
    """Parameters by name, cloning, the fitted check, and reading ``{modality: (n, d)}`` input."""

    _PARAMS: tuple[str, ...] = ()
    _FITTED = ""  # an attribute that exists only once fit has run

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self._PARAMS}

    def set_params(self, **params):
        for key, value in params.items():
            if key not in self._PARAMS:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid: {', '.join(self._PARAMS)}")
            setattr(self, key, value)
        return self

    def clone(self):
        """An unfitted copy with the same parameters."""
        return type(self)(**self.get_params())

    def _check_fitted(self) -> None:
        if not hasattr(self, self._FITTED):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _arrays(self, X: Mapping[str, np.ndarray], *, fitting: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """(per-modality float32 arrays in modality order, (n, M) presence mask).

        A row containing NaN marks the modality missing; its values are zeroed later, chunk by
        chunk, so large inputs without missing rows are never copied. Part-level features
        (``text:parts``) are left to the models that read them.
        """
        X = {k: v for k, v in X.items() if not is_parts_key(k)}
        if fitting:
            if not X:
                raise ValueError("X has no modality; pass {modality: (n, d) array}")
            self.modalities_ = modality_order(X)
            self.dims_ = [int(np.asarray(X[m]).shape[1]) for m in self.modalities_]
        else:
            extra = set(X) - set(self.modalities_)
            if extra:
                warnings.warn(f"modalities {sorted(extra)} were not seen in training and are ignored", stacklevel=3)
        lengths = {m: len(X[m]) for m in X}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"modalities have different numbers of rows: {lengths}")
        n = next(iter(lengths.values())) if lengths else 0
        arrays, mask = [], np.zeros((n, len(self.modalities_)), dtype=np.float32)
        for j, (m, d) in enumerate(zip(self.modalities_, self.dims_)):
            if m not in X:
                arrays.append(np.zeros((n, d), dtype=np.float32))
                continue
            a = np.ascontiguousarray(X[m], dtype=np.float32)
            if a.ndim != 2 or a.shape[1] != d:
                raise DimensionMismatchError(f"modality {m!r}", d, a.shape[-1] if a.ndim else -1)
            mask[:, j] = ~np.isnan(a.sum(axis=1))
            arrays.append(a)
        return arrays, mask


def inputs_for(estimator, X: Mapping[str, np.ndarray], modalities=None) -> dict[str, np.ndarray]:
    """The arrays of ``X`` an estimator reads: the pooled vectors of ``modalities`` (default: the
    ones it was fitted on), and their part-level features only for one that uses them (the others
    would copy them for nothing)."""
    modalities = estimator.modalities_ if modalities is None else modalities
    parts = getattr(estimator, "uses_parts", False)
    return {k: a for k, a in X.items() if base_modality(k) in modalities and (parts or not is_parts_key(k))}


class SingleLabelMixin:
    """Label handling of the single-label models that calibrate on their own out-of-fold scores
    (`LinearClassifier`, `KernelFusionClassifier`)."""

    def _fit_targets(self, y, mask: np.ndarray) -> np.ndarray:
        """Each row's class index; sets ``classes_``. Refuses a row without any modality, a label
        count that does not match the rows, and fewer than two classes."""
        if len(y) != len(mask):
            raise ValueError(f"X has {len(mask)} rows and y has {len(y)} labels")
        if (mask.sum(axis=1) == 0).any():
            raise ValueError(f"row {int(np.flatnonzero(mask.sum(axis=1) == 0)[0])} has no modality at all")
        labels = np.array([str(v[0]) if isinstance(v, (list, tuple)) else str(v) for v in y])
        self.classes_ = sorted(set(labels.tolist()))
        if len(self.classes_) < 2:
            raise NotEnoughLabelsError(f"need at least 2 classes to train; got {len(self.classes_)}: {self.classes_}")
        return np.searchsorted(self.classes_, labels)

    def _calibration_splits(self, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified folds for fitting the temperature on out-of-fold scores; none (temperature 1)
        when calibration is off, labels are fewer than ``min_calibration`` or a class is a singleton."""
        from sklearn.model_selection import StratifiedKFold

        counts = np.bincount(targets, minlength=len(self.classes_))
        folds = int(min(self.calibration_folds, counts.min()))
        if not self.calibrate or len(targets) < self.min_calibration or folds < 2:
            return []
        return list(StratifiedKFold(folds, shuffle=True, random_state=self.random_state).split(targets, targets))


def write_folder(path: Path, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``weights.safetensors`` (no pickle) into folder ``path`` atomically,
    so a reader never sees half a model."""
    from safetensors.numpy import save_file

    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / "weights.safetensors"))


def read_folder(path: Path, format_version: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, arrays) of a folder written by `write_folder`; refuses one from a newer format."""
    from safetensors.numpy import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("format_version", 0) > format_version:
        raise ValueError(f"{path} was written by a newer annotator (format {config['format_version']})")
    return config, load_file(str(path / "weights.safetensors"))
