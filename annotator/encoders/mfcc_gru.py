"""A small trainable audio encoder: a bidirectional GRU over MFCC frames, trained on a project's
own labels (or, without them, contrastively against the texts paired with the audio).

Beside the frozen Whisper encoder and the MFCC-statistics baseline (`MFCCEncoder`), this is the
brief's sequence model over MFCCs: it sees the order of the frames, which the statistics throw
away, and it learns from the project's data, which Whisper does not. It is an encoder like any
other once trained: a folder (``config.json`` with ``"model_type": "mfcc-gru"``, weights in
safetensors) that `annotator.encoders.load.load_encoder` opens by path, and whose name carries
the weights' hash, so vectors of two trainings never share a cache entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from annotator.artifacts import atomic_directory
from annotator.encoders.audio import MFCCEncoder
from annotator.encoders.base import l2_normalize
from annotator.errors import ConfigError, NotEnoughLabelsError

MODEL_TYPE = "mfcc-gru"
MAX_FRAMES = 1500  # 30 s at 20 ms per step (MFCC frames every 10 ms, averaged in pairs)


def _network(n_in: int, hidden: int):
    import torch
    from torch import nn

    class GRUPool(nn.Module):
        """Standardised MFCC + delta frames → bidirectional GRU → mean of its outputs over the
        frames that hold audio."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_in))
            self.register_buffer("std", torch.ones(n_in))
            self.gru = nn.GRU(n_in, hidden, batch_first=True, bidirectional=True)

        def forward(self, frames, lengths):
            x = (frames - self.mean) / self.std
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.gru(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=frames.shape[1])
            mask = (torch.arange(frames.shape[1])[None, :] < lengths[:, None]).to(out.dtype)
            return (out * mask[..., None]).sum(1) / lengths[:, None].to(out.dtype)

    return GRUPool()


