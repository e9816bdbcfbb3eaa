"""Fusion heads: how per-modality hidden vectors become one vector for the classifier.

Every head has the same contract: ``forward(H, mask) -> (fused, weights)`` with ``H`` (B, M, h)
projected modality vectors, ``mask`` (B, M) 1.0 where the modality is present, ``fused`` (B, out_dim)
and ``weights`` (B, M) — how much each modality contributed, summing to 1 over present modalities.
Missing modalities never contribute, so a task with one modality still gets a prediction.
`CoAttentionNetwork` is the one head that sees part-level features (tokens, regions) instead of one
pooled vector per modality; `build_network` picks the network for a head's name.
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

    def prepare(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs → what `forward` reads (as they are: see `CoAttentionNetwork.prepare`)."""
        return xs

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


class CoAttentionNetwork(nn.Module):
    """Co-attention between the parts of the modalities (text tokens, image regions), in the manner
    of ViLBERT's co-attentional layers (Lu et al., 2019): every part of one modality attends over
    the parts of each other modality present, in both directions of every pair, so the head can
    learn that *this word* refers to *that region*, which pooled vectors cannot show it.

    Each modality's input row is its T parts of width d, flattened (B, T * d); part 0 is the
    pooled vector (a global part, present whenever the modality is), an all-zero part is padding.
    Parts are projected to ``hidden_dim`` with a learned position per part, updated by what they
    gathered from the other modalities (with ESIM's product and difference; residual, layer norm),
    then pooled by a learned attention
    whose weights sum to one over the modality's present parts (``part_weights``: what an
    explanation can show). Modality attention over the pooled vectors gives the modality weights
    (as `AttentionFusion`), an MLP the logits. A missing modality has no parts to attend to or
    from, so a task with one modality still gets a prediction.
    """

    def __init__(self, part_dims: list[int], part_counts: list[int], n_classes: int, hidden_dim: int,
                 dropout: float, reduced_dims: list[int] | None = None, n_heads: int = 4):
        super().__init__()
        self.part_dims, self.part_counts = list(part_dims), list(part_counts)
        self.reduced_dims = list(reduced_dims or part_dims)
        self.n_heads = n_heads if hidden_dim % n_heads == 0 else 1
        h = hidden_dim
        for j, (d, k) in enumerate(zip(self.part_dims, self.reduced_dims)):  # fixed PCA bases (`prepare`)
            self.register_buffer(f"basis_{j}", torch.eye(d)[:, :k].contiguous())
            self.register_buffer(f"center_{j}", torch.zeros(d))
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(k, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)) for k in self.reduced_dims)
        self.positions = nn.ParameterList(nn.Parameter(torch.randn(t, h) * 0.02) for t in part_counts)
        self.queries = nn.ModuleList(nn.Linear(h, h) for _ in part_dims)
        self.keys_values = nn.ModuleList(nn.Linear(h, 2 * h) for _ in part_dims)
        self.combine = nn.ModuleList(nn.Linear(4 * h, h) for _ in part_dims)
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in part_dims)
        self.pool_scores = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1)) for _ in part_dims)
        self.fusion = AttentionFusion(len(part_dims), h)
        self.classifier = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, n_classes))

    def _attend(self, q, kv, valid_keys):
        """Multi-head attention of queries (B, Tq, h) over keys/values (B, Tk, 2h); rows with no
        valid key gather zeros."""
        B, Tq, h = q.shape
        k, v = kv.chunk(2, dim=-1)
        heads = self.n_heads
        q, k, v = (t.reshape(B, -1, heads, h // heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / (h // heads) ** 0.5  # (B, heads, Tq, Tk)
        scores = scores.masked_fill(~valid_keys[:, None, None, :], float("-inf"))
        att = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return (att @ v).transpose(1, 2).reshape(B, Tq, h)

    def set_bases(self, bases: list[tuple]) -> None:
        """The fixed (center (d,), basis (d, k)) per modality that `prepare` projects parts with."""
        for j, (center, basis) in enumerate(bases):
            getattr(self, f"center_{j}").copy_(torch.as_tensor(center))
            getattr(self, f"basis_{j}").copy_(torch.as_tensor(basis))

    @torch.no_grad()
    def prepare(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs → what `forward` reads, once per data set rather than per step: every part
        projected on its modality's fixed PCA basis (a 1280-wide region to 64 numbers), padding
        kept at zero. The frozen encoders' part features are redundant, and projecting 17 x 1280
        numbers per image in every training step cost 20x the time of a pooled head's step."""
        out = []
        for j, x in enumerate(xs):
            parts = x.reshape(x.shape[0], self.part_counts[j], self.part_dims[j])
            valid = parts.abs().sum(-1, keepdim=True) > 0
            reduced = (parts - getattr(self, f"center_{j}")) @ getattr(self, f"basis_{j}")
            out.append((reduced * valid).flatten(1))
        return out

    def forward(self, xs, mask, *, with_hidden: bool = False, with_part_weights: bool = False):
        """``xs`` as `prepare` returns them."""
        tokens, valid = [], []
        for j, x in enumerate(xs):
            parts = x.reshape(x.shape[0], self.part_counts[j], self.reduced_dims[j])
            valid.append((parts.abs().sum(-1) > 0) & (mask[:, j:j + 1] > 0))
            tokens.append(self.projections[j](parts) + self.positions[j])
        pooled, part_weights = [], []
        for i in range(len(xs)):
            gathered = torch.zeros_like(tokens[i])
            sources = torch.zeros(mask.shape[0], 1, 1, device=mask.device, dtype=tokens[i].dtype)
            for j in range(len(xs)):
                if j == i:
                    continue
                present = mask[:, j].to(tokens[i].dtype)[:, None, None]
                context = self._attend(self.queries[i](tokens[i]), self.keys_values[j](tokens[j]), valid[j])
                gathered = gathered + context * present
                sources = sources + present
            gathered = gathered / sources.clamp_min(1.0)
            # ESIM's enhancement (Chen et al., 2017): the product and difference make "this part
            # matches what it found in the other modality" a linear feature
            enhanced = torch.cat([tokens[i], gathered, tokens[i] * gathered, tokens[i] - gathered], dim=-1)
            updated = self.norms[i](tokens[i] + self.combine[i](enhanced))
            scores = self.pool_scores[i](updated).squeeze(-1).masked_fill(~valid[i], float("-inf"))
            weights = torch.softmax(scores, dim=1).nan_to_num(0.0)
            pooled.append((updated * weights[..., None]).sum(1))
            part_weights.append(weights)
        fused, modality_weights = self.fusion(torch.stack(pooled, dim=1), mask)
        hidden = self.classifier[:-1](fused)
        out = (self.classifier[-1](hidden), modality_weights)
        if with_hidden:
            out = (*out, hidden)
        if with_part_weights:
            out = (*out, part_weights)
        return out


COATTENTION = "coattention"  # a head over part-level features (`CoAttentionNetwork`), not pooled vectors


def build_network(dims: list[int], n_classes: int, head: str, hidden_dim: int, dropout: float,
                  head_weights: list[float] | None = None, part_dims: list[int] | None = None,
                  reduced_dims: list[int] | None = None) -> nn.Module:
    """The network of ``head``: `CoAttentionNetwork` over parts (each input row holds
    ``dims[j] // part_dims[j]`` parts, projected to ``reduced_dims``), else `FusionNetwork` over
    pooled vectors. Both take their inputs through ``prepare`` first."""
    if head == COATTENTION:
        counts = [d // p for d, p in zip(dims, part_dims)]
        return CoAttentionNetwork(part_dims, counts, n_classes, hidden_dim, dropout, reduced_dims)
    return FusionNetwork(dims, n_classes, head, hidden_dim, dropout, head_weights)
