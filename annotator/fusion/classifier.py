"""`FusionClassifier`: a scikit-learn-style estimator over per-modality embeddings.

Input ``X`` is a mapping ``{modality: (n, d_m) float32}``; a row of NaN means the item lacks that
modality. Training uses modality dropout so that items with any subset of modalities are predicted
well, and probabilities are calibrated by temperature scaling on a held-out slice.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annotator.encoders.base import MODALITIES
from annotator.errors import DimensionMismatchError, NotEnoughLabelsError, NotFittedError, UnknownNameError
from annotator.fusion.calibration import fit_temperature
from annotator.fusion.heads import HEAD_CLASSES, FusionNetwork

HEADS = tuple(HEAD_CLASSES)
FORMAT_VERSION = 1


def _modality_order(names) -> list[str]:
    return sorted(names, key=lambda m: (MODALITIES.index(m) if m in MODALITIES else len(MODALITIES), m))


class FusionClassifier:
    """Classify items from frozen per-modality embeddings with a fusion head.

    Parameters
    ----------
    head : {"concat", "weighted", "attention", "gated", "tensor"}, default="attention"
    hidden_dim : int or "auto", default="auto"
        Width of each modality's projection and of the classifier's hidden layer. ``auto`` grows with
        the training set (32 below 200 items, 64 below 1,000, else 128): a wide head overfits the
        few labels a project starts with.
    epochs : int, default=60
    min_steps : int, default=300
        Small data sets get more epochs so training takes at least this many optimizer steps.
    batch_size : int, default=256
        Upper bound; an epoch is split into equal batches.
    lr : float, default=2e-3
    weight_decay : float, default=1e-4
    dropout : float, default=0.1
    modality_dropout : float, default=0.25
        Probability of hiding each present modality of a training item (at least one is kept).
    multilabel : bool, default=False
        Independent sigmoid per class instead of a softmax.
    calibrate : bool, default=True
        Hold out ``calibration_fraction`` of the data to fit a temperature.
    calibration_fraction : float, default=0.15
        Used when at least ``min_calibration`` items would be held out; otherwise no temperature.
    min_calibration : int, default=20
    refit : bool, default=True
        After the temperature is fitted on the held-out slice, train again on every label and keep
        that temperature, so calibration costs no training data (twice the training time).
    pseudo_label_ratio : float, default=15.0
        Self-training, used when `fit` is given ``unlabelled`` items (single-label only): after a
        first fit, each class takes up to this many times its label count of the unlabelled items
        predicted as it most confidently (and at least ``pseudo_label_threshold`` confidently),
        with the predicted label, and the head is trained again on labels and pseudo-labels
        together. The model learns the easy items from the pool, so human labels are needed where
        it is unsure, which is where active learning sends them (Wang et al. 2016, "Cost-effective
        active learning"). 0 turns it off.
    pseudo_label_threshold : float, default=0.9
        Smallest predicted probability a pseudo-label may have (temperature-scaled when there were
        enough labels to calibrate): a wrong pseudo-label teaches the model its own mistake, so
        only confident ones are used.
    max_pseudo_labels : int, default=2000
        At most this many pseudo-labels in all (each class's share shrinks in proportion): they
        matter while labels are few, and bound the training time when labels are many.
    modality_weights : list of float, optional
        For ``head="weighted"``: fixed weights in modality order; None chooses them by ``cv_folds``-fold
        cross-validation over a simplex grid.
    cv_folds : int, default=3
    random_state : int, default=0
    device : str, default="cpu"

    Attributes
    ----------
    classes_ : list of str
    modalities_ : list of str
    dims_ : list of int
    hidden_dim_ : int
        The width actually used.
    temperature_ : float
    n_pseudo_labels_ : int
        Unlabelled items the last `fit` trained on with their predicted label (self-training).
    modality_weights_ : list of float or None
        The weights the ``weighted`` head used (chosen or given).
    """

    def __init__(self, head: str = "attention", hidden_dim: int | str = "auto", epochs: int = 60, min_steps: int = 300,
                 batch_size: int = 256,
                 lr: float = 2e-3, weight_decay: float = 1e-4, dropout: float = 0.1,
                 modality_dropout: float = 0.25, multilabel: bool = False, calibrate: bool = True,
                 calibration_fraction: float = 0.15, min_calibration: int = 20, refit: bool = True,
                 pseudo_label_ratio: float = 15.0, pseudo_label_threshold: float = 0.9,
                 max_pseudo_labels: int = 2000, modality_weights: list[float] | None = None,
                 cv_folds: int = 3, random_state: int = 0, device: str = "cpu"):
        self.head = head
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.modality_dropout = modality_dropout
        self.multilabel = multilabel
        self.calibrate = calibrate
        self.calibration_fraction = calibration_fraction
        self.min_calibration = min_calibration
        self.refit = refit
        self.pseudo_label_ratio = pseudo_label_ratio
        self.pseudo_label_threshold = pseudo_label_threshold
        self.max_pseudo_labels = max_pseudo_labels
        self.modality_weights = modality_weights
        self.cv_folds = cv_folds
        self.random_state = random_state
        self.device = device

    # --- scikit-learn plumbing -------------------------------------------------------------

    _PARAMS = ("head", "hidden_dim", "epochs", "min_steps", "batch_size", "lr", "weight_decay", "dropout",
               "modality_dropout", "multilabel", "calibrate", "calibration_fraction", "min_calibration",
               "refit", "pseudo_label_ratio", "pseudo_label_threshold", "max_pseudo_labels",
               "modality_weights",
               "cv_folds", "random_state", "device")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self._PARAMS}

    def set_params(self, **params) -> FusionClassifier:
        for key, value in params.items():
            if key not in self._PARAMS:
                raise ValueError(f"invalid parameter {key!r} for FusionClassifier; valid: {', '.join(self._PARAMS)}")
            setattr(self, key, value)
        return self

    def clone(self) -> FusionClassifier:
        return FusionClassifier(**self.get_params())

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError("this FusionClassifier is not fitted yet; call fit first")

    # --- input handling --------------------------------------------------------------------

    def _arrays(self, X: Mapping[str, np.ndarray], *, fitting: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """(per-modality float32 arrays in modality order, (n, M) presence mask).

        A row containing NaN marks the modality missing; its values are zeroed later, chunk by
        chunk, so large inputs without missing rows are never copied.
        """
        if fitting:
            if not X:
                raise ValueError("X has no modality; pass {modality: (n, d) array}")
            self.modalities_ = _modality_order(X)
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

    def _targets(self, y: Sequence) -> np.ndarray:
        if self.multilabel:
            rows = [[str(v) for v in (labels if isinstance(labels, (list, tuple)) else [labels])] for labels in y]
            self.classes_ = sorted({v for r in rows for v in r})
            index = {c: i for i, c in enumerate(self.classes_)}
            t = np.zeros((len(rows), len(self.classes_)), dtype=np.float32)
            for i, r in enumerate(rows):
                t[i, [index[v] for v in r]] = 1.0
            return t
        labels = [str(v[0]) if isinstance(v, (list, tuple)) else str(v) for v in y]
        self.classes_ = sorted(set(labels))
        if len(self.classes_) < 2:
            raise NotEnoughLabelsError(f"need at least 2 classes to train; got {len(self.classes_)}: {self.classes_}")
        index = {c: i for i, c in enumerate(self.classes_)}
        return np.array([index[v] for v in labels], dtype=np.int64)

    # --- training --------------------------------------------------------------------------

    def fit(self, X: Mapping[str, np.ndarray], y: Sequence,
            unlabelled: Mapping[str, np.ndarray] | None = None) -> FusionClassifier:
        """Train on ``X`` ({modality: (n, d)}, NaN rows = missing) and labels ``y`` (n,).

        ``unlabelled`` ({modality: (m, d)}, optional) are items without labels; with
        ``pseudo_label_ratio`` > 0 the most confident predictions among them become extra
        training labels. Calibration and its held-out slice use human labels only.
        """
        if self.head not in HEADS:
            raise UnknownNameError("fusion head", self.head, HEADS)
        arrays, mask = self._arrays(X, fitting=True)
        if len(y) != len(mask):
            raise ValueError(f"X has {len(mask)} rows and y has {len(y)} labels")
        if (mask.sum(axis=1) == 0).any():
            bad = int(np.flatnonzero(mask.sum(axis=1) == 0)[0])
            raise ValueError(f"row {bad} has no modality at all (every vector is NaN)")
        arrays = [np.nan_to_num(a, nan=0.0) for a in arrays]
        targets = self._targets(y)
        n = len(targets)
        self.hidden_dim_ = self._width(n)
        rng = np.random.default_rng(self.random_state)
        fit_idx, cal_idx = self._calibration_split(targets, rng)

        self.modality_weights_ = None
        if self.head == "weighted":
            self.modality_weights_ = (list(map(float, self.modality_weights)) if self.modality_weights is not None
                                      else self._choose_weights(arrays, mask, targets, fit_idx))
        self.network_ = self._train(arrays, mask, targets, fit_idx, self.modality_weights_)
        self._fit_temperature(arrays, mask, targets, cal_idx)
        self.n_pseudo_labels_ = 0
        pseudo = self._pseudo_labels(unlabelled, targets)
        if pseudo is not None:
            arrays = [np.vstack([a, u]) for a, u in zip(arrays, pseudo[0])]
            mask, targets = np.vstack([mask, pseudo[1]]), np.concatenate([targets, pseudo[2]])
            self.n_pseudo_labels_ = len(pseudo[2])
            self.hidden_dim_ = self._width(len(targets))
            fit_idx = np.concatenate([fit_idx, np.arange(n, len(targets))])
            self.network_ = self._train(arrays, mask, targets, fit_idx, self.modality_weights_)
            self._fit_temperature(arrays, mask, targets, cal_idx)
        if len(cal_idx) and self.refit:
            self.network_ = self._train(arrays, mask, targets, np.arange(len(targets)), self.modality_weights_)
        return self

    def _width(self, n: int) -> int:
        return int(self.hidden_dim) if self.hidden_dim != "auto" else 32 if n < 200 else 64 if n < 1000 else 128

    def _fit_temperature(self, arrays, mask, targets, cal_idx) -> None:
        self.temperature_ = 1.0
        if len(cal_idx):
            logits = self._logits([a[cal_idx] for a in arrays], mask[cal_idx])
            self.temperature_ = fit_temperature(logits, targets[cal_idx], multilabel=self.multilabel)

    def _pseudo_labels(self, unlabelled, targets):
        """(arrays, mask, targets) of the unlabelled items kept as pseudo-labels, or None: per class,
        up to ``pseudo_label_ratio`` × its label count of the items predicted as it most confidently
        (above ``pseudo_label_threshold``), scaled down to ``max_pseudo_labels`` in all."""
        if unlabelled is None or self.pseudo_label_ratio <= 0 or self.max_pseudo_labels <= 0 or self.multilabel:
            return None
        arrays, mask = self._arrays(unlabelled, fitting=False)
        if not len(mask):
            return None
        probs = self._probabilities(self._logits(arrays, mask) / self.temperature_)
        pred, confidence = probs.argmax(axis=1), probs.max(axis=1)
        usable = (mask.sum(axis=1) > 0) & (confidence >= self.pseudo_label_threshold)
        quota = self.pseudo_label_ratio * np.bincount(targets, minlength=len(self.classes_))
        quota = np.floor(quota * min(1.0, self.max_pseudo_labels / max(quota.sum(), 1))).astype(int)
        keep = []
        for c, count in enumerate(quota):
            rows = np.flatnonzero((pred == c) & usable)
            keep.extend(rows[np.argsort(-confidence[rows], kind="stable")[:count]])
        if not keep:
            return None
        keep = np.sort(np.array(keep, dtype=np.int64))
        return [np.nan_to_num(a[keep], nan=0.0) for a in arrays], mask[keep], pred[keep]

    def _calibration_split(self, targets: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        n = len(targets)
        order = rng.permutation(n)
        if not self.calibrate or n * self.calibration_fraction < self.min_calibration:
            return order, np.array([], dtype=np.int64)
        if self.multilabel:
            n_cal = int(round(n * self.calibration_fraction))
            return order[n_cal:], order[:n_cal]
        cal = []
        for c in np.unique(targets):
            members = order[targets[order] == c]
            if len(members) >= 3:
                cal.extend(members[: max(1, int(round(len(members) * self.calibration_fraction)))])
        cal_set = set(cal)
        return np.array([i for i in order if i not in cal_set]), np.array(cal, dtype=np.int64)

    def _train(self, arrays, mask, targets, idx, head_weights, epochs: int | None = None,
               min_steps: int | None = None):
        import torch

        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        n_classes = targets.shape[1] if self.multilabel else len(self.classes_)
        net = FusionNetwork(self.dims_, n_classes, self.head, self.hidden_dim_, self.dropout, head_weights).to(self.device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss() if self.multilabel else torch.nn.CrossEntropyLoss()
        xs = [torch.from_numpy(a[idx]).to(self.device) for a in arrays]
        m = torch.from_numpy(mask[idx]).to(self.device)
        t = torch.from_numpy(targets[idx]).to(self.device)
        n = len(idx)
        batches_per_epoch = max(1, -(-n // self.batch_size))
        size = -(-n // batches_per_epoch)  # equal batches: 260 items → 2 × 130, not 256 + a noisy 4
        steps = self.min_steps if min_steps is None else min_steps
        n_epochs = max(epochs or self.epochs, -(-steps // batches_per_epoch))
        net.train()
        for _ in range(n_epochs):
            perm = torch.randperm(n, generator=gen).to(self.device)
            for start in range(0, n, size):
                b = perm[start:start + size]
                bm = self._drop_modalities(m[b], gen)
                logits, _ = net([x[b] for x in xs], bm)
                loss = loss_fn(logits, t[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval()

    def _drop_modalities(self, mask, gen):
        """Hide present modalities at random, keeping at least one per row."""
        import torch

        if self.modality_dropout <= 0 or mask.shape[1] < 2:
            return mask
        keep = (torch.rand(mask.shape, generator=gen) >= self.modality_dropout).to(mask.device).float()
        dropped = mask * keep
        empty = dropped.sum(1) == 0
        return torch.where(empty[:, None], mask, dropped)

    def _choose_weights(self, arrays, mask, targets, idx) -> list[float]:
        """Pick the weighted head's modality weights by k-fold CV over a simplex grid (step 0.25),
        scored by out-of-fold log-loss (finer than accuracy, which ties on easy data)."""
        n_mod = len(self.modalities_)
        grid = [np.array(w) / 4 for w in itertools.product(range(5), repeat=n_mod) if sum(w) == 4]
        folds = np.array_split(np.random.default_rng(self.random_state).permutation(idx), max(2, self.cv_folds))
        best, best_loss = grid[0], np.inf
        for w in grid:
            loss = 0.0
            for k in range(len(folds)):
                val = folds[k]
                train = np.concatenate([f for j, f in enumerate(folds) if j != k])
                net = self._train(arrays, mask, targets, train, list(w), epochs=max(5, self.epochs // 2),
                                  min_steps=self.min_steps // 3)
                loss += self._log_loss(self._logits([a[val] for a in arrays], mask[val], net), targets[val])
            if loss < best_loss - 1e-9:
                best, best_loss = w, loss
        return [float(v) for v in best]

    def _log_loss(self, logits, targets) -> float:
        """Summed negative log-likelihood of ``targets`` under ``logits``."""
        if self.multilabel:
            return float(np.sum(np.logaddexp(0, logits) - targets * logits))
        z = logits - logits.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(targets)), targets].sum())

    # --- inference -------------------------------------------------------------------------

    def _forward(self, arrays, mask, net=None, chunk: int = 65536, with_hidden: bool = False):
        import torch

        net = net or self.network_
        outputs: list[list[np.ndarray]] = [[], [], []]
        with torch.inference_mode():
            for s in range(0, len(mask), chunk):
                m = mask[s:s + chunk]
                xs = [a[s:s + chunk] if m[:, j].all() else np.nan_to_num(a[s:s + chunk], nan=0.0)
                      for j, a in enumerate(arrays)]
                out = net([torch.from_numpy(x).to(self.device) for x in xs], torch.from_numpy(m).to(self.device),
                          with_hidden=with_hidden)
                for store, tensor in zip(outputs, out):
                    store.append(tensor.float().cpu().numpy())
        if not outputs[0]:
            empty = [np.zeros((0, len(self.classes_)), np.float32), np.zeros((0, len(self.modalities_)), np.float32),
                     np.zeros((0, self.hidden_dim_), np.float32)]
            return tuple(empty[: 3 if with_hidden else 2])
        return tuple(np.concatenate(o) for o in outputs if o)

    def _logits(self, arrays, mask, net=None):
        return self._forward(arrays, mask, net)[0]

    def decision_function(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated logits (n, k)."""
        self._check_fitted()
        arrays, mask = self._arrays(X, fitting=False)
        return self._logits(arrays, mask) / self.temperature_

    def _probabilities(self, z: np.ndarray) -> np.ndarray:
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities (n, k); rows with no modality at all are uniform."""
        return self._probabilities(self.decision_function(X))

    def predict_proba_and_contributions(self, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """`predict_proba` and `modality_contributions` from one forward pass (the re-scoring path)."""
        self._check_fitted()
        arrays, mask = self._arrays(X, fitting=False)
        logits, shares = self._forward(arrays, mask)
        return self._probabilities(logits / self.temperature_), shares

    def predict(self, X: Mapping[str, np.ndarray]) -> list:
        probs = self.predict_proba(X)
        if self.multilabel:
            return [[c for c, p in zip(self.classes_, row) if p >= 0.5] for row in probs]
        return [self.classes_[i] for i in probs.argmax(axis=1)]

    def transform(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """The classifier's last hidden features (n, hidden) — the input of its output layer."""
        self._check_fitted()
        arrays, mask = self._arrays(X, fitting=False)
        return self._forward(arrays, mask, with_hidden=True)[2]

    def modality_contributions(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, M) share of each modality (in ``modalities_`` order) in each prediction; sums to 1."""
        self._check_fitted()
        arrays, mask = self._arrays(X, fitting=False)
        return self._forward(arrays, mask)[1]

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write config + weights to folder ``path`` atomically (temp folder, then rename)."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            config = {"format_version": FORMAT_VERSION, "params": self.get_params(), "classes": self.classes_,
                      "modalities": self.modalities_, "dims": self.dims_, "temperature": self.temperature_,
                      "hidden_dim": self.hidden_dim_,
                      "modality_weights": self.modality_weights_}
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.network_.state_dict().items()},
                      str(tmp / "weights.safetensors"))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> FusionClassifier:
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer annotator (format {config['format_version']})")
        params = dict(config["params"])
        if device:
            params["device"] = device
        clf = cls(**params)
        clf.classes_, clf.modalities_, clf.dims_ = config["classes"], config["modalities"], config["dims"]
        clf.temperature_, clf.modality_weights_ = config["temperature"], config["modality_weights"]
        clf.hidden_dim_ = config["hidden_dim"]
        n_out = len(clf.classes_)
        net = FusionNetwork(clf.dims_, n_out, clf.head, clf.hidden_dim_, clf.dropout, clf.modality_weights_)
        net.load_state_dict(load_file(str(path / "weights.safetensors")))
        clf.network_ = net.to(clf.device).eval()
        return clf