class MFCCGRUEncoder:
    """A trained `MFCCGRUEncoder` folder as an encoder: (n, 2 * hidden) L2-normalised vectors.

    Parameters
    ----------
    path : str or Path
        A folder written by `train_mfcc_gru`.
    """

    modality = "audio"
    runtime = "torch"

    def __init__(self, path: str | Path, *, batch_size: int = 32, **_):
        import torch
        from safetensors.torch import load_file

        self.path = Path(path)
        config_file, weights_file = self.path / "config.json", self.path / "weights.safetensors"
        if not weights_file.is_file():
            raise ConfigError(f"{self.path} holds no trained mfcc-gru encoder; train one with "
                              "`annotator audio-encoder --project P`")
        config = json.loads(config_file.read_text())
        self.hidden, self.batch_size = int(config["hidden"]), batch_size
        self.dim = 2 * self.hidden
        self._features = MFCCEncoder(n_mfcc=int(config["n_mfcc"]))
        self._net = _network(2 * self._features.n_mfcc, self.hidden)
        self._net.load_state_dict(load_file(str(weights_file)))
        self._net.eval()
        self._torch = torch
        digest = hashlib.sha1(weights_file.read_bytes()).hexdigest()[:12]
        self.name = f"audio:{MODEL_TYPE}:{digest}"

    def encode(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        for start in range(0, len(inputs), self.batch_size):
            frames, lengths = _batch([mfcc_frames(self._features, clip) for clip in inputs[start:start + self.batch_size]])
            with self._torch.inference_mode(), _one_thread():
                out[start:start + len(lengths)] = self._net(frames, lengths).numpy()
        return l2_normalize(out)


def mfcc_frames(features: MFCCEncoder, clip: np.ndarray) -> np.ndarray:
    """(T, 2 * n_mfcc) float32: MFCCs and their deltas, averaged over pairs of 10 ms frames (the GRU
    steps every 20 ms), at most `MAX_FRAMES`."""
    mfcc = features.mfcc(np.asarray(clip, dtype=np.float32))
    delta = np.vstack([np.zeros((1, mfcc.shape[1])), np.diff(mfcc, axis=0)])
    frames = np.hstack([mfcc, delta]).astype(np.float32)
    if len(frames) % 2:
        frames = np.vstack([frames, frames[-1:]])
    return frames.reshape(-1, 2, frames.shape[1]).mean(axis=1)[:MAX_FRAMES]


def _batch(sequences: list[np.ndarray]):
    import torch

    lengths = torch.tensor([max(1, len(s)) for s in sequences])
    padded = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        padded[i, :len(s)] = s
    return torch.from_numpy(padded), lengths


def train_mfcc_gru(clips: Sequence[np.ndarray], out: Path, *, labels: Sequence[str] | None = None,
                   paired: np.ndarray | None = None, hidden: int = 64, n_mfcc: int = 20, epochs: int = 40,
                   batch_size: int = 32, lr: float = 3e-3, random_state: int = 0) -> dict:
    """Train the GRU and write the encoder folder ``out`` (atomically); returns what it learned from.

    With ``labels`` (one per clip, at least two classes): a linear classifier on the pooled output,
    cross-entropy. Else with ``paired`` ((n, d) vectors of the texts that go with the clips):
    InfoNCE between a linear projection of the pooled output and those vectors (temperature 0.1),
    so the audio learns what its captions say. The classifier or projection is dropped after
    training; the encoder is the GRU.
    """
    import torch
    from safetensors.torch import save_file

    if labels is None and paired is None:
        raise ValueError("train_mfcc_gru needs labels or paired text vectors")
    features = MFCCEncoder(n_mfcc=n_mfcc)
    sequences = [mfcc_frames(features, clip) for clip in clips]
    torch.manual_seed(random_state)
    net = _network(2 * n_mfcc, hidden)
    stacked = np.vstack(sequences)
    net.mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
    net.std.copy_(torch.from_numpy(stacked.std(axis=0) + 1e-6))
    if labels is not None:
        classes = sorted(set(map(str, labels)))
        if len(classes) < 2:
            raise NotEnoughLabelsError(f"training the mfcc-gru encoder needs at least 2 classes; got {classes}")
        targets = torch.tensor([classes.index(str(v)) for v in labels])
        head = torch.nn.Linear(2 * hidden, len(classes))
        objective = "labels"
    else:
        targets = torch.from_numpy(l2_normalize(np.asarray(paired, dtype=np.float32)))
        head = torch.nn.Linear(2 * hidden, targets.shape[1])
        objective = "paired text"
    with _one_thread():
        _fit(net, head, sequences, targets, labels is not None, epochs, batch_size, lr, random_state)
    with atomic_directory(Path(out)) as tmp:
        (tmp / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, "hidden": hidden, "n_mfcc": n_mfcc,
                                                     "trained_on": objective, "clips": len(sequences)}, indent=2))
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "weights.safetensors"))
    return {"path": str(out), "trained_on": objective, "clips": len(sequences)}


@contextmanager
def _one_thread():
    """A GRU this small is a long chain of tiny matrix products: on one thread it runs as fast as
    on all cores, and it is not slowed 30-fold when other work shares the cores and threads wait
    on each other (measured: one training took 256 s on two threads beside a benchmark, 8 s on one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(net, head, sequences, targets, classify: bool, epochs: int, batch_size: int, lr: float,
         random_state: int) -> None:
    import torch

    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(random_state)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths batch together
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(len(batches), generator=gen).tolist():
            rows = batches[b]
            frames, lengths = _batch([sequences[i] for i in rows])
            z = head(net(frames, lengths))
            if classify:
                loss = torch.nn.functional.cross_entropy(z, targets[rows])
            else:
                logits = torch.nn.functional.normalize(z, dim=1) @ targets[rows].T / 0.1
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(rows)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


def default_path(data_dir: Path) -> Path:
    """Where ``ANNOTATOR_AUDIO_MODEL=mfcc-gru`` looks, and `annotator audio-encoder` writes."""
    return Path(data_dir) / "encoders" / MODEL_TYPE
