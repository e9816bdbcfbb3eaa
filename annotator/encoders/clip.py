"""CLIP (transformers ``CLIPModel``): text and image encoders that share one native space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from annotator.encoders.base import batched_encode


def _features(out) -> "torch.Tensor":  # noqa: F821
    # transformers 5 may wrap projected features in a model output; older versions return a tensor.
    for attr in ("image_embeds", "text_embeds", "pooler_output"):
        if hasattr(out, attr) and getattr(out, attr) is not None:
            return getattr(out, attr)
    return out


class _ClipSide:
    def __init__(self, model_name_or_path: str, modality: str, *, device: str, batch_size: int):
        import torch
        from transformers import AutoProcessor, CLIPModel

        self.modality, self.device, self.batch_size, self._torch = modality, device, batch_size, torch
        self._model = CLIPModel.from_pretrained(model_name_or_path).eval().to(device)
        self._processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.dim = int(self._model.config.projection_dim)
        # Both sides carry the same space id: vectors from either can be compared directly.
        self.space = f"clip:{model_name_or_path}"
        self.name = f"{modality}:{self.space}"

    def encode(self, inputs: Sequence) -> np.ndarray:
        return batched_encode(inputs, self.batch_size, self._encode_batch, self.dim)


class CLIPTextEncoder(_ClipSide):
    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 64):
        super().__init__(model_name_or_path, "text", device=device, batch_size=batch_size)

    def _encode_batch(self, texts: list) -> np.ndarray:
        batch = self._processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        with self._torch.inference_mode():
            out = self._model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return _features(out).float().cpu().numpy()


class CLIPImageEncoder(_ClipSide):
    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 32):
        super().__init__(model_name_or_path, "image", device=device, batch_size=batch_size)

    def _encode_batch(self, images: list) -> np.ndarray:
        batch = self._processor(images=[i.convert("RGB") for i in images], return_tensors="pt").to(self.device)
        with self._torch.inference_mode():
            out = self._model.get_image_features(pixel_values=batch["pixel_values"])
        return _features(out).float().cpu().numpy()
