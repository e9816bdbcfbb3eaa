"""Cross-modal alignment: learned projections that put every modality into one shared space.

Used when no CLIP-like model is configured (the offline default): each modality gets a linear
projection trained with a symmetric InfoNCE loss on items that carry two modalities, so a text
query lands near the images (and audio) of items described by similar text. Unlabelled items are
enough: alignment needs pairs, not labels.

With ``adversarial`` > 0 a third kind of alignment joins the subspace one (InfoNCE here) and the
semantic one (CLIP): a modality discriminator learns to tell which modality a projected vector came
from, and the projections learn to fool it through a gradient-reversal layer (Ganin & Lempitsky,
"Unsupervised domain adaptation by backpropagation", 2015), closing the gap between the modalities'
regions of the shared space.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from annotator.artifacts import atomic_directory
from annotator.encoders.base import modality_order
from annotator.errors import NotEnoughLabelsError, NotFittedError, UnknownNameError


def reverse_gradient(x, scale: float = 1.0):
    """Identity forward; the gradient multiplied by ``-scale`` backward (a gradient-reversal layer)."""
    import torch

    class _Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inputs):
            return inputs.view_as(inputs)

        @staticmethod
        def backward(ctx, grad):
            return -scale * grad

    return _Reverse.apply(x)


class CrossModalAligner:
    """Project each modality's embeddings into one ``dim``-wide L2-normalised space.

    Parameters
    ----------
    dim : int, default=256
    epochs : int, default=80
    batch_size : int, default=256
    lr : float, default=1e-3
    temperature : float, default=0.07
        InfoNCE softmax temperature.
    min_pairs : int, default=8
        Fewer co-occurring pairs than this for a modality pair and alignment is refused.
    adversarial : float, default=0.0
        Weight of the adversarial loss (0: InfoNCE alone): a modality discriminator trained against
        the projections through `reverse_gradient`.
    random_state : int, default=0

    Attributes
    ----------
    modalities_ : list of str
        Modalities that have a projection (each co-occurs with another in enough items).
    """

    def __init__(self, dim: int = 256, epochs: int = 80, batch_size: int = 256, lr: float = 1e-3,
                 temperature: float = 0.07, min_pairs: int = 8, adversarial: float = 0.0, random_state: int = 0):
        self.dim, self.epochs, self.batch_size, self.lr = dim, epochs, batch_size, lr
        self.temperature, self.min_pairs, self.random_state = temperature, min_pairs, random_state
        self.adversarial = adversarial

    def fit(self, X: Mapping[str, np.ndarray]) -> CrossModalAligner:
        """Learn projections from ``X`` ({modality: (n, d)}, NaN rows = missing; rows are items)."""
        import torch

        present = {m: ~np.isnan(np.asarray(a)).any(axis=1) for m, a in X.items()}
        order = modality_order(X)
        pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]
                 if (present[a] & present[b]).sum() >= self.min_pairs]
        if not pairs:
            counts = {f"{a}+{b}": int((present[a] & present[b]).sum()) for i, a in enumerate(order) for b in order[i + 1:]}
            raise NotEnoughLabelsError(
                f"alignment needs at least {self.min_pairs} items carrying two modalities; pairs found: {counts or 'none'}")
        self.modalities_ = sorted({m for p in pairs for m in p}, key=order.index)
        self.dims_ = {m: int(np.asarray(X[m]).shape[1]) for m in self.modalities_}
        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        self.projections_ = {m: torch.nn.Linear(self.dims_[m], self.dim, bias=False) for m in self.modalities_}
        params = [p for lin in self.projections_.values() for p in lin.parameters()]
        log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / self.temperature))))
        discriminator = torch.nn.Sequential(torch.nn.Linear(self.dim, 64), torch.nn.ReLU(),
                                            torch.nn.Linear(64, len(self.modalities_)))
        if self.adversarial > 0:
            params += list(discriminator.parameters())
        opt = torch.optim.AdamW(params + [log_scale], lr=self.lr, weight_decay=1e-4)
        data = {m: torch.from_numpy(np.nan_to_num(np.asarray(X[m], dtype=np.float32))) for m in self.modalities_}
        pair_rows = {p: torch.from_numpy(np.flatnonzero(present[p[0]] & present[p[1]])) for p in pairs}
        for _ in range(self.epochs):
            for (a, b), rows in pair_rows.items():
                perm = rows[torch.randperm(len(rows), generator=gen)]
                for s in range(0, len(perm), self.batch_size):
                    batch = perm[s:s + self.batch_size]
                    if len(batch) < 2:
                        continue
                    za = torch.nn.functional.normalize(self.projections_[a](data[a][batch]), dim=1)
                    zb = torch.nn.functional.normalize(self.projections_[b](data[b][batch]), dim=1)
                    logits = log_scale.exp().clamp(max=100) * za @ zb.T
                    target = torch.arange(len(batch))
                    loss = (torch.nn.functional.cross_entropy(logits, target)
                            + torch.nn.functional.cross_entropy(logits.T, target)) / 2
                    if self.adversarial > 0:  # the discriminator learns the modality; the projections unlearn it
                        which = torch.tensor([self.modalities_.index(a)] * len(batch) + [self.modalities_.index(b)] * len(batch))
                        guess = discriminator(reverse_gradient(torch.cat([za, zb]), self.adversarial))
                        loss = loss + torch.nn.functional.cross_entropy(guess, which)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.weights_ = {m: lin.weight.detach().numpy().T.copy() for m, lin in self.projections_.items()}
        del self.projections_
        return self

    def transform(self, modality: str, vectors: np.ndarray) -> np.ndarray:
        """(n, d_modality) → (n, dim) float32, L2-normalised, in the shared space."""
        if not hasattr(self, "weights_"):
            raise NotFittedError("this CrossModalAligner is not fitted yet; call fit first")
        if modality not in self.weights_:
            raise UnknownNameError("aligned modality", modality, list(self.weights_))
        z = np.asarray(vectors, dtype=np.float32) @ self.weights_[modality]
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def save(self, path: Path) -> None:
        with atomic_directory(path) as tmp:
            (tmp / "config.json").write_text(json.dumps({"dim": self.dim, "modalities": self.modalities_,
                                                         "dims": self.dims_, "temperature": self.temperature}))
            np.savez(tmp / "weights.npz", **self.weights_)

    @classmethod
    def load(cls, path: Path) -> CrossModalAligner:
        config = json.loads((Path(path) / "config.json").read_text())
        aligner = cls(dim=config["dim"], temperature=config["temperature"])
        aligner.modalities_, aligner.dims_ = config["modalities"], config["dims"]
        with np.load(Path(path) / "weights.npz") as z:
            aligner.weights_ = {m: z[m] for m in aligner.modalities_}
        return aligner
