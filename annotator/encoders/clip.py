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


def _autocast(torch, device: str):
    """bf16 autocast on CUDA (tensor cores); a no-op context on CPU."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


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
        with self._torch.inference_mode(), _autocast(self._torch, self.device):
            out = self._model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return _features(out).float().cpu().numpy()


class CLIPImageEncoder(_ClipSide):
    def __init__(self, model_name_or_path: str, *, device: str = "cpu", batch_size: int = 32):
        super().__init__(model_name_or_path, "image", device=device, batch_size=batch_size)

    def _encode_batch(self, images: list) -> np.ndarray:
        if self.device.startswith("cuda"):
            pixels = self._gpu_pixels(images)
        else:
            pixels = self._processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
        with self._torch.inference_mode(), _autocast(self._torch, self.device):
            out = self._model.get_image_features(pixel_values=pixels.to(self.device))
        return _features(out).float().cpu().numpy()

    def _gpu_pixels(self, images: list):
        """CLIP preprocessing on the GPU (resize shortest side, centre crop, normalise): the CPU
        image processor would otherwise cap throughput far below what the GPU encodes."""
        torch, F = self._torch, self._torch.nn.functional
        proc = self._processor.image_processor
        crop = proc.crop_size
        size = int(crop if isinstance(crop, (int, float)) else crop["height"])  # an int, a dict or a SizeDict
        mean = torch.tensor(proc.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(proc.image_std, device=self.device).view(1, 3, 1, 1)
        out, order = [], []
        for rows, group in _group_by_shape([np.asarray(i.convert("RGB")) for i in images]):
            x = torch.from_numpy(np.stack(group)).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
            h, w = group[0].shape[:2]
            scale = size / min(h, w)
            x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                              antialias=True, align_corners=False)
            top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
            out.append(((x[:, :, top:top + size, left:left + size] - mean) / std))
            order.extend(rows)
        return torch.cat(out)[torch.from_numpy(np.argsort(order)).to(self.device)]


def _group_by_shape(arrays: list[np.ndarray]) -> list[tuple[list[int], list[np.ndarray]]]:
    """(input positions, arrays) for each distinct array shape, so same-sized images resize as one batch."""
    groups: dict[tuple, tuple[list[int], list[np.ndarray]]] = {}
    for i, a in enumerate(arrays):
        rows, group = groups.setdefault(a.shape, ([], []))
        rows.append(i)
        group.append(a)
    return list(groups.values())
