"""Fusion heads: how per-modality hidden vectors become one vector for the classifier.

Every head has the same contract: ``forward(H, mask) -> (fused, weights)`` with ``H`` (B, M, h)
projected modality vectors, ``mask`` (B, M) 1.0 where the modality is present, ``fused`` (B, out_dim)
and ``weights`` (B, M) — how much each modality contributed, summing to 1 over present modalities.
Missing modalities never contribute, so a task with one modality still gets a prediction.
"""

from __future__ import annotations

import torch
from torch import nn


def _normalise(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = weights * mask
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-9)


class ConcatFusion(nn.Module):
    """Concatenate modality vectors (zeros where missing). Weights: uniform over present modalities."""

    def __init__(self, n_modalities: int, hidden_dim: int):
        super().__init__()
        self.out_dim = n_modalities * hidden_dim

    def forward(self, H, mask):
        return (H * mask[..., None]).flatten(1), _normalise(torch.ones_like(mask), mask)


class WeightedSumFusion(nn.Module):
    """Decision-level fusion: one classifier per modality, their logits summed with fixed weights
    (chosen by cross-validation in `FusionClassifier`) renormalised over the modalities present.
    Its output is already class logits (``produces_logits``)."""

    produces_logits = True

    def __init__(self, n_modalities: int, hidden_dim: int, n_classes: int, weights: list[float] | None = None):
        super().__init__()
        self.out_dim = n_classes
        self.per_modality = nn.ModuleList(nn.Linear(hidden_dim, n_classes) for _ in range(n_modalities))
        w = torch.full((n_modalities,), 1.0 / n_modalities) if weights is None else torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("modality_weights", w)

    def forward(self, H, mask):
        weights = _normalise(self.modality_weights.expand_as(mask), mask)
        logits = torch.stack([clf(H[:, j]) for j, clf in enumerate(self.per_modality)], dim=1)  # (B, M, k)
        return (logits * weights[..., None]).sum(1), weights


class AttentionFusion(nn.Module):
    """Modality attention: a learned score per modality vector, softmax over present modalities."""

    def __init__(self, n_modalities: int, hidden_dim: int):
        super().__init__()
        self.out_dim = hidden_dim
        self.score = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))

    def forward(self, H, mask):
        logits = self.score(H).squeeze(-1).masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
        return (H * weights[..., None]).sum(1), weights


class GatedFusion(nn.Module):
    """Gated fusion: sigmoid gates computed from all modalities together decide each one's share."""

    def __init__(self, n_modalities: int, hidden_dim: int):
        super().__init__()
        self.out_dim = hidden_dim
        self.gate = nn.Linear(n_modalities * hidden_dim, n_modalities)
        self.transform = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, H, mask):
        gates = torch.sigmoid(self.gate((H * mask[..., None]).flatten(1)))
        weights = _normalise(gates, mask)
        return (torch.tanh(self.transform(H)) * weights[..., None]).sum(1), weights


class TensorFusion(nn.Module):
    """Low-rank tensor (outer-product) fusion (Liu et al., 2018): each modality, with a constant 1
    appended, is mapped by ``rank`` factors; factors multiply across modalities, so every cross-
    modality interaction is modelled without building the full outer-product tensor. A missing
    modality contributes only its constant term."""

    def __init__(self, n_modalities: int, hidden_dim: int, rank: int = 4):
        super().__init__()
        self.out_dim = hidden_dim
        self.factors = nn.Parameter(torch.randn(n_modalities, rank, hidden_dim + 1, hidden_dim) * 0.1)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, H, mask):
        ones = torch.ones(*H.shape[:2], 1, device=H.device, dtype=H.dtype)
        Z = torch.cat([H * mask[..., None], ones], dim=-1)  # (B, M, h+1)
        per_modality = torch.einsum("bmi,mrio->bmro", Z, self.factors)  # (B, M, rank, out)
        fused = per_modality.prod(dim=1)  # (B, rank, out)
        out = torch.einsum("r,bro->bo", self.rank_weights, fused) + self.bias
        return out, _normalise(torch.ones_like(mask), mask)


HEAD_CLASSES: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "weighted": WeightedSumFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
    "tensor": TensorFusion,
}


class FusionNetwork(nn.Module):
    """Per-modality projection → fusion head → MLP classifier producing logits."""

    def __init__(self, dims: list[int], n_classes: int, head: str, hidden_dim: int, dropout: float,
                 head_weights: list[float] | None = None):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout))
            for d in dims
        )
        kwargs = {"weights": head_weights, "n_classes": n_classes} if head == "weighted" else {}
        self.fusion = HEAD_CLASSES[head](len(dims), hidden_dim, **kwargs)
        if getattr(self.fusion, "produces_logits", False):
            self.classifier = nn.Identity()
        else:
            self.classifier = nn.Sequential(nn.Linear(self.fusion.out_dim, hidden_dim), nn.GELU(),
                                            nn.Dropout(dropout), nn.Linear(hidden_dim, n_classes))

    def forward(self, xs: list[torch.Tensor], mask: torch.Tensor, *, with_hidden: bool = False):
        H = torch.stack([proj(x) for proj, x in zip(self.projections, xs)], dim=1)
        fused, weights = self.fusion(H, mask)
        if not with_hidden:
            return self.classifier(fused), weights
        if isinstance(self.classifier, nn.Identity):  # decision-level head: its input representation
            hidden = (H * weights[..., None]).sum(1)
            return fused, weights, hidden
        hidden = self.classifier[:-1](fused)  # the last layer's input
        return self.classifier[-1](hidden), weights, hidden
