"""One loader: (modality, name or path) → an Encoder. ``default`` is the offline packaged model."""

from __future__ import annotations

import json
from pathlib import Path

from annotator.config import DEFAULT_MODEL
from annotator.encoders.base import MODALITIES, Encoder, resolve_device
from annotator.errors import ConfigError, UnknownNameError

_AUDIO_TYPES = {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew", "sew-d",
                "wav2vec2-conformer", "whisper", "clap"}


def _model_type(name_or_path: str) -> str | None:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if (path / "modules.json").is_file():
            return "sentence-transformers"
        if (path / "model.bin").is_file() and (path / "vocabulary.txt").is_file():
            return "ctranslate2-whisper"
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ConfigError(f"model path {path} has no config.json or modules.json; is it a model folder?")
        return json.loads(cfg.read_text()).get("model_type")
    if name_or_path.startswith("sentence-transformers/"):
        return "sentence-transformers"
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path).model_type  # hub lookup (needs network)


def load_encoder(modality: str, name: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int = 32) -> Encoder:
    """Load the encoder for ``modality`` named ``name`` (Hugging Face id, local path, or a keyword).

    Keywords: ``default`` (offline packaged model), and for audio ``mfcc`` (the MFCC baseline).
    A CLIP checkpoint gives the CLIP text or image tower (one shared space).
    """
    if modality not in MODALITIES:
        raise UnknownNameError("modality", modality, MODALITIES)
    device = resolve_device(device)
    if name == DEFAULT_MODEL:
        if modality == "text":
            from annotator.encoders.text import SentenceTransformerEncoder, default_text_model_path

            return SentenceTransformerEncoder(default_text_model_path(), device=device, batch_size=batch_size,
                                              name="text:st:all-MiniLM-L6-v2")
        if modality == "image":
            from annotator.encoders.image import EfficientNetLiteEncoder

            return EfficientNetLiteEncoder(device=device, batch_size=batch_size)
        from annotator.encoders.audio import WhisperEncoder

        return WhisperEncoder(device=device, batch_size=max(1, batch_size // 4))
    if modality == "audio" and name == "mfcc":
        from annotator.encoders.audio import MFCCEncoder

        return MFCCEncoder()

    kind = _model_type(name)
    if kind == "clip":
        from annotator.encoders.clip import CLIPImageEncoder, CLIPTextEncoder

        if modality == "audio":
            raise ConfigError(f"{name} is a CLIP model; it has no audio tower")
        cls = CLIPTextEncoder if modality == "text" else CLIPImageEncoder
        return cls(name, device=device, batch_size=batch_size)
    if modality == "text":
        from annotator.encoders.text import SentenceTransformerEncoder

        return SentenceTransformerEncoder(name, device=device, batch_size=batch_size)
    if modality == "image":
        from annotator.encoders.image import HFImageEncoder

        return HFImageEncoder(name, device=device, batch_size=batch_size)
    if kind == "ctranslate2-whisper":
        from annotator.encoders.audio import WhisperEncoder

        return WhisperEncoder(name, device=device)
    if kind not in _AUDIO_TYPES:
        raise ConfigError(f"{name} is a {kind!r} model, not an audio model ({', '.join(sorted(_AUDIO_TYPES))})")
    from annotator.encoders.audio import HFAudioEncoder

    return HFAudioEncoder(name, device=device, batch_size=batch_size)
