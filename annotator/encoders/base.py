"""The encoder protocol: every modality's model looks the same to the rest of the library."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

MODALITIES = ("text", "image", "audio")


def modality_order(names) -> list[str]:
    """Modalities in the canonical order (text, image, audio, then any other by name)."""
    return sorted(names, key=lambda m: (MODALITIES.index(m) if m in MODALITIES else len(MODALITIES), m))


@runtime_checkable
class Encoder(Protocol):
    """Turns a batch of decoded inputs into L2-normalised float32 vectors.

    Attributes
    ----------
    name : str
        Identifies the model *and* its preprocessing; cache keys include it, so two encoders with
        the same name must produce the same vectors.
    modality : {"text", "image", "audio"}
    dim : int
        Width of the vectors ``encode`` returns.
    runtime : str, optional
        What runs the network (``torch``, ``onnx``, ``onnx-int8``, ``ctranslate2-int8``…), for reports.
    """

    name: str
    modality: str
    dim: int

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        """(n,) decoded inputs (str, PIL image, or 16 kHz mono float32 array) → (n, dim) float32."""
        ...


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def forward_batch_size(batch_size: int, device: str, cpu_limit: int) -> int:
    """Inputs per forward pass. On a CPU a convolutional network slows down once a batch's
    activations outgrow the cache (measured on 2 cores, images/s at 32 vs the best size:
    EfficientNet-Lite0 23 vs 72 at 4, ResNet-50 15 vs 29 at 8; ViTs unaffected), so CPU passes are
    capped at ``cpu_limit``; a GPU takes the configured ``batch_size``."""
    return min(batch_size, cpu_limit) if str(device).startswith("cpu") else batch_size


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def batched_encode(inputs: Sequence[Any], batch_size: int, encode_batch: Callable[[list], np.ndarray],
                   dim: int) -> np.ndarray:
    """Run ``encode_batch`` over fixed-size chunks and stack normalised results."""
    if len(inputs) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    chunks = [encode_batch(list(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)]
    return l2_normalize(np.concatenate(chunks, axis=0))
