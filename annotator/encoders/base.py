"""The encoder protocol: every modality's model looks the same to the rest of the library."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

MODALITIES = ("text", "image", "audio")
PARTS = ":parts"  # feature key of a modality's part-level features: {"text": (n, d), "text:parts": (n, P * d)}


def parts_key(modality: str) -> str:
    return modality + PARTS


def is_parts_key(key: str) -> bool:
    return key.endswith(PARTS)


def base_modality(key: str) -> str:
    """``text:parts`` → ``text``; a modality stays itself."""
    return key.removesuffix(PARTS)


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
    n_parts : int, optional
        Encoders that also give part-level features (text tokens, image regions) say how many at
        most, and have ``encode_parts(inputs) → (vectors (n, dim), parts (n, n_parts, dim) float16)``,
        both from one forward pass; absent or 0: pooled vectors only.
    """

    name: str
    modality: str
    dim: int

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        """(n,) decoded inputs (str, PIL image, or 16 kHz mono float32 array) → (n, dim) float32."""
        ...


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``. A CPU build of torch (a ``+cpu``
    version) says so without importing it: an image encoder on ONNX Runtime never needs torch (1.5 s)."""
    if device != "auto":
        return device
    if "torch" not in sys.modules and _torch_version().endswith("+cpu"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return ""


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


def normalize_parts(parts: np.ndarray, n_parts: int) -> np.ndarray:
    """(n, p, d) part features → (n, n_parts, d) float16, each part L2-normalised (as the pooled
    vectors are), cut or zero-padded to ``n_parts``; an all-zero part is padding and stays zero."""
    parts = np.asarray(parts, dtype=np.float32)[:, :n_parts]
    norms = np.linalg.norm(parts, axis=2, keepdims=True)
    parts = np.where(norms > 1e-6, parts / np.maximum(norms, 1e-12), 0.0)
    if parts.shape[1] < n_parts:
        parts = np.pad(parts, ((0, 0), (0, n_parts - parts.shape[1]), (0, 0)))
    return parts.astype(np.float16)


def batched_encode(inputs: Sequence[Any], batch_size: int, encode_batch: Callable[[list], Any],
                   dim: int, n_parts: int = 0) -> Any:
    """Run ``encode_batch`` over fixed-size chunks and stack normalised results. With ``n_parts``,
    ``encode_batch`` returns (vectors, parts) and so does this (see `normalize_parts`)."""
    if len(inputs) == 0:
        empty = np.zeros((0, dim), dtype=np.float32)
        return (empty, np.zeros((0, n_parts, dim), dtype=np.float16)) if n_parts else empty
    chunks = [encode_batch(list(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)]
    if not n_parts:
        return l2_normalize(np.concatenate(chunks, axis=0))
    vectors = l2_normalize(np.concatenate([c[0] for c in chunks], axis=0))
    return vectors, np.concatenate([normalize_parts(c[1], n_parts) for c in chunks], axis=0)
