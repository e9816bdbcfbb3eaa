"""One loader: (modality, name or path) → an Encoder. ``default`` is the offline packaged model."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from annotator.config import DEFAULT_MODEL
from annotator.encoders.base import MODALITIES, Encoder, resolve_device
from annotator.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

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


def _with_runtime(build: Callable[..., Encoder], runtime: str, *, required: bool, int8: bool,
                  export_dir: Path | None, what: str) -> Encoder:
    """``build(runtime=…)`` on the resolved runtime. A network ONNX Runtime cannot take falls back
    to torch with a warning, unless ONNX was ``required`` (asked for by name): then it raises."""
    if runtime == "torch":
        if int8:
            raise ConfigError("int8 needs the onnx runtime (ANNOTATOR_RUNTIME=onnx, or auto on a CPU)")
        return build(runtime="torch")
    try:
        return build(runtime="onnx", int8=int8, export_dir=export_dir)
    except Exception as exc:
        if required or int8:
            raise ConfigError(f"{what} cannot run on ONNX Runtime: {exc}") from exc
        log.warning("%s runs on torch: ONNX Runtime cannot take it (%s)", what, exc)
        return build(runtime="torch")


def load_encoder(modality: str, name: str = DEFAULT_MODEL, *, device: str = "auto", batch_size: int = 32,
                 runtime: str = "auto", int8: bool = False, export_dir: Path | None = None) -> Encoder:
    """Load the encoder for ``modality`` named ``name`` (Hugging Face id, local path, or a keyword).

    Keywords: ``default`` (offline packaged model), and for audio ``mfcc`` (the MFCC baseline). A
    folder written by `annotator.encoders.mfcc_gru.train_mfcc_gru` is the trained MFCC-GRU.
    A CLIP checkpoint gives the CLIP text or image tower (one shared space).

    ``runtime``: ``auto`` runs the text and image networks with ONNX Runtime on a CPU (exported
    once into ``export_dir``; see `annotator.encoders.onnx_runtime`), else torch; ``int8`` runs
    the dynamically quantised export. Whisper always runs on CTranslate2 (int8 on a CPU); CLIP and
    transformers audio models on torch.
    """
    if modality not in MODALITIES:
        raise UnknownNameError("modality", modality, MODALITIES)
    device = resolve_device(device)
    from annotator.encoders.onnx_runtime import resolve_runtime

    required, runtime = runtime == "onnx", resolve_runtime(runtime, device)

    def on_runtime(cls, *args, what: str, **kwargs) -> Encoder:
        return _with_runtime(lambda **rt: cls(*args, device=device, batch_size=batch_size, **kwargs, **rt),
                             runtime, required=required, int8=int8, export_dir=export_dir, what=what)

    if name == DEFAULT_MODEL:
        if modality == "text":
            from annotator.encoders.text import SentenceTransformerEncoder, default_text_model_path

            return on_runtime(SentenceTransformerEncoder, default_text_model_path(), what="the default text model",
                              name="text:st:all-MiniLM-L6-v2")
        if modality == "image":
            from annotator.encoders.image import EfficientNetLiteEncoder

            return on_runtime(EfficientNetLiteEncoder, what="the default image model")
        from annotator.encoders.audio import WhisperEncoder

        return WhisperEncoder(device=device, batch_size=max(1, batch_size // 4))
    if modality == "audio" and name == "mfcc":
        from annotator.encoders.audio import MFCCEncoder

        return MFCCEncoder()

    kind = _model_type(name)
    if kind == "mfcc-gru":
        from annotator.encoders.mfcc_gru import MFCCGRUEncoder

        if modality != "audio":
            raise ConfigError(f"{name} is an mfcc-gru audio encoder, not a {modality} model")
        return MFCCGRUEncoder(name, batch_size=batch_size)
    if kind == "clip":
        from annotator.encoders.clip import CLIPImageEncoder, CLIPTextEncoder

        if modality == "audio":
            raise ConfigError(f"{name} is a CLIP model; it has no audio tower")
        cls = CLIPTextEncoder if modality == "text" else CLIPImageEncoder
        return cls(name, device=device, batch_size=batch_size)
    if modality == "text":
        from annotator.encoders.text import SentenceTransformerEncoder

        return on_runtime(SentenceTransformerEncoder, name, what=name)
    if modality == "image":
        from annotator.encoders.image import HFImageEncoder

        return on_runtime(HFImageEncoder, name, what=name)
    if kind == "ctranslate2-whisper":
        from annotator.encoders.audio import WhisperEncoder

        return WhisperEncoder(name, device=device)
    if kind not in _AUDIO_TYPES:
        raise ConfigError(f"{name} is a {kind!r} model, not an audio model ({', '.join(sorted(_AUDIO_TYPES))})")
    from annotator.encoders.audio import HFAudioEncoder

    return HFAudioEncoder(name, device=device, batch_size=batch_size)
