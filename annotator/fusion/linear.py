"""`LinearClassifier`: logistic regression on the normalised, concatenated embeddings.

The plain baseline every fusion head has to beat, and often the right model for a project with few
labels: it is one of the candidates `ModelSearch` compares on the project's own labels. It has the
same interface as `FusionClassifier` (``{modality: (n, d)}`` in, NaN rows = missing modality,
calibrated probabilities, per-prediction modality shares, safe save/load without pickle), so the
backend, prediction and active learning serve either without knowing which one it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.special import softmax

from annotator.encoders.base import is_parts_key
from annotator.fusion.base import EstimatorParams, SingleLabelMixin, read_folder, write_folder
from annotator.fusion.calibration import fit_temperature

FORMAT_VERSION = 1


def concat_embeddings(features: Mapping[str, np.ndarray], modalities: Sequence[str] | None = None) -> np.ndarray:
    """One unit vector per item: each modality's vector normalised (missing → zeros), side by side,
    renormalised, so an item with one modality weighs the same as one with three. Part-level
    features are not embeddings of the item and are left out."""
    blocks = []
    for m in modalities or [k for k in features if not is_parts_key(k)]:
        a = np.nan_to_num(np.asarray(features[m], dtype=np.float32), nan=0.0)
        blocks.append(a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12))
    x = np.hstack(blocks).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class LinearClassifier(SingleLabelMixin, EstimatorParams):
    """Multinomial logistic regression over every modality's embedding, concatenated.

    Parameters
    ----------
    C : float, default=10.0
        Inverse L2 strength of scikit-learn's `LogisticRegression`. Inputs are unit vectors, whose
        coordinates are small, so the usual C=1 underfits them.
    calibrate : bool, default=True
        Fit a temperature on out-of-fold logits (``calibration_folds``-fold, on the training
        labels) so the served model keeps every label and its scores still mean something.
    calibration_folds : int, default=3
    min_calibration : int, default=20
        Fewer labels than this: no temperature.
    max_iter : int, default=1000
    warm_start : bool, default=False
        `fit` a fitted classifier again from its coefficients (same classes, modalities and widths;
        else from zero): a refit after one more label converges in a few iterations. The optimum
        is the same (the problem is convex); only the time to reach it changes.
    random_state : int, default=0
    device : str, default="cpu"
        Accepted for interface parity with `FusionClassifier`; this model always runs on the CPU.

    Attributes
    ----------
    classes_ : list of str
    modalities_ : list of str
    dims_ : list of int
    coef_ : (k, sum(dims_)) float32
    intercept_ : (k,) float32
    temperature_ : float
    n_pseudo_labels_ : int
        Always 0: this model does not self-train.
    warm_started_ : bool
        Whether the last `fit` went on from the previous coefficients (``warm_start``).
    """

    multilabel = False
    head = "logreg"

    def __init__(self, C: float = 10.0, calibrate: bool = True, calibration_folds: int = 3, min_calibration: int = 20,
                 max_iter: int = 1000, warm_start: bool = False, random_state: int = 0, device: str = "cpu"):
        self.C = C
        self.calibrate = calibrate
        self.calibration_folds = calibration_folds
        self.min_calibration = min_calibration
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.random_state = random_state
        self.device = device

    _PARAMS = ("C", "calibrate", "calibration_folds", "min_calibration", "max_iter", "warm_start", "random_state",
               "device")
    _FITTED = "coef_"


    # --- input ---------------------------------------------------------------------------

    def _design(self, X: Mapping[str, np.ndarray], *, fitting: bool) -> tuple[np.ndarray, np.ndarray]:
        """(normalised concatenation (n, D), presence mask (n, M))."""
        arrays, mask = self._arrays(X, fitting=fitting)
        return concat_embeddings(dict(zip(self.modalities_, arrays)), self.modalities_), mask

    # --- training ------------------------------------------------------------------------

    def _logistic(self, start=None):
        """scikit-learn's model, starting from ``start`` (a fitted one of the same classes) if given."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state,
                                   warm_start=start is not None)
        if start is not None:
            model.coef_, model.intercept_ = start.coef_.copy(), start.intercept_.copy()
        return model

    def _warm_state(self):
        """The fitted coefficients as scikit-learn holds them (one row for two classes), with the
        problem they solve; None when not fitted."""
        from types import SimpleNamespace

        if not hasattr(self, "coef_"):
            return None
        coef, intercept = self.coef_.astype(np.float64), self.intercept_.astype(np.float64)
        if len(self.classes_) == 2:  # the softmax pair back to scikit-learn's single row
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        return SimpleNamespace(coef_=coef, intercept_=intercept, classes=list(self.classes_),
                               modalities=list(self.modalities_), dims=list(self.dims_))

    def fit(self, X: Mapping[str, np.ndarray], y: Sequence,
            unlabelled: Mapping[str, np.ndarray] | None = None) -> LinearClassifier:
        """Fit on ``X`` ({modality: (n, d)}, NaN rows = missing) and labels ``y``; ``unlabelled``
        is accepted for interface parity and not used (this model does not self-train)."""
        previous = self._warm_state() if self.warm_start else None  # before the fit overwrites it
        Z, mask = self._design(X, fitting=True)
        targets = self._fit_targets(y, mask)
        self.warm_started_ = previous is not None and (previous.classes, previous.modalities, previous.dims) == (
            list(self.classes_), list(self.modalities_), list(self.dims_))
        model = self._logistic(previous if self.warm_started_ else None).fit(Z, targets)
        self.coef_ = model.coef_.astype(np.float32)
        self.intercept_ = model.intercept_.astype(np.float32)
        if len(self.classes_) == 2:  # scikit-learn keeps one row for two classes: make it a softmax pair
            self.coef_ = np.vstack([-self.coef_ / 2, self.coef_ / 2])
            self.intercept_ = np.array([-self.intercept_[0] / 2, self.intercept_[0] / 2], dtype=np.float32)
        self.temperature_ = self._out_of_fold_temperature(Z, targets, model)
        self.n_pseudo_labels_ = 0
        return self

    def _out_of_fold_temperature(self, Z: np.ndarray, targets: np.ndarray, full) -> float:
        """Each fold's fit starts from the model fitted on every label (``full``), which is close to
        its own optimum: 3 fold fits on 1,000 labels took 4 s from zero."""
        splits = self._calibration_splits(targets)
        if not splits:
            return 1.0
        logits = np.zeros((len(targets), len(self.classes_)), dtype=np.float64)
        for train, test in splits:
            same_classes = np.array_equal(np.unique(targets[train]), full.classes_)
            fold = self._logistic(full if same_classes else None).fit(Z[train], targets[train])
            decision = fold.decision_function(Z[test])
            if decision.ndim == 1:
                decision = np.stack([-decision / 2, decision / 2], axis=1)
            logits[np.ix_(test, fold.classes_)] = decision
        return fit_temperature(logits, targets)

    # --- inference -----------------------------------------------------------------------

    def decision_function(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated logits (n, k)."""
        self._check_fitted()
        Z, _ = self._design(X, fitting=False)
        return (Z @ self.coef_.T + self.intercept_) / self.temperature_

    def predict_proba(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return softmax(self.decision_function(X), axis=1)

    def predict_proba_and_contributions(self, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities, and each modality's share of the winning class's logit: |w_c · x_m| over the
        modalities present, so a modality the model ignores shows a share near 0."""
        self._check_fitted()
        Z, mask = self._design(X, fitting=False)
        probs = softmax((Z @ self.coef_.T + self.intercept_) / self.temperature_, axis=1)
        winner = self.coef_[probs.argmax(axis=1)] if len(Z) else np.zeros((0, Z.shape[1]), np.float32)
        edges = np.cumsum([0, *self.dims_])
        parts = np.stack([np.abs((Z[:, a:b] * winner[:, a:b]).sum(axis=1)) for a, b in zip(edges[:-1], edges[1:])],
                         axis=1) * mask if len(Z) else np.zeros((0, len(self.dims_)), np.float32)
        total = parts.sum(axis=1, keepdims=True)
        uniform = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        shares = np.where(total > 0, parts / np.maximum(total, 1e-12), uniform)
        return probs, shares.astype(np.float32)

    def modality_contributions(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.predict_proba_and_contributions(X)[1]

    def predict(self, X: Mapping[str, np.ndarray]) -> list:
        return [self.classes_[i] for i in self.predict_proba(X).argmax(axis=1)]

    def transform(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's input features (n, D): for a linear model these are what BADGE's gradient
        embedding multiplies, as a fusion head's last hidden layer is."""
        self._check_fitted()
        return self._design(X, fitting=False)[0]

    # --- persistence ---------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write config + weights (safetensors) to folder ``path`` atomically."""
        self._check_fitted()
        write_folder(path, {"estimator": "LinearClassifier", "format_version": FORMAT_VERSION,
                            "params": self.get_params(), "classes": self.classes_, "modalities": self.modalities_,
                            "dims": self.dims_, "temperature": self.temperature_},
                     {"coef": self.coef_, "intercept": self.intercept_})

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> LinearClassifier:
        config, weights = read_folder(path, FORMAT_VERSION)
        clf = cls(**config["params"])
        clf.classes_, clf.modalities_, clf.dims_ = config["classes"], config["modalities"], config["dims"]
        clf.temperature_ = config["temperature"]
        clf.coef_, clf.intercept_ = weights["coef"], weights["intercept"]
        clf.n_pseudo_labels_ = 0
        return clf
