"""Temperature scaling and expected calibration error, so a score of 0.8 means right 80 % of the time."""

from __future__ import annotations

import numpy as np


def fit_temperature(logits: np.ndarray, targets: np.ndarray, *, multilabel: bool = False) -> float:
    """The temperature T > 0 minimising the NLL of ``logits / T`` on held-out data.

    Parameters
    ----------
    logits : (n, k) float
    targets : (n,) int class indices, or (n, k) {0, 1} for multi-label.
    """
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(targets)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    loss_fn = (torch.nn.BCEWithLogitsLoss() if multilabel else torch.nn.CrossEntropyLoss())
    target = t.double() if multilabel else t.long()
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy − confidence| averaged over equal-width confidence bins.

    ``probs`` (n, k); ``targets`` (n,) class indices.
    """
    probs = np.asarray(probs)
    if len(probs) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targets)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
