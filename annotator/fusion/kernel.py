"""`KernelFusionClassifier`: kernel-level fusion, the classic alternative to fusing features.

One kernel per modality (the cosine similarity of the normalised vectors, or an RBF on it), combined
with non-negative weights learned from the labels by centred kernel-target alignment (Cortes, Mohri
& Rostamizadeh, "Algorithms for learning kernels based on centered alignment", JMLR 2012: the
*align* method, each kernel's alignment with the label kernel), then kernel ridge regression on the
combined kernel, one-vs-rest, its scores calibrated by a temperature. A modality that says nothing
about the labels aligns near zero and gets a weight near zero; the weights are the model's
explanation of which modality it listens to.

Same interface as `LinearClassifier` and `FusionClassifier` (``{modality: (n, d)}`` in, NaN rows =
missing modality, per-prediction modality shares, pickle-free save/load), so `ModelSearch`
compares it with them on the project's own labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.special import softmax

from annotator.fusion.base import EstimatorParams, SingleLabelMixin, read_folder, write_folder
from annotator.fusion.calibration import fit_temperature
from annotator.fusion.linear import concat_embeddings

FORMAT_VERSION = 1
KERNELS = ("cosine", "rbf")
CHUNK = 2048  # test rows per kernel block: bounds memory at CHUNK x n_train floats


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def centred_alignment(K: np.ndarray, T: np.ndarray) -> float:
    """Centred alignment of kernel ``K`` (n, n) with the label kernel ``T Tᵀ`` (T: (n, k) targets)."""
    Kc = K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()
    Tc = T - T.mean(axis=0, keepdims=True)
    inner = float(np.sum((Tc.T @ Kc) * Tc.T))  # <Kc, Tc Tcᵀ>_F without forming the n x n label kernel
    norm = float(np.linalg.norm(Kc)) * float(np.linalg.norm(Tc.T @ Tc))
    return inner / norm if norm > 0 else 0.0


class KernelFusionClassifier(SingleLabelMixin, EstimatorParams):
    """Multiple-kernel learning over the modalities, with kernel ridge regression.

    Parameters
    ----------
    kernel : {"cosine", "rbf"}, default="cosine"
        Per modality, on unit vectors: ``x·x'``, or ``exp(-gamma * |x - x'|²)``. A missing
        modality contributes 0 to the item's similarities.
    gamma : float, default=1.0
    alpha : float, default=1.0
        Ridge strength.
    calibrate, calibration_folds, min_calibration : as `LinearClassifier`'s.
    max_train : int, default=4000
        Kernel ridge solves an n x n system; above this many labels a stratified sample is used.
    random_state : int, default=0
    device : str, default="cpu"
        Accepted for interface parity; this model runs on the CPU.

    Attributes
    ----------
    classes_, modalities_, dims_ : as `LinearClassifier`'s.
    weights_ : (M,) float32
        Each modality's kernel weight (non-negative, summing to 1).
    alignments_ : (M,) float32
        Each modality kernel's centred alignment with the labels (what the weights come from).
    dual_coef_ : (n_train, k) float32
    temperature_ : float
    """

    multilabel = False
    head = "kernel"

    def __init__(self, kernel: str = "cosine", gamma: float = 1.0, alpha: float = 1.0, calibrate: bool = True,
                 calibration_folds: int = 3, min_calibration: int = 20, max_train: int = 4000, random_state: int = 0,
                 device: str = "cpu"):
        self.kernel = kernel
        self.gamma = gamma
        self.alpha = alpha
        self.calibrate = calibrate
        self.calibration_folds = calibration_folds
        self.min_calibration = min_calibration
        self.max_train = max_train
        self.random_state = random_state
        self.device = device

    _PARAMS = ("kernel", "gamma", "alpha", "calibrate", "calibration_folds", "min_calibration", "max_train",
               "random_state", "device")
    _FITTED = "dual_coef_"

    # --- kernels -------------------------------------------------------------------------

    def _units(self, X: Mapping[str, np.ndarray], *, fitting: bool) -> tuple[list[np.ndarray], np.ndarray]:
        arrays, mask = self._arrays(X, fitting=fitting)
        return [_unit(a) * mask[:, [j]] for j, a in enumerate(arrays)], mask

    def _kernel(self, A: np.ndarray, mask_a: np.ndarray, B: np.ndarray, mask_b: np.ndarray) -> np.ndarray:
        """One modality's kernel between unit rows ``A`` and ``B`` (0 where either is missing)."""
        K = A @ B.T
        if self.kernel == "rbf":
            K = np.exp(-self.gamma * np.maximum(2.0 - 2.0 * K, 0.0)) * np.outer(mask_a, mask_b)
        return K.astype(np.float64)

    def _kernels(self, units: list[np.ndarray], mask: np.ndarray, rows: slice | np.ndarray = slice(None)) -> list[np.ndarray]:
        """Per modality: the kernel between ``units[rows]`` and the training rows."""
        return [self._kernel(U[rows], mask[rows, j], self.train_[j], self.train_mask_[:, j])
                for j, U in enumerate(units)]

    # --- training ------------------------------------------------------------------------

    def fit(self, X: Mapping[str, np.ndarray], y: Sequence,
            unlabelled: Mapping[str, np.ndarray] | None = None) -> KernelFusionClassifier:
        """Fit on ``X`` and labels ``y``; ``unlabelled`` is accepted for interface parity and not
        used (this model does not self-train)."""
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {self.kernel!r}")
        units, mask = self._units(X, fitting=True)
        targets = self._fit_targets(y, mask)
        rows = self._sample(targets)
        units, mask, targets = [U[rows] for U in units], mask[rows], targets[rows]
        T = np.where(np.arange(len(self.classes_)) == targets[:, None], 1.0, -1.0)
        self.train_, self.train_mask_ = units, mask
        kernels = self._kernels(units, mask)
        self.alignments_ = np.array([centred_alignment(K, T) for K in kernels], dtype=np.float32)
        positive = np.maximum(self.alignments_, 0.0)
        self.weights_ = (positive / positive.sum() if positive.sum() > 0 else
                         np.full(len(kernels), 1.0 / len(kernels))).astype(np.float32)
        K = sum(w * Km for w, Km in zip(self.weights_, kernels))
        self.dual_coef_ = self._solve(K, T).astype(np.float32)
        self.temperature_ = self._out_of_fold_temperature(K, T, targets)
        self.n_pseudo_labels_ = 0
        return self

    def _sample(self, labels: np.ndarray) -> np.ndarray:
        """Row indices to train on: all of them, or a stratified ``max_train`` of them."""
        if len(labels) <= self.max_train:
            return np.arange(len(labels))
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(labels)), train_size=self.max_train, stratify=labels,
                                   random_state=self.random_state)
        return np.sort(keep)

    def _solve(self, K: np.ndarray, T: np.ndarray) -> np.ndarray:
        from scipy.linalg import solve

        return solve(K + self.alpha * np.eye(len(K)), T, assume_a="pos")

    def _out_of_fold_temperature(self, K: np.ndarray, T: np.ndarray, targets: np.ndarray) -> float:
        """A temperature fitted on out-of-fold scores (the kernel weights are the full data's: the
        temperature only rescales scores, it does not pick a model)."""
        splits = self._calibration_splits(targets)
        if not splits:
            return 1.0
        scores = np.zeros(T.shape)
        for train, test in splits:
            scores[test] = K[np.ix_(test, train)] @ self._solve(K[np.ix_(train, train)], T[train])
        return fit_temperature(scores, targets)

    # --- inference -----------------------------------------------------------------------

    def _scores_and_parts(self, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uncalibrated scores (n, k), per-modality score parts (M, n, k), presence mask (n, M))."""
        self._check_fitted()
        units, mask = self._units(X, fitting=False)
        n, k, M = len(mask), len(self.classes_), len(self.modalities_)
        parts = np.zeros((M, n, k))
        for start in range(0, n, CHUNK):
            rows = slice(start, start + CHUNK)
            for j, Km in enumerate(self._kernels(units, mask, rows)):
                parts[j, rows] = self.weights_[j] * (Km @ self.dual_coef_)
        return parts.sum(axis=0), parts, mask

    def decision_function(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated scores (n, k)."""
        return self._scores_and_parts(X)[0] / self.temperature_

    def predict_proba(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return softmax(self.decision_function(X), axis=1)

    def predict_proba_and_contributions(self, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities, and each modality's share of the winning class's score (its weighted
        kernel's part, in absolute value, over the modalities present)."""
        scores, parts, mask = self._scores_and_parts(X)
        probs = softmax(scores / self.temperature_, axis=1)
        winner = probs.argmax(axis=1)
        share = np.abs(parts[:, np.arange(len(winner)), winner]).T * mask
        total = share.sum(axis=1, keepdims=True)
        uniform = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return probs, np.where(total > 0, share / np.maximum(total, 1e-12), uniform).astype(np.float32)

    def modality_contributions(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.predict_proba_and_contributions(X)[1]

    def predict(self, X: Mapping[str, np.ndarray]) -> list:
        return [self.classes_[i] for i in self.predict_proba(X).argmax(axis=1)]

    def transform(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """The normalised, concatenated embeddings (what BADGE's gradient embedding multiplies)."""
        self._check_fitted()
        arrays, _ = self._arrays(X, fitting=False)
        return concat_embeddings(dict(zip(self.modalities_, arrays)), self.modalities_)

    # --- persistence ---------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write config + training vectors and dual coefficients (safetensors) to folder ``path``."""
        self._check_fitted()
        arrays = {f"train_{m}": U for m, U in zip(self.modalities_, self.train_)}
        write_folder(path, {"estimator": "KernelFusionClassifier", "format_version": FORMAT_VERSION,
                            "params": self.get_params(), "classes": self.classes_, "modalities": self.modalities_,
                            "dims": self.dims_, "temperature": self.temperature_},
                     {**arrays, "train_mask": self.train_mask_, "dual_coef": self.dual_coef_,
                      "weights": self.weights_, "alignments": self.alignments_})

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> KernelFusionClassifier:
        config, weights = read_folder(path, FORMAT_VERSION)
        clf = cls(**config["params"])
        clf.classes_, clf.modalities_, clf.dims_ = config["classes"], config["modalities"], config["dims"]
        clf.temperature_ = config["temperature"]
        clf.train_ = [weights[f"train_{m}"] for m in clf.modalities_]
        clf.train_mask_, clf.dual_coef_ = weights["train_mask"], weights["dual_coef"]
        clf.weights_, clf.alignments_ = weights["weights"], weights["alignments"]
        clf.n_pseudo_labels_ = 0
        return clf
