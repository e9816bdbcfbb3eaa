"""`FusionClassifier`: a scikit-learn-style estimator over per-modality embeddings.

Input ``X`` is a mapping ``{modality: (n, d_m) float32}``; a row of NaN means the item lacks that
modality. The ``coattention`` head also reads part-level features, ``{"text:parts": (n, P * d)}``
(see `annotator.encoders.base.parts_key`); the other heads ignore them. Training uses modality
dropout so that items with any subset of modalities are predicted well, and probabilities are
calibrated by temperature scaling on a held-out slice.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from annotator.encoders.base import is_parts_key, modality_order, parts_key
from annotator.errors import DimensionMismatchError, NotEnoughLabelsError, UnknownNameError
from annotator.fusion.base import EstimatorParams, read_folder, write_folder
from annotator.fusion.calibration import fit_temperature
from annotator.fusion.heads import COATTENTION, HEAD_CLASSES, build_network

HEADS = (*HEAD_CLASSES, COATTENTION)
FORMAT_VERSION = 1
PLATEAU_WINDOW = 25  # steps whose mean training loss `plateau_loss` is compared with


class FusionClassifier(EstimatorParams):
    """Classify items from frozen per-modality embeddings with a fusion head.

    Parameters
    ----------
    head : {"concat", "weighted", "attention", "gated", "tensor", "coattention"}, default="attention"
        ``coattention`` attends between the modalities' parts (`CoAttentionNetwork`); an item whose
        parts are not in ``X`` is predicted from its pooled vectors (its global parts) alone.
    hidden_dim : int or "auto", default="auto"
        Width of each modality's projection and of the classifier's hidden layer. ``auto`` grows with
        the training set (32 below 200 items, 64 below 1,000, else 128): a wide head overfits the
        few labels a project starts with.
    epochs : int, default=60
    min_steps : int, default=300
        Small data sets get more epochs so training takes at least this many optimizer steps.
    plateau_loss : float, default=0.0
        Stop training once the mean training loss over the last `PLATEAU_WINDOW` steps is below this
        (the labels are fitted; later steps mostly grow the logits). 0 trains every step. `ModelSearch`
        scores its folds with 0.01: ranking candidates needs their order, not their last tenth of a
        point, and at 240 labels the heads reach it in a third of their steps.
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
    warm_start : bool, default=False
        `fit` a fitted classifier again by training its network on for ``min_steps // 5`` steps on
        every label, keeping its temperature and modality weights (a refit after a few corrections:
        seconds instead of two trainings from scratch). Only when the classes, modalities, widths
        and head are unchanged and no pseudo-labels are asked for; otherwise `fit` starts afresh.
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
    part_dims_ : list of int or None
        ``coattention``: each modality's part width (its pooled width); ``dims_`` holds the parts
        per row times it.
    warm_started_ : bool
        Whether the last `fit` went on from the previous network (``warm_start``).
    n_steps_ : int
        Optimizer steps of the last network trained (fewer than planned where ``plateau_loss`` stopped it).
    """

    def __init__(self, head: str = "attention", hidden_dim: int | str = "auto", epochs: int = 60, min_steps: int = 300,
                 plateau_loss: float = 0.0, batch_size: int = 256,
                 lr: float = 2e-3, weight_decay: float = 1e-4, dropout: float = 0.1,
                 modality_dropout: float = 0.25, multilabel: bool = False, calibrate: bool = True,
                 calibration_fraction: float = 0.15, min_calibration: int = 20, refit: bool = True,
                 pseudo_label_ratio: float = 15.0, pseudo_label_threshold: float = 0.9,
                 max_pseudo_labels: int = 2000, modality_weights: list[float] | None = None,
                 cv_folds: int = 3, warm_start: bool = False, random_state: int = 0, device: str = "cpu"):
        self.head = head
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.min_steps = min_steps
        self.plateau_loss = plateau_loss
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
        self.warm_start = warm_start
        self.random_state = random_state
        self.device = device

    # --- scikit-learn plumbing -------------------------------------------------------------

    _PARAMS = ("head", "hidden_dim", "epochs", "min_steps", "plateau_loss", "batch_size", "lr", "weight_decay",
               "dropout", "modality_dropout", "multilabel", "calibrate", "calibration_fraction", "min_calibration",
               "refit", "pseudo_label_ratio", "pseudo_label_threshold", "max_pseudo_labels",
               "modality_weights",
               "cv_folds", "warm_start", "random_state", "device")
    _FITTED = "network_"

    @property
    def uses_parts(self) -> bool:
        """Whether ``X`` should carry part-level features (`annotator.embedding.load_features`)."""
        return self.head == COATTENTION

    def _arrays(self, X: Mapping[str, np.ndarray], *, fitting: bool) -> tuple[list[np.ndarray], np.ndarray]:
        if fitting:
            self.part_dims_ = None
        if not self.uses_parts:
            return super()._arrays(X, fitting=fitting)
        pooled = modality_order(k for k in X if not is_parts_key(k))
        if fitting:
            self.part_dims_ = [int(np.asarray(X[m]).shape[1]) for m in pooled]
            counts = {m: _parts_used(X.get(parts_key(m)), d) for m, d in zip(pooled, self.part_dims_)}
        else:
            counts = {m: dim // d - 1 for m, dim, d in zip(self.modalities_, self.dims_, self.part_dims_)}
        return super()._arrays({m: _with_parts(X, m, counts.get(m, 0)) for m in pooled}, fitting=fitting)

    # --- input handling --------------------------------------------------------------------

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
        previous = self._warm_state() if self.warm_start else None  # before the fit overwrites it
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
        self.warm_started_ = previous is not None and (unlabelled is None or self.pseudo_label_ratio <= 0) and \
            (previous["classes"], previous["modalities"], previous["dims"], previous["hidden"]) == (
                list(self.classes_), list(self.modalities_), list(self.dims_), self.hidden_dim_)
        if self.warm_started_:
            self.part_bases_, self.modality_weights_ = None, previous["weights"]
            self.network_ = self._train(arrays, mask, targets, np.arange(n), self.modality_weights_, epochs=1,
                                        min_steps=max(1, self.min_steps // 5), init=previous["network"])
            self.temperature_, self.n_pseudo_labels_ = previous["temperature"], 0
            return self
        rng = np.random.default_rng(self.random_state)
        fit_idx, cal_idx = self._calibration_split(targets, rng)

        self.part_bases_ = _part_bases(arrays, self.part_dims_, self.random_state) if self.uses_parts else None
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

    def _warm_state(self) -> dict | None:
        """What a warm start goes on from, or None (not fitted; ``coattention``, whose part bases
        are drawn per fit, always starts afresh)."""
        if not hasattr(self, "network_") or self.uses_parts:
            return None
        return {"network": self.network_, "classes": list(self.classes_), "modalities": list(self.modalities_),
                "dims": list(self.dims_), "hidden": self.hidden_dim_, "weights": self.modality_weights_,
                "temperature": self.temperature_}

    def _reduced_dims(self) -> list[int] | None:
        """``coattention``: the width each modality's parts are projected to (`_part_bases`)."""
        if not self.uses_parts:
            return None
        if getattr(self, "part_bases_", None) is not None:
            return [int(basis.shape[1]) for _, basis in self.part_bases_]
        return [int(basis.shape[1]) for name, basis in self.network_.named_buffers() if name.startswith("basis_")]

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
               min_steps: int | None = None, init=None):
        """Train a network on rows ``idx`` (from ``init``'s weights when given)."""
        import torch

        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        n_classes = targets.shape[1] if self.multilabel else len(self.classes_)
        net = build_network(self.dims_, n_classes, self.head, self.hidden_dim_, self.dropout, head_weights,
                            self.part_dims_, self._reduced_dims())
        if self.part_bases_ is not None:
            net.set_bases(self.part_bases_)
        if init is not None:
            net.load_state_dict(init.state_dict())
        net = net.to(self.device)
        # fused: one kernel for every parameter's update instead of one per tensor, a quarter of a
        # small head's step time on CPU
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)
        loss_fn = torch.nn.BCEWithLogitsLoss() if self.multilabel else torch.nn.CrossEntropyLoss()
        xs = net.prepare([torch.from_numpy(a[idx]).to(self.device) for a in arrays])
        m = torch.from_numpy(mask[idx]).to(self.device)
        t = torch.from_numpy(targets[idx]).to(self.device)
        n = len(idx)
        batches_per_epoch = max(1, -(-n // self.batch_size))
        size = -(-n // batches_per_epoch)  # equal batches: 260 items → 2 × 130, not 256 + a noisy 4
        steps = self.min_steps if min_steps is None else min_steps
        n_epochs = max(epochs or self.epochs, -(-steps // batches_per_epoch))
        net.train()

        def batches():  # equal batches of a fresh permutation per epoch
            for _ in range(n_epochs):
                perm = torch.randperm(n, generator=gen).to(self.device)
                for start in range(0, n, size):
                    yield perm[start:start + size]

        window = torch.zeros(PLATEAU_WINDOW, device=self.device)  # the last steps' losses, kept on the device
        step = 0
        for step, b in enumerate(batches(), 1):
            bm = self._drop_modalities(m[b], gen)
            logits, _ = net([x[b] for x in xs], bm)
            loss = loss_fn(logits, t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            window[step % PLATEAU_WINDOW] = loss.detach()
            if self.plateau_loss > 0 and step % PLATEAU_WINDOW == 0 and window.mean().item() < self.plateau_loss:
                break
        self.n_steps_ = step
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
        """Pick the weighted head's modality weights over a simplex grid (step 0.25) by
        ``cv_folds``-fold cross-validation, scored by out-of-fold log-loss (finer than accuracy,
        which ties on easy data) of the per-modality log-probabilities mixed with those weights.

        Each modality's branch is stood in for by a logistic regression on its vectors: M × k
        linear fits instead of training the network for every grid point and fold (at 800 labels
        and three modalities, about 1 s instead of 23 s), which is what lets the weighted head take
        part in `ModelSearch`'s cross-validation. Multi-label heads use equal weights.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        n_mod = len(self.modalities_)
        if self.multilabel or n_mod == 1:
            return [1.0 / n_mod] * n_mod
        t, present = targets[idx], mask[idx] > 0
        n_classes = len(self.classes_)
        counts = np.bincount(t, minlength=n_classes)
        folds = int(min(max(2, self.cv_folds), counts[counts > 0].min()))
        log_p = np.zeros((n_mod, len(idx), n_classes))
        if folds >= 2:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            for j in range(n_mod):
                Z = arrays[j][idx]
                for train, test in splitter.split(Z, t):
                    train = train[present[train, j]]
                    if len(np.unique(t[train])) < 2:
                        continue
                    lr = LogisticRegression(C=10.0, max_iter=1000).fit(Z[train], t[train])
                    block = np.full((len(test), n_classes), np.log(1e-4))
                    block[:, lr.classes_] = np.log(np.clip(lr.predict_proba(Z[test]), 1e-4, 1))
                    log_p[j, test] = block
        grid = [np.array(w) / 4 for w in itertools.product(range(5), repeat=n_mod) if sum(w) == 4]
        best, best_loss = grid[0], np.inf
        for w in grid:
            weights = w[:, None] * present.T  # (M, n): renormalised over the modalities present
            weights = weights / np.maximum(weights.sum(axis=0, keepdims=True), 1e-9)
            loss = self._log_loss(np.einsum("mn,mnk->nk", weights, log_p), t)
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
                inputs = net.prepare([torch.from_numpy(x).to(self.device) for x in xs])
                out = net(inputs, torch.from_numpy(m).to(self.device), with_hidden=with_hidden)
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
        from scipy.special import expit, softmax

        return expit(z) if self.multilabel else softmax(z, axis=1)

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

    def part_weights(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``coattention`` only: {modality: (n, 1 + P)} the attention that pooled each modality's
        parts (part 0 is the pooled vector, then tokens or regions in order); a row sums to 1 over
        the parts present, and is all zero where the modality is missing."""
        import torch

        self._check_fitted()
        if not self.uses_parts:
            raise ValueError(f"the {self.head!r} head has no attention over parts; only {COATTENTION!r} has")
        arrays, mask = self._arrays(X, fitting=False)
        with torch.inference_mode():
            xs = self.network_.prepare([torch.from_numpy(np.nan_to_num(a, nan=0.0)).to(self.device) for a in arrays])
            out = self.network_(xs, torch.from_numpy(mask).to(self.device), with_part_weights=True)
        return {m: w.float().cpu().numpy() for m, w in zip(self.modalities_, out[-1])}

    def modality_contributions(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, M) share of each modality (in ``modalities_`` order) in each prediction; sums to 1."""
        self._check_fitted()
        arrays, mask = self._arrays(X, fitting=False)
        return self._forward(arrays, mask)[1]

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write config + weights to folder ``path`` atomically (temp folder, then rename)."""
        self._check_fitted()
        write_folder(path, {"estimator": "FusionClassifier", "format_version": FORMAT_VERSION,
                            "params": self.get_params(), "classes": self.classes_, "modalities": self.modalities_,
                            "dims": self.dims_, "temperature": self.temperature_, "hidden_dim": self.hidden_dim_,
                            "modality_weights": self.modality_weights_, "part_dims": self.part_dims_,
                            "part_reduced_dims": self._reduced_dims()},
                     {k: v.detach().cpu().numpy() for k, v in self.network_.state_dict().items()})

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> FusionClassifier:
        import torch

        config, weights = read_folder(path, FORMAT_VERSION)
        params = dict(config["params"])
        if device:
            params["device"] = device
        clf = cls(**params)
        clf.classes_, clf.modalities_, clf.dims_ = config["classes"], config["modalities"], config["dims"]
        clf.temperature_, clf.modality_weights_ = config["temperature"], config["modality_weights"]
        clf.hidden_dim_, clf.part_dims_ = config["hidden_dim"], config.get("part_dims")
        net = build_network(clf.dims_, len(clf.classes_), clf.head, clf.hidden_dim_, clf.dropout,
                            clf.modality_weights_, clf.part_dims_, config.get("part_reduced_dims"))
        clf.part_bases_ = None  # they live in the network's buffers
        net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        clf.network_ = net.to(clf.device).eval()
        return clf


def _with_parts(X: Mapping[str, np.ndarray], modality: str, n_parts: int) -> np.ndarray:
    """(n, (1 + n_parts) * d) float32: the pooled vector as part 0, then the part-level features;
    missing parts (not in ``X``, or a NaN row) are zero, i.e. padding, so such an item rests on its
    pooled vector; a missing pooled vector (NaN) marks the modality missing."""
    pooled = np.asarray(X[modality], dtype=np.float32)
    n, d = pooled.shape
    out = np.zeros((n, (1 + n_parts) * d), dtype=np.float32)
    out[:, :d] = pooled
    parts = X.get(parts_key(modality))
    if parts is not None and n_parts:
        if parts.shape[1] < n_parts * d or parts.shape[1] % d:
            raise DimensionMismatchError(f"part-level features of {modality!r}", n_parts * d, parts.shape[1])
        out[:, d:] = np.nan_to_num(np.asarray(parts[:, :n_parts * d], dtype=np.float32), nan=0.0)
    return out


def _parts_used(parts: np.ndarray | None, d: int) -> int:
    """How many leading parts hold features in any row (the rest is padding everywhere): captions
    are shorter than 64 tokens, and trailing padding would cost training time for nothing."""
    if parts is None or not len(parts):
        return 0
    present = np.abs(np.nan_to_num(np.asarray(parts, dtype=np.float32).reshape(len(parts), -1, d))).sum(-1) > 0
    used = np.flatnonzero(present.any(axis=0))
    return int(used[-1]) + 1 if len(used) else 0


PART_COMPONENTS = 64  # the width parts are projected to before co-attention (`_part_bases`)


def _part_bases(arrays: list[np.ndarray], part_dims: list[int], seed: int, max_parts: int = 20000) -> list[tuple]:
    """Per modality, (center (d,), basis (d, k)): the top ``PART_COMPONENTS`` principal directions
    of its parts (randomised SVD over up to ``max_parts`` non-padding parts of the training rows).
    Parts of a width no larger than that keep every direction."""
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(seed)
    bases = []
    for a, d in zip(arrays, part_dims):
        parts = a.reshape(-1, d)
        if len(parts) > max_parts:
            parts = parts[np.sort(rng.choice(len(parts), max_parts, replace=False))]
        parts = parts[np.abs(parts).sum(axis=1) > 0]
        center = parts.mean(axis=0) if len(parts) else np.zeros(d, np.float32)
        k = min(PART_COMPONENTS, d, max(1, len(parts) - 1))
        if k >= d:
            basis = np.eye(d, dtype=np.float32)
        else:
            _, _, vt = randomized_svd(parts - center, k, random_state=seed)
            basis = vt.T
        bases.append((center.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)))
    return bases
